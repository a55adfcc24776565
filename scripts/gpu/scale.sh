#!/usr/bin/env bash
# Issue 16 on the 8B shape under --max-memory 24GB (benchmarks/scale_models.py): first packed
# 4-bit against lora16 alone on the GPU (tokens/s; driver.sh waits for them) and qra eval's
# dequantise-once on SmolLM2 (benchmarks/eval_dequant_once.py), then `qra search`
# at its default settings (the issue's 30-minute target) beside driver.sh's fine-tunes.
source "$(dirname "$0")/env.sh"
cd /root/repo
python3 benchmarks/scale_models.py --work /root/scale --shapes 8b --no-smollm2 --max-memory 24GB \
    --stages train --train-methods packed4,lora16 --stage-timeout 400 --out /root/scale/train.json
# qra eval's dequantise-once against dequantising in every forward, SmolLM2, still alone.
timeout 300 python3 benchmarks/eval_dequant_once.py --limit 200 --repeats 2 > /root/scale/eval_once.txt 2>&1
touch /root/scale.trained
# The default search needs a call sequence with more than its 30 minutes of device time left:
# SCALE_SEARCH=1 bash scripts/gpu/go.sh ... asks for it.
if [ "${SCALE_SEARCH:-0}" = 1 ]; then
    python3 benchmarks/scale_models.py --work /root/scale --shapes 8b --no-smollm2 --max-memory 24GB \
        --stages search --search-preset default --stage-timeout 3000 --out /root/scale/scale.json
fi
touch /root/scale.done
