"""A training run folder (``qra train``): its layout and its record, train.json.

    RUN/adapter/            standard PEFT adapter (adapter_config.json + adapter_model.safetensors;
                            mixed ranks via rank_pattern)
    RUN/plan.json           the plan trained (qra eval --plan, qra memory --plan)
    RUN/base.safetensors    the packed quantised base, so that a reload needs no re-fit
                            (qradaptor backend with quantised modules only)
    RUN/train.json          ``TrainRecord``: method, settings, fingerprint, memory, throughput,
                            loss curve, evals
    RUN/loss.csv            step, train loss, held-out loss
    RUN/loss.png            the same as a plot (needs matplotlib: qradaptor[plot])
    RUN/tensorboard/        TensorBoard event files, with qra train --tensorboard (written live)
    RUN/checkpoints/        training checkpoints while a run is unfinished
    RUN/.incomplete         present while qra train writes the finished parts

``train/outputs.py`` writes the folder, train.json last; ``runs.py`` and the experiment report
read it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qradaptor.runfolder.jsonfile import check_format, need, number, read_json

RUN_PLAN = "plan.json"
"""The plan trained."""
RUN_ADAPTER = "adapter"
"""The PEFT adapter folder."""
RUN_BASE = "base.safetensors"
"""The packed quantised base (optional)."""
RUN_TRAIN = "train.json"
"""The run's record (``TrainRecord``), written last."""
RUN_CHECKPOINTS = "checkpoints"
"""Training checkpoints of an unfinished run."""
RUN_INCOMPLETE = ".incomplete"
"""Present while ``qra train`` writes a run folder; train.json is written last (train/outputs.py)."""
LOSS_CSV = "loss.csv"
"""step, train loss, held-out loss of a run."""
LOSS_PNG = "loss.png"
"""The loss curves of a run."""
TRAIN_FORMAT = 1
"""The format of train.json this code writes."""


@dataclass(frozen=True)
class AdaloraRanks:
    """The ranks an AdaLoRA run started from, aimed at and kept."""

    init_r: int
    """Rank of every adapter at the start."""
    target_r: int
    """The average rank AdaLoRA prunes down to."""
    kept_avg_rank: float
    """Mean kept rank over the adapted modules."""
    kept_ranks: Mapping[str, int]
    """Module path -> rank kept after pruning."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (see ``from_dict``)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "kept_ranks": dict(self.kept_ranks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaloraRanks:
        """Inverse of ``to_dict``."""
        return cls(
            int(data["init_r"]),
            int(data["target_r"]),
            float(data["kept_avg_rank"]),
            {str(k): int(v) for k, v in data["kept_ranks"].items()},
        )


@dataclass(frozen=True)
class TrainMemory:
    """train.json's memory: the plan's stored size and the training peak, predicted and measured."""

    avg_bits: float
    """Stored bits per block-linear weight, metadata included (``MemoryReport.avg_bits``)."""
    avg_rank: float
    """Mean adapter rank over block linears; an AdaLoRA run's is the rank it kept."""
    base_format: str | None = None
    """How the quantised layers are stored: "packed", "nf4" or "nf4-dq" (None: not recorded)."""
    weights_bytes: int | None = None
    """Everything the built model stores (``MemoryReport.total_bytes``)."""
    predicted_peak: int | None = None
    """Predicted peak bytes of a training step (``TrainingMemory.total``)."""
    predicted_parts: Mapping[str, int] | None = None
    """That peak's parts: weights, gradients, optimizer, activations."""
    trainable_params: int | None = None
    """Parameters the optimiser updates."""
    measured_peak: int | None = None
    """Peak allocated bytes measured on the GPU (None on CPU)."""
    adalora: AdaloraRanks | None = None
    """An AdaLoRA run's ranks; None for other methods."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; fields never recorded (None) are left out, ``measured_peak`` always kept."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name != "measured_peak":
                continue
            if f.name == "predicted_parts":
                value = dict(value)
            elif f.name == "adalora":
                value = value.to_dict()
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | str = RUN_TRAIN) -> TrainMemory:
        """Inverse of ``to_dict``; ``avg_bits`` and ``avg_rank`` are needed, the rest may be absent.

        Raises:
            ValueError: a needed key missing; the message names ``path``.
        """
        avg_bits, avg_rank = need(data, "avg_bits", path), need(data, "avg_rank", path)
        parts = data.get("predicted_parts")
        adalora = data.get("adalora")
        return cls(
            avg_bits=avg_bits,
            avg_rank=avg_rank,
            base_format=data.get("base_format"),
            weights_bytes=data.get("weights_bytes"),
            predicted_peak=data.get("predicted_peak"),
            predicted_parts=None if parts is None else dict(parts),
            trainable_params=data.get("trainable_params"),
            measured_peak=data.get("measured_peak"),
            adalora=None if adalora is None else AdaloraRanks.from_dict(adalora),
        )


@dataclass(frozen=True)
class TrainRecord:
    """train.json: what was trained, how, and what it measured.

    Reading is lenient where files written by older versions differ: a field they did not
    record is None (or empty), and keys this version does not know are kept in ``extra``.
    """

    method: str | None
    """The ``qra train --method``."""
    memory: TrainMemory
    """Stored size and training peak."""
    tokens: int | None
    """Non-padding input tokens trained on."""
    train_seconds: float | None
    """Seconds inside training steps."""
    steady_tokens_per_second: float | None
    """Tokens per second after the warm-up steps."""
    method_summary: str | None = None
    """The method in a sentence."""
    model: str | None = None
    """The base model's source, as given."""
    plan_name: str | None = None
    """The plan's name."""
    plan_hash: str | None = None
    """The plan's hash."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """``TrainConfig.to_dict()`` of the run."""
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    """What a resume checks: plan hash, method, weights and data digests."""
    steps: int | None = None
    """Optimiser steps taken."""
    resumed_from: int | None = None
    """The checkpoint step the run resumed from; None: it ran from the start."""
    tokens_per_second: float | None = None
    """Tokens per second over every step."""
    step_seconds: tuple[float, ...] = ()
    """Seconds of each step."""
    final_train_loss: float | None = None
    """The last step's train loss."""
    final_eval_loss: float | None = None
    """The last held-out loss."""
    evals: tuple[tuple[int, float], ...] = ()
    """(step, held-out loss) of each evaluation."""
    losses: tuple[float, ...] = ()
    """Train loss of each step."""
    skipped_steps: tuple[int, ...] = ()
    """Steps (1-based) not applied because their gradient was not finite; left out when none."""
    device: str | None = None
    """The device trained on, e.g. "cuda"."""
    device_name: str | None = None
    """The GPU's (or CPU's) name."""
    date: str | None = None
    """Day of the run, YYYY-MM-DD."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """torch, transformers and peft versions."""
    provenance: Mapping[str, Any] | None = None
    """``Provenance.to_dict()`` of the base: what the model source stores."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys of an older file that this version does not know (e.g. "note"), kept as read."""

    def to_dict(self) -> dict[str, Any]:
        """train.json's JSON object: ``format`` first, then the fields in their historical order."""
        data: dict[str, Any] = {"format": TRAIN_FORMAT}
        for name in _ORDER:
            value = getattr(self, name)
            if name in _OPTIONAL and value is None or name == "skipped_steps" and not value:
                continue
            if name == "memory":
                value = self.memory.to_dict()
            elif name in ("config", "fingerprint", "versions", "provenance"):
                value = dict(value)
            elif name == "evals":
                value = [list(e) for e in self.evals]
            elif name in ("step_seconds", "losses", "skipped_steps"):
                value = list(value)
            data[name] = value
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = RUN_TRAIN) -> TrainRecord:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: not an object, a newer format, or one of memory (avg_bits, avg_rank),
                tokens, train_seconds, steady_tokens_per_second missing; the message names ``path``.
        """
        memory = TrainMemory.from_dict(need(data, "memory", path), path)
        check_format(data, TRAIN_FORMAT, path)
        tokens = number(need(data, "tokens", path))
        steady = number(need(data, "steady_tokens_per_second", path))
        seconds = number(need(data, "train_seconds", path))
        known = {"format", *_ORDER}
        return cls(
            method=_str(data.get("method")),
            memory=memory,
            tokens=None if tokens is None else int(tokens),
            train_seconds=seconds,
            steady_tokens_per_second=steady,
            method_summary=_str(data.get("method_summary")),
            model=_str(data.get("model")),
            plan_name=_str(data.get("plan_name")),
            plan_hash=_str(data.get("plan_hash")),
            config=dict(data.get("config") or {}),
            fingerprint=dict(data.get("fingerprint") or {}),
            steps=data.get("steps"),
            resumed_from=data.get("resumed_from"),
            tokens_per_second=number(data.get("tokens_per_second")),
            step_seconds=tuple(data.get("step_seconds") or ()),
            final_train_loss=number(data.get("final_train_loss")),
            final_eval_loss=number(data.get("final_eval_loss")),
            evals=tuple((int(s), v) for s, v in data.get("evals") or ()),
            losses=tuple(data.get("losses") or ()),
            skipped_steps=tuple(int(x) for x in data.get("skipped_steps") or ()),
            device=_str(data.get("device")),
            device_name=_str(data.get("device_name")),
            date=_str(data.get("date")),
            versions=dict(data.get("versions") or {}),
            provenance=data.get("provenance") if isinstance(data.get("provenance"), Mapping) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def save(self, run: Path) -> None:
        """Writes ``run``/train.json atomically."""
        from qradaptor.atomic import write_text

        write_text(run / RUN_TRAIN, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, run: Path) -> TrainRecord:
        """``run``/train.json; ValueError naming the file when missing or not a train record."""
        path = run / RUN_TRAIN
        return cls.from_dict(read_json(path), path)

    @property
    def weights(self) -> str | None:
        """The provenance sentence: what the model source stores (None: not recorded)."""
        text = self.provenance.get("text") if self.provenance is not None else None
        return text if isinstance(text, str) and text else None

    @property
    def measured_on(self) -> str | None:
        """ "2026-11-23, NVIDIA H200, torch 2.11.0, ..." (None if the record says nothing)."""
        parts = [self.date, self.device_name or self.device]
        parts += [f"{name} {version}" for name, version in sorted(self.versions.items())]
        text = ", ".join(str(p) for p in parts if p)
        return text or None


_ORDER = (
    "method",
    "method_summary",
    "model",
    "plan_name",
    "plan_hash",
    "config",
    "fingerprint",
    "memory",
    "steps",
    "resumed_from",
    "tokens",
    "train_seconds",
    "tokens_per_second",
    "steady_tokens_per_second",
    "step_seconds",
    "final_train_loss",
    "final_eval_loss",
    "evals",
    "losses",
    "skipped_steps",
    "device",
    "device_name",
    "date",
    "versions",
    "provenance",
)
"""train.json's keys in the order qra train has always written them."""
_OPTIONAL = ("device_name", "provenance")
"""Keys older files lack: left out when None rather than written as null."""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def recorded_base(run: Path) -> tuple[str | None, str | None]:
    """The base model source and method a run's train.json records, each None when absent.

    Lenient on purpose: a run folder put together by hand may hold a train.json with only
    these two (``runs.read_run``); a full record is read by ``TrainRecord.load``.

    Raises:
        ValueError: train.json missing or not JSON (``integrity.read_json``'s message).
    """
    from qradaptor.integrity import read_json as read_record

    recorded = read_record(run / RUN_TRAIN, "run record")
    recorded = recorded if isinstance(recorded, dict) else {}
    return _str(recorded.get("model")), _str(recorded.get("method"))
