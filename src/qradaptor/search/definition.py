"""What a search is before it runs: its settings, its space and memory table, the fingerprint
that decides whether a study's scores still hold, and the uniform reference plans.

Cheap: nothing here needs the weights except the fingerprint's digests, so callers check a
budget or a worker placement with ``search_space`` before loading anything heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qradaptor.distributed.queue import QueueSettings
from qradaptor.fingerprint import tensor_digest, weights_digest
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import Budget
from qradaptor.search.multifidelity import HalvingConfig
from qradaptor.search.proxy import ProxyConfig
from qradaptor.search.space import MemoryTable, SearchSpace

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan


STRATEGIES: tuple[str, ...] = ("halving", "paper")
"""How a search proposes plans: see ``SearchConfig.strategy``."""


@dataclass(frozen=True)
class SearchConfig:
    """What to search and how; the space's defaults follow the paper's main setting."""

    budget: Budget
    """The memory budget every returned plan meets."""
    strategy: str = "halving"
    """"halving": knapsack plans and their neighbours, screened forward-only, then proxy rungs
    of successive halving and Bayes on the top rung (``multifidelity``); "paper": the paper's
    sensitivity-biased population, NSGA-II generations and Bayes, every plan proxy-tuned."""
    halving: HalvingConfig = field(default_factory=HalvingConfig)
    """Candidates and rungs of the halving strategy."""
    bits: tuple[int, ...] = (2, 3, 4, 8)
    """Bit-width choices per unit."""
    ranks: tuple[int, ...] = (4, 8, 16)
    """LoRA rank choices per unit."""
    granularity: str = "block"
    """"block" (the paper's) or "module": one (bits, rank) per block or per linear. The halving
    strategy's knapsack then needs a per-module profile (``profile_granularity``)."""
    tied: tuple[tuple[str, ...], ...] = ()
    """Halving at module granularity: groups of a block's linear names that share one choice in
    every candidate (vLLM's fused q/k/v and gate/up, ``export.vllm_constraints.fused_groups``)."""
    fixed_bits: int | None = None
    """Rank-only ablation: every unit at these bits."""
    fixed_rank: int | None = None
    """Bits-only ablation (AMQ-like): every unit at this rank."""
    profile: bool = True
    """Use the sensitivity profile for the initial population and repair (False: random)."""
    references: bool = True
    """Score the uniform plans of the space at ``reference_rank`` for comparison."""
    reference_rank: int = 16
    """Rank of the reference uniform plans (the largest rank choice if not among them)."""
    population: int = 5
    """NSGA-II population size P."""
    offspring: int = 1
    """NSGA-II children per generation O."""
    generations: int = 5
    """NSGA-II generations."""
    mutation_rate: float | None = None
    """Per-gene proximity-mutation probability; None is 1 / units."""
    bayes: BayesConfig = field(default_factory=BayesConfig)
    """Refinement settings; ``BayesConfig(iterations=0)`` switches the stage off."""
    seed: int = 0
    """Seeds every random choice of the search."""
    group_size: int = 64
    """Quantisation group size of every plan."""
    quant_method: str = "hqq"
    """How codes are fitted: "hqq", "rtn" or "symmetric" (no zero point, no double_quant)."""
    double_quant: bool = False
    """Every plan stores its block linears' scales and zeros at 8 bits (QLoRA's double
    quantisation: about 0.25 instead of 0.5 bit per weight at group 64), priced and built so."""
    alpha: float = 16.0
    """LoRA alpha of every plan (scaling alpha / r)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "halving" and not self.profile:
            raise ValueError(
                "the halving strategy starts from the knapsack over the sensitivity profile; "
                "the no-profile ablation runs with strategy 'paper' (qra search --strategy paper)"
            )
        if not isinstance(self.tied, tuple) or not all(
            isinstance(g, tuple) and all(isinstance(n, str) for n in g) for g in self.tied
        ):
            raise ValueError(f"tied must be a tuple of tuples of linear names, got {self.tied!r}")
        if self.tied and (self.strategy != "halving" or self.granularity != "module"):
            raise ValueError(
                "tied groups are kept by the halving strategy at module granularity (a block's "
                f"linears share its choice anyway), got strategy {self.strategy!r} at "
                f"{self.granularity} granularity with tied={list(self.tied)}"
            )

    @property
    def profile_granularity(self) -> str:
        """The sensitivity table the search takes: per module for the halving strategy at module
        granularity (its knapsack needs one KL per unit), else per block (the paper strategy
        gives a module its block's value, ``space.unit_sensitivity``)."""
        return "module" if self.strategy == "halving" and self.granularity == "module" else "block"

    @property
    def evaluations(self) -> int:
        """Upper bound on the search's top-rung proxy evaluations (references excluded)."""
        refine = self.bayes.iterations * self.bayes.batch
        if self.strategy == "halving":
            return self.halving.sizes()[-1] + 1 + refine  # + 1: the knapsack plan is always promoted
        return self.population + self.offspring * self.generations + refine


@dataclass(frozen=True)
class WorkerQueue:
    """How ``run_search`` hands its plans to worker processes (see ``queue`` and ``job``)."""

    model_source: str
    """The model as workers should load it: hub id, folder or GGUF file."""
    queue: QueueSettings = field(default_factory=QueueSettings)
    """Heartbeat, retry and polling settings."""
    on_ready: Callable[[optuna.Study], None] | None = None
    """Called once the study holds the job, before profiling: start local workers here."""
    check_alive: Callable[[], None] | None = None
    """Called while waiting for workers; raises to stop the search (e.g. every worker exited)."""


def inputs_fingerprint(
    model: nn.Module, structure_signature: str, train_ids: torch.Tensor, eval_ids: torch.Tensor
) -> dict[str, str]:
    """The model and data part of ``search_fingerprint``: what a worker checks it loaded."""
    return {
        "model_signature": structure_signature,
        "weights": weights_digest(model),
        "data": tensor_digest(train_ids, eval_ids),
    }


def search_fingerprint(
    model: nn.Module,
    structure_signature: str,
    train_ids: torch.Tensor,
    eval_ids: torch.Tensor,
    config: SearchConfig,
    proxy: ProxyConfig,
) -> dict[str, Any]:
    """Everything that decides a proxy score (see ``study``): a study is resumable under it."""
    return {
        **inputs_fingerprint(model, structure_signature, train_ids, eval_ids),
        "proxy": asdict(proxy),
        "bits": list(config.bits) if config.fixed_bits is None else [config.fixed_bits],
        "ranks": list(config.ranks) if config.fixed_rank is None else [config.fixed_rank],
        "granularity": config.granularity,
        "group_size": config.group_size,
        "quant_method": config.quant_method,
        "alpha": config.alpha,
        **({"double_quant": True} if config.double_quant else {}),  # older studies resume unchanged
    }


def search_space(
    structure: ModelStructure, config: SearchConfig
) -> tuple[SearchSpace, MemoryTable, dict[str, Any]]:
    """The space, its memory table and the Plan settings of a search of ``config`` on a model.

    Cheap (no weights needed): callers check a budget with it before loading anything heavy.
    """
    space = SearchSpace.for_structure(
        structure,
        config.granularity,
        bits=config.bits,
        ranks=config.ranks,
        fixed_bits=config.fixed_bits,
        fixed_rank=config.fixed_rank,
    )
    plan_kwargs = {
        "group_size": config.group_size,
        "quant_method": config.quant_method,
        "alpha": config.alpha,
        "model_signature": structure.signature,
        **({"double_quant": True} if config.double_quant else {}),
    }
    return space, MemoryTable.build(structure, space, **plan_kwargs), plan_kwargs


def reference_plans(
    space: SearchSpace, config: SearchConfig, plan_kwargs: dict[str, Any]
) -> list[tuple[Plan, str]]:
    """(plan, name) of the uniform plan of every bit choice at the reference rank (or the largest rank)."""
    ranks = space.rank_choices
    rank = config.reference_rank if config.reference_rank in ranks else ranks[-1]
    plans = []
    for b in space.bit_choices:
        genome = np.tile([space.bit_choices.index(b), ranks.index(rank)], (space.num_units, 1)).astype(
            np.int64
        )
        plan = space.to_plan(genome, **plan_kwargs)
        plans.append((plan, f"uniform-{b}bit-r{rank}"))
    return plans
