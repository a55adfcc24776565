"""The stage peaks of stage_memory against the bytes of tensors alive at once (TensorPeak), on
tiny Llamas whose vocabulary is 32x their hidden size, as Llama-3-8B's (128256 / 4096) is."""

from __future__ import annotations

import pytest
import torch

from qradaptor.memory import model_tensor_bytes, plan_memory
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.cache import QuantCache
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.sensitivity import profile_sensitivity
from qradaptor.stage_memory import (
    StagePeak,
    cache_bytes,
    cap_device_,
    check_device_limit,
    check_limit,
    dense_bytes,
    eval_peak,
    parse_size,
    profile_peak,
    proxy_peak,
)
from qradaptor.tensor_peak import TensorPeak

VOCAB = 2048


@pytest.fixture
def model(llama_factory, one_thread):
    return llama_factory(vocab_size=VOCAB, max_position_embeddings=256)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("24000MB", 24 * 10**9), ("1.5gib", 3 * 2**29)],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["24", "24 GB", "24G", "GB", "-1GB", "0GB", "24gigs", "1e3MB", ""])
def test_parse_size_refuses_anything_else_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"--max-memory must be .*24GB, 24GiB, 24000MB|more than 0"):
        parse_size(text)


def test_tensor_peak_counts_live_storages_once() -> None:
    with TensorPeak() as peak:
        a = torch.zeros(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB alive
        view = b.view(-1)  # a view: no new bytes
        b.add_(1)  # in place: no new bytes
        del a
        c = view + 1  # 8 MB alive again
        del b, view, c
    assert peak.peak == 8_000_000 and peak.live == 0


def test_dense_bytes_equal_the_built_model(model) -> None:
    assert dense_bytes(inspect_model(model), 4) == model_tensor_bytes(model)


@pytest.mark.parametrize(("samples", "seq_len", "batch"), [(4, 64, 2), (8, 64, 4), (3, 128, 2)])
def test_profile_peak_matches_the_measured_tensors(model, samples: int, seq_len: int, batch: int) -> None:
    ids = torch.randint(0, VOCAB, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    with TensorPeak() as peak:
        profile_sensitivity(model, ids, bits=(2, 4), batch_size=batch, quant_method="hqq", progress=False)
    measured = peak.peak + model_tensor_bytes(model)
    predicted = profile_peak(inspect_model(model), samples=samples, seq_len=seq_len, batch_size=batch)
    assert 1.0 <= predicted.total / measured < 1.02, (predicted.parts, measured)


def test_profile_peak_counts_the_cache_a_search_fills(model) -> None:
    ids = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(0))
    cache = QuantCache()
    with TensorPeak() as peak:
        profile_sensitivity(
            model, ids, bits=(2, 4), batch_size=2, quant_method="rtn", progress=False, cache=cache
        )
    structure = inspect_model(model)
    assert cache.nbytes == cache_bytes(structure, (2, 4, 16), 64)
    predicted = profile_peak(structure, samples=4, seq_len=64, batch_size=2, cache=cache.nbytes)
    assert 1.0 <= predicted.total / (peak.peak + model_tensor_bytes(model)) < 1.02


@pytest.mark.parametrize(
    ("method", "double_quant"), [("hqq", True), ("symmetric", False)], ids=["double-quant", "symmetric"]
)
def test_cache_bytes_are_the_fits_bytes_as_they_are_stored(model, method, double_quant) -> None:
    # Priced as if every fit held a float16 scale and zero, the prediction was 1.07x (double
    # quantisation) and 1.08x (symmetric) what this model's cache holds.
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    cache = QuantCache()
    profile_sensitivity(
        model,
        ids,
        bits=(2, 4),
        batch_size=2,
        quant_method=method,
        double_quant=double_quant,
        progress=False,
        cache=cache,
    )
    structure = inspect_model(model)
    stored = {"double_quant": double_quant, "quant_method": method}
    assert cache.nbytes == cache_bytes(structure, (2, 4, 16), 64, **stored)


@pytest.mark.parametrize("shared", [False, True], ids=["deep-copies", "shared-packed"])
@pytest.mark.parametrize(
    "plan", [Plan.uniform(3, 4, 8), Plan.from_lists([2, 8, 16], [4, 0, 16])], ids=["uniform", "mixed"]
)
def test_proxy_peak_matches_the_measured_tensors(model, plan: Plan, shared: bool) -> None:
    ids = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    with TensorPeak() as peak:
        evaluator = ProxyEvaluator(
            model, ids, ids, ProxyConfig(steps=2, batch_size=2, eval_batches=1), shared_base=shared
        )
        evaluator(plan)
    structure = inspect_model(model)
    bits = sorted({spec.bits for spec in plan.layers.values()})
    predicted = proxy_peak(
        structure,
        plan_memory(structure, plan, weight_bytes=4),
        batch_size=2,
        seq_len=64,
        cache=cache_bytes(structure, bits, 64),
        shared_base=shared,
    )
    assert 1.0 <= predicted.total / (peak.peak + model_tensor_bytes(model)) < 1.1, predicted.parts


def test_the_shared_packed_proxy_peaks_lower_at_any_batch(model) -> None:
    structure = inspect_model(model)
    report = plan_memory(structure, Plan.uniform(3, 4, 16), weight_bytes=4)
    for batch in (1, 4, 16):
        today = proxy_peak(structure, report, batch_size=batch, seq_len=64, base_copies=3)
        shared = proxy_peak(structure, report, batch_size=batch, seq_len=64, base_copies=3, shared_base=True)
        assert today.total - shared.total == 3 * dense_bytes(structure, 4) + dense_bytes(structure, 4) - sum(
            layer.weight_bytes for layer in report.layers
        )


def test_eval_peak_is_the_larger_of_load_and_scoring(model) -> None:
    structure = inspect_model(model)
    report = plan_memory(structure, Plan.uniform(3, 4, 0), weight_bytes=2)
    small = eval_peak(structure, report, batch_size=1, seq_len=2, weight_bytes=2)
    assert small.total == dense_bytes(structure, 2)
    big = eval_peak(structure, report, batch_size=8, seq_len=128, weight_bytes=2)
    assert big.total == report.total_bytes + 8 * 128 * VOCAB * 16


def test_check_limit_names_the_numbers_and_what_to_change() -> None:
    peak = StagePeak("train", (("weights", 100 * 2**20), ("activations", 300 * 2**20)), fixed=100 * 2**20)
    check_limit(peak, 400 * 2**20, change="--batch-size")  # fits exactly
    with pytest.raises(
        ValueError, match=r"qra train needs: predicted peak 400 MiB .*activations 300 MiB.*--batch-size"
    ):
        check_limit(peak, 399 * 2**20, change="--batch-size")
    with pytest.raises(ValueError, match="alone need 100 MiB, so no batch or sequence length fits"):
        check_limit(peak, 50 * 2**20, change="--batch-size")


class _Props:
    total_memory = 24 * 2**30


def _set_fraction_as_torch(calls: list):
    """``torch.cuda.set_per_process_memory_fraction`` as torch resolves its device: through
    ``_get_device_index(device)`` (optional=False), which refuses a device without an index."""
    from torch.cuda._utils import _get_device_index

    return lambda fraction, device=None: calls.append((fraction, _get_device_index(device)))


def test_a_limit_above_the_gpu_is_refused_and_the_cap_is_set(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: _Props())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", _set_fraction_as_torch(calls))
    with pytest.raises(ValueError, match=r"above the 24,576 MiB of cuda \(Test GPU\)"):
        check_device_limit(25 * 2**30, "cuda")
    check_device_limit(24 * 2**30, "cuda")
    check_device_limit(10**15, "cpu")  # nothing to compare with on a CPU
    # A bare "cuda" is capped on the current device; torch refuses an index-less device.
    assert cap_device_(12 * 2**30, "cuda") == 0.5
    assert cap_device_(12 * 2**30, "cuda:0") == 0.5
    assert calls == [(0.5, 1), (0.5, 0)]
    assert cap_device_(12 * 2**30, "cpu") is None and len(calls) == 2
