#!/usr/bin/env bash
# Issue 16 on the 8B shape under --max-memory 24GB (benchmarks/scale_models.py): first, alone on
# the GPU (driver.sh waits for them), packed 4-bit against lora16 (tokens/s); then, beside
# driver.sh's fine-tunes, a profile of their steps (benchmarks/train_step_speed.py), with
# EVAL_ONCE=1 qra eval's dequantise-once on SmolLM2 (benchmarks/eval_dequant_once.py), and
# `qra search` at its default settings (the issue's 30-minute target; forward only under a bits
# budget since 2026-12-06) unless SCALE_SEARCH=0.
source "$(dirname "$0")/env.sh"
cd /root/repo
python3 benchmarks/scale_models.py --work /root/scale --shapes 8b --no-smollm2 --max-memory 24GB \
    --stages train --train-methods packed4,lora16 --stage-timeout 400 --out /root/scale/train.json
# driver.sh starts now: device time is short, so what follows shares the GPU with its steps.
touch /root/scale.trained
# Where the packed step's time goes at 8B, side by side with lora16 (two and three
# dequantisations, eager, dense), under torch.profiler: kernel shares, beside driver.sh.
timeout 420 python3 benchmarks/train_step_speed.py --model /root/scale/models/8b --batch-size 4 \
    --seq-len 512 --steps 10 --warmup 3 --checkpointing --plans lora16,4-bit --profile 2 \
    > /root/scale/step_profile.txt 2>&1
# qra eval's dequantise-once against dequantising in every forward, SmolLM2 (measured alone in
# the fourth run, docs/EVAL.md: EVAL_ONCE=1 measures it again).
if [ "${EVAL_ONCE:-0}" = 1 ]; then
    timeout 300 python3 benchmarks/eval_dequant_once.py --limit 200 --repeats 2 > /root/scale/eval_once.txt 2>&1
fi
if [ "${SCALE_SEARCH:-1}" = 1 ]; then
    python3 benchmarks/scale_models.py --work /root/scale --shapes 8b --no-smollm2 --max-memory 24GB \
        --stages search --search-preset default --stage-timeout 1800 --out /root/scale/scale.json
fi
touch /root/scale.done
