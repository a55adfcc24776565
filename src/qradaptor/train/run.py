"""Fine-tune a plan end to end: load the model and data, build the method, train, measure.

``train_plan`` is what ``qra train`` runs; writing the run folder is outputs.py's job.
Every method goes through the same data, loop and measurements (plan.py's average bits
and rank, trainable parameters, predicted and measured peak memory, tokens/s, loss curve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.runfolder.train_run import TrainMemory
from qradaptor.train.adalora import adalora_memory, adalora_ranks, mean_adapted_rank
from qradaptor.train.config import TrainConfig
from qradaptor.train.methods import Method, get_method, method_plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.models.structure import ModelStructure
    from qradaptor.plan import Plan
    from qradaptor.train.data import TokenizedSet
    from qradaptor.train.state import TrainResult

PROBE_STEPS = 4
"""Batches of the gradient probe behind ``rank-gradient``."""


@dataclass(frozen=True)
class DataSpec:
    """Where the training and held-out examples come from."""

    source: str | None = None
    """None: the embedded QA mix; else an Alpaca .json/.jsonl, a save_to_disk folder or a hub id."""
    text: bool = False
    """Train a language model on plain text (loss on every token) instead of instructions."""
    eval_source: str | None = None
    """Held-out examples from here; None: ``eval_size`` examples split off the training data."""
    eval_size: int = 200
    """Examples held out of the training data when ``eval_source`` is None (0: no evaluation)."""
    limit: int | None = None
    """Use only this many training examples (documents for text)."""
    split: str = "train"
    """Split of a hub or save_to_disk dataset."""


@dataclass
class TrainOutcome:
    """A trained model and everything measured about it."""

    model: Any
    tokenizer: Any
    source: str
    plan: Plan
    method: Method
    structure: ModelStructure
    config: TrainConfig
    result: TrainResult
    fingerprint: dict[str, Any]
    memory: TrainMemory
    """avg_bits, avg_rank, trainable_params, predicted_peak, measured_peak, weights_bytes (train.json's)."""


def load_training_data(
    spec: DataSpec, tokenizer: Any, seq_len: int, seed: int
) -> tuple[TokenizedSet, TokenizedSet | None]:
    """The tokenized training set and held-out set (None when ``eval_size`` is 0 and no eval source)."""
    from qradaptor.data.loading import load_instructions, load_texts
    from qradaptor.train.data import pack_examples, split_heldout, tokenize_examples

    def load(source: str | None, limit: int | None) -> list[Any]:
        if spec.text:
            return load_texts(source, split=spec.split, limit=limit)
        return load_instructions(source, split=spec.split, limit=limit, seed=seed)

    def tokenize(items: list[Any]) -> TokenizedSet:
        return (
            pack_examples(items, tokenizer, seq_len, seed)
            if spec.text
            else tokenize_examples(items, tokenizer, seq_len)
        )

    items = load(spec.source, spec.limit)
    if spec.eval_source is not None:
        return tokenize(items), tokenize(load(spec.eval_source, None))
    if spec.eval_size == 0:
        return tokenize(items), None
    train, held = split_heldout(items, spec.eval_size, seed)
    return tokenize(train), tokenize(held)


def _variant(method: Method, total_steps: int, adalora: tuple[int, int] | None) -> Any:
    from qradaptor.lora import AdapterVariant

    if method.adapter == "adalora":
        assert adalora is not None
        init_r, target = adalora
        return AdapterVariant(
            kind="adalora",
            adalora_init_r=init_r,
            adalora_target_r=target,
            adalora_total_steps=total_steps,
        )
    return AdapterVariant(kind=method.adapter, init=method.init)  # type: ignore[arg-type]


def build_for_method(
    model: nn.Module,
    plan: Plan,
    method: Method,
    config: TrainConfig,
    total_steps: int,
    adalora: tuple[int, int] | None = None,
) -> nn.Module:
    """Quantises ``model`` and attaches the method's adapters (in place; returns the trainable model).

    ``adalora`` is AdaLoRA's (init_r, target_r) (``adalora_ranks``), for the adalora method only.
    """
    from qradaptor.build import apply_plan

    if method.backend == "bitsandbytes":
        from qradaptor.train.nf4 import nf4_model_

        return nf4_model_(model, plan, lora_dropout=config.lora_dropout, double_quant=method.double_quant)
    if method.adapter == "adalora" and adalora is None:
        adalora = adalora_ranks(mean_adapted_rank(plan))
    return apply_plan(
        model,
        plan,
        lora_dropout=config.lora_dropout,
        variant=_variant(method, total_steps, adalora),
        progress=config.progress,
    )


def block_diagnosis(
    structure: ModelStructure, plan: Plan
) -> Callable[[nn.Module, dict[str, torch.Tensor]], str]:
    """A divergence diagnosis: re-runs the failing batch, names the first block whose output is not finite."""

    def diagnose(model: nn.Module, batch: dict[str, torch.Tensor]) -> str:
        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        blocks = base.get_submodule(structure.blocks_path)
        peaks: list[float] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            peaks.append(float(hidden.detach().float().abs().amax()))

        handles = [block.register_forward_hook(hook) for block in blocks]
        try:
            with torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            for handle in handles:
                handle.remove()
        bits = plan.block_bits() if plan.granularity == "block" else None

        def label(i: int) -> str:
            return f"block {i}" + (f" ({bits[i]}-bit)" if bits else "")

        bad = [i for i, peak in enumerate(peaks) if not torch.isfinite(torch.tensor(peak))]
        if bad:
            return (
                f"Likely cause: {label(bad[0])} is the first whose output is not finite "
                "(a low-bit block collapsing)."
            )
        worst = max(range(len(peaks)), key=peaks.__getitem__) if peaks else 0
        low = sorted({b for b in (bits or [])})[:1]
        hint = f"; the plan's lowest bit-width is {low[0]}" if low else ""
        return (
            "Every block's output is finite on this batch (largest |activation| "
            f"{max(peaks, default=0):.3g} at {label(worst)}{hint}), so the adapters' update overshot."
        )

    return diagnose


def base_format(method: Method) -> str:
    """``memory.plan_memory``'s base_format of the method's quantised layers."""
    if method.backend == "bitsandbytes":
        return "nf4-dq" if method.double_quant else "nf4"
    return "packed"


def _memory(
    structure: ModelStructure,
    plan: Plan,
    method: Method,
    config: TrainConfig,
    longest: int,
    dtype: Any,
    adalora: tuple[int, int] | None,
) -> TrainMemory:
    """train.json's memory before training: the plan's size and the predicted peak."""
    import torch

    from qradaptor.memory import plan_memory, training_memory
    from qradaptor.plan import LayerSpec

    peak_plan = plan
    if adalora is not None:  # its adapters start at init_r and are pruned later
        init_r, _ = adalora
        peak_plan = replace(
            plan, layers={k: LayerSpec(s.bits, init_r if s.rank else 0) for k, s in plan.layers.items()}
        )
    act = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    fmt = base_format(method)
    report = plan_memory(structure, plan, weight_bytes=act, base_format=fmt)
    peak = training_memory(
        structure,
        plan_memory(structure, peak_plan, weight_bytes=act, base_format=fmt),
        batch_size=config.batch_size,
        seq_len=min(longest, config.seq_len),
        act_bytes=act,
        gradient_checkpointing=config.gradient_checkpointing,
        lora_dropout=config.lora_dropout > 0,
        adapter=method.adapter,
        checkpoint_blocks=config.checkpoint_blocks,
    )
    return TrainMemory(
        avg_bits=report.avg_bits,
        avg_rank=report.avg_rank,
        base_format=fmt,
        weights_bytes=report.total_bytes,
        predicted_peak=peak.total,
        predicted_parts={
            "weights": peak.weights,
            "gradients": peak.gradients,
            "optimizer": peak.optimizer,
            "activations": peak.activations,
        },
    )


def train_plan(
    source: str | None,
    method_name: str,
    config: TrainConfig,
    data: DataSpec,
    *,
    plan: Plan | None = None,
    rank: int = 16,
    bits: int = 4,
    device: str = "cpu",
    checkpoints: Path | None = None,
    resume: bool = False,
    adalora_init_r: int | None = None,
    adalora_target_r: int | None = None,
    tensorboard: Path | None = None,
) -> TrainOutcome:
    """Loads ``source``, builds ``method`` (its plan, or ``plan``), trains it and measures it.

    ``adalora_init_r`` and ``adalora_target_r`` (adalora only) default to 1.5 x and 1 x the
    plan's mean adapted rank; ``memory.avg_rank`` of an AdaLoRA run is the rank it kept
    after pruning (over every block linear, as for the other methods), and
    ``memory.adalora`` says init_r, target_r and the kept rank of each module.
    ``tensorboard`` is a folder for TensorBoard event files (``train/loss`` every step,
    ``eval/loss`` at each evaluation), written as training goes by torch's SummaryWriter.

    Raises:
        ValueError: bad method/plan/data, a plan for another model, or a resume from another run.
        TrainingDiverged: when the loss becomes non-finite or explodes.
    """
    import torch

    from qradaptor.build import enable_gradient_checkpointing
    from qradaptor.fingerprint import weights_digest
    from qradaptor.models.loading import load_model
    from qradaptor.models.structure import inspect_model
    from qradaptor.train.loop import Trainer
    from qradaptor.train.state import trainable_tensors

    method = get_method(method_name)
    adalora: tuple[int, int] | None = None
    if method.adapter == "adalora":  # checked here, before the model loads
        adalora = adalora_ranks(
            mean_adapted_rank(plan) if plan is not None else rank, adalora_init_r, adalora_target_r
        )
    elif adalora_init_r is not None or adalora_target_r is not None:
        raise ValueError(
            f"adalora_init_r and adalora_target_r are options of method adalora, not of {method.name!r}"
        )
    if method.backend == "bitsandbytes":
        from qradaptor.train.nf4 import check_nf4_available

        check_nf4_available(device, method.name)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    loaded = load_model(source, dtype=dtype, device=device)
    structure = inspect_model(loaded.model)
    if plan is not None:
        plan.validate(structure)  # a plan for another model fails here, before any work
    train_set, eval_set = load_training_data(data, loaded.tokenizer, config.seq_len, config.seed)
    norms = None
    if method.baseline == "rank-gradient" and plan is None:
        from qradaptor.train.probe import gradient_norms

        batches = [
            train_set.batch(i, config.batch_size, config.seed)["input_ids"].to(device)
            for i in range(PROBE_STEPS)
        ]
        norms = gradient_norms(loaded.model, structure, batches, seed=config.seed)
    the_plan = method_plan(method, structure, plan, rank=rank, bits=bits, gradient_norms=norms).for_model(
        structure
    )
    if adalora is not None:
        adalora = adalora_ranks(mean_adapted_rank(the_plan), adalora_init_r, adalora_target_r)
    fingerprint = {
        "plan_hash": the_plan.plan_hash,
        "method": method.name,
        "weights": weights_digest(loaded.model),
        "data": train_set.digest(),
        "eval_data": eval_set.digest() if eval_set is not None else None,
    }
    if adalora is not None:
        fingerprint["adalora"] = list(adalora)
    if resume and checkpoints is not None:  # another plan or data: refused before quantising
        from qradaptor.train.checkpoint import check_resumable

        check_resumable(checkpoints, fingerprint)
    total = config.total_steps(train_set.batches_per_epoch(config.batch_size))
    torch.manual_seed(config.seed)  # adapter initialisation
    model = build_for_method(loaded.model, the_plan, method, config, total, adalora)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model, config.checkpoint_blocks)
        model.config.use_cache = False
    if device.startswith("cuda"):
        # The plan's build held dense weights that are free now: hand their cached blocks back, so
        # the steps' activations are not carved out of them under a --max-memory cap (a packed 8B
        # build left 18.9 GB reserved for 7.0 GB allocated, docs/SCALE.md).
        torch.cuda.empty_cache()
    memory = _memory(structure, the_plan, method, config, train_set.longest(), dtype, adalora)
    memory = replace(memory, trainable_params=sum(p.numel() for p in trainable_tensors(model).values()))
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        writer = SummaryWriter(log_dir=str(tensorboard))
    trainer = Trainer(
        model,
        train_set,
        eval_set,
        config,
        checkpoints=checkpoints,
        fingerprint=fingerprint,
        diagnose=block_diagnosis(structure, the_plan),
        log=None if writer is None else writer.add_scalar,
    )
    try:
        result = trainer.run(resume=resume)
    finally:
        if writer is not None:
            writer.close()
    memory = replace(memory, measured_peak=result.peak_memory)
    if adalora is not None:
        linears = len(structure.linears) * structure.num_blocks
        kept, ranks = adalora_memory(model, adalora, num_linears=linears)
        memory = replace(memory, avg_rank=kept, adalora=ranks)
    return TrainOutcome(
        model,
        loaded.tokenizer,
        loaded.source,
        the_plan,
        method,
        structure,
        config,
        result,
        fingerprint,
        memory,
    )
