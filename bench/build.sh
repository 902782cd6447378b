#!/usr/bin/env bash
# Build benchmark: push-to-serving time, i.e. from `git push` until the router serves the new
# code, for
#   1. a Procfile-only app (examples/hello),
#   2. a small Django app (crates/slipway/tests/apps/django: Django + gunicorn + whitenoise from
#      PyPI, collectstatic), first deploy (empty build cache),
#   3. the same Django app redeployed after a code change (cached dependencies): RUNS times once
#      the server has finished the last deploy's background work (as when a developer pushes
#      again), then RUNS times pushed as soon as the last one serves,
# and, in the same run, the named alternative for (3): the same redeploy by hand with the same
# tools (git checkout, `python3 -m venv`, `pip install -r requirements.txt` from a warm pip
# cache, collectstatic, start gunicorn, first request), which is what Piku-style deploys do.
#
#   bench/build.sh                          # 3 redeploys, release build
#   RUNS=5 BIN=target/debug/slipway bench/build.sh
#   BY_HAND=0 bench/build.sh                # without the by-hand comparison (much shorter)
#   DYNO_RUNTIME=process bench/build.sh     # dynos and builds on the host (default: auto,
#                                           # i.e. runc, where builds run in containers too)
#
# Needs root (runc), runc, git, python3 with venv, curl, and PyPI. Prints a Markdown table.
RUNS=${RUNS:-3}
. "$(dirname "$0")/lib.sh"
server_started=""
gunicorn=""
on_exit '[ -z "$gunicorn" ] || kill "$gunicorn" 2>/dev/null'
# Dynos outlive the server (their monitors are re-adopted by the next one): destroy the apps
# before the server stops, or their containers keep running after the work directory is gone.
on_exit '[ -z "$server_started" ] || for a in hello django; do "$BIN" apps:destroy -a "$a" --confirm "$a" >/dev/null 2>&1 || true; done'
# KEEP_LOGS=DIR keeps every push's timeline and the server's log there.
on_exit '[ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$work"/*.server "$work/server.err" "$KEEP_LOGS/" 2>/dev/null; }'

start_server "$work" --dyno-runtime "${DYNO_RUNTIME:-auto}"
server_started=1

# deploy APP DIR TEXT: push DIR and wait until TEXT is served; prints milliseconds. The push's
# output is kept in $work/push.log, each line prefixed with the milliseconds since the push
# began when it arrived (the build's phases), and a last line `<ms> (serving)`.
deploy() {
  local start line; start=$(now_ms)
  if ! (cd "$2" && git push slipway main 2>&1) | while IFS= read -r line; do
    echo "$(( $(now_ms) - start )) $line"
  done >"$work/push.log"; then
    cat "$work/push.log" >&2
    exit 1
  fi
  echo "$(( $(now_ms) - start )) (push finished)" >>"$work/push.log"
  serves "$1" "$3"
  echo "$(( $(now_ms) - start )) (serving)" >>"$work/push.log"
  echo $(( $(now_ms) - start ))
}

new_app() { # NAME SRC
  new_repo "$2" "$work/$1"
  (cd "$work/$1" && "$BIN" apps:create "$1" >/dev/null)
}

new_app hello examples/hello
t_hello=$(deploy hello "$work/hello" "Hello")

new_app django crates/slipway/tests/apps/django
t_first=$(deploy django "$work/django" "Hello from Django")
cp "$work/push.log" "$work/first.log"
# built_ms LOG: ms from `git push` until the buildpacks were done (the `Compressing` line).
built_ms() { grep -m1 -E '^[0-9]+ remote: -----> Compressing' "$1" | cut -d' ' -f1; }

# settle: until the server has finished the last deploy's background work (the build cache
# given back the files its release directory took), as it has by the time a developer pushes
# again; at most 60 s.
settle() {
  local moved given
  for _ in $(seq 1200); do
    moved=$(sed 's/\x1b\[[0-9;]*m//g' "$work/server.err" | grep -cE 'moved the build to its release directory.*shared=[1-9]' || true)
    given=$(grep -c 'gave the build cache its own copies' "$work/server.err" || true)
    [ "$given" -ge "$moved" ] && return
    sleep 0.05
  done
}
# redeploy N: a code change pushed, its time appended to `redeploys`.
redeploy() {
  local i=$1
  sed -i "s/Hello from Django[^<]*</Hello from Django $i</" "$work/django/mysite/urls.py"
  (cd "$work/django" && git add -A && git_q commit -qm "change $i")
  server_lines=$(wc -l <"$work/server.err")
  redeploys+=("$(deploy django "$work/django" "Hello from Django $i")")
  cp "$work/push.log" "$work/redeploy-$i.log"
  # The server's own timings of this redeploy's dynos (filesystem, monitor, port bound).
  tail -n +"$((server_lines + 1))" "$work/server.err" | sed 's/\x1b\[[0-9;]*m//g' |
    grep -E "prepared the dyno's filesystem|started the dyno's monitor|bound its port|ended the build user's processes|moved the build to its release directory|gave the release directory|packed the slug|gave the build cache" >"$work/redeploy-$i.server" || true
}
redeploys=()
for i in $(seq "$RUNS"); do
  settle
  redeploy "$i"
done
settled=("${redeploys[@]}")
# The same, each pushed as soon as the last one serves: the build may wait for the cache (after
# detection; the wait is the time from "Waiting for the build cache..." to the next line).
redeploys=()
for i in $(seq $((RUNS + 1)) $((2 * RUNS))); do redeploy "$i"; done
back_to_back=("${redeploys[@]}")

BY_HAND=${BY_HAND:-1}
# The same redeploy by hand, with a warm pip cache (filled by the first round, not timed).
hand=$work/by-hand
by_hand() { # ROUND: prints milliseconds from checkout to first response
  local start port; start=$(now_ms)
  rm -rf "$hand/app" && git clone -q "$work/django" "$hand/app"
  python3 -m venv "$hand/app/.venv"
  "$hand/app/.venv/bin/pip" install -q --cache-dir "$hand/pip-cache" -r "$hand/app/requirements.txt"
  (cd "$hand/app" && .venv/bin/python manage.py collectstatic --noinput >/dev/null)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$hand/app" && exec .venv/bin/gunicorn mysite.wsgi --bind "127.0.0.1:$port" >/dev/null 2>&1) &
  gunicorn=$!
  until curl -s "http://127.0.0.1:$port/" | grep -q "Hello from Django"; do sleep 0.01; done
  echo $(( $(now_ms) - start ))
  kill "$gunicorn"; wait "$gunicorn" 2>/dev/null || true; gunicorn=""
}
hands=()
if [ "$BY_HAND" = 1 ]; then
  mkdir -p "$hand"
  by_hand >/dev/null
  for _ in $(seq "$RUNS"); do hands+=("$(by_hand)"); done
fi

builts=()
for i in $(seq "$RUNS"); do builts+=("$(built_ms "$work/redeploy-$i.log")"); done
waits=()
for i in $(seq $((RUNS + 1)) $((2 * RUNS))); do
  waits+=("$(awk '/Waiting for the build cache/ {w = $1; next} w != "" {print $1 - w; done = 1; exit} END {if (!done) print 0}' "$work/redeploy-$i.log")")
done
echo "dyno runtime: $(grep -m1 '^dyno runtime:' "$work/server.out" || echo unknown)"
echo
echo "| deploy | push to serving (ms) |"
echo "|---|---|"
echo "| Procfile-only app (examples/hello), first deploy | $t_hello |"
echo "| Django app, first deploy (empty cache, PyPI) | $t_first |"
echo "| Django app, cached redeploy, median of $RUNS (${settled[*]}) | $(median "${settled[@]}") |"
echo "| Django app, cached redeploy pushed as soon as the last one serves, median of $RUNS (${back_to_back[*]}; waited for the build cache: ${waits[*]} ms) | $(median "${back_to_back[@]}") |"
echo "| Django app, first deploy: push to buildpacks done | $(built_ms "$work/first.log") |"
echo "| Django app, cached redeploy: push to buildpacks done, median of $RUNS (${builts[*]}) | $(median "${builts[@]}") |"
if [ "$BY_HAND" = 1 ]; then
  echo "| by hand: venv + pip from warm cache + collectstatic + gunicorn, median of $RUNS (${hands[*]}) | $(median "${hands[@]}") |"
fi
echo
echo "Timeline of the last settled cached redeploy (ms since \`git push\` began, when each line arrived):"
echo
echo '```'
grep -E '^[0-9]+ (remote: -----> |remote:        (Done|Released)|\(push finished\)|\(serving\))' "$work/redeploy-$RUNS.log" || true
echo '```'
echo
echo "And of the last one pushed back-to-back:"
echo
echo '```'
grep -E '^[0-9]+ (remote: -----> |remote:        (Done|Released)|\(push finished\)|\(serving\))' "$work/redeploy-$((2 * RUNS)).log" || true
echo '```'
echo
echo "The server's timings of that redeploy (each step's own ms): the build's release directory (build user's processes ended, build moved, given to the app's user), packing, the new dyno (filesystem and monitor: since the dyno started preparing; port bound: since launch), the build cache given its files back:"
echo
echo '```'
sed -E 's/^.*(INFO|WARN) .*slipway_[a-z_]+(::[a-z_]+)*: //' "$work/redeploy-$RUNS.server"
echo '```'
