#!/usr/bin/env bash
# Reconciliation pass benchmark: how long one pass over every app takes (GET /health
# `reconcile.last_pass_ms`: the store reads and the runtime's comparison, not the rollouts a
# correction starts), with APPS apps of examples/hello at web=2 each, a pass every second; and
# how long after a dyno is lost behind slipway's back (its monitor stopped, its container
# `runc kill`ed and `runc delete`d) the app's log says `Reconciling:` and the dyno is up again.
#
#   bench/reconcile.sh                         # 20 apps, oci runtime
#   APPS=50 RUNTIME=process bench/reconcile.sh
#   BIN=target/debug/slipway bench/reconcile.sh    # skip the release build
#
# Needs root (runc) for RUNTIME=oci, git, python3, curl. Prints a Markdown table.
APPS=${APPS:-20}
RUNTIME=${RUNTIME:-oci}
SAMPLES=${SAMPLES:-10}
. "$(dirname "$0")/lib.sh"

dir=$work/server
start_server "$dir" --dyno-runtime "$RUNTIME" --reconcile-interval 1
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_url"].rsplit(":",1)[1])' "$dir/data/server.json")
dynos=$dir/data-dynos
health() { curl -s "http://127.0.0.1:$api/health"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)["reconcile"]; print(d[sys.argv[1]])' "$1"; }

new_repo examples/hello "$work/app"
for i in $(seq "$APPS"); do
  name=rec$i
  "$BIN" apps:create "$name" --no-remote >/dev/null
  (cd "$work/app" && git remote remove slipway 2>/dev/null || true
   "$BIN" git:remote -a "$name" >/dev/null && git push -q -f slipway main 2>/dev/null)
  "$BIN" ps:scale web=2 -a "$name" >/dev/null
done
for i in $(seq "$APPS"); do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: rec$i.localhost" "http://127.0.0.1:$router/")" = 200 ]; do sleep 0.05; done
done

# Pass durations: one sample per pass.
samples=()
last=$(health | field passes)
while [ "${#samples[@]}" -lt "$SAMPLES" ]; do
  now=$(health | field passes)
  if [ "$now" -gt "$last" ]; then
    samples+=("$(health | field last_pass_ms)")
    last=$now
  fi
  sleep 0.1
done
[ "$(health | field corrections)" = 0 ] || fail "a healthy formation was corrected"
sorted=$(printf '%s\n' "${samples[@]}" | sort -g)
median_ms=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max_ms=$(echo "$sorted" | tail -1)

# A lost dyno: rec1's web.1 with its monitor stopped and its process gone.
id=$("$BIN" ps --json -a rec1 | python3 -c 'import json,sys; print([d["id"] for d in json.load(sys.stdin) if d["name"]=="web.1"][0])')
read -r monitor dyno < <(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["monitor"], p["dyno"])' "$dynos/.monitors/$id/pid.json")
kill -STOP "$monitor"
t0=$(now_ms)
if [ "$RUNTIME" = oci ]; then
  runc --root "$dynos/.oci/state" kill "$id" KILL
  runc --root "$dynos/.oci/state" delete --force "$id"
else
  kill -KILL -- "-$dyno"
fi
until "$BIN" logs -n 1500 -a rec1 | grep -q 'heroku\[web.1\]: Reconciling:'; do sleep 0.05; done
t_seen=$(( $(now_ms) - t0 ))
until "$BIN" ps -a rec1 | grep -q '^web.1: up' && [ "$("$BIN" logs -n 1500 -a rec1 | grep -c 'heroku\[web.1\]: State changed from starting to up')" -ge 2 ]; do sleep 0.05; done
t_up=$(( $(now_ms) - t0 ))

echo "| runtime | apps x dynos | pass (median) | pass (max) | lost dyno -> Reconciling line | -> up again |"
echo "|---|---|---|---|---|---|"
printf '| %s | %s x 2 | %.1f ms | %.1f ms | %s ms | %s ms |\n' "$RUNTIME" "$APPS" "$median_ms" "$max_ms" "$t_seen" "$t_up"
