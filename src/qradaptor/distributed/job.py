"""What a worker needs to score a study's plans, stored in the study itself.

A worker is started with only a storage URL and a study name, possibly on another
machine, so the study carries the job: the model to load (a hub id or a path; a worker
may be told another path to the same weights), the exact proxy-training and held-out
token windows, and, in the study's fingerprint (see ``study``), the proxy settings.
The tokens travel in the study, compressed, so workers need no data files and cannot
tokenise differently; the model does not, so a worker checks the weights it loaded
against the fingerprint before it takes any trial.

Study user attributes:
    qradaptor.job        {"kind": "proxy", "model": source, "train_ids": ..., "eval_ids": ...}
    qradaptor.finished   True once the search has written its results; idle workers exit
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import optuna
    import torch

JOB_ATTR = "qradaptor.job"
FINISHED_ATTR = "qradaptor.finished"
JOB_KINDS = ("proxy",)


@dataclass(frozen=True)
class ProxyJob:
    """A search study's job: score plans by proxy tuning this model on these tokens."""

    model: str
    """Model source as the search loaded it (hub id, folder, or GGUF file)."""
    train_ids: torch.Tensor
    """(N, T) proxy-training windows."""
    eval_ids: torch.Tensor
    """(M, T') held-out windows."""


def encode_ids(ids: torch.Tensor) -> dict[str, Any]:
    """A 2-d integer tensor as JSON: shape and zlib-compressed little-endian int32, base64."""
    array = ids.detach().cpu().numpy()
    assert array.ndim == 2 and array.min(initial=0) >= 0 and array.max(initial=0) < 2**31, "token ids"
    data = zlib.compress(array.astype("<i4").tobytes(), 6)
    return {"shape": list(array.shape), "data": base64.b64encode(data).decode("ascii")}


def decode_ids(blob: dict[str, Any]) -> torch.Tensor:
    """The long tensor ``encode_ids`` wrote."""
    import torch

    raw = zlib.decompress(base64.b64decode(blob["data"]))
    array = np.frombuffer(raw, dtype="<i4").reshape(blob["shape"]).astype(np.int64)
    return torch.from_numpy(array)


def write_job(study: optuna.Study, model: str, train_ids: torch.Tensor, eval_ids: torch.Tensor) -> None:
    """Stores the job in the study and marks the search as running."""
    study.set_user_attr(
        JOB_ATTR,
        {
            "kind": "proxy",
            "model": model,
            "train_ids": encode_ids(train_ids),
            "eval_ids": encode_ids(eval_ids),
        },
    )
    study.set_user_attr(FINISHED_ATTR, False)


def read_job(study: optuna.Study) -> ProxyJob:
    """The study's job.

    Raises:
        ValueError: if the study holds no job (it was not started by ``qra search --workers``
            or ``--storage``) or one of a kind this version cannot run.
    """
    job = study.user_attrs.get(JOB_ATTR)
    if not isinstance(job, dict):
        raise ValueError(
            f"study {study.study_name!r} has no job for workers: start its search with "
            "qra search --workers N or --storage URL first"
        )
    if job.get("kind") not in JOB_KINDS:
        raise ValueError(
            f"study {study.study_name!r} holds a job of kind {job.get('kind')!r}; "
            f"this worker runs {JOB_KINDS}"
        )
    return ProxyJob(
        model=str(job["model"]), train_ids=decode_ids(job["train_ids"]), eval_ids=decode_ids(job["eval_ids"])
    )


def mark_finished(study: optuna.Study) -> None:
    """Tells idle workers that the search needs nothing more."""
    study.set_user_attr(FINISHED_ATTR, True)


def is_finished(study: optuna.Study) -> bool:
    """Whether the search marked itself finished (read fresh from the storage)."""
    summary = study._storage.get_study_user_attrs(study._study_id)
    return bool(summary.get(FINISHED_ATTR, False))
