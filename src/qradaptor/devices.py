"""A device as torch.cuda's calls and parameter comparisons need it: a bare "cuda" made explicit.

``torch.device("cuda")`` has no index: ``torch.cuda.set_per_process_memory_fraction`` refuses it
("Expected a torch.device with a specified index or an integer, but got:cuda"), and it is not
equal to the ``cuda:0`` that a parameter moved to "cuda" reports. Both broke ``--max-memory`` and
the search's shared base on the GPU (docs/SCALE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def indexed(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a CUDA one without an index gets the current device's."""
    import torch

    where = torch.device(device)
    if where.type == "cuda" and where.index is None:
        where = torch.device("cuda", torch.cuda.current_device())
    return where
