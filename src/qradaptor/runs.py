"""Training run folders: read one, rebuild its model exactly as trained, or merge it for serving.

A training run folder (``qra train``; its layout and train.json are ``runfolder/train_run.py``'s)
holds::

    RUN/plan.json              the Plan
    RUN/adapter/               a PEFT adapter (LoRA, LoRA with DoRA, or AdaLoRA)
    RUN/base.safetensors       the packed quantised base (see ``packed``), optional
    RUN/train.json             the training config and results (method, model source)

``qra eval --run`` and ``qra export`` use this module; the model is built by ``assemble``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.assemble import (
    AssembledModel,
    assemble,
    peft_load,
    quantized_base,
    read_adapter,
)
from qradaptor.plan import Plan
from qradaptor.runfolder.train_run import (
    RUN_ADAPTER,
    RUN_BASE,
    RUN_CHECKPOINTS,
    RUN_INCOMPLETE,
    RUN_PLAN,
    RUN_TRAIN,
    recorded_base,
)

if TYPE_CHECKING:
    from torch import nn

    from qradaptor.models.structure import ModelStructure

NF4_METHODS: dict[str, bool] = {"qlora-nf4": True, "qlora-nf4-nodq": False}
"""Methods whose base is bitsandbytes NF4 (rebuilt by bitsandbytes rather than from codes),
with whether they double-quantise."""


@dataclass(frozen=True)
class RunFiles:
    """The parts of a training run folder."""

    plan: Plan
    """RUN/plan.json."""
    adapter: str | None
    """RUN/adapter, None when the plan has no adapters (every rank 0)."""
    base: str | None
    """RUN/base.safetensors, None when the run did not keep its packed base."""
    source: str | None
    """The base model the run was trained on: train.json's "model", else the adapter's
    base_model_name_or_path (None: neither recorded)."""
    method: str | None = None
    """train.json's method (None: not recorded); ``NF4_METHODS`` runs rebuild a bitsandbytes base."""
    finished: bool = True
    """The folder has train.json, which ``qra train`` writes last; False for a folder put
    together by hand (readable, but nothing says it is whole)."""


def read_run(run_dir: str | Path) -> RunFiles:
    """The plan, adapter, packed base and recorded source of a training run folder.

    Raises:
        ValueError: if ``run_dir`` is not a folder, has no readable plan.json, or lacks the
            adapter its plan needs.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist or is not a folder")
    finished = (run / RUN_TRAIN).is_file()
    if (run / RUN_INCOMPLETE).exists() or (not finished and (run / RUN_CHECKPOINTS).is_dir()):
        raise ValueError(
            f"run {str(run_dir)!r} is incomplete: qra train stopped before writing {RUN_TRAIN}, which it "
            "writes last; finish it with qra train --resume (or --force) on the same folder"
        )
    plan_file = run / RUN_PLAN
    if not plan_file.is_file():
        raise ValueError(
            f"{str(run_dir)!r} is not a training run: it has no {RUN_PLAN} (a run folder holds "
            f"{RUN_PLAN}, {RUN_ADAPTER}/ and {RUN_BASE}, as qra train writes them)"
        )
    try:
        plan = Plan.from_json(plan_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"run {str(run_dir)!r}: {RUN_PLAN}: {err}") from None
    adapter = run / RUN_ADAPTER
    has_ranks = any(spec.rank > 0 for spec in plan.layers.values())
    if has_ranks and not adapter.is_dir():
        raise ValueError(
            f"run {str(run_dir)!r} has no {RUN_ADAPTER}/ folder although its plan has adapters "
            "(training not finished?)"
        )
    info = read_adapter(adapter) if adapter.is_dir() else None
    base = run / RUN_BASE
    source = method = None  # train.json's "model" is the source as given; PEFT records what was read
    if finished:
        source, method = recorded_base(run)
    source = source or (info.base_model if info is not None else None)
    packed = str(base) if base.is_file() else None
    return RunFiles(plan, str(adapter) if info else None, packed, source, method, finished)


def assemble_run(
    run_dir: str | Path,
    source: str | None = None,
    *,
    dtype: Any = None,
    device: str = "cpu",
    progress: bool = False,
) -> AssembledModel:
    """The model of training run ``run_dir`` exactly as trained: its base quantised with the
    run's packed codes (or per its plan when it kept none) and its adapter loaded.

    Args:
        run_dir: the run folder (plan.json, adapter/, base.safetensors).
        source: the base model; omitted: the one the run records (train.json, else its adapter).
        dtype: parameter dtype (None: float32).
        device: where to put the model.
        progress: show the weight fits (see ``progress.py``).

    Raises:
        ValueError: if the folder is not a run, or its parts do not fit together or the model.
    """
    run = read_run(run_dir)
    if run.method in NF4_METHODS:
        return _assemble_nf4(run, _run_source(run, run_dir, source), dtype=dtype, device=device)
    return assemble(
        _run_source(run, run_dir, source),
        run.plan,
        run.adapter,
        base=run.base,
        dtype=dtype,
        device=device,
        progress=progress,
    )


def _assemble_nf4(run: RunFiles, source: str, *, dtype: Any, device: str) -> AssembledModel:
    """A qlora-nf4(-nodq) run: bitsandbytes re-quantises the same base to the same NF4 codes (CUDA only)."""
    import torch

    from qradaptor.models.loading import load_model
    from qradaptor.train.nf4 import check_nf4_available, nf4_quantize_

    assert run.method is not None
    check_nf4_available(device, run.method)
    loaded = load_model(source, dtype=dtype or torch.bfloat16, device=device)
    nf4_quantize_(loaded.model, run.plan, double_quant=NF4_METHODS[run.method])
    model = loaded.model if run.adapter is None else peft_load(loaded.model, run.adapter)
    return AssembledModel(model.eval(), loaded.tokenizer, loaded.source, run.plan, run.adapter, None)


def _run_source(run: RunFiles, run_dir: str | Path, source: str | None) -> str:
    """``source`` if given, else the one the run recorded."""
    if source is None and run.source is None:
        raise ValueError(f"run {str(run_dir)!r} does not record its base model; name it (the model source)")
    return source or str(run.source)


def merged_run(
    run_dir: str | Path,
    source: str | None = None,
    *,
    dtype: Any = None,
    device: str = "cpu",
    progress: bool = False,
) -> AssembledModel:
    """The model of run ``run_dir`` as one dense model: the base dequantised as trained and
    the adapter merged into it (``merge_and_unload``), for serving without qradaptor.

    The merge is done in float32 and the result cast to ``dtype`` (None: float32).

    Raises:
        ValueError: as :func:`assemble_run`.
    """
    import torch

    run = read_run(run_dir)
    if run.method in NF4_METHODS:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on a bitsandbytes NF4 base; merging into it is not supported "
            "(bitsandbytes' own merge dequantises NF4): export --packed, or train with --method qlora"
        )
    loaded, structure, plan, _ = quantized_base(
        _run_source(run, run_dir, source), run.plan, run.adapter, run.base, torch.float32, device, progress
    )
    model = loaded.model
    dequantize_model_(model, structure)
    if run.adapter is not None:
        # The saved config on plain linears: PEFT builds (and merges) its own LoRA/DoRA/AdaLoRA layers.
        model = peft_load(model, run.adapter).merge_and_unload()
    model = model.to(dtype or torch.float32).eval()
    return AssembledModel(model, loaded.tokenizer, loaded.source, plan, run.adapter, run.base)


def dequantize_model_(model: nn.Module, structure: ModelStructure) -> None:
    """Replaces every packed module of unwrapped ``model`` with a dense copy of its weight.

    Linears come back as ``nn.Linear`` (GPT-2 ``Conv1D`` where the model had one), the
    embedding as ``nn.Embedding``; a head that shared the embedding's codes is tied to it
    again. The weights are dequantised in each module's compute dtype: what the quantised
    model computes with, so an adapter merged into them sees the base it was trained on.
    """
    from torch import nn

    from qradaptor.packed import quantized_modules
    from qradaptor.quant.modules import QuantLinear
    from qradaptor.quant.quantizer import dequantize

    conv1d = {
        structure.module_path(block, info.name)
        for block in range(structure.num_blocks)
        for info in structure.linears
        if info.kind == "conv1d"
    }
    for name, module in quantized_modules(model).items():
        rows, cols = module.quantized().shape
        linear = isinstance(module, QuantLinear)
        w = module.dequantized_weight() if linear else dequantize(module.quantized(), module.compute_dtype)
        weight = nn.Parameter(w, requires_grad=False)
        if not linear:
            dense: nn.Module = nn.Embedding(rows, cols, module.padding_idx, device="meta")
        elif name in conv1d:
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(rows, cols).to("meta")
            weight = nn.Parameter(weight.data.t().contiguous(), requires_grad=False)  # (in, out)
        else:
            dense = nn.Linear(cols, rows, bias=module.bias is not None, device="meta")
        dense.weight = weight
        if getattr(dense, "bias", None) is not None:
            dense.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, dense)
    embed, head = model.get_submodule(structure.embed_path), structure.head_path
    if structure.tied and head is not None and model.get_submodule(head).weight is not embed.weight:
        model.get_submodule(head).weight = embed.weight
        if hasattr(model, "config"):
            model.config.tie_word_embeddings = True
