"""``qra search`` as a library call: ``run(SearchOptions(...))`` checks every option before
anything heavy loads, holds the run folder (and the study), then searches and writes the folder.

``qra search`` parses its command line into ``SearchOptions`` and calls ``run``; a benchmark or
a runner calls it in-process with the same dataclass.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.export.serve_targets import quantiser
from qradaptor.recipes.inputs import (
    check_device,
    check_output_dir,
    load_structure,
    parse_int_list,
    read_sensitivity,
    resolve_device,
)
from qradaptor.recipes.search_options import (
    GRANULARITIES,
    PRESETS,
    SEARCH_BITS_TEXT,
    SearchOptions,
    check_positive,
    parse_choices,
    servable_bits,
)

if TYPE_CHECKING:
    from qradaptor.models.structure import ModelStructure
    from qradaptor.recipes.search_execution import SearchRequest
    from qradaptor.search.budget import Budget
    from qradaptor.search.definition import SearchConfig
    from qradaptor.search.space import MemoryTable

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
"""Bytes per weight of what --dtype takes."""


def run(options: SearchOptions) -> int:
    """Runs the search ``options`` describe into its run folder (resuming one there).

    Args:
        options: the search, as ``qra search``'s command line gives it.

    Returns:
        0, or 130 when interrupted (the finished trials stay in the study).

    Raises:
        ValueError: for any option that is wrong, before the model's weights load; also when
            the folder or the study is held by another search.
    """
    from qradaptor.lock import RunLock

    request, structure, table = prepare(options)
    shared = None
    if options.storage:
        from qradaptor.distributed.queue import open_storage

        # An unreachable server: refused before anything is loaded or written.
        shared = open_storage(options.storage)
    from qradaptor.recipes.search_execution import execute

    with contextlib.ExitStack() as held:
        # One writer per run folder and per study: a second search is refused before any load.
        held.enter_context(RunLock(request.run_dir, "qra search"))
        if shared is not None:
            from qradaptor.distributed.owner import StudyClaim

            held.enter_context(StudyClaim(shared, options.study))
        return execute(request, structure, table)
    raise AssertionError("unreachable")  # ExitStack swallows nothing


def sized(options: SearchOptions) -> SearchOptions:
    """``options`` with --preset resolved (auto: full on CUDA, quick on the CPU) and every
    preset-sized option left None taken from it."""
    if options.preset != "auto" and options.preset not in PRESETS:
        raise ValueError(f"--preset must be one of auto, {', '.join(PRESETS)}, got {options.preset!r}")
    check_device(options.device)
    preset = options.preset
    if preset == "auto":
        preset = "full" if resolve_device(options.device) == "cuda" else "quick"
    if _screen_by_default(options, preset):
        print(
            "qra search: forward only (--steps 0): under a bits budget the full preset's proxy "
            "fine-tunes changed no measured choice and cost 1.18 epochs against 0.21 "
            "(docs/ALLOCATION.md); --steps 20 for them",
            file=sys.stderr,
        )
        options = replace(options, steps=0, rungs=0)
    if options.steps == 0 or options.rungs == 0:  # the forward-only search: both or neither
        if options.strategy != "halving":
            raise ValueError(
                f"--steps 0 (plans scored forward only, no proxy fine-tune) is for --strategy halving, "
                f"got --strategy {options.strategy}"
            )
        if options.steps not in (0, None) or options.rungs not in (0, None):
            raise ValueError(
                "--steps 0 and --rungs 0 go together (every plan scored forward only, the screen the "
                f"top rung); got --steps {options.steps} --rungs {options.rungs}: give one of them, "
                "or both as 0"
            )
        options = replace(options, steps=0, rungs=0)
    given = {name: size for name, size in PRESETS[preset].items() if getattr(options, name) is None}
    return replace(options, preset=preset, **given)


def _screen_by_default(options: SearchOptions, preset: str) -> bool:
    """Whether a search given no --steps and no --rungs scores its plans forward only.

    Yes for the halving strategy at the full preset, per block, under an avg-bits budget with
    bits to search: there the proxy rungs changed no fine-tuned result at any of the four budgets
    measured (4.0-5.0 bits, 3 seeds: the screen's picks fine-tuned to the full search's
    perplexity within its seeds' spread) at 5.6x the cost, and rank, which only a fine-tune can
    score, costs nothing. Not under a byte budget (ranks cost memory there), per module, for
    --serve, or at the quick preset (its few short proxies are cheap; issue 15's laptop search).
    """
    from qradaptor.search.budget import parse_budget

    if options.strategy != "halving" or preset != "full" or options.granularity != "block":
        return False
    if options.steps is not None or options.rungs is not None or options.fixed_bits is not None:
        return False
    if options.serve is not None:
        return False
    return parse_budget(options.budget).kind == "avg_bits"


def prepare(options: SearchOptions) -> tuple[SearchRequest, ModelStructure, MemoryTable]:
    """Every check of a search that needs no weights, in the order a user meets them: the
    options, the output folder, a given profile, the budget against the space, --max-memory
    and the data. Returns what ``search_execution.execute`` runs, with the model's structure
    and the space's memory table (from the config alone).

    Raises:
        ValueError: naming the option, the rule and the value.
    """
    from qradaptor.plan import check_bits, check_rank
    from qradaptor.recipes import max_memory as limits
    from qradaptor.search.budget import parse_budget

    o = options
    memory_cap = limits.parse(o.max_memory)  # bytes, None: no --max-memory
    if o.dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {o.dtype!r}")
    if o.dtype != "fp32" and (o.workers or o.storage):
        raise ValueError(
            f"--dtype {o.dtype} is for a search in this process; --workers and --storage load fp32"
        )
    o = sized(o)
    the_budget = parse_budget(o.budget)
    bit_choices = parse_choices(SEARCH_BITS_TEXT if o.bits is None else o.bits, "--bits", check_bits)
    if o.serve is not None:
        bit_choices = servable_bits(
            o.serve,
            o.bits,
            bit_choices,
            o.granularity,
            o.fixed_bits,
            o.strategy,
            o.group_size,
            o.quant_method,
            o.double_quant,
        )
    group_size, quant_method = quantiser(o.serve, o.group_size, o.quant_method, o.double_quant)
    o = replace(o, group_size=group_size, quant_method=quant_method)  # type: ignore[arg-type]
    rank_choices = parse_choices(o.ranks, "--ranks", check_rank)
    if o.steps == 0:
        o = _forward_only_ranks(o, rank_choices, the_budget)
    if o.granularity not in GRANULARITIES:
        raise ValueError(f"--granularity must be one of {GRANULARITIES}, got {o.granularity!r}")
    assert o.seq_len is not None and o.steps is not None and o.batch_size is not None  # sized
    assert o.eval_batches is not None and o.calibration_samples is not None
    if o.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: plans scored forward only), got {o.steps}")
    if not 0 <= o.screen_margin < math.inf:
        raise ValueError(f"--screen-margin must be a number of standard errors >= 0, got {o.screen_margin}")
    check_positive(
        seq_len=o.seq_len,
        batch_size=o.batch_size,
        eval_batches=o.eval_batches,
        calibration_samples=o.calibration_samples,
        population=o.population,
    )
    if o.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {o.workers}")
    o = replace(
        o,
        offspring=max(1, o.workers) if o.offspring is None else o.offspring,
        bayes_batch=max(1, o.workers) if o.bayes_batch is None else o.bayes_batch,
    )
    assert o.offspring is not None and o.bayes_batch is not None and o.bayes_iterations is not None
    check_positive(offspring=o.offspring, bayes_batch=o.bayes_batch)
    gpu_list = parse_int_list(o.gpus, "--gpus") if o.gpus else None
    if o.generations < 0 or o.bayes_iterations < 0:
        raise ValueError(
            f"--generations and --bayes-iterations must be >= 0, got {o.generations}, {o.bayes_iterations}"
        )
    _check_ablations(o, the_budget)
    if o.quant_method == "symmetric":  # no zero to double-quantise, no 1-bit grid
        from qradaptor.quant.quantizer import check_symmetric

        quantised = [b for b in bit_choices if b != 16] or [16]
        check_symmetric(min(quantised), o.double_quant, where="--quant-method symmetric")
    run_dir = Path(o.output).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output {o.output!r} is a file; give a folder for the run")
    check_output_dir(run_dir)  # writable, or creatable: before the model loads
    given_sensitivity = read_sensitivity(o.sensitivity) if o.sensitivity else None

    from qradaptor.data.search_texts import search_texts
    from qradaptor.recipes.search_execution import SearchRequest
    from qradaptor.search.budget import check_budget
    from qradaptor.search.pipeline import search_space
    from qradaptor.search.profiling import check_given_profile
    from qradaptor.search.proxy import ProxyConfig

    device = resolve_device(o.device)
    config = search_config(o, the_budget, bit_choices, rank_choices)
    warmup = 0 if o.steps == 0 else ProxyConfig.warmup  # forward only: nothing to warm up
    proxy = ProxyConfig(
        steps=o.steps, batch_size=o.batch_size, lr=o.lr, eval_batches=o.eval_batches, warmup=warmup
    )

    structure = load_structure(o.model)[1]
    if o.serve == "vllm" and o.granularity == "module":  # llama.cpp fuses nothing: no ties
        from qradaptor.export.vllm_constraints import fused_groups

        config = replace(config, tied=tuple(fused_groups(structure)))  # one choice per fused layer
    space, table, _ = search_space(structure, config)
    if given_sensitivity is not None and not o.no_profile:  # refused here, before the lock and the load
        check_given_profile(given_sensitivity, structure, space, config)
    if check_budget(the_budget, table):  # before loading weights; said at once, not after the load
        print(
            f"qra search: budget {the_budget.describe()} affords the largest plan of the search space: "
            "nothing to search; it is scored once and returned",
            file=sys.stderr,
        )
    lean: dict[str, bool] = {}
    if memory_cap is not None:
        fit = limits.check_search(
            memory_cap,
            structure,
            config,
            calibration_samples=o.calibration_samples,
            seq_len=o.seq_len,
            batch_size=o.batch_size,
            profiles=given_sensitivity is None and not o.no_profile,
            device=device,
            weight_bytes=DTYPE_BYTES[o.dtype],
        )
        lean = fit.run_search_options()
        if not fit.references:
            config = replace(config, references=False)
    texts = search_texts(o.data, o.eval_data)  # a bad or too small --data fails before the lock and the load
    for line in texts.warnings:
        print(f"qra search: {line}", file=sys.stderr)
    request = SearchRequest(
        model=o.model,
        budget=o.budget,
        config=config,
        proxy=proxy,
        seq_len=o.seq_len,
        calibration_samples=o.calibration_samples,
        texts=texts,
        sensitivity=given_sensitivity,
        run_dir=run_dir,
        device=device,
        dtype=o.dtype,
        preset=o.preset,
        workers=o.workers,
        gpus=gpu_list,
        storage=o.storage,
        study=o.study,
        lean=lean,
        progress=not o.no_progress,
    )
    return request, structure, table


def _forward_only_ranks(o: SearchOptions, ranks: tuple[int, ...], budget: Budget) -> SearchOptions:
    """``o`` with one rank for every block under --steps 0, which scores plans forward only:
    every adapter starts at zero (LoRA's B), so all ranks score alike and a search among them
    would choose by bytes alone (a CPU run at 4.5 bits chose a Bayes pick that only halved one
    block's rank). The rank is --fixed-rank, else under an avg-bits budget (rank costs no bits)
    the largest --ranks choice, and under a byte budget the smallest: bits first, as the
    knapsack's default is (measured at 120 MB on SmolLM2: the largest rank fine-tuned to 3.5x
    the perplexity of the rank the proxies chose, the smallest). Said either way."""
    if o.fixed_bits is not None:
        raise ValueError(
            f"--steps 0 with --fixed-bits {o.fixed_bits} leaves nothing to score: plans are scored "
            "forward only, where every adapter starts at zero, so ranks cannot be told apart; "
            "search bits (drop --fixed-bits) or give --steps N for proxy fine-tunes"
        )
    if o.fixed_rank is not None:
        return o
    if budget.kind == "avg_bits":
        rank, which = max(ranks), "the largest --ranks choice: under an avg-bits budget rank costs no bits"
    else:
        rank, which = (
            min(ranks),
            (
                "the smallest --ranks choice: under a byte budget the rank also sets the bytes left for "
                "bits, which no forward pass can weigh, so bits come first, as in `qra plan --baseline "
                "knapsack`; at 120 MB on SmolLM2 the largest rank fine-tuned to 3.5x the perplexity of "
                "the smallest, the rank proxy fine-tunes chose (docs/ALLOCATION.md); leave out --steps 0 "
                "to let them choose"
            ),
        )
    print(
        "qra search: --steps 0 scores plans forward only, where every adapter starts at zero, so "
        f"ranks cannot be told apart: every block gets rank {rank} ({which}; --fixed-rank R for "
        "another).",
        file=sys.stderr,
    )
    return replace(o, fixed_rank=rank)


def _check_ablations(o: SearchOptions, budget: Budget) -> None:
    """--fixed-bits and --fixed-rank: at most one, in range, and something left to search."""
    from qradaptor.plan import check_bits, check_rank

    if o.fixed_bits is not None and o.fixed_rank is not None:
        raise ValueError(
            "give at most one of --fixed-bits and --fixed-rank: with both there is nothing to search"
        )
    if o.fixed_bits is not None:
        check_bits(o.fixed_bits, "--fixed-bits")
        if budget.kind == "avg_bits":
            # Every plan then has the same average bits: all fit (the largest, every rank at
            # its top, is returned unsearched) or none does. Bytes count the adapters too.
            raise ValueError(
                f"--fixed-bits {o.fixed_bits} with a budget in bits ({o.budget}) leaves nothing to search: "
                "every plan has the same average bits, and ranks cost no bits; give the budget in "
                "bytes (e.g. 120MB), which counts the adapters"
            )
    if o.fixed_rank is not None:
        check_rank(o.fixed_rank, "--fixed-rank")


def search_config(
    o: SearchOptions, budget: Budget, bits: tuple[int, ...], ranks: tuple[int, ...]
) -> SearchConfig:
    """The library's ``SearchConfig`` of sized options ``o`` (see ``sized``)."""
    from qradaptor.search.bayes import BayesConfig
    from qradaptor.search.multifidelity import HalvingConfig
    from qradaptor.search.pipeline import SearchConfig

    assert o.candidates is not None and o.rungs is not None and o.bayes_iterations is not None
    assert o.offspring is not None and o.bayes_batch is not None
    return SearchConfig(
        budget=budget,
        strategy=o.strategy,
        halving=HalvingConfig(
            candidates=o.candidates,
            sweep=min(8, o.candidates),
            eta=o.eta,
            rungs=o.rungs,
            screen_margin=o.screen_margin,
        ),
        bits=bits,
        ranks=ranks,
        granularity=o.granularity,
        fixed_bits=o.fixed_bits,
        fixed_rank=o.fixed_rank,
        profile=not o.no_profile,
        references=not o.no_references and o.preset == "full",
        population=o.population,
        offspring=o.offspring,
        generations=o.generations,
        bayes=BayesConfig(iterations=o.bayes_iterations, batch=o.bayes_batch),
        seed=o.seed,
        group_size=o.group_size,
        quant_method=o.quant_method,
        double_quant=o.double_quant,
    )
