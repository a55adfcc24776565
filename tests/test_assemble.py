from __future__ import annotations

import json

import pytest
import torch

from qradaptor.assemble import assemble, read_adapter_ranks
from qradaptor.build import apply_plan
from qradaptor.plan import Plan


@pytest.fixture
def tiny_dir(tiny_model_dir):
    return tiny_model_dir


def _trained_adapter(folder, plan, out):
    from qradaptor.models import load_model

    model = apply_plan(load_model(str(folder)).model, plan)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(out)
    return model


def test_round_trip_gives_the_same_outputs(tiny_dir, tmp_path) -> None:
    plan = Plan.from_lists([4, 16, 2], [8, 0, 4])
    trained = _trained_adapter(tiny_dir, plan, tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    again = assemble(str(tiny_dir), plan, str(tmp_path / "adapter"))
    torch.testing.assert_close(again.model(ids).logits, trained(ids).logits)
    assert read_adapter_ranks(tmp_path / "adapter")["model.layers.2.mlp.up_proj"] == 4


def test_adapter_that_does_not_match_the_plan(tiny_dir, tmp_path) -> None:
    _trained_adapter(tiny_dir, Plan.from_lists([4, 16, 2], [8, 0, 4]), tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"does not match plan .*other rank"):
        assemble(str(tiny_dir), Plan.from_lists([4, 16, 2], [8, 0, 8]), str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match=r"missing e.g. \['model.layers.1"):
        assemble(str(tiny_dir), Plan.uniform(3, 4, 8), str(tmp_path / "adapter"))


def test_bad_adapter_folders(tiny_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        assemble(str(tiny_dir), None, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a PEFT adapter"):
        assemble(str(tiny_dir), None, str(tmp_path / "empty"))
    bad = tmp_path / "ia3"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (bad / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a IA3 adapter; only LORA"):
        read_adapter_ranks(bad)


def test_plan_for_another_model(tiny_dir) -> None:
    with pytest.raises(ValueError, match="made for another model"):
        assemble(str(tiny_dir), Plan.uniform(30, 4, 0))
