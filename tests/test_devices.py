"""``devices.indexed``: a bare "cuda" made explicit for torch.cuda's calls and comparisons."""

from __future__ import annotations

import pytest
import torch

from qradaptor.devices import indexed


def test_a_bare_cuda_gets_the_current_device_s_index(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert indexed("cuda") == torch.device("cuda", 3)
    assert indexed("cuda:1") == torch.device("cuda", 1)
    assert indexed(torch.device("cuda")) == torch.device("cuda", 3)
    assert indexed("cpu") == torch.device("cpu")


@pytest.mark.gpu
def test_a_model_moved_to_cuda_is_on_the_evaluator_s_cuda(tiny_llama) -> None:
    # A parameter moved to "cuda" reports cuda:0: the search's shared-base check compared it
    # with a bare torch.device("cuda") and refused the 8B search on the GPU (docs/SCALE.md).
    from qradaptor.search.proxy import ProxyEvaluator

    ids = torch.randint(0, 64, (4, 16))
    evaluator = ProxyEvaluator(tiny_llama.to("cuda"), ids, ids, shared_base=True, device="cuda")
    assert evaluator.device == next(tiny_llama.parameters()).device
