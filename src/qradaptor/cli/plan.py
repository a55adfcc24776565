"""``qra plan``: write a uniform, hand-made or named baseline plan, stamped for a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from qradaptor.cli.common import (
    QUANT_METHODS,
    check_output,
    load_structure,
    parse_int_list,
    write_text_atomic,
)
from qradaptor.export.serve_targets import SERVE_TARGETS, quantiser
from qradaptor.sensitivity_table import GRANULARITIES

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan


def _per_block(values: list[int], option: str, num_blocks: int) -> list[int]:
    if len(values) == 1:
        return values * num_blocks
    if len(values) != num_blocks:
        raise ValueError(
            f"{option} needs one value per block ({num_blocks}) or a single value, got {len(values)}"
        )
    return values


def _uniform_pair(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--uniform must be BITS:RANK (e.g. 4:16), got {text!r}")
    return int(parts[0]), int(parts[1])


def plan(
    model: str | None = None,
    *,
    uniform: str | None = None,
    bits: str | None = None,
    ranks: str | None = None,
    baseline: str | None = None,
    rank: int | None = None,
    output: str | None = None,
    force: bool = False,
    group_size: int | None = None,
    quant_method: str | None = None,
    alpha: float = 16.0,
    embed_bits: int | None = None,
    head_bits: int | None = None,
    name: str | None = None,
    budget: str | None = None,
    sensitivity: str | None = None,
    device: str = "auto",
    no_progress: bool = False,
    double_quant: bool = False,
    serve: str | None = None,
    granularity: str = "block",
    rank_benefit: str | None = None,
) -> int:
    """Write a plan (bits and LoRA rank per block) for a model, as JSON.

    Either --uniform BITS:RANK for every block, or --bits and --ranks per block (a single
    value is used for every block). The plan is validated against the model and stamped
    with its signature, so using it on another model is refused.

    Or --baseline NAME [--rank R] [--bits B] for a named baseline (qradaptor.baselines):
    lora16, qlora, qlora-4/-3/-2, embed8-body4 (8-bit embedding and head), and the seed
    study's rank heuristics: rank-linear-decay (linear from 3R/2 at the top block down to
    R/2 at block 0; -growth the reverse; both the adapter size of uniform R),
    rank-attn-focus/-ffn-focus (R on one group, R/2 on the other),
    rank-attn-focus-matched/-ffn-focus-matched (2R, or what uniform R's adapter size
    allows, on one group, the rest of that size to the other),
    rank-gradient (proportional to per-block gradient norms, measured by a probe: 4
    backward passes of rank-R adapters on the 16-bit model over 8 windows of 256 tokens,
    fewer if the model's positions end sooner, of the embedded calibration text; it loads
    the weights).

    Or --baseline knapsack --budget B [--sensitivity FILE] [--bits 2,3,4,8] [--rank R]: the
    exact allocation of bits per block that minimises the summed KL sensitivity (Eq. 6)
    within the budget (a multiple-choice knapsack over the profile, solved by dynamic
    programming in milliseconds), every block at rank R (default 16; under a byte budget
    without --rank, each block's rank among 4, 8, 16: bits first, a larger rank only with
    bytes that buy no bits). Without --sensitivity it profiles
    first, as qra profile does by default (8 x 256 tokens of the embedded calibration text).
    With --granularity module it allocates bits per linear of each block instead, from a
    per-module profile (qra profile --granularity module). With --rank-benefit it chooses
    each block's rank too, among the ranks it prices: under a byte budget a rank's bytes then
    buy its measured benefit or bits, whichever lowers the summed KL less its benefit more
    (docs/ALLOCATION.md; benchmarks/rank_benefit.py measures one).

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        uniform: BITS:RANK for every block, e.g. 4:16 (QLoRA)
        bits: bits per block, comma-separated (1..8, or 16 = unquantised), e.g. 4,4,2; with
            --baseline one value, the block bits of qlora and the rank-* baselines (default 4);
            with --baseline knapsack the bit choices (default the profiled ones)
        ranks: LoRA rank per block, comma-separated (0 = no adapter), e.g. 16,8,0
        baseline: a named baseline plan: knapsack, lora16, qlora, qlora-4, qlora-3, qlora-2,
            embed8-body4, rank-linear-decay, rank-linear-growth, rank-attn-focus,
            rank-ffn-focus, rank-attn-focus-matched, rank-ffn-focus-matched, rank-gradient
        rank: base LoRA rank of --baseline (default 16; the knapsack under a byte budget
            chooses ranks without it)
        output: write the plan to this file (default: print it)
        force: overwrite --output if it exists
        group_size: input columns per quantisation group (one 16-bit scale and zero each; a
            scale only with --quant-method symmetric) (default 64; 32 with --serve llama.cpp)
        quant_method: how codes are fitted: rtn (min-max), hqq (half-quadratic) or symmetric
            (llama.cpp's rounding, no zero: 4, 5 and 8 bits at group 32 export unchanged as
            Q4_0, Q5_0 and Q8_0; bits 2..8, no --double-quant) (default hqq; symmetric with
            --serve llama.cpp or --serve vllm)
        alpha: LoRA alpha; an adapter of rank r is scaled by alpha / r
        embed_bits: bits of the input embedding (default 16 = unquantised); on a tied model
            also the head's unless --head-bits is given
        head_bits: bits of the output head (default 16 = unquantised)
        name: a label for reports (default e.g. uniform-4bit-r16, or the baseline's name)
        budget: with --baseline knapsack: average stored bits (e.g. 4.0bits, group scales and
            zeros included) or model bytes (e.g. 120MB, 1.5GiB; adapters included)
        sensitivity: with --baseline knapsack: a sensitivity.json of qra profile for this
            model, group size and method (omitted: profile first); or several, comma-separated,
            one per group size, and each block also chooses its group size among theirs
        device: with --baseline knapsack and no --sensitivity: where to profile (auto, cpu, cuda)
        no_progress: no progress output while profiling
        double_quant: store the block linears' scales and zeros at 8 bits with a 16-bit step
            and offset per 256 (QLoRA's double quantisation): about 0.25 bit per weight less
            metadata at group 64
        serve: with --baseline knapsack: only plans this engine serves; vllm: bits 4, 8 or 16
            (--bits default 4,8,16; q/k/v and gate/up share a block's bits), 16-bit embedding
            and head, no --double-quant, --quant-method symmetric unless another is given (its
            codes go in unchanged), as ``qra export --format compressed-tensors`` writes them;
            llama.cpp:
            --quant-method symmetric, --group-size 32, bits 4, 5, 8 or 16 (--bits default
            4,5,8,16), no --double-quant, each block linear written to GGUF unchanged as Q4_0,
            Q5_0, Q8_0 or F16 at the plan's bytes (``qra export --format gguf``); no ties: each
            GGUF tensor has its own type
        granularity: with --baseline knapsack: block (one bit-width per block) or module (one
            per linear; --sensitivity must be a per-module profile; with --serve vllm each
            fused group, q/k/v and gate/up, is one choice whose KL is its members' summed)
        rank_benefit: with --baseline knapsack: RANK:NATS pairs, e.g. 4:0,8:0.002,16:0.003,
            the held-out loss (nats per token) each rank gains over the smallest after a
            proxy fine-tune of one plan at each rank; each block then chooses its rank among
            these as well as its bits (instead of --rank)
    """
    from qradaptor.plan import Plan, check_bits, check_rank

    if serve is not None and baseline != "knapsack":
        raise ValueError(
            f"--serve goes with --baseline knapsack (or qra search), got --baseline {baseline!r}"
        )
    if granularity != "block" and baseline != "knapsack":
        raise ValueError(
            f"--granularity {granularity} goes with --baseline knapsack (other plans are per block), "
            f"got --baseline {baseline!r}"
        )
    group_size, quant_method = quantiser(serve, group_size, quant_method, double_quant)
    if quant_method == "symmetric" and double_quant:  # before a knapsack profiles anything
        from qradaptor.quant.quantizer import check_symmetric

        check_symmetric(None, double_quant, where="--quant-method symmetric")  # bits: by the plan
    if baseline == "knapsack":
        from qradaptor.cli.plan_baselines import knapsack

        return knapsack(
            model,
            bits,
            ranks,
            uniform,
            rank,
            budget,
            sensitivity,
            device,
            output,
            force,
            group_size,
            quant_method,
            alpha,
            embed_bits,
            head_bits,
            name,
            not no_progress,
            double_quant,
            serve,
            granularity,
            rank_benefit,
        )
    if rank_benefit is not None:
        raise ValueError(f"--rank-benefit goes with --baseline knapsack, got --baseline {baseline!r}")
    if budget is not None or sensitivity is not None:
        raise ValueError(
            f"--budget and --sensitivity go with --baseline knapsack, got --budget {budget!r} "
            f"--sensitivity {sensitivity!r}"
        )
    if baseline is not None:
        from qradaptor.cli.plan_baselines import baseline_plan, baseline_request

        request = baseline_request(baseline, uniform, bits, ranks, rank, embed_bits, head_bits)
        if output is not None:
            check_output(output, force=force)
        _, structure = load_structure(model)
        kwargs = plan_options(
            structure, group_size, quant_method, alpha, embed_bits, head_bits, name, double_quant
        )
        if request[0] == "embed8-body4":
            del kwargs["embed_bits"], kwargs["head_bits"]  # the baseline sets both to 8
        made = baseline_plan(model, structure, *request, kwargs)
        return write_plan(made, structure, output, force)
    if rank is not None:
        raise ValueError(
            f"--rank goes with --baseline; for other plans use --uniform BITS:RANK or --ranks, "
            f"got --rank {rank}"
        )
    if uniform is not None and (bits is not None or ranks is not None):
        raise ValueError("give either --uniform BITS:RANK or --bits/--ranks, not both")
    if uniform is None and (bits is None or ranks is None):
        raise ValueError("a plan needs --uniform BITS:RANK, or both --bits and --ranks")
    # Parse the numbers before loading the model, so a typo fails at once.
    if uniform is not None:
        pair = _uniform_pair(uniform)
        bits_list, ranks_list = [pair[0]], [pair[1]]
    else:
        assert bits is not None and ranks is not None
        bits_list, ranks_list = parse_int_list(bits, "--bits"), parse_int_list(ranks, "--ranks")
    for b in bits_list:
        check_bits(b, "--bits" if uniform is None else "BITS of --uniform")
    for r in ranks_list:
        check_rank(r, "--ranks" if uniform is None else "RANK of --uniform")
    if output is not None:
        check_output(output, force=force)
    _, structure = load_structure(model)
    kwargs = plan_options(
        structure, group_size, quant_method, alpha, embed_bits, head_bits, name, double_quant
    )
    if uniform is not None:
        made = Plan.uniform(structure.num_blocks, bits_list[0], ranks_list[0], **kwargs)
    else:
        per_bits = _per_block(bits_list, "--bits", structure.num_blocks)
        per_ranks = _per_block(ranks_list, "--ranks", structure.num_blocks)
        made = Plan.from_lists(per_bits, per_ranks, **kwargs)
    return write_plan(made, structure, output, force)


def write_plan(made: Plan, structure: ModelStructure, output: str | None, force: bool) -> int:
    """Validates ``made`` for ``structure``, then prints it or writes it to ``output``."""
    from qradaptor.plan import UNQUANTIZED

    made = made.for_model(structure)
    text = made.to_json() + "\n"
    if output is None:
        print(text, end="")
        return 0
    path = write_text_atomic(output, text, force=force)
    specs = [spec for _, _, spec in made.iter_modules(structure)]
    quantised = sorted({s.bits for s in specs if s.bits != UNQUANTIZED})
    print(
        f"wrote plan {made.name or '(unnamed)'} for {structure.describe()} to {path} "
        f"(bits {', '.join(map(str, quantised)) or 'none quantised'}; "
        f"avg rank {sum(s.rank for s in specs) / len(specs):g})"
    )
    return 0


def plan_options(
    structure: ModelStructure,
    group_size: int,
    quant_method: str,
    alpha: float,
    embed_bits: int | None,
    head_bits: int | None,
    name: str | None = None,
    double_quant: bool = False,
) -> dict[str, object]:
    """Plan keyword arguments; a tied head follows --embed-bits unless --head-bits is given."""
    from qradaptor.plan import UNQUANTIZED

    if head_bits is None:
        head_bits = embed_bits if structure.tied and embed_bits is not None else UNQUANTIZED
    options: dict[str, object] = {
        "group_size": group_size,
        "quant_method": quant_method,
        "alpha": alpha,
        "embed_bits": UNQUANTIZED if embed_bits is None else embed_bits,
        "head_bits": head_bits,
    }
    if double_quant:
        options["double_quant"] = True
    if name is not None:
        options["name"] = name
    return options


VERB = plan


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra plan``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--uniform", metavar="BITS:RANK", help=helps["uniform"])
    parser.add_argument("--bits", metavar="B[,B...]", help=helps["bits"])
    parser.add_argument("--ranks", metavar="R[,R...]", help=helps["ranks"])
    parser.add_argument("--baseline", metavar="NAME", help=helps["baseline"])
    parser.add_argument("--rank", type=int, metavar="R", help=helps["rank"])
    parser.add_argument("-o", "--output", metavar="FILE", help=helps["output"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
    parser.add_argument("--group-size", type=int, help=helps["group_size"])
    parser.add_argument("--quant-method", choices=QUANT_METHODS, help=helps["quant_method"])
    parser.add_argument("--alpha", type=float, default=16.0, help=helps["alpha"])
    parser.add_argument("--embed-bits", type=int, help=helps["embed_bits"])
    parser.add_argument("--head-bits", type=int, help=helps["head_bits"])
    parser.add_argument("--name", help=helps["name"])
    parser.add_argument("--budget", metavar="B", help=helps["budget"])
    parser.add_argument("--sensitivity", metavar="FILE", help=helps["sensitivity"])
    parser.add_argument("--device", default="auto", help=helps["device"])
    parser.add_argument("--double-quant", action="store_true", help=helps["double_quant"])
    parser.add_argument("--serve", choices=SERVE_TARGETS, help=helps["serve"])
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block", help=helps["granularity"])
    parser.add_argument("--rank-benefit", metavar="RANK:NATS[,...]", help=helps["rank_benefit"])
