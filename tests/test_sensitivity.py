"""Tests for qradaptor.sensitivity: Eq. 6 KL per (block, bits) on a tiny Llama."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qradaptor.build import quantize_model_
from qradaptor.correlation import pearson, spearman
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan
from qradaptor.sensitivity import profile_sensitivity
from qradaptor.sensitivity_table import SensitivityTable, plot_sensitivity

BITS = (2, 3, 4, 8)


@pytest.fixture(scope="module")
def model(llama_factory) -> torch.nn.Module:
    return llama_factory(seed=0)


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(1))  # (N, T)


@pytest.fixture(scope="module")
def table(model: torch.nn.Module, calibration: torch.Tensor) -> SensitivityTable:
    return profile_sensitivity(model, calibration, bits=BITS, batch_size=2, progress=False)


def _kl_direct(reference: torch.nn.Module, quantised: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        p = torch.log_softmax(reference(input_ids=ids).logits.float(), -1)  # (N, T, V)
        q = torch.log_softmax(quantised(input_ids=ids).logits.float(), -1)  # (N, T, V)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_shape_and_nonnegative(table: SensitivityTable, calibration: torch.Tensor) -> None:
    assert table.bits == BITS
    assert table.num_blocks == 3
    assert table.tokens == calibration.numel()
    assert all(v >= 0 for row in table.kl for v in row)


def test_fewer_bits_hurt_more(table: SensitivityTable) -> None:
    for block, row in enumerate(table.kl):
        kl2, kl3, kl4, kl8 = row
        assert kl8 < kl4 < kl3 < kl2, f"block {block}: {row}"
        assert kl2 > 0


def test_matches_direct_quantisation(
    model: torch.nn.Module, calibration: torch.Tensor, table: SensitivityTable
) -> None:
    structure = inspect_model(model)
    plan = Plan({f"1.{name}": LayerSpec(2, 0) for name in structure.linear_names}, 3)
    quantised = copy.deepcopy(model)
    quantize_model_(quantised, plan, simulated=True)
    expected = _kl_direct(model, quantised, calibration)
    assert table.kl[1][0] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    # and it is not the KL of another block
    assert table.kl[0][0] != pytest.approx(expected, rel=1e-3)


def test_a_cache_keeps_every_fit_for_the_builds_after(
    model: torch.nn.Module, calibration: torch.Tensor, table: SensitivityTable
) -> None:
    from qradaptor.quant.cache import QuantCache

    cache = QuantCache()
    cached = profile_sensitivity(model, calibration, bits=BITS, batch_size=2, progress=False, cache=cache)
    assert cached.kl == table.kl  # the same fits, so the same numbers
    assert len(cache) == cache.misses == 3 * len(BITS) * 7 and cache.hits == 0
    quantize_model_(copy.deepcopy(model), Plan.from_lists([2, 8, 3], [0, 0, 0]), simulated=True, cache=cache)
    assert cache.misses == 84 and cache.hits == 21  # a plan after profiling fits nothing


def test_model_bit_identical_afterwards(llama_factory, calibration: torch.Tensor) -> None:
    model = llama_factory(seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    with torch.inference_mode():
        before = model(input_ids=calibration).logits.clone()
    profile_sensitivity(model, calibration, bits=(2, 4), progress=False)
    with torch.inference_mode():
        after = model(input_ids=calibration).logits
    assert torch.equal(before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(modules[name] is module for name, module in model.named_modules())


def test_padding_excluded(model: torch.nn.Module, calibration: torch.Tensor) -> None:
    mask = torch.ones_like(calibration)
    mask[:, -4:] = 0  # right padding: the kept positions see the same context
    masked = profile_sensitivity(model, calibration, bits=(2,), attention_mask=mask, progress=False)
    assert masked.tokens == int(mask.sum())
    short = profile_sensitivity(model, calibration[:, :-4], bits=(2,), progress=False)
    assert masked.kl[1][0] == pytest.approx(short.kl[1][0], rel=1e-4)


def test_max_tokens_keeps_whole_windows(model: torch.nn.Module, calibration: torch.Tensor) -> None:
    capped = profile_sensitivity(model, calibration, bits=(2,), max_tokens=40, progress=False)
    assert capped.tokens == 2 * 16


def test_profiles_and_json_round_trip(table: SensitivityTable) -> None:
    assert table.min_bits_profile() == table.column(2)
    norm = table.normalised()
    assert sum(norm) == pytest.approx(1.0)
    assert norm[0] == pytest.approx(table.kl[0][0] / sum(r[0] for r in table.kl))
    again = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table
    lines = table.to_csv().splitlines()
    assert lines[0] == "block,kl_2bit,kl_3bit,kl_4bit,kl_8bit"
    assert len(lines) == 4 and float(lines[2].split(",")[1]) == table.kl[1][0]


def test_normalised_uniform_when_all_zero() -> None:
    table = SensitivityTable((2,), ((0.0,), (0.0,)), 4, 64, "hqq")
    assert table.normalised() == (0.5, 0.5)
    with pytest.raises(ValueError, match="bits must be one of"):
        table.column(3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": ()}, "bits must be a non-empty"),
        ({"bits": (0, 2)}, "each of bits"),
        ({"bits": (2, 9)}, "each of bits"),
        ({"bits": (2, 16)}, "bits must be in 1..8"),
        ({"bits": (2, 2)}, "must not repeat"),
        ({"batch_size": 0}, "batch_size"),
        ({"quant_method": "gptq"}, "quant_method"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_arguments(model: torch.nn.Module, calibration: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        profile_sensitivity(model, calibration, progress=False, **kwargs)


@pytest.mark.parametrize("bad", [torch.zeros(16, dtype=torch.long), torch.zeros(2, 3, 4, dtype=torch.long)])
def test_calibration_must_be_2d(model: torch.nn.Module, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="calibration must be a 2-D"):
        profile_sensitivity(model, bad, progress=False)


def test_from_dict_rejects_missing_field() -> None:
    with pytest.raises(ValueError, match="must have fields"):
        SensitivityTable.from_dict({"bits": [2], "kl": [[0.1]]})


def test_correlations() -> None:
    assert spearman([0, 1, 2, 3], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert pearson([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [5, 5, 5]) != spearman([0, 1, 2], [5, 5, 5])  # nan


def test_plot_writes_png(table: SensitivityTable, tmp_path) -> None:
    target = tmp_path / "s.png"
    plot_sensitivity(table, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temp file left


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_replaying_the_prefix_gives_the_same_table(
    arch: str, llama_factory, tiny_gpt2, calibration: torch.Tensor
) -> None:
    model = llama_factory(layers=4, seed=3) if arch == "llama" else tiny_gpt2
    ids = calibration % model.config.vocab_size
    kwargs = {"bits": (2, 4), "batch_size": 2, "progress": False}
    replayed = profile_sensitivity(model, ids, reuse_prefix=True, **kwargs)
    recomputed = profile_sensitivity(model, ids, reuse_prefix=False, **kwargs)
    assert replayed.kl == recomputed.kl  # bit-identical, not merely close
    assert len(set(replayed.column(2))) == replayed.num_blocks  # every block scored on its own
    assert all(  # the blocks are put back
        type(block).__name__ != "_Replay" for block in model.get_submodule(inspect_model(model).blocks_path)
    )
