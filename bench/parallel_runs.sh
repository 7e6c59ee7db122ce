#!/usr/bin/env bash
# A quality benchmark's (variant, seed) runs as separate processes side by side, after one shared preparation
# (teacher, preprocessing, teacher logits), then its report over all runs. For a machine with many cores and a
# GPU: a 2-layer student leaves an H100 mostly idle, so each run gets one CPU thread and a share of the GPU.
# The times it reports are those of runs sharing the machine.
#
#   bench/parallel_runs.sh SCRIPT VARIANTS SEEDS [ARGS...]
#   e.g. bench/parallel_runs.sh bench/quality_sst2.py logit,transfer 42,43 --work /tmp/sst2 --teacher /tmp/teacher
set -euo pipefail
script=$1 variants=$2 seeds=$3
shift 3
py=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
logs=$(mktemp -d)
"$py" "$script" --prepare-only --variants "$variants" --seeds "$seeds" "$@"
for v in ${variants//,/ }; do
  for s in ${seeds//,/ }; do
    "$py" "$script" --variants "$v" --seeds "$s" "$@" >"$logs/$v-$s.log" 2>&1 &
  done
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
[ $status = 0 ] || { tail -n 20 "$logs"/*.log; }
"$py" "$script" --variants "$variants" --seeds "$seeds" "$@"
exit $status
