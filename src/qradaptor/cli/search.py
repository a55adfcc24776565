"""``qra search``: find per-block bits and ranks under a memory budget, into a run folder."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from qradaptor.cli.common import (
    check_device,
    check_output_dir,
    load_structure,
    parse_int_list,
    read_sensitivity,
    renamed_option,
    resolve_device,
)
from qradaptor.cli.search_options import (
    GRANULARITIES,
    PRESETS,
    STRATEGIES,
    check_positive,
    parse_choices,
    servable_bits,
)
from qradaptor.export.vllm_constraints import SERVE_TARGETS

SEARCH_BITS_TEXT = "2,3,4,8"
"""--bits without --serve (``search.definition.SearchConfig``'s bits; a test checks they agree)."""


def search(
    model: str | None = None,
    *,
    budget: str,
    output: str = "qra-search",
    strategy: str = "halving",
    preset: str = "auto",
    candidates: int | None = None,
    rungs: int | None = None,
    eta: int = 3,
    data: str | None = None,
    eval_data: str | None = None,
    bits: str | None = None,
    ranks: str = "4,8,16",
    granularity: str = "block",
    seq_len: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float = 2e-4,
    eval_batches: int | None = None,
    calibration_samples: int | None = None,
    population: int = 5,
    offspring: int | None = None,
    generations: int = 5,
    bayes_iterations: int | None = None,
    bayes_batch: int | None = None,
    no_profile: bool = False,
    sensitivity: str | None = None,
    fixed_bits: int | None = None,
    fixed_rank: int | None = None,
    no_references: bool = False,
    group_size: int = 64,
    quant_method: str = "hqq",
    double_quant: bool = False,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "fp32",
    workers: int = 0,
    gpus: str | None = None,
    storage: str | None = None,
    study: str = "qradaptor",
    max_memory: str | None = None,
    no_progress: bool = False,
    serve: str | None = None,
) -> int:
    """Search per-block bits and LoRA ranks under a memory budget (QR-Adaptor).

    Profiles each block's sensitivity (KL, Eq. 6). The default strategy, halving, starts from
    the exact knapsack allocation over that profile and its neighbours (layer-wise crossover,
    proximity mutation), scores them all forward only, then promotes the best third through
    proxy fine-tunes of rising length (the knapsack plan always reaches the top, so the choice
    is never worse than it there); --strategy paper evolves plans with NSGA-II, every plan
    scored by a proxy fine-tune, as the paper does. Both refine near the Pareto front with a
    Matérn-5/2 Gaussian process and Expected Improvement, and write a run folder:
    plan.json (the chosen plan, for qra eval --plan), trials.csv, pareto.json, summary.json,
    sensitivity.json/csv, the Optuna study (study.db) and plots. Running the same command
    again resumes the search: finished trials are read from study.db, never repeated.

    With --workers N, N local `qra worker` processes score the plans (several per GPU for
    small models, spread over --gpus); with --storage, any `qra worker --storage URL --study
    NAME` on other machines joins in. A generation's children and a Bayes round's picks
    are scored together, so their counts (--offspring, --bayes-batch) follow --workers
    unless given; the same counts give the same search with any number of workers.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        budget: average stored bits per block weight, scales included (e.g. 4.0bits; uniform
            4-bit with group 64 is 4.5), or total model bytes (e.g. 1.2GB, 120MiB)
        output: the run folder (created; reused to resume)
        preset: sizes of the options marked (quick/full: ...) that are not given: quick (a laptop
            CPU: minutes on 2 cores for the embedded model), full (the paper's settings, for a
            GPU), or auto (full on CUDA, quick on the CPU)
        strategy: halving (knapsack candidates, forward-only screen, successive halving) or
            paper (sensitivity-biased population, NSGA-II, every plan proxy-tuned)
        candidates: halving: plans screened forward only (a third go on to each next rung)
        rungs: halving: proxy rungs above the screen; the top one runs --steps, the one below
            --steps / eta, and so on
        eta: halving: each rung keeps the best 1/eta of the one below
        data: calibration text (profiling, proxy training): embedded:NAME, a .txt/.json/.jsonl file
            or a dataset; omitted: embedded:wiki-calibration (Wikipedia passages of DROP and
            CoQA, which no reported task uses)
        eval_data: selection text the plans are scored on; omitted: the selection part of an
            embedded --data (embedded:wiki-selection by default), or about 1/5 of a user's
            --data held out by a stable hash of each document
        bits: comma-separated bit-width choices (1..8, or 16 for unquantised); default 2,3,4,8,
            or 4,8,16 with --serve vllm
        ranks: comma-separated LoRA rank choices (0 = no adapter)
        granularity: block (one choice per transformer block, the paper's) or module (per linear)
        seq_len: tokens per training and held-out window
        steps: proxy fine-tuning steps per candidate
        batch_size: windows per proxy step and per held-out batch
        lr: peak learning rate of the proxy fine-tunes
        eval_batches: held-out batches per proxy score
        calibration_samples: windows of --data the sensitivity profile runs on
        population: paper: NSGA-II population size
        offspring: paper: NSGA-II children per generation, scored together (default: --workers,
            at least 1)
        generations: paper: NSGA-II generations
        bayes_iterations: Gaussian-process refinement rounds (0: no refinement)
        bayes_batch: plans chosen per refinement round by q-Expected Improvement, scored
            together (default: --workers, at least 1)
        no_profile: ablation (with --strategy paper): random initial population, no sensitivity
        sensitivity: a sensitivity.json from qra profile to use instead of profiling
        fixed_bits: ablation: every block at these bits, search ranks only
        fixed_rank: ablation: every block at this rank, search bits only (AMQ-like)
        no_references: do not score the uniform reference plans (--preset quick never does)
        group_size: quantisation group size
        quant_method: the quantiser: hqq or rtn (qra plan's name; --method is qra train's
            training method)
        serve: search only plans this engine serves; vllm: bits 4, 8 or 16 at block granularity
            (a block's q/k/v and gate/up then share its bits), as qra export --format
            compressed-tensors writes them
        double_quant: every plan stores its scales and zeros at 8 bits (QLoRA's double
            quantisation; about 0.25 instead of 0.5 bit per weight at group 64), as qra plan
            --double-quant does; a --sensitivity file must be profiled so too
        seed: seed of the search (the proxy fine-tunes always use seed 0, so a study serves every search seed)
        device: auto (cuda if available), cpu or cuda; proxy fine-tunes run in --dtype
        dtype: fp32 or bf16: the dtype the model is loaded, profiled and proxy-tuned in (bf16
            halves the weights' memory; the KL, log-probs and losses stay fp32); not with
            --workers or --storage, whose workers load fp32
        workers: local worker processes scoring plans (0: score in this process, or with
            --storage wait for workers started elsewhere); too many for a device's memory
            are refused
        gpus: comma-separated GPU indices the local workers are spread over (default: all)
        storage: the study's storage URL instead of the run folder's study.db, e.g.
            postgresql+psycopg2://user@host:5432/db for workers on several machines
        study: the study's name in the storage
        max_memory: refuse to start unless this process's predicted peak fits SIZE (e.g. 24GB,
            24GiB, 24000MB), checked from the model's config before any weight loads; the
            proxies then build packed candidates on the shared base, one at a time, with
            gradient checkpointing when only that fits; on CUDA the process is capped at SIZE
        no_progress: no progress output
    """
    from qradaptor.cli import max_memory as limits
    from qradaptor.plan import check_bits, check_rank
    from qradaptor.search.budget import parse_budget

    memory_cap = limits.parse(max_memory)  # bytes, None: no --max-memory
    from qradaptor.cli.profile import DTYPE_BYTES

    if dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    if dtype != "fp32" and (workers or storage):
        raise ValueError(
            f"--dtype {dtype} is for a search in this process; --workers and --storage load fp32"
        )

    if preset != "auto" and preset not in PRESETS:
        raise ValueError(f"--preset must be one of auto, {', '.join(PRESETS)}, got {preset!r}")
    check_device(device)
    chosen_preset = preset if preset != "auto" else ("full" if resolve_device(device) == "cuda" else "quick")
    sizes = PRESETS[chosen_preset]
    seq_len = sizes["seq_len"] if seq_len is None else seq_len
    steps = sizes["steps"] if steps is None else steps
    batch_size = sizes["batch_size"] if batch_size is None else batch_size
    eval_batches = sizes["eval_batches"] if eval_batches is None else eval_batches
    calibration_samples = sizes["calibration_samples"] if calibration_samples is None else calibration_samples
    candidates = sizes["candidates"] if candidates is None else candidates
    rungs = sizes["rungs"] if rungs is None else rungs
    bayes_iterations = sizes["bayes_iterations"] if bayes_iterations is None else bayes_iterations
    the_budget = parse_budget(budget)
    bit_choices = parse_choices(SEARCH_BITS_TEXT if bits is None else bits, "--bits", check_bits)
    if serve is not None:
        bit_choices = servable_bits(serve, bits, bit_choices, granularity, fixed_bits)
    rank_choices = parse_choices(ranks, "--ranks", check_rank)
    if granularity not in GRANULARITIES:
        raise ValueError(f"--granularity must be one of {GRANULARITIES}, got {granularity!r}")
    check_positive(
        seq_len=seq_len,
        steps=steps,
        batch_size=batch_size,
        eval_batches=eval_batches,
        calibration_samples=calibration_samples,
        population=population,
    )
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    offspring = max(1, workers) if offspring is None else offspring
    bayes_batch = max(1, workers) if bayes_batch is None else bayes_batch
    check_positive(offspring=offspring, bayes_batch=bayes_batch)
    gpu_list = parse_int_list(gpus, "--gpus") if gpus else None
    if generations < 0 or bayes_iterations < 0:
        raise ValueError(
            f"--generations and --bayes-iterations must be >= 0, got {generations}, {bayes_iterations}"
        )
    if fixed_bits is not None and fixed_rank is not None:
        raise ValueError(
            "give at most one of --fixed-bits and --fixed-rank: with both there is nothing to search"
        )
    if fixed_bits is not None:
        check_bits(fixed_bits, "--fixed-bits")
        if the_budget.kind == "avg_bits":
            # Every plan then has the same average bits: all fit (the largest, every rank at
            # its top, is returned unsearched) or none does. Bytes count the adapters too.
            raise ValueError(
                f"--fixed-bits {fixed_bits} with a budget in bits ({budget}) leaves nothing to search: "
                "every plan has the same average bits, and ranks cost no bits; give the budget in "
                "bytes (e.g. 120MB), which counts the adapters"
            )
    if fixed_rank is not None:
        check_rank(fixed_rank, "--fixed-rank")
    run_dir = Path(output).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output {output!r} is a file; give a folder for the run")
    check_output_dir(run_dir)  # writable, or creatable: before the model loads
    given_sensitivity = read_sensitivity(sensitivity) if sensitivity else None

    from qradaptor.cli.search_execution import SearchRequest, execute
    from qradaptor.data.search_texts import search_texts
    from qradaptor.lock import RunLock
    from qradaptor.search.bayes import BayesConfig
    from qradaptor.search.budget import check_budget
    from qradaptor.search.multifidelity import HalvingConfig
    from qradaptor.search.pipeline import SearchConfig, search_space
    from qradaptor.search.profiling import check_given_profile
    from qradaptor.search.proxy import ProxyConfig

    device = resolve_device(device)
    config = SearchConfig(
        budget=the_budget,
        strategy=strategy,
        halving=HalvingConfig(candidates=candidates, sweep=min(8, candidates), eta=eta, rungs=rungs),
        bits=bit_choices,
        ranks=rank_choices,
        granularity=granularity,
        fixed_bits=fixed_bits,
        fixed_rank=fixed_rank,
        profile=not no_profile,
        references=not no_references and chosen_preset == "full",
        population=population,
        offspring=offspring,
        generations=generations,
        bayes=BayesConfig(iterations=bayes_iterations, batch=bayes_batch),
        seed=seed,
        group_size=group_size,
        quant_method=quant_method,
        double_quant=double_quant,
    )
    proxy = ProxyConfig(steps=steps, batch_size=batch_size, lr=lr, eval_batches=eval_batches)

    structure = load_structure(model)[1]
    space, table, _ = search_space(structure, config)
    if given_sensitivity is not None and not no_profile:  # refused here, before the lock and the load
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
            calibration_samples=calibration_samples,
            seq_len=seq_len,
            batch_size=batch_size,
            profiles=given_sensitivity is None and not no_profile,
            device=device,
            weight_bytes=DTYPE_BYTES[dtype],
        )
        lean = {"shared_base": True, "gradient_checkpointing": fit.gradient_checkpointing}
        lean["cache_on_host"] = fit.cache_on_host
    texts = search_texts(data, eval_data)  # a bad or too small --data fails before the lock and the load
    for line in texts.warnings:
        print(f"qra search: {line}", file=sys.stderr)
    request = SearchRequest(
        model=model,
        budget=budget,
        config=config,
        proxy=proxy,
        seq_len=seq_len,
        calibration_samples=calibration_samples,
        texts=texts,
        sensitivity=given_sensitivity,
        run_dir=run_dir,
        device=device,
        dtype=dtype,
        preset=chosen_preset,
        workers=workers,
        gpus=gpu_list,
        storage=storage,
        study=study,
        lean=lean,
        progress=not no_progress,
    )
    shared = None
    if storage:
        from qradaptor.distributed.queue import open_storage

        shared = open_storage(storage)  # an unreachable server: refused before anything is loaded or written
    with contextlib.ExitStack() as held:
        # One writer per run folder and per study: a second search is refused before any load.
        held.enter_context(RunLock(run_dir, "qra search"))
        if shared is not None:
            from qradaptor.distributed.owner import StudyClaim

            held.enter_context(StudyClaim(shared, study))
        return execute(request, structure, table)
    raise AssertionError("unreachable")  # ExitStack swallows nothing


VERB = search


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra search``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--budget", required=True, metavar="3.5bits|1.2GB", help=helps["budget"])
    parser.add_argument("-o", "--output", default="qra-search", metavar="DIR", help=helps["output"])
    parser.add_argument("--strategy", choices=STRATEGIES, default="halving", help=helps["strategy"])
    parser.add_argument("--data", metavar="SOURCE", help=helps["data"])
    parser.add_argument("--eval-data", metavar="SOURCE", help=helps["eval_data"])
    parser.add_argument("--bits", help=helps["bits"])
    parser.add_argument("--serve", choices=SERVE_TARGETS, help=helps["serve"])
    parser.add_argument("--ranks", default="4,8,16", help=helps["ranks"])
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block", help=helps["granularity"])
    for name in PRESETS["full"]:  # None: the --preset's value, named in the help from PRESETS
        sizes = f"(quick/full: {PRESETS['quick'][name]}/{PRESETS['full'][name]})"
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, metavar="N", help=f"{helps[name]} {sizes}"
        )
    parser.add_argument("--preset", choices=("auto", *PRESETS), default="auto", help=helps["preset"])
    for name, default in (
        ("eta", 3),
        ("population", 5),
        ("generations", 5),
        ("group_size", 64),
        ("seed", 0),
    ):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=default, metavar="N", help=helps[name])
    for name in ("offspring", "bayes_batch"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, metavar="N", help=helps[name])
    parser.add_argument("--workers", type=int, default=0, metavar="N", help=helps["workers"])
    parser.add_argument("--gpus", metavar="0,1", help=helps["gpus"])
    parser.add_argument("--storage", metavar="URL", help=helps["storage"])
    parser.add_argument("--study", default="qradaptor", metavar="NAME", help=helps["study"])
    parser.add_argument("--max-memory", metavar="SIZE", help=helps["max_memory"])
    parser.add_argument("--lr", type=float, default=2e-4, help=helps["lr"])
    parser.add_argument("--no-profile", action="store_true", help=helps["no_profile"])
    parser.add_argument("--sensitivity", metavar="FILE", help=helps["sensitivity"])
    parser.add_argument("--fixed-bits", type=int, metavar="B", help=helps["fixed_bits"])
    parser.add_argument("--fixed-rank", type=int, metavar="R", help=helps["fixed_rank"])
    parser.add_argument("--no-references", action="store_true", help=helps["no_references"])
    parser.add_argument("--quant-method", choices=("hqq", "rtn"), default="hqq", help=helps["quant_method"])
    renamed_option(parser, "--method", "--quant-method")
    parser.add_argument("--double-quant", action="store_true", help=helps["double_quant"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help=helps["dtype"])
