#!/usr/bin/env bash
# The allocation experiment's cells still to measure (issue 15), batch by batch, most wanted
# first: each batch is one resumable `qra experiment --only ...` into docs/results/paper, so a
# cut-off run keeps every finished cell and a later run starts where this one stopped.
# It starts once scale.sh has timed the 8B fine-tunes alone on the GPU (at once with SCALE_8B=0;
# or after 10 minutes).
source "$(dirname "$0")/env.sh"
cd /root/repo
for _ in $(seq 60); do [ -f /root/scale.trained ] && break; sleep 10; done
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
jobs=$(( mib > 100000 ? 5 : 4 ))   # H200: five steps at once; H100: four (the runner backs off on out-of-memory)
batches=(
    # the double-quantised cells at 4.0 bits and 120 MB with the fixed metadata quantiser (4.5 and
    # 5.0 bits ran in the fifth run), beside 120 MB's full search (a byte budget: ranks cost
    # memory, so the proxy rungs stay the default there)
    "knapsack-dq@120MB,qra-dq@120MB,qra-dq-screen@120MB,knapsack-dq@4.0bits,qra-dq-screen@4.0bits"
    # the per-module search (two seeds reuse knapsack-module's cells); bits per linear with 8-bit
    # scales and zeros, the richer space's two gains at once
    "qra-module@4.0bits,knapsack-module-dq@4.0bits,knapsack-module@4.5bits,knapsack-module-dq@4.5bits,knapsack-module@120MB"
    # the bits {2,3,4,8} labels at 4.25 and 5.0 bits, and 4.25 bits double-quantised
    "knapsack@4.25bits,qra@4.25bits,knapsack@5.0bits,qra@5.0bits,knapsack-dq@4.25bits,qra-dq-screen@4.25bits"
)
for only in "${batches[@]}"; do
    echo "=== $(date -u +%H:%M:%S) batch $only (jobs $jobs)"
    python3 -m qradaptor experiment configs/allocation.yaml -o docs/results/paper --jobs "$jobs" \
        --no-progress --only "$only"
    echo "=== $(date -u +%H:%M:%S) exit $?"
done
touch /root/driver.done
