"""Short content digests that name the model weights and data a result was computed on.

A search study and a training checkpoint store them, and refuse to continue on anything
else: a resume must see the same weights and the same tokens.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex digits) of tensors' shapes and values: names the data a result used."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_digest(model: nn.Module, per_tensor: int = 4096) -> str:
    """sha256 (16 hex digits) over every parameter's name, shape and first ``per_tensor`` values.

    Cheap for any model size, and tells two checkpoints of one architecture apart.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        digest.update(param.detach().flatten()[:per_tensor].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
