"""``qra profile``: per-block (or per-module) KL sensitivity at each candidate bit-width (Eq. 6, §3.3)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import (
    QUANT_METHODS,
    check_device,
    check_output,
    check_output_dir,
    parse_int_list,
    renamed_option,
    resolve_device,
    write_text_atomic,
)
from qradaptor.export.serve_targets import SERVE_TARGETS, quantiser, served_bits
from qradaptor.plotting import can_plot
from qradaptor.sensitivity_table import GRANULARITIES

if TYPE_CHECKING:
    from qradaptor.models.loading import LoadedModel
    from qradaptor.sensitivity_table import SensitivityTable

OUTPUT_FILES = ("sensitivity.json", "sensitivity.csv", "sensitivity.png")
"""What ``qra profile`` writes into OUT_DIR (the plot only if matplotlib is installed)."""
_MAX_BITS = 8
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
"""--dtype: bytes per weight the model is loaded in."""


DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
"""--bits when not given and no --serve."""


def parse_bits(text: str) -> list[int]:
    """``"2,3,4,8"`` -> [2, 3, 4, 8], sorted; raises ValueError on anything else.

    Raises:
        ValueError: if ``text`` is empty, not comma-separated integers, has a bit-width
            outside 1..8 (16 is the reference itself), or repeats one.
    """
    if not text.strip():
        raise ValueError(f"--bits must name at least one bit-width in 1..8 (e.g. 2,3,4,8), got {text!r}")
    bits = parse_int_list(text, "--bits")
    bad = [b for b in bits if not 1 <= b <= _MAX_BITS]
    if bad:
        raise ValueError(
            f"--bits must be bit-widths in 1..8 (16 is the full-precision reference), "
            f"got {bad[0]} in {text!r}"
        )
    if len(set(bits)) != len(bits):
        raise ValueError(f"--bits must not repeat a bit-width, got {text!r}")
    return sorted(bits)


def sensitivity_ranks(values: tuple[float, ...] | list[float]) -> list[int]:
    """Rank of each block, 1 = most sensitive; equal values share the better rank (1, 2, 2, 4)."""
    return [1 + sum(other > value for other in values) for value in values]


def _check_out_dir(out_dir: str, force: bool, plot: bool) -> Path:
    folder = Path(out_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {out_dir!r} is a file; give a folder (it is created if missing)")
    check_output_dir(folder, "-o")  # writable, or creatable: before the model loads
    if folder.is_dir():
        for name in OUTPUT_FILES if plot else OUTPUT_FILES[:2]:
            check_output(folder / name, force=force)
    return folder


def _render(data: dict[str, Any], table: SensitivityTable) -> str:
    low = min(table.bits)
    ranks = data["ranks"]
    s = data["settings"]
    lines = [
        f"model  {data['model']} ({data['origin']})",
        f"data   {table.tokens} tokens ({s['samples']} x {s['seq_len']}) of {s['data']}, seed {s['seed']}",
        f"quant  {table.quant_method}, group {table.group_size}; {s['device']} {s['dtype']}",
        f"S_l(b): mean KL(P_fp || P_q) in nats per token with only {table.granularity} l at b bits (Eq. 6)",
        "",
    ]
    names = table.unit_names  # "3", or "3.self_attn.q_proj" per module
    width = max(5, *map(len, names))
    head = f"{table.granularity:>{width}} " + " ".join(f"{f'{b}-bit':>10}" for b in table.bits)
    lines.append(head + f" {f'rank@{low}':>7}")
    for unit, row in enumerate(table.kl):
        lines.append(f"{names[unit]:>{width}} " + " ".join(f"{v:>10.4g}" for v in row) + f" {ranks[unit]:>7}")
    order = sorted(range(table.num_units), key=lambda i: ranks[i])
    lines += ["", f"most sensitive at {low} bits: " + ", ".join(names[i] for i in order[:5])]
    return "\n".join(lines)


def measure_profile(
    model: str | None,
    texts: list[str],
    bits: list[int],
    samples: int,
    seq_len: int,
    batch_size: int,
    group_size: int,
    method: str,
    device: str,
    seed: int,
    progress: bool = True,
    double_quant: bool = False,
    dtype: str = "fp32",
    granularity: str = "block",
) -> tuple[SensitivityTable, LoadedModel, float]:
    """Loads ``model`` in ``dtype`` (fp32 or bf16) on ``device`` and profiles it on windows
    packed from ``texts``; the log-probs and the KL are computed in fp32 either way.

    Returns:
        The table, the loaded model and the profiling seconds (the load excluded).
    """
    import torch

    from qradaptor.data import pack_texts
    from qradaptor.models.loading import load_model
    from qradaptor.sensitivity import profile_sensitivity

    loaded = load_model(model, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], device=device)
    calibration = pack_texts(texts, loaded.tokenizer, seq_len, num_sequences=samples, seed=seed)  # (N, T)
    # What it will do, priced here, before doing it (a CPU profile runs for minutes).
    from qradaptor.models.structure import inspect_model
    from qradaptor.search.cost import profile_line

    structure = inspect_model(loaded.model)
    line = profile_line(
        loaded.model, structure, calibration, bits, batch_size, group_size, method, granularity
    )
    print(f"qra profile: {line}", file=sys.stderr)
    started = time.perf_counter()
    table = profile_sensitivity(
        loaded.model,
        calibration,
        bits=bits,
        group_size=group_size,
        quant_method=method,
        batch_size=batch_size,
        progress=progress,
        double_quant=double_quant,
        granularity=granularity,
    )
    return table, loaded, round(time.perf_counter() - started, 2)


def profile(
    model: str | None = None,
    *,
    output: str,
    data: str | None = None,
    bits: str | None = None,
    samples: int = 8,
    seq_len: int = 256,
    batch_size: int = 4,
    group_size: int | None = None,
    quant_method: str | None = None,
    device: str = "auto",
    seed: int = 0,
    double_quant: bool = False,
    dtype: str = "fp32",
    granularity: str = "block",
    max_memory: str | None = None,
    serve: str | None = None,
    force: bool = False,
    no_progress: bool = False,
) -> int:
    """Profile how much quantising each block alone moves the model's output (Eq. 6, §3.3).

    For every block l and bit-width b, S_l(b) is the mean KL divergence (nats per token) from
    the full-precision next-token distribution to the one with only block l quantised to b
    bits, over calibration windows packed from --data. The column at the lowest bits is the
    paper's S_l, which biases the search's initial population. With --granularity module, a
    row per linear of each block, only that linear quantised (for qra plan --baseline knapsack
    --granularity module). Cost: one forward per (block, bits), or per (block, module, bits),
    over SAMPLES x SEQ_LEN tokens, plus SAMPLES x SEQ_LEN x vocab x 4 bytes of stored
    full-precision log-probs (403 MB for 2048 SmolLM2 tokens). Writes OUT_DIR/sensitivity.json
    (the table, the model and the settings), sensitivity.csv and sensitivity.png (needs
    matplotlib), and prints the table with each block's rank at the lowest bits.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        output: folder for sensitivity.json, .csv and .png (created if missing)
        data: calibration text: embedded:NAME (e.g. embedded:qa-mix), a .txt file (documents
            separated by blank lines), a .json/.jsonl file with a text field, a save_to_disk
            folder or a hub dataset id; omitted: embedded:wiki-calibration (Wikipedia passages
            of DROP and CoQA, which no reported task uses)
        bits: candidate bit-widths, comma-separated, each 1..8 (default 2,3,4,8; with
            --serve the engine's quantised bits: 4,5,8 for llama.cpp, 4,8 for vllm)
        samples: calibration windows
        seq_len: tokens per calibration window
        batch_size: windows per forward pass
        group_size: input columns per quantisation group (default 64; 32 with --serve
            llama.cpp)
        quant_method: how codes are fitted: rtn (min-max), hqq (half-quadratic) or symmetric
            (llama.cpp's Q4_0/Q5_0/Q8_0 rounding, no zero point; bits 2..8) (default hqq;
            symmetric with --serve llama.cpp or --serve vllm)
        device: auto (cuda if available), cpu or cuda; fp32 on both unless --dtype bf16, so the
            small KLs of high bit-widths are not rounding noise
        seed: seed of the document shuffle before packing
        double_quant: store scales and zeros at 8 bits (QLoRA's double quantisation), as a plan
            made with --double-quant quantises them; its knapsack needs such a profile
        dtype: fp32 or bf16: the dtype the weights are loaded and run in (bf16 halves the
            weights' memory, no fp32 copy is made; the log-probs and KL stay fp32)
        granularity: block (a row per block, all its linears quantised) or module (a row per
            linear of each block, only it quantised: 7x the forwards on a Llama block, the
            same weight fits)
        max_memory: refuse to start unless the predicted peak fits SIZE (e.g. 24GB, 24GiB,
            24000MB), checked from the model's config before any weight loads; on CUDA the
            process is also capped at SIZE
        serve: profile what this engine's plans quantise with, as qra plan --baseline knapsack
            --serve ENGINE and qra search --serve ENGINE plan: llama.cpp (symmetric, group 32,
            bits 4,5,8) or vllm (symmetric unless --quant-method is given, bits 4,8); options
            given that the engine cannot serve are refused before anything loads
        force: overwrite sensitivity.* files already in the folder
        no_progress: no progress output
    """
    bits_list, group_size, quant_method = _choices(bits, group_size, quant_method, double_quant, serve)
    if samples < 1 or seq_len < 1:
        raise ValueError(f"--samples and --seq-len must be >= 1, got {samples} and {seq_len}")
    if batch_size < 1 or group_size < 1:
        raise ValueError(f"--batch-size and --group-size must be >= 1, got {batch_size} and {group_size}")
    if quant_method not in QUANT_METHODS:
        raise ValueError(f"--quant-method must be one of {', '.join(QUANT_METHODS)}, got {quant_method!r}")
    if quant_method == "symmetric":  # no zero to double-quantise, no 1-bit grid
        from qradaptor.quant.quantizer import check_symmetric

        check_symmetric(min(bits_list), double_quant, where="--quant-method symmetric")
    check_device(device)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    from qradaptor.cli import max_memory as limits

    memory_cap = limits.parse(max_memory)  # bytes, None: no --max-memory
    plot = can_plot()
    folder = _check_out_dir(output, force, plot)  # fail now, not after the profile

    from qradaptor.data import load_texts
    from qradaptor.data.corpora import DEFAULT_CALIBRATION
    from qradaptor.data.loading import EMBEDDED_PREFIX
    from qradaptor.data.search_texts import eval_text_warning

    texts = load_texts(data)  # a bad --data fails before the model loads
    warning = eval_text_warning("--data", data or "")
    if warning:
        print(f"qra profile: {warning}", file=sys.stderr)

    from qradaptor.models.provenance import read_provenance
    from qradaptor.models.structure import inspect_model
    from qradaptor.sensitivity_table import plot_sensitivity

    device = resolve_device(device)
    if memory_cap is not None:
        from qradaptor.cli.common import load_structure

        limits.check_profile(
            memory_cap,
            load_structure(model)[1],
            samples=samples,
            seq_len=seq_len,
            batch_size=batch_size,
            weight_bytes=DTYPE_BYTES[dtype],
            device=device,
        )
    table, loaded, seconds = measure_profile(
        model,
        texts,
        bits_list,
        samples,
        seq_len,
        batch_size,
        group_size,
        quant_method,
        device,
        seed,
        not no_progress,
        double_quant,
        dtype,
        granularity,
    )
    record: dict[str, Any] = {
        **table.to_dict(),  # top level, so SensitivityTable.from_dict reads this file as is
        "model": loaded.source,
        "origin": loaded.origin,
        "model_signature": inspect_model(loaded.model).signature,  # refuses the file for another model
        "ranks": sensitivity_ranks(table.min_bits_profile()),
        "settings": {
            "data": data or EMBEDDED_PREFIX + DEFAULT_CALIBRATION,
            "samples": samples,
            "seq_len": seq_len,
            "seed": seed,
            "batch_size": batch_size,
            "device": device,
            "dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype],
        },
        "seconds": seconds,
    }
    # The "full-precision" reference is whatever the source stores, upcast to float32.
    record["provenance"] = read_provenance(loaded.source).to_dict()

    folder.mkdir(parents=True, exist_ok=True)
    written = [
        write_text_atomic(folder / "sensitivity.json", json.dumps(record, indent=2) + "\n", force=force),
        write_text_atomic(folder / "sensitivity.csv", table.to_csv(), force=force),
    ]
    if plot:
        plot_sensitivity(table, folder / "sensitivity.png")
        written.append(folder / "sensitivity.png")
    print(_render(record, table))
    print(f"{seconds:.1f} s profiling on {device}; wrote " + ", ".join(str(p) for p in written))
    if not plot:
        print("note: matplotlib is not installed, so no sensitivity.png (pip install 'qradaptor[plot]')")
    return 0


VERB = profile


def _choices(
    bits: str | None, group_size: int | None, quant_method: str | None, double_quant: bool, serve: str | None
) -> tuple[list[int], int, str]:
    """(bits, group size, quant method) to profile: those given, the rest the defaults or,
    with ``serve``, what that engine's plans use, so the knapsack over the table can take it.

    Raises:
        ValueError: an unknown ``serve``, or a choice given that the engine cannot serve.
    """
    from qradaptor.plan import UNQUANTIZED

    given = tuple(parse_bits(bits)) if bits is not None else None
    chosen = given or DEFAULT_BITS
    if serve is not None:
        chosen = served_bits(serve, given, group_size, quant_method, double_quant)
    group_size, quant_method = quantiser(serve, group_size, quant_method, double_quant)
    # An engine's 16-bit choice has no KL to measure.
    return [b for b in chosen if b != UNQUANTIZED], group_size, quant_method


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra profile``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help=helps["output"])
    parser.add_argument("--data", metavar="DATA", help=helps["data"])
    parser.add_argument("--bits", metavar="B[,B...]", help=helps["bits"])
    parser.add_argument("--samples", type=int, default=8, metavar="N", help=helps["samples"])
    parser.add_argument("--seq-len", type=int, default=256, metavar="T", help=helps["seq_len"])
    parser.add_argument("--batch-size", type=int, default=4, metavar="B", help=helps["batch_size"])
    parser.add_argument("--group-size", type=int, metavar="G", help=helps["group_size"])
    parser.add_argument("--quant-method", choices=QUANT_METHODS, help=helps["quant_method"])
    renamed_option(parser, "--method", "--quant-method")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--seed", type=int, default=0, help=helps["seed"])
    parser.add_argument("--double-quant", action="store_true", help=helps["double_quant"])
    parser.add_argument("--dtype", choices=tuple(DTYPE_BYTES), default="fp32", help=helps["dtype"])
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block", help=helps["granularity"])
    parser.add_argument("--max-memory", metavar="SIZE", help=helps["max_memory"])
    parser.add_argument("--serve", choices=SERVE_TARGETS, help=helps["serve"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
