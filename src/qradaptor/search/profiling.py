"""The search's sensitivity stage (Eq. 6): a given profile checked against the search, or a
fresh one measured on the model at the space's quantised bit widths.

``qra search`` calls ``check_given_profile`` before loading any weight; ``run_search`` calls
``search_profile`` with the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.models.structure import ModelStructure
    from qradaptor.quant.cache import QuantCache
    from qradaptor.search.definition import SearchConfig
    from qradaptor.search.space import SearchSpace
    from qradaptor.sensitivity_table import SensitivityTable


def check_given_profile(
    sensitivity: SensitivityTable, structure: ModelStructure, space: SearchSpace, config: SearchConfig
) -> None:
    """Raises ValueError unless a given profile fits the search: its granularity, blocks and
    modules, every searched bit width, its group size, quantiser and scales' precision. Cheap,
    so ``qra search`` calls it before loading weights."""
    from qradaptor.plan import UNQUANTIZED

    quantised = tuple(b for b in space.bit_choices if b != UNQUANTIZED) or (min(config.bits),)
    # Halving per module: the knapsack needs one KL per module. Otherwise the search biases and
    # seeds its plans by block (the paper strategy gives a module unit its block's value).
    granularity = config.profile_granularity
    where = f"the {config.strategy} search at {config.granularity} granularity"
    sensitivity.require_granularity(granularity, where)
    if sensitivity.num_blocks != structure.num_blocks:
        raise ValueError(
            f"sensitivity profile has {sensitivity.num_blocks} blocks, the model {structure.num_blocks}"
        )
    if granularity == "module" and sensitivity.modules != structure.linear_names:
        raise ValueError(
            f"sensitivity profile has modules {list(sensitivity.modules)}, the model's linears are "
            f"{list(structure.linear_names)}: it was profiled on another model"
        )
    missing = [b for b in quantised if b not in sensitivity.bits]
    if missing:
        raise ValueError(f"sensitivity profile lacks the searched bits {missing}; it has {sensitivity.bits}")
    # A KL measured at another group size ranks the bits of another memory cost.
    if sensitivity.group_size != config.group_size:
        raise ValueError(
            f"sensitivity profile was measured at group size {sensitivity.group_size}, the search "
            f"quantises at {config.group_size}: profile again at the search's group size (qra "
            f"profile --group-size {config.group_size}), or search at the profile's (--group-size "
            f"{sensitivity.group_size})"
        )
    if sensitivity.quant_method != config.quant_method:
        raise ValueError(
            f"sensitivity profile was measured with quant_method {sensitivity.quant_method!r}, the "
            f"search quantises with {config.quant_method!r}: profile again with the search's "
            f"quantiser (qra profile --quant-method {config.quant_method}), or give the search the profile's"
        )
    if sensitivity.double_quant != config.double_quant:
        said = ("with", "without") if sensitivity.double_quant else ("without", "with")
        raise ValueError(
            f"sensitivity profile was measured {said[0]} 8-bit scales and zeros (double "
            f"quantisation), the search quantises {said[1]}: profile again with the search's "
            "setting (qra profile --double-quant), or give the search the profile's"
        )


def search_profile(
    model: nn.Module,
    structure: ModelStructure,
    space: SearchSpace,
    config: SearchConfig,
    calibration: torch.Tensor | None,
    sensitivity: SensitivityTable | None,
    progress: bool,
    cache: QuantCache | None = None,
) -> SensitivityTable:
    """The given profile after checking it fits, or a fresh one at the space's quantised bits.

    Raises:
        ValueError: a given profile that does not fit (``check_given_profile``), or no
            calibration windows to profile on.
    """
    from qradaptor.plan import UNQUANTIZED
    from qradaptor.sensitivity import profile_sensitivity

    quantised = tuple(b for b in space.bit_choices if b != UNQUANTIZED) or (min(config.bits),)
    if sensitivity is not None:
        check_given_profile(sensitivity, structure, space, config)
        return sensitivity
    if calibration is None:
        raise ValueError(
            "profiling needs calibration windows: pass calibration= or sensitivity=, or profile=False"
        )
    return profile_sensitivity(
        model,
        calibration,
        bits=quantised,
        group_size=config.group_size,
        quant_method=config.quant_method,
        progress=progress,
        cache=cache,
        double_quant=config.double_quant,
        granularity=config.profile_granularity,
    )
