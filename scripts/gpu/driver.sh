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
    # (the eighth run measured 4.25 and 5.0 bits over bits {2,3,4,8}, 4.25 bits double-quantised
    # and two seeds of the knapsack that prices rank: docs/ALLOCATION.md)
    # What issue 15 asks for at every budget, cheapest first: that knapsack's third seed, the
    # knapsack cells that reuse a search's plan, bits {2,3,4,8} at 120 MB, and the paper's search
    # (--strategy paper, about 2 minutes a search) at 4.5 bits and 120 MB
    "knapsack-dq-ranks@120MB,knapsack@4.0bits,knapsack@4.5bits,knapsack@120MB,qra@120MB,qra-paper@4.5bits,qra-paper@120MB"
    # the paper's search at the other two budgets
    "qra-paper@4.25bits,qra-paper@5.0bits"
    # the richer space's remaining cells: the per-module search at 4.5 bits and 120 MB (a byte
    # budget: the proxy rungs price ranks) and the per-linear double-quantised knapsack
    "qra-module@4.5bits,qra-module@120MB,knapsack-module-dq@120MB,knapsack-module-dq@4.25bits,knapsack-module-dq@5.0bits"
)
for only in "${batches[@]}"; do
    echo "=== $(date -u +%H:%M:%S) batch $only (jobs $jobs)"
    python3 -m qradaptor experiment configs/allocation.yaml -o docs/results/paper --jobs "$jobs" \
        --no-progress --only "$only"
    echo "=== $(date -u +%H:%M:%S) exit $?"
done
touch /root/driver.done
