#!/usr/bin/env bash
# Deploy benchmark: time from `git push` until the deploy runner says "deploy passed" for a
# small app (examples/hello) whose app.json has a smoke test (`curl -fsS $URL | grep Hello`)
# and no watch window (`"watch": 0`), and, for comparison in the same run, the same push of an
# app without app.json (setup, deploy, report only). RUNS redeploys of each, after a first
# deploy that is not timed.
#
#   bench/deploys.sh                          # release build, 5 runs
#   RUNS=3 BIN=target/debug/slipway bench/deploys.sh
#
# Needs git, python3, curl (and root + runc for containers; plain processes otherwise).
# Prints a Markdown table of medians.
RUNS=${RUNS:-5}
. "$(dirname "$0")/lib.sh"
start_server "$work"

new_app() { # NAME APP_JSON (or empty)
  mkdir -p "$work/$1"
  [ -n "$2" ] && echo "$2" >"$work/$1/app.json"
  new_repo examples/hello "$work/$1"
  (cd "$work/$1" && "$BIN" apps:create "$1" >/dev/null)
}

# push APP N: a code change pushed; prints milliseconds until the push's deploy printed
# "Deploy #N passed" (the push returns once it has: without a watch window it waits for all).
push() {
  local start; start=$(now_ms)
  sed -i "s/Hello from slipway[^\"]*\"/Hello from slipway $2\"/" "$work/$1/server.py"
  (cd "$work/$1" && git add -A && git_q commit -qm "change $2" &&
    git push slipway main >"$work/push.log" 2>&1) || fail_with "$work/push.log"
  grep -q "Deploy #[0-9]* passed" "$work/push.log" || fail_with "$work/push.log"
  echo $(( $(now_ms) - start ))
}

new_app smoked '{"slipway": {"smoke": "curl -fsS $URL | grep Hello", "watch": 0}}'
new_app plain '{"slipway": {"watch": 0}}'
push smoked 0 >/dev/null
push plain 0 >/dev/null
smoked=(); plain=()
for i in $(seq "$RUNS"); do
  smoked+=("$(push smoked "$i")")
  plain+=("$(push plain "$i")")
done
echo "| deploy (median of $RUNS) | push to \"deploy passed\" |"
echo "|---|---|"
echo "| hello + smoke test (curl \$URL), no watch window | $(median "${smoked[@]}") ms (${smoked[*]}) |"
echo "| hello, no checks, no watch window | $(median "${plain[@]}") ms (${plain[*]}) |"
