#!/usr/bin/env bash
# Issue 16's stages on the 8B and 1B shapes under --max-memory 24GB (benchmarks/scale_models.py),
# beside driver.sh's fine-tunes, so wall times are shared-GPU times.
source "$(dirname "$0")/env.sh"
cd /root/repo
python3 benchmarks/scale_models.py --work /root/scale --shapes 8b,1b --no-smollm2 --max-memory 24GB \
    --stage-timeout 400 --out /root/scale/scale.json
touch /root/scale.done
