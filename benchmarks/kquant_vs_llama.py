"""Our K-quant quantiser against llama.cpp's own, on one model's ``ffn_down`` weights.

For each K type, two GGUF files that differ only in the bytes of the ``ffn_down`` tensors
(the only block linears of SmolLM2-135M whose rows, 1536 inputs, take K-quants):

    llama_T.gguf  ``llama_model_quantize`` of the F32 source: ffn_down as T, every other weight
                  Q8_0, the embedding kept Q8_0 (``export.llama_quantize.quantize_gguf``)
    ours_T.gguf   that very file with each ffn_down's data replaced by ``kquants.quantize_rows``
                  of the same F32 weight

plus ``ref.gguf``, the same with ffn_down left F32, the perplexity without the K-quant. The F32
source is llama.cpp's own dequantisation of the model (``--model``, the embedded SmolLM2 by
default), or with ``--run RUN`` that run's weights as ``qra export`` would quantise them (the
adapter merged, q/k rows in llama.cpp's order). Per type: identical tensors and super-blocks,
the relative error ||W - W_q||_F / ||W||_F of each file's ffn_down (read back by ``gguf``), and
each file's perplexity through llama.cpp on the windows ``qra eval --tasks ppl_wiki`` scores
(``gguf_ppl.py``; a file of the same bytes as llama.cpp's is scored once). Needs llama-cpp-python.

    python benchmarks/kquant_vs_llama.py --out /tmp/kq --limit 16
    python benchmarks/kquant_vs_llama.py --out /tmp/kq3 --run RUN --types Q3_K
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gguf_ppl, beside this script
from gguf_ppl import llama_cpp_nll, windows  # noqa: E402

from qradaptor.export.kquants import BLOCK_BYTES, K_TYPES, quantize_rows  # noqa: E402
from qradaptor.export.llama_quantize import quantize_gguf  # noqa: E402

TARGET = "ffn_down"
"""The tensors written as each K type."""


def _shape(tensor) -> tuple[int, int]:
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))  # (rows, cols)


def _read(tensor) -> np.ndarray:
    """A tensor of a GGUFReader as float32 (rows, cols), dequantised by ``gguf``."""
    from gguf.quants import dequantize

    return np.asarray(dequantize(np.asarray(tensor.data), tensor.tensor_type), np.float32).reshape(
        _shape(tensor)
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def put_run_weights(path: Path, run: str) -> None:
    """Overwrites every block linear of the F32 GGUF ``path`` with run ``run``'s merged weight."""
    from gguf import MODEL_ARCH, GGUFReader, get_tensor_name_map

    from qradaptor.export.gguf_types import llama_rows
    from qradaptor.runs import merged_run

    model = merged_run(run).model
    config = model.config
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    tensors = {t.name: t for t in GGUFReader(path, "r+").tensors}
    for key, value in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight",))
        if name is None or not name.startswith("blk.") or "norm" in name:
            continue
        role = name.split(".")[-2]
        weight = llama_rows(value.float(), heads[role]) if role in heads else value.float()
        tensor = tensors[name]
        assert tensor.tensor_type.name == "F32" and _shape(tensor) == tuple(weight.shape), name
        tensor.data[...] = weight.numpy().reshape(tensor.data.shape)
    del tensors  # closes the writable map


def compare(f32: Path, llama: Path, ours: Path, type_name: str) -> dict[str, object]:
    """Writes ``ours`` (``llama`` with our ffn_down bytes) and compares the two tensor by tensor."""
    from gguf import GGUFReader

    shutil.copyfile(llama, ours)
    source = {t.name: t for t in GGUFReader(f32).tensors}
    theirs = {t.name: t for t in GGUFReader(llama).tensors}
    rows, seconds = [], 0.0
    for tensor in GGUFReader(ours, "r+").tensors:
        if TARGET not in tensor.name:
            continue
        assert tensor.tensor_type.name == type_name, (tensor.name, tensor.tensor_type.name)
        weight = _read(source[tensor.name])
        start = time.perf_counter()
        data = quantize_rows(weight, type_name)
        seconds += time.perf_counter() - start
        tensor.data[...] = data.reshape(tensor.data.shape)
        ref = np.asarray(theirs[tensor.name].data).reshape(-1, BLOCK_BYTES[type_name])
        same = (data.reshape(-1, BLOCK_BYTES[type_name]) == ref).all(axis=1)
        rows.append(
            dict(
                name=tensor.name,
                bytes=int(data.nbytes),
                same_blocks=float(same.mean()),
                rel_error_ours=_rel(_read(tensor), weight),
                rel_error_llama=_rel(_read(theirs[tensor.name]), weight),
            )
        )
    ours_error = [r["rel_error_ours"] for r in rows]
    llama_error = [r["rel_error_llama"] for r in rows]
    return dict(
        type=type_name,
        tensors=len(rows),
        bytes=sum(r["bytes"] for r in rows),
        identical_tensors=sum(r["same_blocks"] == 1.0 for r in rows),
        same_blocks=float(np.mean([r["same_blocks"] for r in rows])),
        rel_error_ours=dict(mean=float(np.mean(ours_error)), max=max(ours_error)),
        rel_error_llama=dict(mean=float(np.mean(llama_error)), max=max(llama_error)),
        identical_files=_digest(ours) == _digest(llama),
        our_seconds=round(seconds, 1),
        per_tensor=rows,
    )


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the GGUF files and kquant_vs_llama.json")
    parser.add_argument("--model", help="a llama GGUF; omitted: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--run", help="quantise this run's merged weights instead of the model's")
    parser.add_argument("--types", default=",".join(K_TYPES), help="K types, comma-separated")
    parser.add_argument("--limit", type=int, default=16, help="perplexity windows (0: no perplexity)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    types = args.types.split(",")
    if unknown := [t for t in types if t not in K_TYPES]:
        parser.error(f"--types takes {','.join(K_TYPES)}, got {unknown}")

    from qradaptor.models.loading import load_tokenizer
    from qradaptor.models.sources import resolve_source

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_source(args.model).source
    f32 = out / "source_f32.gguf"
    quantize_gguf(source, f32, default="F32", embedding="Q8_0", threads=args.threads)
    if args.run:
        put_run_weights(f32, args.run)
    files = {"ref": out / "ref.gguf"}
    quantize_gguf(f32, files["ref"], default="Q8_0", overrides={TARGET: "F32"}, embedding="Q8_0")
    result: dict[str, object] = dict(source=source, run=args.run, target=TARGET, types={})
    for type_name in types:
        llama, ours = out / f"llama_{type_name}.gguf", out / f"ours_{type_name}.gguf"
        overrides = {TARGET: type_name}
        quantize_gguf(f32, llama, default="Q8_0", overrides=overrides, embedding="Q8_0", threads=args.threads)
        result["types"][type_name] = compare(f32, llama, ours, type_name)  # type: ignore[index]
        files |= {f"llama_{type_name}": llama, f"ours_{type_name}": ours}
        summary = {k: v for k, v in result["types"][type_name].items() if k != "per_tensor"}  # type: ignore[index]
        print(json.dumps(summary), flush=True)
    if args.limit:
        batches = windows(load_tokenizer(source), "ppl_wiki", args.seq_len, args.limit)
        result["ppl"] = dict(corpus="ppl_wiki", windows=len(batches), seq_len=args.seq_len, files={})
        for label, path in files.items():
            twin = label.replace("ours_", "llama_")
            if twin != label and result["types"][label[5:]]["identical_files"]:  # type: ignore[index]
                # The same bytes as llama.cpp's file: llama.cpp gives it the same perplexity.
                result["ppl"]["files"][label] = dict(result["ppl"]["files"][twin], same_file_as=twin)  # type: ignore[index]
                continue
            start = time.perf_counter()
            nll, tokens, version = llama_cpp_nll(str(path), batches, args.threads)
            row = dict(ppl=math.exp(nll), tokens=tokens, bytes=path.stat().st_size)
            row["seconds"] = round(time.perf_counter() - start, 1)
            result["ppl"]["files"][label] = row  # type: ignore[index]
            result["llama_cpp_python"] = version
            print(json.dumps({label: row}), flush=True)
    (out / "kquant_vs_llama.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
