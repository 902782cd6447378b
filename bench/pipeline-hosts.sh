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
RUNS=${RUNS:-3}
. "$(dirname "$0")/lib.sh"
# The hosts' apps (started by the targets' restart command) are stopped before the sshds.
on_exit 'for d in "$work"/host-*/home/*/app.pid; do [ -e "$d" ] && kill "$(cat "$d")" 2>/dev/null || true; done'
start_sshd_hosts a b
for h in a b; do
  for t in piped bare; do mkdir -p "$work/host-$h/home/$t" && free_port >"$work/host-$h/home/$t/port"; done
done
start_server "$work"

# Each target's app has its own port per host ($SLIPWAY_PATH/port), so neither check can pass
# on the other's app.
restart='P=$(cat "$SLIPWAY_PATH/port"); old=$(cat "$SLIPWAY_PATH/app.pid" 2>/dev/null || true); if [ -n "$old" ]; then kill "$old" 2>/dev/null || true; while kill -0 "$old" 2>/dev/null; do sleep 0.05; done; fi; cd app && HOME=$PWD PORT=$P sh -c '"'"'exec python3 server.py'"'"' >/dev/null 2>&1 & echo $! > "$SLIPWAY_PATH/app.pid"'
health='curl -fsS -o /dev/null "http://127.0.0.1:$(cat "$SLIPWAY_PATH/port")/"'
for t in piped bare; do
  "$BIN" targets:add "$t" --hosts "root@127.0.0.1:${ports[0]},root@127.0.0.1:${ports[1]}" \
    --path "$t" --key "$work/client_key" --restart "$restart" --health "$health" \
    --health-interval 0 --health-attempts 100 --batch 1 \
    --accept-host-key "$(fp a)" --accept-host-key "$(fp b)" >/dev/null 2>&1
done

app=$work/app
new_repo examples/hello "$app"
cd "$app"
"$BIN" pipelines:create hb >/dev/null 2>&1
"$BIN" pipelines:stages:add hb production --manual --watch 0 >/dev/null 2>&1
"$BIN" pipelines:targets:add hb production host:piped >/dev/null

piped=(); bare=()
for i in $(seq "$RUNS"); do
  echo "# run $i" >>server.py
  git add -A && git_q commit -qm "run $i"
  logged "$work/push.log" git push -q pipeline main
  n=$(grep -o 'Build #[0-9]* passed' "$work/push.log" | grep -o '[0-9]*' | tail -1)
  t0=$(now_ms)
  logged "$work/deploy.log" "$BIN" pipelines:deploy "$n" --to production -p hb
  piped+=($(( $(now_ms) - t0 )))
  if [ -n "${SHOW:-}" ]; then cat "$work/deploy.log" >&2; fi
  t0=$(now_ms)
  logged "$work/deploy.log" "$BIN" targets:deploy bare hb "build-$n"
  bare+=($(( $(now_ms) - t0 )))
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| what (examples/hello slug, 2 hosts, --batch 1, $RUNS runs; load $load; $(nproc) cores) | median ms | all ms |"
echo "|---|---|---|"
echo "| \`pipelines:deploy\` to a host stage (store, runner setup, rollout, report) | $(median "${piped[@]}") | ${piped[*]} |"
echo "| \`targets:deploy\` of the same stored release (rollout only) | $(median "${bare[@]}") | ${bare[*]} |"
