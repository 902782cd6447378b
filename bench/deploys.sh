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
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-5}
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
"$BIN" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 --stop-dynos-on-exit true \
  >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done

new_app() { # NAME APP_JSON (or empty)
  mkdir -p "$work/$1" && cp -a examples/hello/. "$work/$1/"
  [ -n "$2" ] && echo "$2" >"$work/$1/app.json"
  (cd "$work/$1" && git init -q -b main && git add -A && git_q commit -qm bench &&
    "$BIN" apps:create "$1" >/dev/null)
}

# push APP N: a code change pushed; prints milliseconds until the push's deploy printed
# "Deploy #N passed" (the push returns once it has: without a watch window it waits for all).
push() {
  local start; start=$(now_ms)
  sed -i "s/Hello from slipway[^\"]*\"/Hello from slipway $2\"/" "$work/$1/server.py"
  (cd "$work/$1" && git add -A && git_q commit -qm "change $2" &&
    git push slipway main >"$work/push.log" 2>&1) || { cat "$work/push.log" >&2; exit 1; }
  grep -q "Deploy #[0-9]* passed" "$work/push.log" || { cat "$work/push.log" >&2; exit 1; }
  echo $(( $(now_ms) - start ))
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

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
