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
DEPLOYS=${DEPLOYS:-20}
KEEPALIVE=${KEEPALIVE:-4}
FRESH=${FRESH:-2}
. "$(dirname "$0")/lib.sh"
# The load generator stops (and reports) before the server does.
on_exit '[ -n "${load:-}" ] && touch "$work/stop" && wait "$load" 2>/dev/null'
start_server "$work"

"$BIN" apps:create zdbench --no-remote >/dev/null
new_repo bench/zero-downtime-app "$work/app"
cd "$work/app"
commit() { git add -A && git_q commit -qm "$1"; }
"$BIN" git:remote -a zdbench >/dev/null
git push -q slipway main 2>/dev/null
for _ in $(seq 600); do
  curl -fs -H 'Host: zdbench.localhost' "http://127.0.0.1:$router/" | grep -q 'version 1' && break
  sleep 0.1
done

python3 "$root/bench/loadgen.py" --port "$router" --host zdbench.localhost \
  --keepalive "$KEEPALIVE" --fresh "$FRESH" --stop-file "$work/stop" >"$work/load.json" 2>"$work/load.err" &
load=$!
for _ in $(seq 300); do grep -qx ready "$work/load.err" 2>/dev/null && break; sleep 0.1; done

times=()
for n in $(seq 2 $((DEPLOYS + 1))); do
  echo "$n" >VERSION
  commit "v$n"
  start=$(date +%s%N)
  git push -q slipway main 2>"$work/push.err" || fail_with "$work/push.err"
  times+=("$(( ($(date +%s%N) - start) / 1000000 ))")
done
touch "$work/stop"
wait "$load"
load=""
echo "deploys: $DEPLOYS, push (build + rollout) median $(median "${times[@]}") ms, max $(printf '%s\n' "${times[@]}" | sort -n | tail -1) ms"
echo "load: $(cat "$work/load.json")"
