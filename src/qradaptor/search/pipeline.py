"""The whole QR-Adaptor search on one model: profile, evolve, refine, choose (§3.3–3.5).

    1. sensitivity   KL of each block quantised alone (Eq. 6), unless given or switched off
                     (of each linear alone for the halving strategy per module)
    2. references    uniform plans of the space, scored for comparison (optional)
    3. initial       sensitivity-biased population, repaired to the budget (§3.3)
    4. nsga2         generations of layer-wise crossover and proximity mutation (§3.4)
    5. bayes         Matérn-5/2 GP + Expected Improvement near the Pareto front (§3.5)
    6. choice        the lowest proxy loss within the budget

Every proxy evaluation goes through a ``StudyObjective``: a plan is tuned once and stored
in the Optuna study, so running the same search again resumes it (see ``study``). This module
touches a model only to hand it to the profiler (``search/profiling.py``) and to the
``ProxyEvaluator``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qradaptor.distributed.study import (
    DEFAULT_STUDY_NAME,
    StudyObjective,
    open_study,
)
from qradaptor.search.budget import check_budget
from qradaptor.search.choice import choose, pareto_numbers
from qradaptor.search.definition import (  # noqa: F401 - re-exported: the search's public names
    SearchConfig,
    WorkerQueue,
    reference_plans,
    search_fingerprint,
    search_space,
)
from qradaptor.search.evolve import run_nsga2
from qradaptor.search.knapsack import unit_values
from qradaptor.search.multifidelity import run_halving
from qradaptor.search.profiling import search_profile
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.search.records import SEARCH_PHASES, TrialRecord, genome_of
from qradaptor.search.refinement import refine_blocks, refine_modules
from qradaptor.search.space import MemoryTable, SearchSpace, smallest_and_largest, unit_sensitivity

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.plan import Plan
    from qradaptor.quant.cache import QuantCache
    from qradaptor.sensitivity_table import SensitivityTable


@dataclass(frozen=True)
class SearchOutcome:
    """What ``run_search`` found."""

    records: tuple[TrialRecord, ...]
    """Every distinct plan this run scored or replayed, in the order asked."""
    pareto: tuple[int, ...]
    """Trial numbers of the (loss, bytes) front of the feasible search trials, by bytes."""
    chosen: TrialRecord
    """The lowest proxy loss within the budget (ties: fewer bytes, then earlier)."""
    plan: Plan
    """The chosen plan."""
    space: SearchSpace
    """The searched space."""
    unit_sensitivity: tuple[float, ...] | None
    """Per-unit sensitivity used by the search (None without profiling)."""
    sensitivity: SensitivityTable | None
    """The full profile (None without profiling)."""
    stage_seconds: dict[str, float]
    """Wall time of each stage in this run (replayed trials cost almost nothing)."""
    evaluated: int
    """Plans scored in this run (on every rung of the halving strategy)."""
    replayed: int
    """Plans answered from the study (on every rung)."""
    note: str = ""
    """Why the search took a shortcut, e.g. a budget above the largest plan."""
    screened: tuple[TrialRecord, ...] = ()
    """The halving strategy's lower rungs, rung by rung (``generation`` is the rung; their
    losses are of lower fidelity than ``records``'): rung 0 forward only, then short proxies."""


def run_search(
    model: nn.Module,
    train_ids: torch.Tensor,
    eval_ids: torch.Tensor,
    config: SearchConfig,
    *,
    storage: str,
    proxy: ProxyConfig | None = None,
    calibration: torch.Tensor | None = None,
    sensitivity: SensitivityTable | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_record: Callable[[TrialRecord, bool], None] | None = None,
    workers: WorkerQueue | None = None,
    shared_base: bool = False,
    gradient_checkpointing: bool = False,
    cache_on_host: bool = False,
) -> SearchOutcome:
    """Runs (or resumes) the QR-Adaptor search of ``model`` under ``config.budget``.

    Args:
        model: a causal LM ``apply_plan`` accepts; never changed.
        train_ids: (N, T) proxy-training windows.
        eval_ids: (M, T') held-out windows for the proxy score.
        config: space, budget, search settings and ablation switches.
        storage: Optuna storage URL of the study (e.g. ``sqlite_url("run/study.db")``).
        proxy: proxy-tuning settings (``ProxyConfig()`` when None).
        calibration: (N', T'') windows for the sensitivity profile; needed when profiling
            and no ``sensitivity`` is given.
        sensitivity: a profile to use instead of profiling (e.g. from ``qra profile``).
        study_name: the study's name in the storage.
        device: where proxy fine-tunes run (None: the model's device).
        progress: show progress over the evaluations (a bar on a terminal, lines in a log).
        on_record: called with (record, replayed) for every distinct plan.
        workers: score plans by worker processes through the study (see ``queue``)
            instead of in this process; the records are the same either way.
        shared_base: build candidates packed on tensors shared with ``model``, one alive at a
            time (``ProxyEvaluator``'s low-memory path; same scores to float rounding).
        gradient_checkpointing: proxy steps recompute activations in the backward.
        cache_on_host: keep the fitted codes (``QuantCache``) on the host, each candidate's
            moved to the device when it is built (same scores; tests/search/test_lean_search.py).

    Returns:
        The records, the front, the chosen plan and the cost of each stage.

    Raises:
        ValueError: for a budget below the smallest plan, a study made for other scores
            (see ``open_study``), a profile that lacks the searched bits or has another
            block count, or profiling without calibration data.
    """
    from qradaptor.models.structure import inspect_model
    from qradaptor.progress import progress_bar

    proxy = ProxyConfig() if proxy is None else proxy
    structure = inspect_model(model)
    space, table, plan_kwargs = search_space(structure, config)
    above = check_budget(config.budget, table)
    fingerprint = search_fingerprint(model, structure.signature, train_ids, eval_ids, config, proxy)
    if workers is not None:
        from qradaptor.distributed.queue import open_storage

        storage = open_storage(storage, workers.queue)
    study = open_study(storage, fingerprint, study_name)  # refuses before any expensive work
    if workers is not None:
        from qradaptor.distributed.job import write_job

        write_job(study, workers.model_source, train_ids, eval_ids)
        if workers.on_ready is not None:
            workers.on_ready(study)  # workers load the model while this process profiles
    stages: dict[str, float] = {}

    from qradaptor.quant.cache import QuantCache

    # Every (linear, bits) fitted once: by the profile, reused by each build.
    quant_cache = QuantCache(storage="cpu" if cache_on_host else None)
    lean = {"shared_base": shared_base, "gradient_checkpointing": gradient_checkpointing}
    start = time.perf_counter()
    unit_sens = None
    if config.profile and not above:
        sensitivity = search_profile(
            model, structure, space, config, calibration, sensitivity, progress, quant_cache
        )
        lowest = space.bit_choices[0]  # choices ascend
        row_sens = (
            sensitivity.column(lowest) if lowest in sensitivity.bits else sensitivity.min_bits_profile()
        )
        # A per-module table has a row per unit already; a per-block one lends each module its block's.
        unit_sens = np.asarray(row_sens) if sensitivity.modules else unit_sensitivity(space, row_sens)
    stages["sensitivity"] = time.perf_counter() - start

    evaluator = None
    if workers is None:
        evaluator = ProxyEvaluator(
            model, train_ids, eval_ids, proxy, device=device, cache=quant_cache, **lean
        )
    total = (len(space.bit_choices) if config.references else 0) + (1 if above else config.evaluations)
    bar = progress_bar(total=total, desc="search", unit="plan", enabled=progress)
    base_done = 0

    def poll_hook(done: int, running: int) -> None:
        bar.n = base_done + done  # a batch's progress while workers score it
        bar.set_postfix(running=running, refresh=False)
        bar.refresh()

    def record_hook(record: TrialRecord, replayed: bool) -> None:
        nonlocal base_done
        base_done += 1
        bar.n = base_done
        bar.refresh()
        searched = [r.loss for r in objective.records if r.phase in SEARCH_PHASES]
        if searched:
            bar.set_postfix(best=f"{min(searched):.4f}", refresh=False)
        if on_record is not None:
            on_record(record, replayed)

    objective = StudyObjective(
        study,
        evaluator,
        table,
        on_record=record_hook,
        queue=None if workers is None else workers.queue,
        on_poll=poll_hook if progress else None,
        check_alive=None if workers is None else workers.check_alive,
    )

    start = time.perf_counter()
    if config.references:
        objective.phase, objective.generation = "reference", 0
        references = reference_plans(space, config, plan_kwargs)
        objective.record_many([plan for plan, _ in references], [name for _, name in references])
    stages["references"] = time.perf_counter() - start

    note, largest, screened = "", None, []
    lower_evaluated = lower_replayed = 0
    if above:
        _, high = smallest_and_largest(table, space)
        objective.phase = "initial"
        largest = objective.record(space.to_plan(high, **plan_kwargs))
        note = (
            f"budget {config.budget.describe()} is above the largest plan of the search space "
            f"({float(table.avg_bits_of(high)):g} avg bits, {int(table.bytes_of(high))} bytes): "
            "returning the largest plan without searching"
        )
        stages["nsga2"] = stages["bayes"] = 0.0
    elif config.strategy == "halving":
        start = time.perf_counter()
        rungs = _lower_rungs(
            model,
            train_ids,
            eval_ids,
            config,
            proxy,
            fingerprint,
            storage,
            study_name,
            device,
            quant_cache,
            table,
            progress,
            lean,
        )
        values = unit_values(space, sensitivity)
        top = run_halving(
            [*rungs, objective],
            table,
            config.budget,
            values,
            config.halving,
            seed=config.seed,
            plan_kwargs=plan_kwargs,
            tied=config.tied,
        )
        screened = [record for rung in top[:-1] for record in rung]
        lower_evaluated = sum(rung.evaluated for rung in rungs)
        lower_replayed = sum(rung.replayed for rung in rungs)
        stages["halving"] = time.perf_counter() - start
        if space.modules:
            stages["bayes"] = refine_modules(objective, table, config, values, plan_kwargs)
        else:
            stages["bayes"] = refine_blocks(objective, space, table, config, unit_sens, plan_kwargs)
    else:
        start = time.perf_counter()

        def on_generation(generation: int) -> None:
            objective.phase = "initial" if generation == 0 else "nsga2"
            objective.generation = generation

        run_nsga2(
            objective,
            space,
            table,
            config.budget,
            population=config.population,
            offspring=config.offspring,
            generations=config.generations,
            mutation_rate=config.mutation_rate,
            sensitivity=unit_sens,
            seed=config.seed,
            plan_kwargs=plan_kwargs,
            on_generation=on_generation,
        )
        stages["nsga2"] = time.perf_counter() - start
        stages["bayes"] = refine_blocks(objective, space, table, config, unit_sens, plan_kwargs)
    bar.close()
    if workers is not None:
        from qradaptor.distributed.job import mark_finished

        mark_finished(study)

    records = list(objective.records)
    chosen = largest if largest is not None else choose(records, table, config.budget)
    if largest is None and config.strategy == "halving" and proxy.steps == 0:
        from qradaptor.search.screen_choice import settle_screen

        screen = evaluator or ProxyEvaluator(
            model, train_ids, eval_ids, proxy, device=device, cache=quant_cache, **lean
        )
        chosen, said = settle_screen(
            chosen,
            records,
            lambda r: screen.window_losses(space.to_plan(genome_of(r, space), **plan_kwargs)),
            config.halving.screen_margin,
        )
        note = said
    return SearchOutcome(
        records=tuple(records),
        pareto=pareto_numbers(records, table, config.budget),
        chosen=chosen,
        plan=space.to_plan(genome_of(chosen, space), **plan_kwargs),
        space=space,
        unit_sensitivity=None if unit_sens is None else tuple(float(v) for v in unit_sens),
        sensitivity=sensitivity if config.profile else None,
        stage_seconds=stages,
        evaluated=objective.evaluated + lower_evaluated,
        replayed=objective.replayed + lower_replayed,
        note=note,
        screened=tuple(screened),
    )


def _lower_rungs(
    model: nn.Module,
    train_ids: torch.Tensor,
    eval_ids: torch.Tensor,
    config: SearchConfig,
    proxy: ProxyConfig,
    fingerprint: dict,
    storage: Any,
    study_name: str,
    device: str | torch.device | None,
    quant_cache: QuantCache,
    table: MemoryTable,
    progress: bool,
    lean: dict[str, bool] | None = None,
) -> list[StudyObjective]:
    """The halving strategy's rungs below the top, each its own study, scored in this process.

    Rung 0 scores the quantised plan without tuning (``steps=0``); the top rung is the
    search's own objective (its study may be served by workers).
    """
    from dataclasses import asdict, replace

    from qradaptor.progress import progress_bar

    rungs = []
    sizes = config.halving.sizes()
    for rung, steps in enumerate(config.halving.steps(proxy.steps)[:-1]):
        rung_proxy = replace(proxy, steps=steps, warmup=min(proxy.warmup, steps))
        rung_fingerprint = {**fingerprint, "proxy": asdict(rung_proxy)}
        # Named by fidelity, not position: other --rungs/--eta reuse the scores of equal steps.
        study = open_study(storage, rung_fingerprint, f"{study_name}.steps{steps}")
        evaluator = ProxyEvaluator(
            model, train_ids, eval_ids, rung_proxy, device=device, cache=quant_cache, **(lean or {})
        )
        label = "screen (forward only)" if steps == 0 else f"rung {rung} ({steps} steps)"
        bar = progress_bar(total=sizes[rung], desc=label, unit="plan", enabled=progress, leave=False)
        rungs.append(StudyObjective(study, evaluator, table, on_record=lambda *_, bar=bar: bar.update(1)))
    return rungs
