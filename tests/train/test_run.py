"""train_plan end to end on the tiny model: methods, reload through PEFT, the divergence diagnosis."""

from __future__ import annotations

import json

import pytest
import torch

from qradaptor.plan import Plan
from qradaptor.train.config import TrainConfig
from qradaptor.train.methods import METHODS, get_method, method_plan
from qradaptor.train.outputs import write_run
from qradaptor.train.run import DataSpec, block_diagnosis, train_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.json"
    rows = [{"instruction": "b a", "output": "a b c a" if i % 3 else "c"} for i in range(12)]
    path.write_text(json.dumps(rows))
    return str(path)


def short(**overrides) -> TrainConfig:
    return TrainConfig(
        **{"max_steps": 3, "batch_size": 2, "seq_len": 32, "lr": 1e-2, "progress": False, **overrides}
    )


@pytest.mark.parametrize("method", ["lora16", "qlora-3"])
def test_saved_adapter_reloads_through_peft_with_identical_logits(
    method, tiny_model_dir, alpaca, tmp_path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qradaptor.build import quantize_model_
    from qradaptor.lora import lora_config
    from qradaptor.models.structure import inspect_model

    outcome = train_plan(str(tiny_model_dir), method, short(), DataSpec(alpaca, eval_size=2), device="cpu")
    write_run(tmp_path, outcome, device="cpu")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plan = Plan.from_json((tmp_path / "plan.json").read_text())
    quantize_model_(base, plan)  # the same quantisation (HQQ is deterministic)
    config = lora_config(plan, inspect_model(base))
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"), config=config).eval()
    ids = torch.tensor([[2, 3, 4, 2, 3, 4, 1]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, outcome.model.eval()(input_ids=ids).logits)
    assert outcome.memory.avg_bits == pytest.approx(16.0 if method == "lora16" else 3.5)
    assert (tmp_path / "base.safetensors").is_file() == (method != "lora16")


def test_every_method_name_resolves(tiny_llama) -> None:
    from qradaptor.models.structure import inspect_model

    structure = inspect_model(tiny_llama)
    given = Plan.uniform(3, 3, 8)
    for name, method in METHODS.items():
        if method.needs_plan:
            assert method_plan(method, structure, given) is given
            continue
        norms = [1.0, 2.0, 3.0] if name == "rank-gradient" else None
        plan = method_plan(method, structure, None, rank=8, bits=3, gradient_norms=norms)
        plan.validate(structure)
    assert method_plan(get_method("qdora"), structure, given) is given
    with pytest.raises(
        ValueError, match="amq-lora needs a bits-only plan with one rank everywhere, got ranks \\[4, 8\\]"
    ):
        method_plan(get_method("amq-lora"), structure, Plan.from_lists([4, 4, 4], [4, 8, 8]))


def test_diagnosis_names_the_first_block_that_blows_up(tiny_llama) -> None:
    from qradaptor.models.structure import inspect_model

    plan = Plan.from_lists([4, 2, 4], [4, 4, 4])
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    message = block_diagnosis(inspect_model(tiny_llama), plan)(
        tiny_llama, {"input_ids": torch.tensor([[2, 3, 4]])}
    )
    assert "block 1 (2-bit) is the first whose output is not finite" in message


def test_text_data_trains_on_every_token(tiny_model_dir, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("a b c a b c c b a " * 8 for _ in range(6)))
    outcome = train_plan(
        str(tiny_model_dir),
        "qlora-4",
        short(seq_len=16),
        DataSpec(str(corpus), text=True, eval_size=1),
        device="cpu",
    )
    assert outcome.result.losses[-1] < outcome.result.losses[0]
    assert outcome.result.evals and outcome.result.evals[-1][0] == 3


@pytest.mark.parametrize("method", ["dora", "qdora", "adalora", "loftq", "rank-attn-focus", "embed8-body4"])
def test_every_adapter_variant_trains_and_reloads_as_trained(method, tiny_model_dir, alpaca, tmp_path):
    from qradaptor.runs import assemble_run

    outcome = train_plan(
        str(tiny_model_dir), method, short(max_steps=6), DataSpec(alpaca, eval_size=2), rank=4, device="cpu"
    )
    assert all(torch.isfinite(torch.tensor(outcome.result.losses)))
    write_run(tmp_path, outcome, device="cpu")
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["method"] == method
    if method == "adalora":  # pruned to the target average rank by the end
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["peft_type"] == "ADALORA" and (config["init_r"], config["target_r"]) == (6, 4)
        record = summary["memory"]["adalora"]
        assert (record["init_r"], record["target_r"]) == (6, 4)
        kept = record["kept_ranks"]
        assert len(kept) == 21 and sum(kept.values()) <= 4 * 21  # 3 blocks x 7 linears, all adapted
        assert summary["memory"]["avg_rank"] == pytest.approx(sum(kept.values()) / 21)
        assert record["kept_avg_rank"] == summary["memory"]["avg_rank"] < 4.0 + 1e-9
    ids = torch.tensor([[2, 3, 4, 2, 3, 4, 1]])
    with torch.no_grad():
        expected = outcome.model.eval()(input_ids=ids).logits
        rebuilt = assemble_run(tmp_path).model(input_ids=ids).logits
    torch.testing.assert_close(rebuilt, expected, atol=1e-5, rtol=1e-5)


def test_adalora_ranks_default_to_the_plan_and_check_the_options() -> None:
    from qradaptor.train.adalora import adalora_ranks, mean_adapted_rank

    assert adalora_ranks(16) == (24, 16)  # init 1.5 x target
    assert adalora_ranks(5) == (8, 5)  # round(7.5) = 8 (ties to even)
    assert adalora_ranks(16, target_r=8) == (12, 8)
    assert adalora_ranks(16, init_r=32) == (32, 16)
    assert adalora_ranks(mean_adapted_rank(Plan.from_lists([2, 4, 16], [8, 0, 4]))) == (9, 6)
    with pytest.raises(ValueError, match="adalora_target_r \\(16\\) must be <= adalora_init_r \\(12\\)"):
        adalora_ranks(16, init_r=12)
    with pytest.raises(ValueError, match="adapts some module"):
        adalora_ranks(mean_adapted_rank(Plan.uniform(3, 4, 0)))
    with pytest.raises(ValueError, match="adalora_target_r must be an integer >= 1, got 2.5"):
        adalora_ranks(16, target_r=2.5)  # type: ignore[arg-type]


def test_gradient_checkpointing_gives_the_same_steps(tiny_model_dir, alpaca) -> None:
    spec = DataSpec(alpaca, eval_size=2)
    plain = train_plan(str(tiny_model_dir), "qlora-4", short(lora_dropout=0.0), spec, device="cpu")
    ckpt = train_plan(
        str(tiny_model_dir),
        "qlora-4",
        short(lora_dropout=0.0, gradient_checkpointing=True),
        spec,
        device="cpu",
    )
    assert ckpt.result.losses == pytest.approx(plain.result.losses, abs=1e-5)
    assert ckpt.memory.predicted_peak < plain.memory.predicted_peak


def test_nf4_needs_bitsandbytes_on_cuda(monkeypatch) -> None:
    import sys

    from qradaptor.train.nf4 import check_nf4_available

    with pytest.raises(ValueError, match="needs bitsandbytes on a CUDA GPU.*use --method qlora"):
        check_nf4_available("cpu")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="needs the bitsandbytes package.*use --method qlora"):
        check_nf4_available("cuda")


def test_a_resume_from_another_plans_checkpoint_is_refused_before_quantising(
    tiny_model_dir, alpaca, tmp_path, monkeypatch
) -> None:
    import qradaptor.train.run as run

    checkpoint = tmp_path / "step-000002"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"step": 2, "fingerprint": {"plan_hash": "another"}}))

    def no_build(*_args, **_kwargs):
        raise AssertionError("the model was quantised")

    monkeypatch.setattr(run, "build_for_method", no_build)
    with pytest.raises(
        ValueError, match=r"it was written by another run \(.*plan_hash: checkpoint 'another'"
    ):
        train_plan(
            str(tiny_model_dir),
            "qlora-4",
            short(),
            DataSpec(alpaca, eval_size=2),
            checkpoints=tmp_path,
            resume=True,
        )
