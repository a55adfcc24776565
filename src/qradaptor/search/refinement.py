"""The search's last stage: the Gaussian-process refinement (§3.5) over every record so far.

Per block the GP sees a genome's choice indices (``bayes.encode``). A halving search per
module refines on the items of ``ties`` (so vLLM's fused groups stay tied) and the GP sees
each plan through the table's KL per module type (``type_features``): a few dimensions, not
two per linear, because the top rung holds a handful of scores to fit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from qradaptor.search.bayes import refine
from qradaptor.search.records import genome_of
from qradaptor.search.ties import TiedUnits
from qradaptor.search.type_features import type_encoder

if TYPE_CHECKING:
    from qradaptor.distributed.study import StudyObjective
    from qradaptor.search.definition import SearchConfig
    from qradaptor.search.space import MemoryTable, SearchSpace


def refine_blocks(
    objective: StudyObjective,
    space: SearchSpace,
    table: MemoryTable,
    config: SearchConfig,
    unit_sens: np.ndarray | None,
    plan_kwargs: dict,
) -> float:
    """The Gaussian-process refinement (§3.5) from every record so far, on the genome as it
    is (``bayes.encode``); returns its seconds."""
    start = time.perf_counter()
    if config.bayes.iterations:
        objective.phase = "bayes"

        def on_iteration(iteration: int) -> None:
            objective.generation = iteration

        history = [(genome_of(r, space), r.loss) for r in objective.records]
        refine(
            objective,
            table,
            config.budget,
            history,
            config=config.bayes,
            seed=config.seed,
            sensitivity=unit_sens,
            plan_kwargs=plan_kwargs,
            on_iteration=on_iteration,
        )
    return time.perf_counter() - start


def refine_modules(
    objective: StudyObjective,
    table: MemoryTable,
    config: SearchConfig,
    values: np.ndarray,
    plan_kwargs: dict,
) -> float:
    """The refinement of a halving search per module; returns its seconds.

    The GP sees each plan through the table's KL per module type (``type_features``), not its
    two genes per linear (420 on SmolLM2); its pool is drawn on the items of ``ties``, so tied
    groups stay tied.
    """
    start = time.perf_counter()
    if config.bayes.iterations:
        objective.phase = "bayes"

        def on_iteration(iteration: int) -> None:
            objective.generation = iteration

        units = TiedUnits.build(table, config.tied)
        item_values = units.values(values)
        history = [(units.collapse(genome_of(r, table.space)), r.loss) for r in objective.records]
        refine(
            objective,
            units.items,
            config.budget,
            history,
            config=config.bayes,
            seed=config.seed,
            sensitivity=item_values[:, 0] - item_values[:, -1],
            on_iteration=on_iteration,
            encoder=type_encoder(units.items.space, item_values),
            plan_of=lambda genome: table.space.to_plan(units.expand(genome), **plan_kwargs),
        )
    return time.perf_counter() - start
