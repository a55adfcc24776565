"""``qra search``'s options: ``SearchOptions`` (one field per option, its docstring the help),
the presets of a search's sizes, the granularities and strategies, and the checks of its
numbers and comma lists (no numpy, no torch: they run before anything loads).

The defaults that a library config owns are kept equal to it: ``lr`` is ``ProxyConfig``'s
(light to import); ``SearchConfig``, ``HalvingConfig`` and ``BayesConfig`` load numpy, so their
defaults are restated here and ``tests/cli/test_search.py`` checks they agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from qradaptor.export.llama_cpp_constraints import llama_cpp_choices
from qradaptor.export.serve_targets import check_serve_target, served_bits
from qradaptor.export.vllm_constraints import vllm_bits
from qradaptor.recipes.inputs import parse_int_list
from qradaptor.search.proxy import ProxyConfig

Strategy = Literal["halving", "paper"]
Granularity = Literal["block", "module"]
Serve = Literal["vllm", "llama.cpp"]
"""Copy of ``export.serve_targets.SERVE_TARGETS`` as a type (a test checks they agree)."""
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
"""Copy of ``search.definition.STRATEGIES``, which loads numpy (a test checks they agree)."""
SEARCH_BITS_TEXT = "2,3,4,8"
"""--bits without --serve (``search.definition.SearchConfig``'s bits; a test checks they agree)."""
PRESETS: dict[str, dict[str, int]] = {
    "quick": {
        "seq_len": 256,
        "steps": 6,
        "batch_size": 2,
        "eval_batches": 4,
        "calibration_samples": 1,
        "candidates": 12,
        "rungs": 1,
        "bayes_iterations": 1,
    },
    "full": {
        "seq_len": 512,
        "steps": 20,
        "batch_size": 4,
        "eval_batches": 4,
        "calibration_samples": 8,
        "candidates": 24,
        "rungs": 2,
        "bayes_iterations": 5,
    },
}
"""--preset: the sizes of a search; quick fits a laptop CPU (one 256-token profile window ranks
blocks like four, Spearman 0.95 at 2 bits: docs/SENSITIVITY.md), full has the landed GPU runs'
profile and proxy sizes (docs/RESULTS.md; the paper profiles on 1,024 C4 samples). quick
also skips the uniform reference plans (four proxy fine-tunes: 145 s of an 8-minute quick
search on 2 cores)."""


def check_positive(**values: int) -> None:
    """ValueError naming the option unless every value is >= 1 (``seq_len`` is --seq-len)."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def parse_choices(text: str, option: str, check: Any) -> tuple[int, ...]:
    """The sorted distinct values of comma list ``text``, each passed through ``check``
    (``plan.check_bits`` or ``check_rank``); ValueError for an empty or bad list."""
    if not text.strip():
        raise ValueError(f"{option} must list at least one value, e.g. {option} 2,3,4,8; got an empty list")
    values = parse_int_list(text, option)
    for value in values:
        check(value, f"every value of {option}")
    return tuple(sorted(set(values)))


def jsonable(obj: Any) -> Any:
    """A (dataclass) config as plain JSON values for config.json; what JSON lacks becomes a string."""
    from dataclasses import asdict, is_dataclass

    return json.loads(json.dumps(asdict(obj) if is_dataclass(obj) else obj, default=str))


def servable_bits(
    serve: str,
    bits: str | None,
    choices: tuple[int, ...],
    granularity: str,
    fixed_bits: int | None,
    strategy: str = "halving",
    group_size: int | None = None,
    quant_method: str | None = None,
    double_quant: bool = False,
) -> tuple[int, ...]:
    """The bit choices of a ``--serve`` search, else ValueError naming what the engine cannot
    serve; for llama.cpp also a --group-size, --quant-method or --double-quant it would
    re-quantise (None: not given, ``serve_targets.quantiser`` picks it)."""
    check_serve_target(serve)
    if serve == "llama.cpp":  # GGUF types each tensor alone: any granularity, no ties
        if fixed_bits is not None:
            llama_cpp_choices((fixed_bits,), group_size, quant_method, double_quant, "--fixed-bits")
    else:
        if granularity != "block" and strategy != "halving":
            raise ValueError(
                f"--serve vllm with --strategy {strategy} searches block granularity (a block's "
                "q/k/v and gate/up, which vLLM fuses, then share its bits); --granularity "
                f"{granularity} would give them different bits (the halving strategy keeps each "
                "fused group tied)"
            )
        if fixed_bits is not None:
            vllm_bits((fixed_bits,), "--fixed-bits")
    return served_bits(serve, None if bits is None else choices, group_size, quant_method, double_quant)


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """A ``qra search``, as its command line gives it; ``recipes.search.run`` checks and runs it.

    The fields are in the order ``qra search --help`` lists them. The sizes left None (the
    preset-sized options) take ``--preset``'s value from ``PRESETS``.
    """

    model: str | None = None
    """a local model directory, a .gguf file or a hub id; omitted: the embedded
    SmolLM2-135M-Instruct"""
    budget: str
    """average stored bits per block weight, scales included (e.g. 4.0bits; uniform 4-bit with
    group 64 is 4.5), or total model bytes (e.g. 1.2GB, 120MiB)"""
    output: str = "qra-search"
    """the run folder (created; reused to resume)"""
    strategy: Strategy = "halving"
    """halving (knapsack candidates, forward-only screen, successive halving) or paper
    (sensitivity-biased population, NSGA-II, every plan proxy-tuned)"""
    data: str | None = None
    """calibration text (profiling, proxy training): embedded:NAME, a .txt/.json/.jsonl file or a
    dataset; omitted: embedded:wiki-calibration (Wikipedia passages of DROP and CoQA, which no
    reported task uses)"""
    eval_data: str | None = None
    """selection text the plans are scored on; omitted: the selection part of an embedded --data
    (embedded:wiki-selection by default), or about 1/5 of a user's --data held out by a stable
    hash of each document"""
    bits: str | None = None
    """comma-separated bit-width choices (1..8, or 16 for unquantised); default 2,3,4,8, 4,8,16
    with --serve vllm, 4,5,8,16 with --serve llama.cpp"""
    serve: Serve | None = None
    """search only plans this engine serves; vllm: bits 4, 8 or 16, a block's q/k/v and gate/up
    sharing one choice (per block, or per fused group with --granularity module), no
    --double-quant, --quant-method symmetric unless another is given (its codes go in
    unchanged), as qra export --format compressed-tensors writes them; llama.cpp:
    --quant-method symmetric, --group-size 32, bits 4, 5, 8 or 16, no --double-quant, every
    block linear written to GGUF unchanged as Q4_0, Q5_0, Q8_0 or F16 (no ties: each GGUF
    tensor has its own type)"""
    ranks: str = "4,8,16"
    """comma-separated LoRA rank choices (0 = no adapter)"""
    granularity: Granularity = "block"
    """block (one choice per transformer block, the paper's) or module (per linear; the halving
    strategy then takes a per-module profile, qra profile --granularity module, and profiles
    one itself without --sensitivity, about 7x the forwards of a per-block one)"""
    seq_len: int | None = None
    """tokens per training and held-out window"""
    steps: int | None = None
    """proxy fine-tuning steps per candidate (halving: 0 scores every plan by its held-out loss
    before any tuning, forward passes only, and --rungs is then 0; with neither given, 0 at the
    full preset under a bits budget per block, where the proxies changed no measured choice)"""
    batch_size: int | None = None
    """windows per proxy step and per held-out batch"""
    eval_batches: int | None = None
    """held-out batches per proxy score"""
    calibration_samples: int | None = None
    """windows of --data the sensitivity profile runs on"""
    candidates: int | None = None
    """halving: plans screened forward only (a third go on to each next rung)"""
    rungs: int | None = None
    """halving: proxy rungs above the screen; the top one runs --steps, the one below --steps /
    eta, and so on (0: the screen is the top rung, with --steps 0)"""
    bayes_iterations: int | None = None
    """Gaussian-process refinement rounds (0: no refinement)"""
    preset: Literal["auto", "quick", "full"] = "auto"
    """sizes of the options marked (quick/full: ...) that are not given: quick (a laptop CPU:
    minutes on 2 cores for the embedded model), full (the paper's settings, for a GPU), or auto
    (full on CUDA, quick on the CPU)"""
    eta: int = 3
    """halving: each rung keeps the best 1/eta of the one below"""
    screen_margin: float = 2.0
    """halving with --steps 0: standard errors, paired over the held-out windows, by which the
    screen's best plan must lie below the knapsack plan to be chosen over it (its near-tie picks
    fine-tuned worse in all three GPU runs, docs/ALLOCATION.md); 0: the lowest mean wins"""
    population: int = 5
    """paper: NSGA-II population size"""
    generations: int = 5
    """paper: NSGA-II generations"""
    group_size: int | None = None
    """quantisation group size (default 64; 32 with --serve llama.cpp)"""
    seed: int = 0
    """seed of the search (the proxy fine-tunes always use seed 0, so a study serves every search
    seed)"""
    offspring: int | None = None
    """paper: NSGA-II children per generation, scored together (default: --workers, at least 1)"""
    bayes_batch: int | None = None
    """plans chosen per refinement round by q-Expected Improvement, scored together (default:
    --workers, at least 1)"""
    workers: int = 0
    """local worker processes scoring plans (0: score in this process, or with --storage wait for
    workers started elsewhere); too many for a device's memory are refused"""
    gpus: str | None = None
    """comma-separated GPU indices the local workers are spread over (default: all)"""
    storage: str | None = None
    """the study's storage URL instead of the run folder's study.db, e.g.
    postgresql+psycopg2://user@host:5432/db for workers on several machines"""
    study: str = "qradaptor"
    """the study's name in the storage"""
    max_memory: str | None = None
    """refuse to start unless this process's predicted peak fits SIZE (e.g. 24GB, 24GiB,
    24000MB), checked from the model's config before any weight loads; the proxies then build
    packed candidates on the shared base, one at a time, with gradient checkpointing when only
    that fits; on CUDA the process is capped at SIZE"""
    lr: float = ProxyConfig.lr
    """peak learning rate of the proxy fine-tunes"""
    no_profile: bool = False
    """ablation (with --strategy paper): random initial population, no sensitivity"""
    sensitivity: str | None = None
    """a sensitivity.json from qra profile to use instead of profiling"""
    fixed_bits: int | None = None
    """ablation: every block at these bits, search ranks only"""
    fixed_rank: int | None = None
    """ablation: every block at this rank, search bits only (AMQ-like)"""
    no_references: bool = False
    """do not score the uniform reference plans (--preset quick never does)"""
    quant_method: Literal["hqq", "rtn", "symmetric"] | None = None
    """the quantiser: hqq, rtn or symmetric (llama.cpp's Q4_0/Q5_0/Q8_0 rounding, a scale and no
    zero per group; bits 2..8, no --double-quant) (qra plan's name; --method is qra train's
    training method) (default hqq; symmetric with --serve llama.cpp or --serve vllm)"""
    double_quant: bool = False
    """every plan stores its scales and zeros at 8 bits (QLoRA's double quantisation; about 0.25
    instead of 0.5 bit per weight at group 64), as qra plan --double-quant does; a --sensitivity
    file must be profiled so too"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (cuda if available), cpu or cuda; proxy fine-tunes run in --dtype"""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """fp32 or bf16: the dtype the model is loaded, profiled and proxy-tuned in (bf16 halves the
    weights' memory; the KL, log-probs and losses stay fp32); not with --workers or --storage,
    whose workers load fp32"""
    no_progress: bool = False
    """no progress output"""
