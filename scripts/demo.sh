#!/usr/bin/env bash
# Builds slipway, starts it with its embedded defaults (SQLite state in a data directory, API
# and router on loopback), deploys examples/hello with `git push`, and shows it being served.
# The server keeps running in the foreground; Ctrl-C stops it (and its dynos).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cargo build --release --locked --bin slipway
bin=$root/target/release/slipway
export SLIPWAY_DATA_DIR=${SLIPWAY_DATA_DIR:-$root/.slipway-data}
mkdir -p "$SLIPWAY_DATA_DIR"
log=$SLIPWAY_DATA_DIR/server.log

"$bin" server --api-listen "${SLIPWAY_API_LISTEN:-127.0.0.1:0}" --router-listen "${SLIPWAY_ROUTER_LISTEN:-127.0.0.1:0}" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 300); do
  grep -qx ready "$log" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
grep -v '^\S*\s*INFO' "$log" | grep -E 'listening|token|data directory' || true
router_port=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$log" | grep -o '[0-9]*$')

work=$(mktemp -d)
cp examples/hello/Procfile examples/hello/server.py "$work/"
cd "$work"
git init -q -b main
git add -A
git -c user.name=demo -c user.email=demo@localhost commit -qm "hello, slipway"
echo; echo "\$ slipway apps:create hello     # in the app's repository: adds the slipway git remote"
"$bin" apps:create hello || "$bin" git:remote -a hello
echo; echo "\$ git push slipway main"
git push --force slipway main

echo; echo "\$ curl http://hello.localhost:$router_port/"
for _ in $(seq 100); do
  curl -fsS -H 'Host: hello.localhost' "http://127.0.0.1:$router_port/" && break
  sleep 0.1
done
echo; echo "\$ slipway releases -a hello"; "$bin" releases -a hello
echo; echo "\$ slipway logs -a hello -n 15"; "$bin" logs -a hello -n 15
cat <<MSG

slipway is running (pid $server). In another shell:
  export SLIPWAY_DATA_DIR=$SLIPWAY_DATA_DIR
  $bin logs -a hello --tail
  curl http://hello.localhost:$router_port/
Press Ctrl-C to stop it.
MSG
wait $server
