"""``qra plan --baseline``: the named baseline plans (rank-gradient's probe included) and the
exact knapsack plan, each checked before the model or the profile loads."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import check_output, load_structure, parse_int_list
from qradaptor.cli.plan import plan_options, write_plan

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan

PROBE_WINDOWS = 8
"""Windows of the embedded calibration text the rank-gradient probe runs on."""
PROBE_SEQ_LEN = 256
"""Tokens per probe window (fewer if the model's positions end sooner)."""
PROBE_BATCH = 2
"""Windows per probe step; PROBE_WINDOWS / PROBE_BATCH steps in all."""


def baseline_request(
    baseline: str,
    uniform: str | None,
    bits: str | None,
    ranks: str | None,
    rank: int | None,
    embed_bits: int | None,
    head_bits: int | None,
) -> tuple[str, int, int]:
    """(name, rank, bits) of a --baseline request, checked before any model is loaded."""
    from qradaptor.baselines import FIXED_BITS, check_baseline_name
    from qradaptor.plan import check_bits

    name = check_baseline_name(baseline, "--baseline")
    if uniform is not None or ranks is not None:
        raise ValueError(
            f"--baseline makes the whole plan; give it without --uniform and --ranks "
            f"(got --uniform {uniform!r}, --ranks {ranks!r})"
        )
    if rank is not None and rank < 1:
        raise ValueError(f"--rank must be an integer >= 1, got {rank}")
    block_bits = 4
    if bits is not None:
        values = parse_int_list(bits, "--bits")
        if len(values) != 1:
            raise ValueError(f"--bits with --baseline must be one value (the block bits), got {bits!r}")
        block_bits = check_bits(values[0], "--bits")
        if name in FIXED_BITS:
            raise ValueError(
                f"--baseline {name} fixes the block bits at {FIXED_BITS[name]}; drop --bits {bits}"
            )
    if name == "embed8-body4" and (embed_bits is not None or head_bits is not None):
        raise ValueError(
            "--baseline embed8-body4 sets the embedding and head to 8 bits; drop --embed-bits/--head-bits"
        )
    return name, 16 if rank is None else rank, block_bits


def baseline_plan(
    model: str | None, structure: ModelStructure, name: str, rank: int, bits: int, options: dict[str, Any]
) -> Plan:
    """The baseline plan with the verb's options; rank-gradient first runs the probe."""
    from qradaptor.baselines import baseline_plan

    norms = _probe(model, structure, rank) if name == "rank-gradient" else None
    return replace(baseline_plan(name, structure, rank=rank, bits=bits, gradient_norms=norms), **options)


def _probe(model: str | None, structure: ModelStructure, rank: int) -> list[float]:
    """Per-block gradient norms of rank-``rank`` adapters on the 16-bit model (train.probe)."""
    import torch

    from qradaptor.cli.common import resolve_device
    from qradaptor.data import load_texts, pack_texts
    from qradaptor.models.loading import load_model
    from qradaptor.train.probe import gradient_norms

    loaded = load_model(model, dtype=torch.float32, device=resolve_device("auto"))
    config = loaded.model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    seq_len = min(PROBE_SEQ_LEN, positions or PROBE_SEQ_LEN)
    ids = pack_texts(load_texts(None), loaded.tokenizer, seq_len, num_sequences=PROBE_WINDOWS, seed=0)
    batches = list(ids.split(PROBE_BATCH))  # (PROBE_BATCH, T) each
    norms = gradient_norms(loaded.model, structure, batches, rank=rank, steps=len(batches), seed=0)
    print(
        f"gradient probe ({len(batches)} steps of {PROBE_BATCH} x {seq_len} tokens): per-block norms "
        + ", ".join(f"{g:.3g}" for g in norms),
        file=sys.stderr,
    )
    return norms


def knapsack(
    model: str | None,
    bits: str | None,
    ranks: str | None,
    uniform: str | None,
    rank: int | None,
    budget: str | None,
    sensitivity: str | None,
    device: str,
    output: str | None,
    force: bool,
    group_size: int,
    quant_method: str,
    alpha: float,
    embed_bits: int | None,
    head_bits: int | None,
    name: str | None,
    progress: bool,
    double_quant: bool = False,
    serve: str | None = None,
    granularity: str = "block",
    rank_benefit: str | None = None,
) -> int:
    """``--baseline knapsack``: every input checked before the profile or the model loads;
    ``serve="vllm"`` keeps to the bits vLLM serves (``export.vllm_constraints``) and, per
    module, gives each fused group one choice; ``serve="llama.cpp"`` keeps to the bits, group
    size and quantiser GGUF holds unchanged (``export.llama_cpp_constraints``), picking those
    not given (``qra plan`` picked the group size and quantiser, ``serve_targets.quantiser``)."""
    from qradaptor.cli.common import check_device, read_sensitivity, resolve_device
    from qradaptor.cli.profile import parse_bits
    from qradaptor.plan import UNQUANTIZED, check_bits
    from qradaptor.search.budget import parse_budget
    from qradaptor.search.knapsack import chooses_ranks_by_default, knapsack_plan

    if uniform is not None or ranks is not None:
        raise ValueError(
            f"--baseline knapsack makes the whole plan; give it without --uniform and --ranks "
            f"(got --uniform {uniform!r}, --ranks {ranks!r})"
        )
    if budget is None:
        raise ValueError("--baseline knapsack needs --budget, e.g. 4.0bits or 120MB")
    from qradaptor.sensitivity_table import GRANULARITIES

    if granularity not in GRANULARITIES:
        raise ValueError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    parsed = parse_budget(budget)
    if rank is not None and rank < 0:
        raise ValueError(f"--rank must be an integer >= 0, got {rank}")
    benefit = None
    if rank_benefit is not None:
        from qradaptor.search.knapsack_ranks import parse_rank_benefit

        if rank is not None:
            raise ValueError(
                f"--rank-benefit chooses the ranks among those it prices; give it without --rank "
                f"(got --rank {rank})"
            )
        benefit = parse_rank_benefit(rank_benefit)
    choices = None
    if bits is not None:
        values = parse_int_list(bits, "--bits")
        for b in values:
            check_bits(b, "--bits")
        if values != sorted(set(values)):
            raise ValueError(f"--bits must be ascending without repeats, got {bits!r}")
        choices = tuple(values)
        quantised = [b for b in choices if b != UNQUANTIZED]
        if quant_method == "symmetric" and quantised:  # before the profile fits them
            from qradaptor.quant.quantizer import check_symmetric

            check_symmetric(min(quantised), double_quant, where="--quant-method symmetric")
    if serve == "vllm":
        for option, value in (("--embed-bits", embed_bits), ("--head-bits", head_bits)):
            if value is not None and value != UNQUANTIZED:
                raise ValueError(
                    f"{option} {value} with --serve vllm: vLLM serves a 16-bit embedding and head"
                )
    if serve is not None:
        from qradaptor.export.serve_targets import served_bits

        choices = served_bits(serve, choices, group_size, quant_method, double_quant)
    if serve == "llama.cpp":
        if sensitivity is not None and "," in sensitivity:  # one table per group size: a choice of sizes
            raise ValueError(
                f"--sensitivity {sensitivity} with --serve llama.cpp: GGUF blocks are 32 weights, so "
                "give one profile, of --group-size 32 --quant-method symmetric"
            )
    check_device(device)
    if output is not None:
        check_output(output, force=force)
    if benefit is None and chooses_ranks_by_default(parsed, rank):  # say what knapsack_plan will do
        from qradaptor.search.space import DEFAULT_RANKS

        print(
            f"{budget} is a byte budget: the knapsack chooses each unit's rank among "
            f"{', '.join(map(str, DEFAULT_RANKS))}, spending bytes on bits first and on rank only "
            "where they buy no bits (--rank R fixes one rank; --rank-benefit prices them)",
            file=sys.stderr,
        )
    _, structure = load_structure(model)
    kwargs = plan_options(
        structure, group_size, quant_method, alpha, embed_bits, head_bits, name, double_quant
    )
    if sensitivity is not None:
        tables = [read_sensitivity(path, structure.signature) for path in sensitivity.split(",")]
        table = tables[0] if len(tables) == 1 else tables
    else:
        from qradaptor.cli.profile import measure_profile
        from qradaptor.data import load_texts

        quantised = [b for b in (choices or (2, 3, 4, 8)) if b != UNQUANTIZED]
        table, _, seconds = measure_profile(
            model,
            load_texts(None),
            parse_bits(",".join(map(str, quantised))),
            8,
            256,
            4,
            group_size,
            quant_method,
            resolve_device(device),
            0,
            progress,
            bool(kwargs.get("double_quant", False)),
            granularity=granularity,
        )
        print(f"profiled {len(quantised)} bit-widths in {seconds:.1f} s", file=sys.stderr)
    tied: list[tuple[str, ...]] = []
    if serve == "vllm":  # llama.cpp types each tensor alone: no ties
        from qradaptor.export.vllm_constraints import fused_groups

        tied = fused_groups(structure)  # vLLM runs each as one layer: one bit-width each
    made = knapsack_plan(
        structure,
        table,
        parsed,
        bits=choices,
        rank=rank,
        granularity=granularity,  # type: ignore[arg-type]
        tied=tied,
        rank_benefit=benefit,
        **kwargs,
    )
    if serve == "vllm":  # the knapsack tied every fused group: this only confirms it
        from qradaptor.export.vllm_constraints import check_vllm_plan

        check_vllm_plan(made, structure)
    if serve == "llama.cpp":  # the choices were llama.cpp's: this only confirms it
        from qradaptor.export.llama_cpp_constraints import check_llama_cpp_plan

        check_llama_cpp_plan(made, structure)
    return write_plan(made, structure, output, force)
