"""``qra export``: a run as a merged 16-bit model, a packed package, a GGUF or a compressed-tensors folder."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from qradaptor.atomic import atomic_dir
from qradaptor.cli.common import check_device, check_output_dir, resolve_device

DTYPES = ("bfloat16", "float16", "float32")
"""What --dtype accepts for a merged export."""
FORMATS = ("hf", "gguf", "compressed-tensors")
"""What --format accepts: a transformers folder (merged or packed), one GGUF file for llama.cpp, or
a compressed-tensors folder for transformers and vLLM (``cli/export_ct.py``)."""


def _check_out(run: Path, output: str, force: bool) -> Path:
    """``output`` as a Path if a folder may be written there, else ValueError naming why."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {output!r} is a file; give a folder to write the export into")
    if out.exists() and not force:
        raise ValueError(f"-o {output!r} already exists; pass --force to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"-o {output!r} cannot be written: {str(out.parent)!r} is a file, not a folder")
    if not out.parent.is_dir():
        raise ValueError(f"-o {output!r} cannot be written: folder {str(out.parent)!r} does not exist")
    check_output_dir(out, "-o")  # writable: checked before the model loads
    here, there = run.resolve(), out.resolve()
    if here == there or there in here.parents or here in there.parents:
        raise ValueError(f"-o {output!r} must lie outside the run folder {str(run)!r} and not contain it")
    return out


def _check_out_file(run: Path, output: str, force: bool) -> tuple[Path, Path, Path]:
    """(the GGUF, its JSON sidecar, its LoRA adapter file) if they may be written, else
    ValueError naming why."""
    out = Path(output).expanduser()
    sidecar = out.with_name(out.name + ".json")
    lora = out.with_name(out.name.removesuffix(".gguf") + ".lora.gguf")
    if out.is_dir():
        raise ValueError(f"-o {output!r} is a folder; give the .gguf file to write")
    for path in (out, sidecar, lora):
        if path.exists() and not force:
            raise ValueError(f"-o {output!r}: {str(path)!r} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ValueError(f"-o {output!r} cannot be written: folder {str(out.parent)!r} does not exist")
    check_output_dir(out.parent, "-o")
    if run.resolve() in out.resolve().parents:
        raise ValueError(f"-o {output!r} must lie outside the run folder {str(run)!r}")
    return out, sidecar, lora


def _gguf_types(text: str | None, method: str) -> dict[int, str]:
    """``--gguf-types`` ("4=Q4_K,5=Q5_K") as the bits -> type map to export a ``method`` plan with."""
    from qradaptor.export.gguf_types import type_map

    overrides: dict[int, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        bits, sep, name = item.partition("=")
        if not sep or not bits.strip().isdigit():
            raise ValueError(f"--gguf-types takes BITS=TYPE[,BITS=TYPE...], e.g. 4=Q4_K; got {item!r}")
        overrides[int(bits)] = name.strip().upper()
    return type_map(overrides, method)


def _export_gguf(
    run: str,
    output: str,
    model: str | None,
    adapter: str,
    force: bool,
    progress: bool,
    gguf_types: str | None,
) -> None:
    """Checks everything, then writes the GGUF and its sidecar (each a temp file renamed into place)."""
    from contextlib import ExitStack

    from qradaptor.atomic import atomic_file
    from qradaptor.export.gguf_export import ADAPTER_MODES, export_gguf, gguf_source
    from qradaptor.runs import read_run

    if adapter not in ADAPTER_MODES:
        raise ValueError(f"--adapter must be one of {', '.join(ADAPTER_MODES)}, got {adapter!r}")
    files = read_run(run)  # not a run, or an unfinished one: fail before anything is written
    types = _gguf_types(gguf_types, files.plan.quant_method)
    out, sidecar, lora = _check_out_file(Path(run).expanduser(), output, force)
    gguf_source(files, run, model)  # a source or plan with no GGUF type: refused before loading
    separate = adapter == "separate" and files.adapter is not None
    if separate:
        from qradaptor.export.gguf_lora import check_lora_adapter

        check_lora_adapter(str(files.adapter))
    with ExitStack() as stack:  # every file renamed into place only once all are written
        tmp, tmp_json = stack.enter_context(atomic_file(out)), stack.enter_context(atomic_file(sidecar))
        tmp_lora = stack.enter_context(atomic_file(lora)) if separate else None
        written = export_gguf(
            run, tmp, model=model, adapter=adapter, lora_path=tmp_lora, types=types, progress=progress
        )
        record = {
            "run": str(Path(run).resolve()),
            "gguf": str(out.resolve()),
            "file_bytes": tmp.stat().st_size,
        }
        record.update(written.to_dict())
        record.update({"lora": str(lora.resolve())} if separate else {})
        tmp_json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    summary = written.to_dict()
    worst = summary["max_rel_error"]
    types = ", ".join(f"{n} {t}" for t, n in sorted(summary["types"].items()))
    how = ", ".join(f"{n} {h}" for h, n in sorted(summary["how"].items()))
    fallbacks = ", ".join(f"{n} {f}" for f, n in sorted(summary["fallbacks"].items()))
    weights = summary["planned_tensor_bytes"]
    served = summary["llama_cpp_as_planned"]
    as_planned = (
        f"; llama.cpp-exact plan: {served['unchanged_at_planned_bytes']} of {served['block_tensors']} "
        "block tensors written unchanged at the plan's bytes"
        if served["plan"] == "llama.cpp-exact"
        else ""
    )
    print(
        f"wrote GGUF of run {run} to {out}: {out.stat().st_size} bytes (plan: {written.planned_bytes}; "
        f"planned weights {weights['written']} bytes against the plan's {weights['plan']}); "
        f"tensors {types}; {how}{as_planned}"
        + (f"; rows not a multiple of 256: {fallbacks}" if fallbacks else "")
        + f"; largest relative error {worst['rel_error']:.2e} ({worst['tensor']}); "
        f"per-tensor record in {sidecar}" + (f"; LoRA adapter in {lora}" if separate else "")
    )


def _write_packed(run: str, folder: Path, model: str | None, device: str, progress: bool) -> None:
    """plan.json, adapter/, base.safetensors (packed now if the run kept none) and train.json."""
    from qradaptor.runs import RUN_ADAPTER, RUN_BASE, RUN_PLAN, RUN_TRAIN, read_run

    files = read_run(run)
    shutil.copy2(Path(run) / RUN_PLAN, folder / RUN_PLAN)
    if files.adapter is not None:
        shutil.copytree(files.adapter, folder / RUN_ADAPTER)
    if (Path(run) / RUN_TRAIN).is_file():
        shutil.copy2(Path(run) / RUN_TRAIN, folder / RUN_TRAIN)
    if files.base is not None:
        shutil.copy2(files.base, folder / RUN_BASE)
        return
    import torch

    from qradaptor.build import quantize_model_
    from qradaptor.models.loading import load_model
    from qradaptor.packed import save_packed_base

    if model is None and files.source is None:
        raise ValueError(f"run {run!r} does not record its base model; name it with --model")
    loaded = load_model(model or files.source, dtype=torch.float32, device=device)
    structure = quantize_model_(loaded.model, files.plan, progress=progress)
    save_packed_base(loaded.model, structure, files.plan, folder / RUN_BASE)


def _uniform_modes(folder: Path) -> None:
    """Every file of an export gets the umask's mode: a writer that goes through a private temp
    file (safetensors' model.safetensors came out 0600) must not make one file unreadable."""
    from qradaptor.atomic import new_dir_mode, new_file_mode

    for path in folder.rglob("*"):
        path.chmod(new_dir_mode() if path.is_dir() else new_file_mode())


def export(
    run: str,
    *,
    output: str,
    merged: bool = False,
    packed: bool = False,
    model: str | None = None,
    dtype: str | None = None,
    device: str = "auto",
    force: bool = False,
    fmt: str = "hf",
    adapter: str = "merged",
    gguf_types: str | None = None,
    refit: str = "source",
    no_progress: bool = False,
) -> int:
    """Export a training run: a merged 16-bit model, a packed package, a GGUF or compressed-tensors.

    --merged (the default) dequantises the base exactly as it was trained (the run's packed
    codes), merges the adapter into it and writes a plain transformers model with its
    tokenizer (safetensors), loadable by AutoModelForCausalLM.from_pretrained(OUT). --packed
    copies plan.json, adapter/ and base.safetensors (packing it now if the run kept none) into
    OUT: a small package that qradaptor's assemble_run loads; it still needs the base model for
    the unquantised weights and the tokenizer. OUT is written in a temporary folder next to it
    and renamed into place when complete.

    --format gguf writes OUT as one GGUF file for llama.cpp (a GGUF-sourced Llama model, e.g.
    the embedded SmolLM2): the adapter merged, each block linear at the GGUF type of its plan
    bits (2 -> Q2_K, 3 -> Q4_1 (Q3_K on request), 4 -> Q4_1, 5 -> Q5_1, 6 -> Q6_K, 7, 8 -> Q8_0, 16 -> as the
    source stores it, F16 once an adapter changed it; K-quants fall back to Q4_1, Q5_1 or Q8_0
    for rows that are not a multiple of 256 inputs), our codes written unchanged where the type
    holds them, the rest re-quantised; tokenizer, chat template and norms copied from the
    source. OUT.json records each tensor's type, bytes and relative error (docs/EXPORT.md).

    --format compressed-tensors writes OUT as a pack-quantized folder that transformers and vLLM
    read (one config group per bit-width; plans at 4/8/16 bits with q/k/v and gate/up tied, as
    qra plan/search --serve vllm make them). A symmetric plan's codes go in unchanged; an
    hqq/rtn plan's zero points are real numbers and the format's are integers, so its linears
    are re-quantised (--refit) and OUT/qradaptor_export.json records each one's error
    (docs/EXPORT.md).

    Args:
        run: the training run folder (plan.json, adapter/, base.safetensors)
        output: the folder to write
        merged: write a merged 16-bit model (the default)
        packed: copy the run's plan, adapter and packed base instead
        model: the base model the run was trained on; omitted: the one its adapter records
        dtype: parameter dtype of a merged model (the merge itself runs in float32; default
            bfloat16), or of a compressed-tensors folder's dense tensors and scales (default float16)
        device: auto (cuda if available), cpu or cuda, for the merge
        force: replace OUT if it exists (only once the new export is complete)
        fmt: hf (a transformers folder, merged or packed), gguf (one GGUF file for llama.cpp) or
            compressed-tensors (a folder transformers loads and vLLM serves: plans at 4/8/16 bits
            with q/k/v and gate/up tied; the adapter merged, linears re-quantised with integer
            zero points and the error recorded in OUT/qradaptor_export.json; docs/EXPORT.md)
        adapter: with --format gguf: merged (the adapter merged into the weights before they are
            written), or separate (the base as trained, and OUT with .lora.gguf for .gguf as a
            GGUF LoRA adapter that llama.cpp applies with --lora; plain LoRA only)
        gguf_types: with --format gguf: other types for some bit-widths, BITS=TYPE[,...]: 2=Q4_1 or
            3=Q3_K (3.4375 bits, re-quantised; the default keeps the codes as Q4_1), 4=Q4_K, 5=Q5_K, 6=Q8_0;
            a --quant-method symmetric run's codes go unchanged to Q4_0 (2..4 bits), Q5_0 (5) and
            Q8_0 (6..8), by default at 3, 4, 5, 7 and 8 bits (2=Q4_0, 6=Q8_0 to keep them too); any
            width may also take a wider type (Q5_1 or Q5_0, Q5_K, Q6_K, Q8_0, F16), for --adapter
            merged: a merged weight is off the plan's grid and a fresh low-bit rounding undoes
            much of what the adapter learned (docs/EXPORT.md)
        refit: with --format compressed-tensors: what a linear whose codes cannot be written
            unchanged is re-quantised from: source (the source weight plus the adapter's change)
            or merged (the run's merged weight: a second quantisation; docs/EXPORT.md)
        no_progress: no progress output
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "gguf":
        if merged or packed:
            raise ValueError("--format gguf writes one file; --merged and --packed are for --format hf")
        _export_gguf(run, output, model, adapter, force, not no_progress, gguf_types)
        return 0
    if gguf_types:
        raise ValueError("--gguf-types is for --format gguf")
    if fmt == "compressed-tensors":
        from qradaptor.cli.export_ct import export_ct

        if merged or packed or adapter != "merged":
            raise ValueError(
                "--format compressed-tensors merges the adapter; --merged, --packed and "
                "--adapter separate are for the other formats"
            )
        export_ct(run, output, model, dtype, refit, force, not no_progress)
        return 0
    dtype = dtype or "bfloat16"
    if merged and packed:
        raise ValueError("give --merged or --packed, not both")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_device(device)
    from qradaptor.runs import read_run

    files = read_run(run)  # not a run, or an unfinished one: fail before anything is written
    out = _check_out(Path(run).expanduser(), output, force)
    if not files.finished:
        import sys

        from qradaptor.cli.eval import UNFINISHED

        print(UNFINISHED.format(run=run), file=sys.stderr)
    device = resolve_device(device)
    with atomic_dir(out) as tmp:
        if packed:
            _write_packed(run, tmp, model, device, not no_progress)
        else:
            import torch

            from qradaptor.runs import merged_run

            the_dtype = getattr(torch, dtype)
            built = merged_run(run, model, dtype=the_dtype, device=device, progress=not no_progress)
            built.model.save_pretrained(tmp)
            built.tokenizer.save_pretrained(tmp)
            record = {"run": str(Path(run).resolve()), "plan_hash": built.plan.plan_hash, "dtype": dtype}
            record.update(source=built.source, adapter=built.adapter, base=built.base)
            (tmp / "qradaptor_export.json").write_text(json.dumps(record, indent=2) + "\n")
        _uniform_modes(tmp)
    kind = "packed package" if packed else f"merged {dtype} model"
    print(f"wrote {kind} of run {run} to {out}")
    return 0


VERB = export


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra export``."""
    parser.add_argument("run", metavar="RUN", help=helps["run"])
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help=helps["output"])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--merged", action="store_true", help=helps["merged"])
    mode.add_argument("--packed", action="store_true", help=helps["packed"])
    parser.add_argument("--model", metavar="SOURCE", help=helps["model"])
    parser.add_argument("--dtype", choices=DTYPES, help=helps["dtype"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="hf", help=helps["fmt"])
    parser.add_argument("--adapter", choices=("merged", "separate"), default="merged", help=helps["adapter"])
    parser.add_argument("--gguf-types", metavar="BITS=TYPE[,...]", help=helps["gguf_types"])
    parser.add_argument("--refit", choices=("source", "merged"), default="source", help=helps["refit"])
