# Shared set-up of the bench scripts (not bench/router.sh, for now).
# A script sets its own defaults (RUNS=...) and then sources this file:
#
#   . "$(dirname "$0")/lib.sh"
#
# which turns on `set -euo pipefail`, changes to the repository root ($root), builds the release
# binary unless BIN is given (BIN is made absolute), and makes a work directory $work (mode 711,
# so dynos running as other users can reach into it) that is removed on exit, after every
# process started through this file has been stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin slipway >&2
  BIN=$root/target/release/slipway
fi
BIN=$(realpath "$BIN")
work=$(mktemp -d)
chmod 711 "$work"

# Clean-up on exit: first the commands given to on_exit (in order), then every process in
# bench_pids (TERM, then waited for), then the work directory.
bench_on_exit=()
bench_pids=()
on_exit() { bench_on_exit+=("$1"); }
bench_cleanup() {
  local cmd pid
  for cmd in "${bench_on_exit[@]}"; do eval "$cmd" || true; done
  for pid in "${bench_pids[@]}"; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap bench_cleanup EXIT

# fail MESSAGE: says what failed and stops. fail_with FILE...: prints the files (a command's
# output) and stops. logged FILE CMD...: runs CMD with its output in FILE, fail_with FILE if it
# fails.
fail() { echo "bench: $*" >&2; exit 1; }
fail_with() { cat "$@" >&2; exit 1; }
logged() { local log=$1; shift; "$@" >"$log" 2>&1 || fail_with "$log"; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
git_q() { git -c user.name=bench -c user.email=bench@localhost "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server DIR [ARGS...]: `slipway server` with its data in DIR/data and HOME=DIR/home, the
# API and the router on port 0, its dynos stopped when it stops (dynos otherwise outlive it: a
# script's dynos would keep running after it), ARGS added. Exports SLIPWAY_DATA_DIR and HOME for
# the CLI calls that follow, waits until the server prints "ready" (fails with its output after
# 30 s), sets $router to the router's port and stops the server on exit. Output: DIR/server.out
# and DIR/server.err.
start_server() {
  local dir=$1; shift
  mkdir -p "$dir/home"
  export HOME=$dir/home SLIPWAY_DATA_DIR=$dir/data
  "$BIN" server --data-dir "$dir/data" --api-listen 127.0.0.1:0 --router-listen 127.0.0.1:0 \
    --stop-dynos-on-exit true "$@" >"$dir/server.out" 2>"$dir/server.err" &
  bench_pids+=($!)
  for _ in $(seq 300); do grep -qx ready "$dir/server.out" 2>/dev/null && break; sleep 0.1; done
  grep -qx ready "$dir/server.out" || fail_with "$dir/server.out" "$dir/server.err"
  router=$(grep -o 'router listening on http://[0-9.]*:[0-9]*' "$dir/server.out" | grep -o '[0-9]*$')
}

# new_repo SRC DIR: a git repository (branch main, one commit) at DIR with SRC's files.
new_repo() {
  mkdir -p "$2" && cp -a "$1/." "$2/"
  (cd "$2" && git init -q -b main && git add -A && git_q commit -qm bench)
}

# start_sshd_hosts NAME...: one "host" a NAME, as in crates/slipway/tests/hosts.rs: an sshd on a
# free loopback port with its own host key ($work/host-NAME/hostkey), HOME $work/host-NAME/home,
# root logins with the key $work/client_key. Sets ports (in NAME order); stopped on exit.
# fp NAME prints the host key's fingerprint (for --accept-host-key).
start_sshd_hosts() {
  local h d port
  ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
  mkdir -p /run/sshd
  ports=()
  for h in "$@"; do
    d=$work/host-$h
    mkdir -p "$d/home"
    ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
    cp "$work/client_key.pub" "$d/authorized_keys"
    port=$(free_port)
    cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/hostkey
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin yes
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
SetEnv HOME=$d/home
MaxSessions 50
MaxStartups 50
EOF
    /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
    bench_pids+=($!)
    ports+=("$port")
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail_with "$d/sshd.log"
  done
}
fp() { ssh-keygen -lf "$work/host-$1/hostkey.pub" | awk '{print $2}'; }

# serves APP TEXT: waits until the router ($router) serves TEXT from APP.
serves() {
  until curl -s -H "Host: $1.localhost" "http://127.0.0.1:$router/" | grep -q "$2"; do sleep 0.01; done
}
