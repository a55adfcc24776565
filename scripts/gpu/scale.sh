#!/usr/bin/env bash
# Issue 16's runs (docs/SCALE.md; all measured by the fifth run, so by default they are
# skipped, as is the MMLU prefix benchmark below, and driver.sh starts at once). SCALE_8B=1: the 8B
# fine-tunes timed alone on the GPU (driver.sh waits for them). SCALE_STAGES=1: the 1B shape
# and the embedded SmolLM2 through every stage under --max-memory 24GB, the search at its
# default settings, beside driver.sh's fine-tunes (time and memory; tokens/s there are
# shared-GPU figures).
source "$(dirname "$0")/env.sh"
cd /root/repo
if [ "${SCALE_8B:-0}" = 1 ]; then
    python3 benchmarks/scale_models.py --work /root/scale --shapes 8b --no-smollm2 --max-memory 24GB \
        --stages train --train-methods packed4,lora16 --stage-timeout 400 --out /root/scale/train.json
fi
# MMLU 5-shot with each subject's shared prefix run once (eval.prefix, the default since
# 2026-12-07) against every prompt whole, alone on the GPU before driver.sh starts (about a
# minute; measured by the fourteenth run, docs/EVAL.md: EVAL_PREFIX=1 measures it again).
if [ "${EVAL_PREFIX:-0}" = 1 ]; then
    mkdir -p /root/scale
    timeout 240 python3 benchmarks/eval_prefix.py --limit 20 --repeats 2 > /root/scale/eval_prefix.txt 2>&1
fi
# driver.sh starts now: device time is short, so what follows shares the GPU with its steps.
touch /root/scale.trained
if [ "${SCALE_STAGES:-0}" = 1 ]; then
    python3 benchmarks/scale_models.py --work /root/scale --shapes 1b --max-memory 24GB \
        --stages profile,search,train,eval --train-methods packed4,lora16 --search-preset default \
        --stage-timeout 600 --out /root/scale/scale.json
fi
# qra eval's dequantise-once against dequantising in every forward, SmolLM2 (measured alone in
# the fourth run, docs/EVAL.md: EVAL_ONCE=1 measures it again).
if [ "${EVAL_ONCE:-0}" = 1 ]; then
    timeout 300 python3 benchmarks/eval_dequant_once.py --limit 200 --repeats 2 > /root/scale/eval_once.txt 2>&1
fi
touch /root/scale.done
