#!/usr/bin/env bash
# Dyno start-up benchmark: time from "start a dyno" (ps:scale web=0 -> web=1) to the first
# request the router serves from it, under the OCI runtime (runc) and as a plain process, in
# the same run; then the time to scale web from 0 to 10 (all 10 up). The app is
# examples/hello (python3, one file). Also the raw cost of the sandbox alone: hyperfine of
# `runc run` of `/bin/true` in a dyno-like bundle against `sh -c true`.
#
#   bench/dyno.sh                   # 10 starts per runtime
#   RUNS=20 bench/dyno.sh
#   BIN=target/debug/slipway bench/dyno.sh    # skip the release build
#
# Needs root (runc), runc, git, python3, hyperfine (optional). Prints a Markdown table.
RUNS=${RUNS:-10}
. "$(dirname "$0")/lib.sh"

# run_server NAME RUNTIME: starts a server, deploys examples/hello as app NAME.
run_server() {
  local name=$1 runtime=$2 dir=$work/$1
  start_server "$dir" --dyno-runtime "$runtime"
  grep -q "dyno runtime: $runtime" "$dir/server.out" || fail_with "$dir/server.out"
  echo "$router" >"$dir/router_port"
  "$BIN" apps:create "$name" --no-remote >/dev/null
  new_repo examples/hello "$dir/app"
  (cd "$dir/app" && "$BIN" git:remote -a "$name" >/dev/null && git push -q slipway main 2>/dev/null)
  wait_up "$name" "$router"
}

wait_up() { # APP ROUTER_PORT: until the router gets a 200 from the app
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $1.localhost" "http://127.0.0.1:$2/")" = 200 ]; do
    sleep 0.005
  done
}

wait_down() { # APP ROUTER_PORT: until no web dyno serves
  while [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $1.localhost" "http://127.0.0.1:$2/")" = 200 ]; do
    sleep 0.02
  done
}

# measure NAME: median and mean ms of RUNS starts of web.1, then 0 -> 10.
measure() {
  local name=$1 dir=$work/$1 router
  router=$(cat "$dir/router_port")
  export SLIPWAY_DATA_DIR=$dir/data HOME=$dir/home
  local times=()
  for _ in $(seq "$RUNS"); do
    "$BIN" ps:scale web=0 -a "$name" >/dev/null
    wait_down "$name" "$router"
    local t0; t0=$(now_ms)
    "$BIN" ps:scale web=1 -a "$name" >/dev/null
    wait_up "$name" "$router"
    times+=($(( $(now_ms) - t0 )))
  done
  "$BIN" ps:scale web=0 -a "$name" >/dev/null
  wait_down "$name" "$router"
  local t0; t0=$(now_ms)
  "$BIN" ps:scale web=10 -a "$name" >/dev/null
  until [ "$("$BIN" ps -a "$name" | grep -c ': up')" = 10 ]; do sleep 0.01; done
  local scale=$(( $(now_ms) - t0 ))
  "$BIN" ps:scale web=0 -a "$name" >/dev/null
  local sorted; sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  local median; median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  local mean; mean=$(echo "$sorted" | awk '{s+=$1} END {printf "%.0f", s/NR}')
  echo "| $2 | $median | $mean | $(echo "$sorted" | head -1) | $(echo "$sorted" | tail -1) | $scale |"
}

run_server oci-app oci
run_server proc-app process
echo "| runtime | start -> first request, median ms | mean | min | max | scale web 0 -> 10 up, ms |"
echo "|---|---|---|---|---|---|"
measure oci-app "runc (OCI)"
measure proc-app "process"

if command -v hyperfine >/dev/null; then
  # The sandbox alone: a dyno-like bundle (read-only /usr, tmpfs /tmp, namespaces, cgroup).
  b=$work/bundle && mkdir -p "$b/rootfs"/{usr,proc,dev,tmp} && cd "$b"
  for d in bin lib lib64 sbin; do [ -L /$d ] && ln -s "$(readlink /$d)" "rootfs/$d"; done
  runc spec && python3 - <<'EOF'
import json
c = json.load(open("config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
c["process"]["user"] = {"uid": 65534, "gid": 65534}
c["root"] = {"path": "rootfs", "readonly": True}
c["mounts"] = [m for m in c["mounts"] if m["destination"] in ("/proc", "/dev")] + [
    {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}]
c["linux"]["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
c["linux"]["cgroupsPath"] = "slipway/bench"
c["linux"]["resources"] = {"memory": {"limit": 1 << 30}, "pids": {"limit": 256}}
json.dump(c, open("config.json", "w"))
EOF
  echo
  hyperfine -N --warmup 3 --runs 30 --export-markdown "$work/hf.md" \
    -n "runc run /bin/true" "runc --root $work/runc-state run --bundle $b bench" \
    -n "sh -c true" "sh -c true" >&2
  cat "$work/hf.md"
fi
