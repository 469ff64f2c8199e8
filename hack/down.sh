#!/usr/bin/env bash
# make down: stops every process named in .dev/pids/*.pid (what make up and hack/up.d
# started), the control plane last. Logs stay in .dev/logs/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

shopt -s nullglob
for pid_file in "$DEV_DIR"/pids/*.pid; do
  name="$(basename "$pid_file" .pid)"
  [[ "$name" == cluster ]] || stop_pid "$name"
done
stop_pid cluster
rm -f "$DEV_DIR/cluster.ready"
echo "down"
