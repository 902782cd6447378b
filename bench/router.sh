#!/usr/bin/env bash
# Router benchmark: wrk against the dyno directly, nginx as a reverse proxy to it and slipway's
# router to it, in three modes, all on this machine in one run:
#   keep-alive   HTTP/1.1, wrk's connections kept open
#   new conn     `Connection: close`: a new TCP connection per request
#   TLS          HTTPS keep-alive, nginx and slipway terminating TLS with the same certificate
#                and proxying plain HTTP to the same dyno
# nginx gets as many worker processes as slipway gets router workers (WORKERS, default: the
# number of cores). The dyno is nginx returning a fixed body (bench/router-app), deployed with
# git push like any app.
#
#   bench/router.sh            # 10 s per target, 64 connections, 2 wrk threads
#   DURATION=30s CONNECTIONS=128 WORKERS=2 bench/router.sh
#   BIN=target/release/slipway bench/router.sh    # skip the build
#
# Needs: cargo, git, nginx, wrk, openssl, curl (apt-get install -y nginx-light wrk openssl).
# Results go to stdout as one Markdown table; docs/benchmarks.md records the latest. Exits
# non-zero when a step fails or a proxy answered anything but 2xx.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
for tool in nginx wrk git openssl curl; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "missing $tool: apt-get install -y nginx-light wrk git openssl curl" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin slipway >&2
  BIN=$root/target/release/slipway
fi
bin=$(realpath "$BIN")
work=$(mktemp -d)
# Builds and dynos run as other users in directories beside the data directory.
chmod 711 "$work"
export SLIPWAY_DATA_DIR=$work/data HOME=$work/home
mkdir -p "$HOME"
cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "bench/router.sh: $*" >&2; [ -f "$work/server.err" ] && tail -20 "$work/server.err" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One self-signed certificate for both proxies. wrk sends the URL's host as SNI, and
# `localhost` resolves to 127.0.0.1 without touching /etc/hosts.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,DNS:bench.localhost' \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null || fail "openssl could not make a certificate"

tls_port=$(free_port)
"$bin" server --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 --tls-listen "127.0.0.1:$tls_port" \
  --router-workers "$WORKERS" --stop-dynos-on-exit true >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 300); do grep -qx ready "$work/server.out" 2>/dev/null && break; kill -0 $server 2>/dev/null || fail "the server exited"; sleep 0.1; done
router_port=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$work/server.out" | grep -o '[0-9]*$') || fail "the server did not start"

"$bin" apps:create bench --no-remote >/dev/null 2>&1 || fail "apps:create failed"
"$bin" certs:add "$work/cert.pem" "$work/key.pem" -a bench >/dev/null || fail "certs:add failed"
mkdir "$work/app" && cp bench/router-app/* "$work/app/"
(cd "$work/app" && git init -q -b main && git add -A &&
  git -c user.name=bench -c user.email=bench@localhost commit -qm bench &&
  "$bin" git:remote -a bench >/dev/null && git push -q slipway main 2>"$work/push.err") ||
  fail "git push failed: $(tail -20 "$work/push.err")"
dyno_port=""
for _ in $(seq 300); do
  dyno_port=$("$bin" logs -a bench -n 50 | grep -o 'listening on port [0-9]*' | tail -1 | grep -o '[0-9]*$' || true)
  [ -n "$dyno_port" ] && curl -fs -H 'Host: bench.localhost' "http://127.0.0.1:$router_port/" >/dev/null && break
  sleep 0.1
done
[ -n "$dyno_port" ] || fail "the bench dyno did not come up: $("$bin" logs -a bench -n 300 2>&1 | grep -v "heroku.router" | tail -15)"
curl -fsk -H 'Host: bench.localhost' "https://localhost:$tls_port/" >/dev/null || fail "slipway's HTTPS listener does not answer"

# nginx as a reverse proxy with the same job as the router: keep-alive upstream, forwarding
# headers, one access log line per request; plain HTTP and TLS with the same certificate.
nginx_port=$(free_port)
nginx_tls_port=$(free_port)
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes $WORKERS;
pid tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log tmp/access.log combined buffer=64k;
    client_body_temp_path tmp;
    proxy_temp_path tmp;
    fastcgi_temp_path tmp;
    uwsgi_temp_path tmp;
    scgi_temp_path tmp;
    upstream dyno { server 127.0.0.1:$dyno_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port;
        listen 127.0.0.1:$nginx_tls_port ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        location / {
            proxy_pass http://dyno;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
CONF
/usr/sbin/nginx -p "$work/nginx" -c nginx.conf -e stderr &
nginx_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$nginx_port/" >/dev/null && break; sleep 0.1; done
curl -fsk -H 'Host: bench.localhost' "https://localhost:$nginx_tls_port/" >/dev/null || fail "nginx does not answer over TLS"

failed=0
run() { # mode target url [wrk args...]
  local mode=$1 target=$2 url=$3 out
  shift 3
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.localhost' "$@" "$url") || fail "wrk failed against $target ($mode)"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  [ -n "$rps" ] && [ -n "$p99" ] || fail "no figures from wrk against $target ($mode): $out"
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  grep -q 'Non-2xx' <<<"$out" && failed=1
  printf '| %s | %s | %s | %s | %s | %s |\n' "$mode" "$target" "$rps" "$p50" "$p99" "${errors:-none}"
}
nginx_version=$(/usr/sbin/nginx -v 2>&1 | grep -o '[0-9.]*$')
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cores, $WORKERS nginx workers and $WORKERS slipway router workers, $(date -u +%Y-%m-%d), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| mode | target | requests/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
run "keep-alive" "dyno directly (no proxy)" "http://127.0.0.1:$dyno_port/"
run "keep-alive" "nginx $nginx_version" "http://127.0.0.1:$nginx_port/"
run "keep-alive" "slipway router" "http://127.0.0.1:$router_port/"
run "new conn" "dyno directly (no proxy)" "http://127.0.0.1:$dyno_port/" -H 'Connection: close'
run "new conn" "nginx $nginx_version" "http://127.0.0.1:$nginx_port/" -H 'Connection: close'
run "new conn" "slipway router" "http://127.0.0.1:$router_port/" -H 'Connection: close'
run "TLS" "nginx $nginx_version" "https://localhost:$nginx_tls_port/"
run "TLS" "slipway router" "https://localhost:$tls_port/"
[ "$failed" = 0 ] || fail "a target answered with non-2xx responses"
