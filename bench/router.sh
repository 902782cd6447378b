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
# On a small shared machine one 10 s sample swings by 20% either way, so each proxy is
# measured ROUNDS times, nginx and slipway taking turns (nginx, slipway, nginx, slipway...),
# and each row gives the median of its rounds (requests/s, p50 and p99 each the median of the
# rounds' own) and every round's requests/s.
#
#   bench/router.sh            # 10 s per sample, 3 rounds, 64 connections, 2 wrk threads
#   ROUNDS=5 DURATION=30s CONNECTIONS=128 WORKERS=2 bench/router.sh
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
ROUNDS=${ROUNDS:-3}
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
# One wrk sample into $last: "requests/s p50_us p99_us errors" (errors with spaces as _).
sample() { # target url [wrk args...]
  local target=$1 url=$2 out
  shift 2
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.localhost' "$@" "$url") || fail "wrk failed against $target"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  [ -n "$rps" ] && [ -n "$p99" ] || fail "no figures from wrk against $target: $out"
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ' | tr -s ' ' '_')
  grep -q 'Non-2xx' <<<"$out" && failed=1
  last="$rps $(to_us "$p50") $(to_us "$p99") ${errors:-none}"
}
# wrk's latencies (123.00us, 1.23ms, 1.23s) in microseconds.
to_us() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'
}
# The median of the numbers on stdin.
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ms() { awk -v us="$1" 'BEGIN { if (us >= 1000) printf "%.2fms", us / 1000; else printf "%.0fus", us }'; }
# One table row from a target's samples (one per line, as `sample` prints them).
row() { # mode target samples
  local mode=$1 target=$2 samples=$3
  local rps p50 p99 rounds errors
  rps=$(cut -d' ' -f1 <<<"$samples" | median)
  p50=$(cut -d' ' -f2 <<<"$samples" | median)
  p99=$(cut -d' ' -f3 <<<"$samples" | median)
  rounds=$(cut -d' ' -f1 <<<"$samples" | awk '{ printf "%s%d", (NR > 1 ? ", " : ""), $1 }')
  errors=$(cut -d' ' -f4 <<<"$samples" | sort -u | { grep -v '^none$' || true; } | tr '_' ' ' | tr '\n' ' ')
  printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$mode" "$target" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$rounds" "${errors:-none}"
}
# The dyno alone once, then nginx and slipway in turns, ROUNDS samples each.
mode() { # mode dyno_url nginx_url slipway_url [wrk args...]
  local mode=$1 dyno_url=$2 nginx_url=$3 slipway_url=$4 nginx_samples="" slipway_samples=""
  shift 4
  if [ -n "$dyno_url" ]; then
    sample dyno "$dyno_url" "$@"
    row "$mode" "dyno directly (no proxy)" "$last"
  fi
  for _ in $(seq "$ROUNDS"); do
    sample nginx "$nginx_url" "$@"
    nginx_samples+="$last"$'\n'
    sample slipway "$slipway_url" "$@"
    slipway_samples+="$last"$'\n'
  done
  row "$mode" "nginx $nginx_version" "${nginx_samples%$'\n'}"
  row "$mode" "slipway router" "${slipway_samples%$'\n'}"
  local ratio
  ratio=$(awk -v a="$(cut -d' ' -f1 <<<"${slipway_samples%$'\n'}" | median)" -v b="$(cut -d' ' -f1 <<<"${nginx_samples%$'\n'}" | median)" 'BEGIN { printf "%.0f", 100 * a / b }')
  summary+="$mode: slipway ${ratio}% of nginx's requests/s; "
}
nginx_version=$(/usr/sbin/nginx -v 2>&1 | grep -o '[0-9.]*$')
summary=""
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $(nproc) cores, $WORKERS nginx workers and $WORKERS slipway router workers, $(date -u +%Y-%m-%d), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| mode | target | requests/s (median) | p50 | p99 | each round's requests/s | errors |"
echo "|---|---|---|---|---|---|---|"
mode "keep-alive" "http://127.0.0.1:$dyno_port/" "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$router_port/"
mode "new conn" "http://127.0.0.1:$dyno_port/" "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$router_port/" -H 'Connection: close'
mode "TLS" "" "https://localhost:$nginx_tls_port/" "https://localhost:$tls_port/"
echo
echo "${summary%; }"
[ "$failed" = 0 ] || fail "a target answered with non-2xx responses"
