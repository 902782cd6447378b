#!/usr/bin/env bash
# Host stage benchmark (issue 11 in pipelines): the sample app (examples/hello) built once by a
# pipeline, then over RUNS runs a fresh build (one code change) deployed to a stage whose target
# is two hosts (sshd on loopback, as in tests/pipelines_hosts.rs), with a restart and an HTTP
# health check on each host:
#   1. `pipelines:deploy N --to production` (slug -> release store, the deploy runner's setup,
#      the target's rollout, report; watch window 0),
#   2. `targets:deploy` of the same stored release to a second target on the same hosts (the
#      bare rollout, no runner), for the runner's overhead.
#
#   bench/pipeline-hosts.sh                       # 3 runs, release build
#   RUNS=5 BIN=target/debug/slipway bench/pipeline-hosts.sh
#
# Needs root (sshd with its own config), openssh-server, git, python3, curl. Prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin slipway >&2
  BIN=$root/target/release/slipway
fi
BIN=$(realpath "$BIN")
work=$(mktemp -d)
chmod 711 "$work"
pids=()
cleanup() {
  for d in "$work"/host-*/home/*/app.pid; do [ -e "$d" ] && kill "$(cat "$d")" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
git_q() { git -c user.name=bench -c user.email=bench@localhost "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
mkdir -p /run/sshd
ports=()
for h in a b; do
  d=$work/host-$h
  mkdir -p "$d/home"
  for t in piped bare; do mkdir -p "$d/home/$t" && free_port >"$d/home/$t/port"; done
  ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
  cp "$work/client_key.pub" "$d/authorized_keys"
  port=$(free_port)
  cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/hostkey
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin yes
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
SetEnv HOME=$d/home
MaxSessions 50
MaxStartups 50
EOF
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  pids+=($!)
  ports+=("$port")
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

mkdir -p "$work/home"
export HOME=$work/home SLIPWAY_DATA_DIR=$work/data
"$BIN" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
pids+=($!)
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done

# Each target's app has its own port per host ($SLIPWAY_PATH/port), so neither check can pass
# on the other's app.
restart='P=$(cat "$SLIPWAY_PATH/port"); old=$(cat "$SLIPWAY_PATH/app.pid" 2>/dev/null || true); if [ -n "$old" ]; then kill "$old" 2>/dev/null || true; while kill -0 "$old" 2>/dev/null; do sleep 0.05; done; fi; cd app && HOME=$PWD PORT=$P sh -c '"'"'exec python3 server.py'"'"' >/dev/null 2>&1 & echo $! > "$SLIPWAY_PATH/app.pid"'
health='curl -fsS -o /dev/null "http://127.0.0.1:$(cat "$SLIPWAY_PATH/port")/"'
fp() { ssh-keygen -lf "$work/host-$1/hostkey.pub" | awk '{print $2}'; }
for t in piped bare; do
  "$BIN" targets:add "$t" --hosts "root@127.0.0.1:${ports[0]},root@127.0.0.1:${ports[1]}" \
    --path "$t" --key "$work/client_key" --restart "$restart" --health "$health" \
    --health-interval 0 --health-attempts 100 --batch 1 \
    --accept-host-key "$(fp a)" --accept-host-key "$(fp b)" >/dev/null 2>&1
done

app=$work/app
mkdir -p "$app" && cp -a examples/hello/. "$app/"
cd "$app"
git init -q -b main && git add -A && git_q commit -qm bench
"$BIN" pipelines:create hb >/dev/null 2>&1
"$BIN" pipelines:stages:add hb production --manual --watch 0 >/dev/null 2>&1
"$BIN" pipelines:targets:add hb production host:piped >/dev/null

piped=(); bare=()
for i in $(seq "$RUNS"); do
  echo "# run $i" >>server.py
  git add -A && git_q commit -qm "run $i"
  git push -q pipeline main >"$work/push.log" 2>&1 || { cat "$work/push.log" >&2; exit 1; }
  n=$(grep -o 'Build #[0-9]* passed' "$work/push.log" | grep -o '[0-9]*' | tail -1)
  t0=$(now_ms)
  "$BIN" pipelines:deploy "$n" --to production -p hb >"$work/deploy.log" 2>&1 || { cat "$work/deploy.log" >&2; exit 1; }
  piped+=($(( $(now_ms) - t0 )))
  if [ -n "${SHOW:-}" ]; then cat "$work/deploy.log" >&2; fi
  t0=$(now_ms)
  "$BIN" targets:deploy bare hb "build-$n" >"$work/deploy.log" 2>&1 || { cat "$work/deploy.log" >&2; exit 1; }
  bare+=($(( $(now_ms) - t0 )))
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| what (examples/hello slug, 2 hosts, --batch 1, $RUNS runs; load $load; $(nproc) cores) | median ms | all ms |"
echo "|---|---|---|"
echo "| \`pipelines:deploy\` to a host stage (store, runner setup, rollout, report) | $(median "${piped[@]}") | ${piped[*]} |"
echo "| \`targets:deploy\` of the same stored release (rollout only) | $(median "${bare[@]}") | ${bare[*]} |"
