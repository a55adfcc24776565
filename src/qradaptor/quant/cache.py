"""QuantCache: every (layer, bits) fitted once, however many plans are built from one model.

A search builds hundreds of candidate models from the same frozen weights; each candidate
puts each layer at one of a few bit-widths. Fitting a layer's codes (HQQ: an iterative
optimisation) is the costly part of a build, and its result depends only on the weight, the
bits, the group size and the method. The cache keeps the packed result of each such fit,
keyed by the layer's name, so the second and later builds only unpack codes.

What it holds is the packed ``QuantizedTensor`` (bits/16 of a 16-bit weight plus scales),
not dense copies: SmolLM2-135M's 210 block linears at 2, 3, 4 and 8 bits take about 0.23 GB.

The key names a layer, not its values: one cache must serve one set of weights (one
model), which is how the search uses it (profiling and every proxy build of one model).

Kept on the host (``QuantCache(storage="cpu")``, pinned when the fits are made on CUDA), the
cache costs the GPU nothing between builds: each ``get`` hands out a copy on the weight's
device, which the candidate built from it owns (an 8B model's fits at 2, 3, 4 and 8 bits take
15 GiB, more than half of a 24 GB GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qradaptor.quant.quantizer import QuantizedTensor, QuantMethod, quantize

if TYPE_CHECKING:
    import torch

CacheKey = tuple[str, int, int, str, bool]
"""(layer name, bits, group size, method, double quantisation)."""


class QuantCache:
    """Fitted codes by (layer name, bits, group size, method, double_quant); fits on a miss.

    Example:
        >>> cache = QuantCache()
        >>> qt = cache.get("model.layers.0.mlp.up_proj", weight, 3, 64, "hqq")   # fitted
        >>> qt = cache.get("model.layers.0.mlp.up_proj", weight, 3, 64, "hqq")   # from the cache
    """

    def __init__(self, storage: str | None = None) -> None:
        """Args:
        storage: where fits are kept: None, where each was made (handed out shared); "cpu",
            on the host (pinned when made on CUDA), handed out as a copy on the weight's device.

        Raises:
            ValueError: for another ``storage``.
        """
        if storage not in (None, "cpu"):
            raise ValueError(f"storage must be None (where fitted) or 'cpu' (the host), got {storage!r}")
        self.storage = storage
        """None or "cpu", as given."""
        self._entries: dict[CacheKey, QuantizedTensor] = {}
        self.hits = 0
        """Calls answered from the cache."""
        self.misses = 0
        """Calls that fitted codes."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of every cached fit (codes, scales, zeros)."""
        return sum(qt.nbytes for qt in self._entries.values())

    def get(
        self,
        name: str,
        weight: torch.Tensor,
        bits: int,
        group_size: int,
        method: QuantMethod,
        *,
        double_quant: bool = False,
    ) -> QuantizedTensor:
        """The fit of ``weight`` (layer ``name``) at ``bits``; computed and kept on the first call.

        The returned tensors are shared with the cache (``storage`` None): callers that change
        codes in place (LoftQ) must copy them first. With ``storage="cpu"`` they are a copy on
        ``weight``'s device.
        """
        key = (name, int(bits), int(group_size), str(method), bool(double_quant))
        found = self._entries.get(key)
        here = found is not None and (self.storage is not None or found.packed.device == weight.device)
        if found is not None and here and found.shape == tuple(weight.shape):
            self.hits += 1
            return found if self.storage is None else moved(found, weight.device)
        self.misses += 1
        fitted = quantize(weight, bits, group_size, method, double_quant=double_quant)
        self._entries[key] = fitted if self.storage is None else moved(fitted, "cpu", pin=weight.is_cuda)
        return fitted


def moved(fitted: QuantizedTensor, device: str | torch.device, *, pin: bool = False) -> QuantizedTensor:
    """A copy of ``fitted`` on ``device`` (new storage even on the same device), pinned if ``pin``."""

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        out = t.to(device, copy=True, non_blocking=not pin and t.is_pinned())
        return out.pin_memory() if pin else out

    return QuantizedTensor(
        move(fitted.packed),
        move(fitted.scale),
        move(fitted.zero),
        fitted.shape,
        fitted.bits,
        fitted.group_size,
        move(fitted.scale_meta),
        move(fitted.zero_meta),
    )
