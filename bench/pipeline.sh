#!/usr/bin/env bash
# Pipeline benchmark: for the sample app (examples/hello) with a test script (`app.json`
# environments.test.scripts.test, a one-line shell test run in a one-off dyno), the time
#   1. from `git push pipeline main` until the automatic stage (staging) serves the new code
#      (build + test in a one-off dyno + deploy + dynos up),
#   2. from `slipway pipelines:promote --from staging` until production serves it (no build),
# over RUNS code changes.
#
#   bench/pipeline.sh                          # 3 runs, release build
#   RUNS=5 BIN=target/debug/slipway bench/pipeline.sh
#
# Needs root (runc), git, python3, curl. Prints a Markdown table.
RUNS=${RUNS:-3}
. "$(dirname "$0")/lib.sh"
start_server "$work"

app=$work/app
mkdir -p "$app"
cat >"$app/app.json" <<'JSON'
{"environments": {"test": {"scripts": {"test": "test -f server.py && python3 -m py_compile server.py"}}}}
JSON
new_repo examples/hello "$app"
cd "$app"
"$BIN" apps:create bench-staging --no-remote >/dev/null
"$BIN" apps:create bench-production --no-remote >/dev/null
"$BIN" pipelines:create bench >/dev/null 2>&1
"$BIN" pipelines:stages:add bench staging --automatic main >/dev/null 2>&1
"$BIN" pipelines:stages:add bench production --manual >/dev/null 2>&1
"$BIN" pipelines:targets:add bench staging bench-staging >/dev/null
"$BIN" pipelines:targets:add bench production bench-production >/dev/null

pushes=()
promotions=()
for i in $(seq "$RUNS"); do
  sed -i "s/^GREETING = .*/GREETING = os.environ.get(\"GREETING\", \"Bench run $i\")/" server.py
  git add -A && git_q commit -qm "run $i"
  start=$(now_ms)
  logged "$work/push.log" git push -q pipeline main
  serves bench-staging "Bench run $i"
  pushes+=($(( $(now_ms) - start )))
  start=$(now_ms)
  logged "$work/promote.log" "$BIN" pipelines:promote bench --from staging
  serves bench-production "Bench run $i"
  promotions+=($(( $(now_ms) - start )))
done

echo "| measure | runs (ms) |"
echo "|---|---|"
echo "| push -> tested build live on the automatic stage | ${pushes[*]} |"
echo "| promote -> live on the next stage (no build) | ${promotions[*]} |"
