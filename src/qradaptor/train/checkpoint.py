"""Training checkpoints: written atomically, found by step, refused when they belong to another run.

A checkpoint is a folder ``<dir>/step-<NNNNNN>/`` holding

    adapter.safetensors   every trainable tensor (and AdaLoRA's allocator state), by name
    optimizer.pt          AdamW's state_dict and the lr scheduler's
    rng.pt                torch CPU (and CUDA) generator states, for dropout
    state.json            step, history, config, fingerprint

It is written into a hidden temporary folder and renamed into place when complete, so a
process killed while saving leaves the previous checkpoint as the newest complete one. A
checkpoint damaged afterwards (a full disk, a partial copy) is skipped on resume for the
newest one that reads back whole, and the resume says so.
The data position needs no saving: micro-batch i is a function of (seed, i), see data.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STATE_FILE = "state.json"
PREFIX = "step-"


@dataclass
class Checkpoint:
    """What a checkpoint restores."""

    step: int
    """Optimiser steps completed."""
    state: dict[str, Any]
    """state.json: history, config, fingerprint."""
    tensors: dict[str, torch.Tensor]
    """Trainable tensors and allocator state by name."""
    optimizer: dict[str, Any]
    """{"optimizer": ..., "scheduler": ...} state dicts."""
    rng: dict[str, Any]
    """{"cpu": ByteTensor, "cuda": [ByteTensor, ...]}."""
    path: Path
    """The folder it was read from."""


def checkpoint_path(directory: Path, step: int) -> Path:
    """``directory/step-NNNNNN``."""
    return directory / f"{PREFIX}{step:06d}"


def complete_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders under ``directory``, oldest first (temporaries are skipped)."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir()
        and p.name.startswith(PREFIX)
        and p.name[len(PREFIX) :].isdigit()
        and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Writes a checkpoint atomically, then deletes all but the ``keep`` newest."""
    import torch
    from safetensors.torch import save_file

    from qradaptor.atomic import atomic_dir

    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    with atomic_dir(final) as temp:  # a re-save of the same step (after a resume) replaces it
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temp / "adapter.safetensors")
        )
        torch.save(optimizer, temp / "optimizer.pt")
        torch.save(rng, temp / "rng.pt")
        (temp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n", encoding="utf-8")
    for old in complete_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Reads a checkpoint folder written by ``save_checkpoint``.

    Raises:
        ValueError: if the folder is not a complete checkpoint, or a file of it is corrupt or
            truncated (the message names the file).
    """
    import torch
    from safetensors.torch import load_file

    from qradaptor.integrity import check_safetensors, read_json

    needed = ("adapter.safetensors", "optimizer.pt", "rng.pt", STATE_FILE)
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} is incomplete: it lacks {missing} (expected {list(needed)})"
        )
    state = read_json(path / STATE_FILE, "checkpoint state")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"checkpoint state {str(path / STATE_FILE)!r} has no step")
    check_safetensors(path / "adapter.safetensors", "checkpoint tensors")
    loaded = {}
    for name in ("optimizer.pt", "rng.pt"):
        try:
            loaded[name] = torch.load(path / name, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError...
            raise ValueError(
                f"checkpoint file {str(path / name)!r} is corrupt or truncated ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})"
            ) from None
    return Checkpoint(
        step=int(state["step"]),
        state=state,
        tensors=load_file(str(path / "adapter.safetensors")),
        optimizer=loaded["optimizer.pt"],
        rng=loaded["rng.pt"],
        path=path,
    )


def newest_intact(directory: Path, on_skip: Callable[[str], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint under ``directory`` that reads back whole, or None when there is none.

    A corrupt newer one (a disk that filled, a file copied in half) is skipped for the one
    before it, and ``on_skip`` is told which and why.

    Raises:
        ValueError: when checkpoints exist but none reads back; each one's fault is named.
    """
    found = complete_checkpoints(directory)
    faults = []
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except ValueError as err:
            faults.append(str(err))
            continue
        if faults and on_skip is not None:
            on_skip(f"{'; '.join(faults)}; resuming from the older intact checkpoint {path.name}")
        return checkpoint
    if faults:
        raise ValueError(
            "no checkpoint can be resumed from: " + "; ".join(faults) + "; start over with --force"
        )
    return None


def check_resumable(directory: Path, fingerprint: dict[str, Any]) -> None:
    """Refuses, from state.json alone, to resume another run's newest checkpoint.

    Cheap (no tensor is read), so ``train_plan`` calls it before it quantises anything; the
    full check runs again when the checkpoint is loaded.

    Raises:
        ValueError: as :func:`check_same_run`.
    """
    from qradaptor.integrity import read_json

    for path in reversed(complete_checkpoints(directory)):
        try:
            state = read_json(path / STATE_FILE, "checkpoint state")
        except ValueError:
            continue  # corrupt: the resume skips it for an older one, and says so
        if isinstance(state, dict):
            check_same_run(dict(state.get("fingerprint") or {}), fingerprint, path)
            return


def check_same_run(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Raises ValueError naming every fingerprint field that differs between a checkpoint and now."""
    differ = [
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differ:
        raise ValueError(
            f"cannot resume from {str(where)!r}: it was written by another run ("
            + "; ".join(differ)
            + "); start a new run folder, or run without --resume and with --force to start over"
        )
