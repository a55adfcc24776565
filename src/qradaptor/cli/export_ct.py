"""``qra export --format compressed-tensors``: the checks, then the folder written in a temp
folder beside the target and renamed into place once complete."""

from __future__ import annotations

from pathlib import Path

CT_DTYPE = "float16"
"""The export dtype without --dtype: float16 holds our float16 scales exactly."""


def export_ct(
    run: str, output: str, model: str | None, dtype: str | None, refit: str, force: bool, progress: bool
) -> None:
    """Checks the run, the output and the plan (vLLM's constraints), then writes the folder."""
    from qradaptor.atomic import atomic_dir
    from qradaptor.cli.export import _check_out, _uniform_modes
    from qradaptor.export.ct_export import (
        RECORD_FILE,
        REFITS,
        SCALE_DTYPES,
        ct_source,
        export_compressed_tensors,
        write_record,
    )
    from qradaptor.runs import read_run

    dtype = dtype or CT_DTYPE
    if refit not in REFITS:
        raise ValueError(f"--refit must be one of {', '.join(REFITS)}, got {refit!r}")
    if dtype not in SCALE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(SCALE_DTYPES)}, got {dtype!r}")
    files = read_run(run)  # not a run, or an unfinished one: fail before anything is written
    out = _check_out(Path(run).expanduser(), output, force)
    ct_source(files, run, model)  # a plan vLLM cannot serve: refused before anything loads
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ValueError(
            "--format compressed-tensors needs the compressed-tensors package: "
            "pip install 'qradaptor[serve]' (or compressed-tensors==0.20.1)"
        ) from None
    with atomic_dir(out) as tmp:
        written = export_compressed_tensors(
            run, tmp, model=model, dtype=dtype, refit=refit, progress=progress
        )
        write_record(tmp / RECORD_FILE, run, written)
        _uniform_modes(tmp)
    summary = written.to_dict()
    size = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    worst = summary["max_rel_error"]
    how = ", ".join(f"{n} {h}" for h, n in sorted(summary["how"].items())) or "no quantised linears"
    print(
        f"wrote compressed-tensors folder of run {run} to {out}: weights {size} bytes "
        f"(plan: {written.planned_bytes}); linears {how} (re-fitted from the {written.refit} weights)"
        + (f"; largest relative error {worst['rel_error']:.2e} ({worst['module']})" if worst else "")
        + f"; per-linear record in {out / RECORD_FILE}"
    )
