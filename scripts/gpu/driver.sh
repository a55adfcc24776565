#!/usr/bin/env bash
# The experiment cells still to measure, batch by batch, most wanted first: issue 20's re-run
# (main, pilot, efficiency, ablations; all measured by the eighteenth run, 2026-12-07, so each is a
# 2-4 s no-op that keeps the order if a cell is ever redone), then issue 15's optional allocation
# cells. Each batch is one
# resumable `qra experiment CONFIGS [--only LABELS]` into docs/results/paper, so a cut-off run
# keeps every finished cell and a later run starts where this one stopped.
# It starts once scale.sh has finished what it runs alone on the GPU (nothing by default; the
# MMLU prefix benchmark with EVAL_PREFIX=1, the 8B fine-tunes with SCALE_8B=1), or after 10 minutes.
source "$(dirname "$0")/env.sh"
cd /root/repo
for _ in $(seq 60); do [ -f /root/scale.trained ] && break; sleep 10; done
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
# H200: five steps at once; H100: four (the runner backs off on out-of-memory; five on the H100
# ran five fine-tunes out of memory at the start, each peaking at about 30 GB); JOBS=N overrides
jobs=${JOBS:-$(( mib > 100000 ? 5 : 4 ))}
batches=(
    # Each entry: the configs, then "--only LABELS" or nothing for all their cells, and
    # "--jobs N" where a batch must run fewer steps at once than the driver's.
    # (the tenth run measured the last cells issue 15 requires: docs/ALLOCATION.md)
    # Issue 20: main, pilot and ablations with the new search, the knapsack and the fixed
    # baselines (the cells already measured under the same options are kept; the labels whose
    # meaning changed were archived on 2026-12-06, and the pilot's A-D, which came back without
    # weights, so MMLU could not be added by resume)
    # one config a batch, Table 1 first: the runner starts every pending search before any cell,
    # so three configs at once would spend a short session on searches alone
    # (the eleventh run measured main's knapsack plans, amq-adalora and the matched focus
    # heuristics, the twelfth qra-paper@5.5bits and the four redefined heuristics: main's
    # qra-qa fine-tunes are what is left of it)
    "configs/main.yaml"
    "configs/pilot.yaml"
    # Table 4's missing cells (qlora-nf4-nodq, the knapsack at 4.0 and 5.5 bits), each alone on
    # the GPU: one run at a time; before the ablations, whose 21 searches outlast one session,
    # so these three short cells are not left waiting behind them
    "configs/efficiency.yaml --jobs 1"
    "configs/ablations.yaml"
    # The richer space's remaining cells: the per-module search at 4.5 bits and 120 MB (a byte
    # budget: the proxy rungs price ranks; measured by the eighteenth run), the per-linear
    # double-quantised knapsack, the full search with 8-bit metadata at bits budgets, the rest
    # per module, llama.cpp's plans
    "configs/allocation.yaml --only qra-module@4.5bits,qra-module@120MB,knapsack-module-dq@120MB,knapsack-module-dq@4.25bits,knapsack-module-dq@5.0bits"
    "configs/allocation.yaml --only qra-dq@4.0bits,qra-dq@4.25bits,qra-dq@4.5bits,qra-dq@5.0bits"
    "configs/allocation.yaml --only knapsack-module@4.25bits,knapsack-module@5.0bits,qra-module@4.25bits,qra-module@5.0bits,knapsack-llama.cpp"
)
for batch in "${batches[@]}"; do
    echo "=== $(date -u +%H:%M:%S) batch $batch (jobs $jobs)"
    # shellcheck disable=SC2086  # the entry is configs and options, split on purpose
    # The entry comes last, so its own options (--jobs 1) win over the driver's.
    python3 -m qradaptor experiment -o docs/results/paper --jobs "$jobs" --no-progress $batch
    echo "=== $(date -u +%H:%M:%S) exit $?"
done
touch /root/driver.done
