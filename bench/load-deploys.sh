#!/usr/bin/env bash
# Zero-downtime deploys under load: DEPLOYS pushes in a row of a small app with an app.json
# health check (bench/zero-downtime-app, the same app as crates/slipway/tests/zero_downtime.rs)
# while bench/loadgen.py hammers it through the router (KEEPALIVE keep-alive connections and
# FRESH threads opening a new connection per request). Prints loadgen's JSON (every non-2xx
# and socket error counted) and the push times.
#
#   bench/load-deploys.sh                         # 20 deploys, 4 keep-alive + 2 fresh, release build
#   DEPLOYS=50 KEEPALIVE=16 FRESH=4 BIN=target/debug/slipway bench/load-deploys.sh
#
# Needs: cargo, git, python3. docs/benchmarks.md records the latest run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DEPLOYS=${DEPLOYS:-20}
KEEPALIVE=${KEEPALIVE:-4}
FRESH=${FRESH:-2}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin slipway >&2
  BIN=$root/target/release/slipway
fi
bin=$(realpath "$BIN")
work=$(mktemp -d)
chmod 711 "$work"
export SLIPWAY_DATA_DIR=$work/data HOME=$work/home
mkdir -p "$HOME"
cleanup() {
  [ -n "${load:-}" ] && touch "$work/stop" && wait "$load" 2>/dev/null || true
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 --stop-dynos-on-exit true \
  >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done
router_port=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$work/server.out" | grep -o '[0-9]*$')

"$bin" apps:create zdbench --no-remote >/dev/null
mkdir "$work/app" && cp bench/zero-downtime-app/* "$work/app/"
cd "$work/app"
git init -q -b main
commit() { git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm "$1"; }
commit v1
"$bin" git:remote -a zdbench >/dev/null
git push -q slipway main 2>/dev/null
for _ in $(seq 600); do
  curl -fs -H 'Host: zdbench.localhost' "http://127.0.0.1:$router_port/" | grep -q 'version 1' && break
  sleep 0.1
done

python3 "$root/bench/loadgen.py" --port "$router_port" --host zdbench.localhost \
  --keepalive "$KEEPALIVE" --fresh "$FRESH" --stop-file "$work/stop" >"$work/load.json" 2>"$work/load.err" &
load=$!
for _ in $(seq 300); do grep -qx ready "$work/load.err" 2>/dev/null && break; sleep 0.1; done

times=()
for n in $(seq 2 $((DEPLOYS + 1))); do
  echo "$n" >VERSION
  commit "v$n"
  start=$(date +%s%N)
  git push -q slipway main 2>"$work/push.err" || { cat "$work/push.err" >&2; exit 1; }
  times+=("$(( ($(date +%s%N) - start) / 1000000 ))")
done
touch "$work/stop"
wait "$load"
load=""
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "deploys: $DEPLOYS, push (build + rollout) median ${median} ms, max $(echo "$sorted" | tail -1) ms"
echo "load: $(cat "$work/load.json")"
