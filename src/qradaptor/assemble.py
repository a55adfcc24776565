"""Assemble the model a run describes: a base model, quantised per plan, with or without a saved adapter.

``qra eval`` and ``qra export`` use this so that what is evaluated or served is exactly what
was planned and trained: the same quantisation of the same base (the run's packed codes when
it kept them), and an adapter whose modules and ranks match the plan. A mismatch is an
error, not a silent partial load.

Training run folders (their layout, ``RUN_*``, is ``runfolder/train_run.py``'s) are read by ``runs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.plan import UNQUANTIZED, Plan

if TYPE_CHECKING:
    pass

ADAPTER_TYPES = ("LORA", "ADALORA")


@dataclass(frozen=True)
class AssembledModel:
    """A model ready to evaluate, and what it is made of."""

    model: Any
    """The (quantised, possibly PEFT-wrapped) model, in eval mode."""
    tokenizer: Any
    """Its tokenizer (pad token set)."""
    source: str
    """The model source as resolved."""
    plan: Plan
    """The plan it was built with (uniform 16-bit, rank 0 when none was given)."""
    adapter: str | None
    """The adapter folder, if one was loaded."""
    base: str | None = None
    """The packed base file the quantised weights came from (None: quantised from the plan)."""


@dataclass(frozen=True)
class AdapterInfo:
    """What a saved PEFT adapter's adapter_config.json says."""

    peft_type: str
    """"LORA" or "ADALORA"."""
    ranks: dict[str, int]
    """Module path -> rank (AdaLoRA: the rank its saved rank_pattern kept, else init_r)."""
    use_dora: bool
    """LoRA with weight decomposition (DoRA)."""
    base_model: str | None
    """The base model it was trained on, as PEFT recorded it."""


def _full_names(targets: list[str], pattern: dict[str, Any]) -> list[str]:
    """Full module paths of the adapted modules.

    PEFT shortens a long ``target_modules`` list to its distinct last names when it saves
    (``["q_proj", "v_proj", ...]``); qradaptor's ``rank_pattern`` still names every adapted
    module by its full path, so those paths are the modules.
    """
    if all(name in pattern for name in targets):
        return list(targets)
    short = set(targets)
    full = [name for name in pattern if name.rpartition(".")[2] in short]
    return full or list(targets)


def read_adapter(adapter_dir: str | Path) -> AdapterInfo:
    """Type, modules and ranks of a saved PEFT LoRA or AdaLoRA adapter.

    Raises:
        ValueError: if the folder or its files are missing, or it is another kind of adapter.
    """
    folder = Path(adapter_dir).expanduser()
    config_path = folder / "adapter_config.json"
    if not folder.is_dir():
        raise ValueError(f"adapter folder {str(adapter_dir)!r} does not exist")
    if not config_path.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"adapter folder {str(adapter_dir)!r} is not a PEFT adapter: it needs adapter_config.json "
            "and adapter_model.safetensors"
        )
    from qradaptor.integrity import check_safetensors, read_json

    config = read_json(config_path, "adapter config")
    if not isinstance(config, dict):
        raise ValueError(f"adapter config {str(config_path)!r} is not a JSON object")
    kind = config.get("peft_type")
    if kind not in ADAPTER_TYPES:
        raise ValueError(
            f"adapter {str(adapter_dir)!r} is a {kind} adapter; only LORA and ADALORA are supported"
        )
    check_safetensors(folder / "adapter_model.safetensors", "adapter weights")  # truncated: refused now
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise ValueError(
            f"adapter {str(adapter_dir)!r} names its target modules by a regex ({targets!r}); "
            "qradaptor needs explicit module names (adapters saved by qradaptor have them)"
        )
    pattern = dict(config.get("rank_pattern") or {})
    if kind == "ADALORA":  # rank_pattern: "<module>.lora_E" -> one keep/drop flag per rank
        kept = {k.rpartition(".lora_E")[0]: sum(map(bool, v)) for k, v in pattern.items()}
        targets = _full_names(targets, kept)
        ranks = {name: int(kept.get(name, config.get("init_r", 0))) for name in targets}
    else:
        targets = _full_names(targets, pattern)
        ranks = {name: int(pattern.get(name, config["r"])) for name in targets}
    return AdapterInfo(kind, ranks, bool(config.get("use_dora")), config.get("base_model_name_or_path"))


def read_adapter_ranks(adapter_dir: str | Path) -> dict[str, int]:
    """Module path -> rank of a saved PEFT adapter (from its adapter_config.json).

    Raises:
        ValueError: as :func:`read_adapter`.
    """
    return read_adapter(adapter_dir).ranks


def check_adapter_matches(
    plan: Plan, structure: Any, ranks: dict[str, int], adapter_dir: str, *, modules_only: bool = False
) -> None:
    """Raises ValueError unless the adapter's modules (and, unless ``modules_only``, ranks) are the plan's."""
    expected = plan.to_rank_pattern(structure)
    if modules_only:
        ranks, expected = dict.fromkeys(ranks, 0), dict.fromkeys(expected, 0)
    if ranks != expected:
        missing = sorted(set(expected) - set(ranks))[:3]
        extra = sorted(set(ranks) - set(expected))[:3]
        differ = sorted(k for k in set(ranks) & set(expected) if ranks[k] != expected[k])[:3]
        raise ValueError(
            f"adapter {adapter_dir!r} does not match plan {plan.name or plan.plan_hash}: "
            f"{len(ranks)} adapted modules vs {len(expected)} in the plan"
            + (f"; missing e.g. {missing}" if missing else "")
            + (f"; not in the plan e.g. {extra}" if extra else "")
            + (f"; other rank e.g. {[(k, ranks[k], expected[k]) for k in differ]}" if differ else "")
        )


def _load_adapter(model: Any, plan: Plan, structure: Any, info: AdapterInfo, adapter: str) -> Any:
    """``model`` with the saved adapter on it, its layers built as training built them."""
    from peft import PeftModel

    if info.peft_type == "ADALORA":  # the saved config holds the ranks AdaLoRA kept
        from qradaptor import lora

        prepare = getattr(lora, "prepare_adalora_", None)  # AdaLoRA layers for our QuantLinears
        if prepare is not None:
            prepare(model, sorted(info.ranks))
        try:
            return peft_load(model, adapter)
        except (ValueError, AttributeError) as err:
            raise ValueError(
                f"could not load AdaLoRA adapter {adapter!r} onto the planned base: {err}"
            ) from err
    from qradaptor.lora import lora_config

    # use_dora only when set, so this works with lora_config versions without the keyword.
    config = lora_config(plan, structure, **({"use_dora": True} if info.use_dora else {}))
    return PeftModel.from_pretrained(model, adapter, config=config)


def peft_load(model: Any, adapter: str) -> Any:
    """``PeftModel.from_pretrained`` with the adapter's saved config."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        # AdaLoRA's rank_pattern ("<module>.lora_E" -> flags) is not LoRA's; PEFT warns that
        # its keys match no module, then AdaLoRA applies it itself.
        warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match.*")
        return PeftModel.from_pretrained(model, adapter)


def assemble(
    source: str | None = None,
    plan: Plan | None = None,
    adapter: str | None = None,
    *,
    base: str | None = None,
    dtype: Any = None,
    device: str = "cpu",
    progress: bool = False,
) -> AssembledModel:
    """Loads ``source``, quantises it per ``plan`` and loads ``adapter`` onto it.

    Without a plan the base stays as loaded; with an adapter and no plan, the plan is the
    adapter's ranks on the unquantised base.

    Args:
        source: the model source (see ``load_model``).
        plan: the allocation of bits and ranks.
        adapter: a saved PEFT LoRA (possibly DoRA) or AdaLoRA adapter folder.
        base: a packed base file (``packed.save_packed_base``) to take the quantised weights
            from instead of quantising (needs ``plan``, the one it was packed with).
        dtype: parameter dtype (None: float32).
        device: where to put the model.
        progress: show the weight fits (see ``progress.py``).

    Raises:
        ValueError: on an unknown model, a plan for another model, an adapter that does
            not match the plan or model, or a base file packed for another plan or model.
    """
    loaded, structure, plan, info = quantized_base(source, plan, adapter, base, dtype, device, progress)
    model = loaded.model
    if info is not None:
        model = _load_adapter(model, plan, structure, info, str(adapter))
    model.eval()
    return AssembledModel(
        model, loaded.tokenizer, loaded.source, plan, str(adapter) if adapter else None, base
    )


def quantized_base(
    source: str | None,
    plan: Plan | None,
    adapter: str | None,
    base: str | None,
    dtype: Any,
    device: str,
    progress: bool = False,
) -> tuple[Any, Any, Plan, AdapterInfo | None]:
    """The loaded model quantised per plan (or with the codes of ``base``), its structure as
    loaded, the plan, and what ``adapter`` is; every check runs before the adapter is loaded."""
    from qradaptor.build import quantize_model_
    from qradaptor.models.loading import load_model
    from qradaptor.models.structure import inspect_model
    from qradaptor.packed import check_packed_plan, load_packed_base_, read_packed_header

    info = read_adapter(adapter) if adapter else None
    if base is not None:  # fail before loading the model
        if plan is None:
            raise ValueError(f"a packed base file ({base!r}) needs the plan it was packed with; got no plan")
        check_packed_plan(read_packed_header(base), plan, base)
    loaded = load_model(source, dtype=dtype, device=device)
    structure = inspect_model(loaded.model)
    if plan is None:
        plan = (
            Plan.from_rank_pattern(info.ranks, structure, bits=UNQUANTIZED, name="adapter-on-16bit")
            if info is not None and info.ranks
            else Plan.uniform(structure.num_blocks, UNQUANTIZED, 0, name="base")
        )
    plan.validate(structure)
    if info is not None:
        modules_only = info.peft_type == "ADALORA"  # AdaLoRA chose its own ranks
        check_adapter_matches(plan, structure, info.ranks, str(adapter), modules_only=modules_only)
    if base is not None:
        load_packed_base_(loaded.model, plan, base)
    else:
        quantize_model_(loaded.model, plan, progress=progress)
    return loaded, structure, plan, info
