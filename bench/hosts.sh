#!/usr/bin/env bash
# Own-hosts deploy benchmark (issue 11): time of `slipway targets:deploy` of a 50 MB release
# (incompressible, so the upload is the real size) to two hosts -- lock, upload with checksum,
# unpack beside, switch, restart, health check `true` -- beside `rsync -a` of the same
# directory to the same two hosts over the same sshd (fresh destinations, one after the other,
# as slipway does with --batch 1), and with `--batch 2` (both uploads at once), in the same run.
# The two "hosts" are sshd instances on loopback ports, as in tests/hosts.rs.
#
#   bench/hosts.sh                  # 5 runs of each
#   RUNS=10 SIZE_MB=50 bench/hosts.sh
#   BIN=target/debug/slipway bench/hosts.sh    # skip the release build
#
# Needs root (sshd on loopback with its own config), openssh-server, rsync. Prints Markdown.
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-50}
. "$(dirname "$0")/lib.sh"
start_sshd_hosts a b
start_server "$work"

# The release: one incompressible file of SIZE_MB.
mkdir -p "$work/src/app"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$work/src/app/blob"
tar -czf "$work/release.tgz" -C "$work/src" app

for batch in 1 2; do
  "$BIN" targets:add "b$batch" --hosts "root@127.0.0.1:${ports[0]},root@127.0.0.1:${ports[1]}" \
    --path "app$batch" --key "$work/client_key" --health true --batch "$batch" \
    --accept-host-key "$(fp a)" --accept-host-key "$(fp b)" >/dev/null 2>&1
done

deploy_1=(); deploy_2=(); rsync_t=()
for i in $(seq "$RUNS"); do
  for batch in 1 2; do
    "$BIN" store:import "$work/release.tgz" --name bench --tag "b$batch-r$i" >/dev/null 2>&1
    t0=$(now_ms)
    "$BIN" targets:deploy "b$batch" bench "b$batch-r$i" >/dev/null 2>&1
    t=$(( $(now_ms) - t0 ))
    if [ "$batch" = 1 ]; then deploy_1+=("$t"); else deploy_2+=("$t"); fi
    "$BIN" targets:prune "b$batch" --keep 1 >/dev/null 2>&1
  done
  t0=$(now_ms)
  for idx in 0 1; do
    h=$([ "$idx" = 0 ] && echo a || echo b)
    rsync -a -e "ssh -p ${ports[$idx]} -i $work/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" \
      "$work/src/app/" "root@127.0.0.1:$work/host-$h/home/rsync-$i/"
  done
  rsync_t+=($(( $(now_ms) - t0 )))
  rm -rf "$work"/host-*/home/rsync-"$i"
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| what (${SIZE_MB} MB, 2 hosts, $RUNS runs; load $load; $(nproc) cores) | median ms | all ms |"
echo "|---|---|---|"
echo "| \`targets:deploy\` --batch 1 (lock, upload+sha256, unpack, switch, health) | $(median "${deploy_1[@]}") | ${deploy_1[*]} |"
echo "| \`targets:deploy\` --batch 2 (both hosts at once) | $(median "${deploy_2[@]}") | ${deploy_2[*]} |"
echo "| \`rsync -a\` of the same directory to both hosts, one after the other | $(median "${rsync_t[@]}") | ${rsync_t[*]} |"
