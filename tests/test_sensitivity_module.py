"""The per-module profile: Eq. 6 with one linear of one block quantised, on a tiny Llama; its
table's files, and a block profile unchanged by it."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qradaptor.build import quantize_model_
from qradaptor.models.structure import inspect_model
from qradaptor.plan import LayerSpec, Plan
from qradaptor.quant.cache import QuantCache
from qradaptor.sensitivity import profile_sensitivity
from qradaptor.sensitivity_table import SensitivityTable, plot_sensitivity

BITS = (2, 4)
BLOCK_KEYS = {"format", "bits", "kl", "tokens", "group_size", "quant_method"}
"""sensitivity.json's fields of a block profile, as before per-module profiles existed."""


@pytest.fixture(scope="module")
def model(llama_factory) -> torch.nn.Module:
    return llama_factory(seed=0)


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))  # (N, T)


@pytest.fixture(scope="module")
def tables(model: torch.nn.Module, calibration: torch.Tensor) -> dict[str, SensitivityTable]:
    cache = QuantCache()  # one set of fits for both, as a side-by-side timing uses them
    return {
        g: profile_sensitivity(
            model, calibration, bits=BITS, batch_size=2, progress=False, cache=cache, granularity=g
        )
        for g in ("block", "module")
    }


def _kl_direct(reference: torch.nn.Module, quantised: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        p = torch.log_softmax(reference(input_ids=ids).logits.float(), -1)  # (N, T, V)
        q = torch.log_softmax(quantised(input_ids=ids).logits.float(), -1)  # (N, T, V)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_a_row_per_block_and_module(model: torch.nn.Module, tables: dict[str, SensitivityTable]) -> None:
    table = tables["module"]
    names = inspect_model(model).linear_names
    assert table.granularity == "module" and table.modules == names
    assert table.num_blocks == 3 and table.num_units == 3 * len(names) == len(table.kl)
    assert table.unit_names[len(names) + 2] == f"1.{names[2]}"
    assert all(v >= 0 for row in table.kl for v in row)
    # 2 bits hurt more than 4, where a module matters at all (the tiny model's q/k barely do:
    # its attention logits are small, so their KL is ~1e-8 or exactly 0)
    felt = [row for row in table.kl if row[0] > 1e-6]
    assert len(felt) == 3 * 5  # v, o, gate, up and down of each block
    assert all(row[0] > row[1] > 0 for row in felt)


@pytest.mark.parametrize("index", [2, 4, 6])  # v, gate, down: those the tiny model feels
def test_each_row_is_the_kl_of_that_module_alone(
    model: torch.nn.Module, calibration: torch.Tensor, tables: dict[str, SensitivityTable], index: int
) -> None:
    names = inspect_model(model).linear_names
    quantised = copy.deepcopy(model)
    quantize_model_(quantised, Plan({f"1.{names[index]}": LayerSpec(2, 0)}, 3), simulated=True)
    expected = _kl_direct(model, quantised, calibration)
    row = tables["module"].kl[len(names) + index]
    assert row[0] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    # not the block's KL, nor another module's
    assert tables["block"].kl[1][0] != pytest.approx(expected, rel=1e-3)
    assert tables["module"].kl[len(names) + (index + 1) % len(names)][0] != pytest.approx(expected, rel=1e-3)


def test_the_block_profile_is_unchanged(
    model: torch.nn.Module, calibration: torch.Tensor, tables: dict[str, SensitivityTable]
) -> None:
    alone = profile_sensitivity(model, calibration, bits=BITS, batch_size=2, progress=False)
    assert alone == tables["block"]  # bit-identical, with or without a module profile beside it
    assert set(alone.to_dict()) == BLOCK_KEYS  # the file has no new field
    assert alone.to_csv().splitlines()[0] == "block,kl_2bit,kl_4bit"


def test_the_model_is_bit_identical_afterwards(llama_factory, calibration: torch.Tensor) -> None:
    model = llama_factory(seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    profile_sensitivity(model, calibration, bits=(2,), progress=False, granularity="module")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(modules[name] is module for name, module in model.named_modules())


def test_files_round_trip(tables: dict[str, SensitivityTable], tmp_path) -> None:
    table = tables["module"]
    data = table.to_dict()
    assert data["granularity"] == "module" and data["modules"] == list(table.modules)
    assert SensitivityTable.from_dict(json.loads(json.dumps(data))) == table
    lines = table.to_csv().splitlines()
    assert lines[0] == "block,module,kl_2bit,kl_4bit" and len(lines) == 1 + table.num_units
    assert lines[2].split(",")[:2] == ["0", table.modules[1]]
    assert float(lines[2].split(",")[2]) == table.kl[1][0]
    plot_sensitivity(table, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_granularity_and_malformed_tables() -> None:
    with pytest.raises(ValueError, match=r"granularity must be one of \('block', 'module'\), got 'layer'"):
        SensitivityTable((2,), ((0.1,),), 4, 64, "hqq", granularity="layer")
    with pytest.raises(ValueError, match="a per-module table needs unique module names"):
        SensitivityTable((2,), ((0.1,),), 4, 64, "hqq", granularity="module")
    with pytest.raises(ValueError, match="3 rows is not a multiple of its 2 modules"):
        SensitivityTable((2,), ((0.1,),) * 3, 4, 64, "hqq", granularity="module", modules=("a", "b"))
    with pytest.raises(ValueError, match="a per-block table names no modules"):
        SensitivityTable((2,), ((0.1,),), 4, 64, "hqq", modules=("a",))


def test_profile_refuses_an_unknown_granularity(model: torch.nn.Module, calibration: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"granularity must be one of \('block', 'module'\), got 'linear'"):
        profile_sensitivity(model, calibration, bits=(2,), progress=False, granularity="linear")


def test_require_granularity_names_what_was_given_and_what_is_taken(
    tables: dict[str, SensitivityTable],
) -> None:
    tables["block"].require_granularity("block", "x")  # no error
    with pytest.raises(
        ValueError,
        match=r"the search takes a per-block sensitivity table \(qra profile, the default\), got a "
        r"per-module one \(7 linears x 3 blocks\)",
    ):
        tables["module"].require_granularity("block", "the search")
