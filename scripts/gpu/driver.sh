#!/usr/bin/env bash
# The allocation experiment's cells still to measure (issue 15), batch by batch, most wanted
# first: each batch is one resumable `qra experiment --only ...` into docs/results/paper, so a
# cut-off run keeps every finished cell and a later run starts where this one stopped.
source "$(dirname "$0")/env.sh"
cd /root/repo
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
jobs=$(( mib > 100000 ? 5 : 3 ))   # H200: five steps beside scale.sh's 24 GB; H100: three
batches=(
    # a second budget for "clearly below the knapsack": the full search and the knapsack, richer space
    "qra-dq@4.25bits,knapsack-dq@4.25bits,qra-dq@5.0bits,knapsack-dq@5.0bits"
    # issue 22's pair (the paper's search at 4.0 bits on clean splits), per-module seeds 1-2
    "qra-paper@4.0bits,knapsack-module@4.0bits,qra-module@4.0bits"
    # what qra search --steps 0 picks, fine-tuned
    "qra-dq-screen@4.5bits,qra-dq-screen@4.0bits,knapsack-module@4.5bits"
)
for only in "${batches[@]}"; do
    echo "=== $(date -u +%H:%M:%S) batch $only (jobs $jobs)"
    python3 -m qradaptor experiment configs/allocation.yaml -o docs/results/paper --jobs "$jobs" \
        --no-progress --only "$only"
    echo "=== $(date -u +%H:%M:%S) exit $?"
done
touch /root/driver.done
