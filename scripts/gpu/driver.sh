#!/usr/bin/env bash
# The allocation experiment's cells still to measure (issue 15), batch by batch, most wanted
# first: each batch is one resumable `qra experiment --only ...` into docs/results/paper, so a
# cut-off run keeps every finished cell and a later run starts where this one stopped.
# It starts once scale.sh has timed its fine-tunes alone on the GPU (or after 10 minutes).
source "$(dirname "$0")/env.sh"
cd /root/repo
for _ in $(seq 60); do [ -f /root/scale.trained ] && break; sleep 10; done
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
jobs=$(( mib > 100000 ? 5 : 4 ))   # H200: five steps at once; H100: four (the runner backs off on out-of-memory)
batches=(
    # what qra search --steps 0 picks, fine-tuned (whether the screen alone becomes the default);
    # knapsack-module's seeds 1-2
    "qra-dq-screen@4.5bits,qra-dq-screen@4.0bits,knapsack-module@4.0bits"
    # issue 22's pair (the paper's search at 4.0 bits on clean splits), per-module search; the one
    # 4.25/5.0-bit searched plan that is not the knapsack's (the others equal knapsack-dq's cells)
    "qra-paper@4.0bits,qra-module@4.0bits,qra-dq@5.0bits/seed1"
    # 120 MB
    "knapsack-dq@120MB,qra-dq@120MB,knapsack-module@4.5bits"
)
for only in "${batches[@]}"; do
    echo "=== $(date -u +%H:%M:%S) batch $only (jobs $jobs)"
    python3 -m qradaptor experiment configs/allocation.yaml -o docs/results/paper --jobs "$jobs" \
        --no-progress --only "$only"
    echo "=== $(date -u +%H:%M:%S) exit $?"
done
touch /root/driver.done
