#!/usr/bin/env bash
# Router benchmark: wrk against (1) the dyno directly, (2) nginx as a reverse proxy to it,
# (3) slipway's router to it, all on this machine in one run. The dyno is nginx returning a
# fixed body (bench/router-app), deployed with git push like any app.
#
#   bench/router.sh            # 10 s per target, 64 connections, 2 wrk threads
#   DURATION=30s CONNECTIONS=128 bench/router.sh
#
# Needs: cargo, git, nginx, wrk (apt-get install -y nginx-light wrk). Results go to stdout as a
# Markdown table; docs/benchmarks.md records the latest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
for tool in nginx wrk git; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "missing $tool: apt-get install -y nginx-light wrk git" >&2; exit 1; }
done
cargo build --release --locked --bin slipway >&2
bin=$root/target/release/slipway
work=$(mktemp -d)
export SLIPWAY_DATA_DIR=$work/data HOME=$work/home
mkdir -p "$HOME"
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; sleep 0.1; done
router_port=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$work/server.out" | grep -o '[0-9]*$')

"$bin" apps:create bench --no-remote >/dev/null 2>&1
mkdir "$work/app" && cp bench/router-app/* "$work/app/"
(cd "$work/app" && git init -q -b main && git add -A &&
  git -c user.name=bench -c user.email=bench@localhost commit -qm bench &&
  "$bin" git:remote -a bench >/dev/null && git push -q slipway main 2>/dev/null)
dyno_port=""
for _ in $(seq 300); do
  dyno_port=$("$bin" logs -a bench -n 50 | grep -o 'listening on port [0-9]*' | tail -1 | grep -o '[0-9]*$' || true)
  [ -n "$dyno_port" ] && curl -fs -H 'Host: bench.localhost' "http://127.0.0.1:$router_port/" >/dev/null && break
  sleep 0.1
done
[ -n "$dyno_port" ] || { echo "the bench dyno did not come up" >&2; exit 1; }

# nginx as a reverse proxy with the same job as the router: keep-alive upstream, forwarding
# headers, one access log line per request.
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log tmp/access.log combined buffer=64k;
    client_body_temp_path tmp;
    proxy_temp_path tmp;
    upstream dyno { server 127.0.0.1:$dyno_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://dyno;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto http;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
CONF
/usr/sbin/nginx -p "$work/nginx" -c nginx.conf -e stderr &
nginx_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$nginx_port/" >/dev/null && break; sleep 0.1; done

run() { # name port
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.localhost' "http://127.0.0.1:$2/")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "${errors:-none}"
}
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "| target | requests/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|"
run "dyno directly (no proxy)" "$dyno_port"
run "nginx $(/usr/sbin/nginx -v 2>&1 | grep -o '[0-9.]*$') reverse proxy" "$nginx_port"
run "slipway router" "$router_port"
