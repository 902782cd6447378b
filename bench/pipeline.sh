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
server=""
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
git_q() { git -c user.name=bench -c user.email=bench@localhost "$@"; }

mkdir -p "$work/home"
export HOME=$work/home SLIPWAY_DATA_DIR=$work/data
"$BIN" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done
router=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$work/server.out" | grep -o '[0-9]*$')

serves() { # APP TEXT: until the router serves TEXT from APP
  until curl -s -H "Host: $1.localhost" "http://127.0.0.1:$router/" | grep -q "$2"; do sleep 0.01; done
}

app=$work/app
mkdir -p "$app" && cp -a examples/hello/. "$app/"
cat >"$app/app.json" <<'JSON'
{"environments": {"test": {"scripts": {"test": "test -f server.py && python3 -m py_compile server.py"}}}}
JSON
cd "$app"
git init -q -b main && git add -A && git_q commit -qm bench
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
  git push -q pipeline main >"$work/push.log" 2>&1 || { cat "$work/push.log" >&2; exit 1; }
  serves bench-staging "Bench run $i"
  pushes+=($(( $(now_ms) - start )))
  start=$(now_ms)
  "$BIN" pipelines:promote bench --from staging >"$work/promote.log" 2>&1 || { cat "$work/promote.log" >&2; exit 1; }
  serves bench-production "Bench run $i"
  promotions+=($(( $(now_ms) - start )))
done

echo "| measure | runs (ms) |"
echo "|---|---|"
echo "| push -> tested build live on the automatic stage | ${pushes[*]} |"
echo "| promote -> live on the next stage (no build) | ${promotions[*]} |"
