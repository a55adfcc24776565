"""Training checkpoints: written atomically, found by step, refused when they belong to another run.

A checkpoint is a folder ``<dir>/step-<NNNNNN>/`` holding

    adapter.safetensors   every trainable tensor (and AdaLoRA's allocator state), by name
    optimizer.pt          AdamW's state_dict and the lr scheduler's
    rng.pt                torch CPU (and CUDA) generator states, for dropout
    state.json            step, history, config, fingerprint

It is written into a hidden temporary folder and renamed into place when complete, so a
process killed while saving leaves the previous checkpoint as the newest complete one.
The data position needs no saving: micro-batch i is a function of (seed, i), see data.py.
"""

from __future__ import annotations

import json
import shutil
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
        ValueError: if the folder is not a complete checkpoint.
    """
    import torch
    from safetensors.torch import load_file

    needed = ("adapter.safetensors", "optimizer.pt", "rng.pt", STATE_FILE)
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} is incomplete: it lacks {missing} (expected {list(needed)})"
        )
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return Checkpoint(
        step=int(state["step"]),
        state=state,
        tensors=load_file(str(path / "adapter.safetensors")),
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        path=path,
    )


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
