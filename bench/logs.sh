#!/usr/bin/env bash
# Log pipeline benchmark, through the real server and real dynos:
#  1. lines/s accepted into one app's stream from N web dynos writing as fast as they can
#     (MODE=flood; measured from the stream's sequence numbers over DURATION seconds);
#  2. the delay from a dyno's write to a `slipway logs --tail` client, p50/p99 (MODE=paced,
#     RATE lines/s per dyno; each line carries the time it was written).
#
#   bench/logs.sh                                   # N=4 dynos, 10 s each phase
#   N=2 DURATION=5 RATE=500 bench/logs.sh
#   BIN=target/debug/slipway bench/logs.sh          # skip the release build
#
# Needs git and python3. Prints a Markdown table.
N=${N:-4}
DURATION=${DURATION:-10}
RATE=${RATE:-500}
. "$(dirname "$0")/lib.sh"
start_server "$work"

"$BIN" apps:create logbench --no-remote >/dev/null
new_repo bench/logs-app "$work/app"
(cd "$work/app" && "$BIN" git:remote -a logbench >/dev/null && git push -q slipway main 2>/dev/null)
"$BIN" config:set -a logbench MODE=flood >/dev/null
"$BIN" ps:scale -a logbench web="$N" >/dev/null

last_seq() { "$BIN" logs -a logbench -n 1 --json | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["seq"])'; }
# Wait until all N dynos are up (then they write).
up_count() { "$BIN" ps -a logbench --json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for d in json.load(sys.stdin) if d.get("state") == "up"))'; }
for _ in $(seq 300); do [ "$(up_count)" -ge "$N" ] && break; sleep 0.2; done
sleep 1
s0=$(last_seq); t0=$(date +%s%N)
sleep "$DURATION"
s1=$(last_seq); t1=$(date +%s%N)
rate=$(python3 -c "print(round(($s1 - $s0) / (($t1 - $t0) / 1e9)))")
dropped=$("$BIN" logs -a logbench -n 1500 --json | python3 -c '
import json, re, sys
n = 0
for l in sys.stdin:
    m = re.search(r"Error L10 .*?: (\d+) messages", json.loads(l)["message"])
    if m: n += int(m.group(1))
print(n)')

# Phase 2: paced writers, one tail client.
"$BIN" config:set -a logbench MODE=paced RATE="$RATE" >/dev/null
# The flood dynos stop once the paced ones are up; measure after.
sleep 1
for _ in $(seq 100); do
  "$BIN" ps -a logbench --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if len(d) == $N else 1)" && break
  sleep 0.2
done
sleep 2
delays=$(timeout $((DURATION + 30)) "$BIN" logs -a logbench --tail --json -n 1 2>/dev/null | python3 -c "
import json, re, sys, time
# Lines written in the first second are left out: they waited for this reader to start.
warm = time.time_ns() + 1_000_000_000
end = time.time() + 1 + $DURATION
d = []
for line in sys.stdin:
    now = time.time_ns()
    m = re.search(r' paced t=(\d+) ', json.loads(line).get('message', ''))
    if m and int(m.group(1)) > warm:
        d.append((now - int(m.group(1))) / 1e6)
    if time.time() > end:
        break
if '${VERBOSE:-}':
    print('first 10:', [round(x) for x in d[:10]], 'max at', d.index(max(d)), 'of', len(d), file=sys.stderr)
d.sort()
if not d:
    print('0 0 0'); sys.exit()
print(len(d), round(d[len(d)//2], 2), round(d[min(len(d)-1, int(len(d)*0.99))], 2))
" || true)
read -r count p50 p99 <<<"$delays"

echo "| measure | value |"
echo "|---|---|"
echo "| lines/s accepted into one app from $N dynos writing flat out ($DURATION s) | $rate |"
echo "| L10 drop notices counted in the kept history during the flood (lines) | $dropped |"
echo "| tail delay p50 ($count lines at $RATE lines/s x $N dynos) | $p50 ms |"
echo "| tail delay p99 | $p99 ms |"
echo
echo "binary: $BIN; runtime: $(grep -o 'dyno runtime: [a-z]*' "$work/server.out" || echo '?'); $(nproc) cores"
