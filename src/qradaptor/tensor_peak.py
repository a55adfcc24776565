"""Peak bytes of the tensors a piece of code allocates, on any device, CPU included.

CUDA has ``torch.cuda.max_memory_allocated``; a CPU has no such counter. ``TensorPeak`` is a
``TorchDispatchMode`` that sees every tensor an operator returns, counts its storage once
(views share it) and uncounts it when the storage is freed, so ``peak`` is the most bytes
that were alive at once among the tensors made inside the ``with`` block. Tensors made
before it (the model's weights) are not counted: add them (``memory.model_tensor_bytes``).
It is how the memory model's stage predictions are checked on tiny models (docs/MEMORY.md).

Example:
    >>> with TensorPeak() as peak:
    ...     profile_sensitivity(model, ids)
    >>> peak.peak  # bytes
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """Counts live bytes of the storages operators allocate inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        """Bytes alive now (made inside the block, not yet freed)."""
        self.peak = 0
        """Most bytes alive at once so far."""
        self._seen: set[tuple[str, int]] = set()

    def _free(self, key: tuple[str, int], nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # An in-place op returns storage that existed before it: not a new allocation.
        inputs = {
            (str(t.device), t.untyped_storage().data_ptr())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and not t.is_meta
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
                continue
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            nbytes = storage.nbytes()
            if key in self._seen or key in inputs or nbytes == 0:
                continue  # a view, or an in-place op's own output
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out
