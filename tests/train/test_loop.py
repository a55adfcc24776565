"""The training loop: learning, exact resume, divergence, and refusing another run's checkpoint."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from qradaptor.build import apply_plan
from qradaptor.plan import Plan
from qradaptor.train.checkpoint import complete_checkpoints, load_checkpoint
from qradaptor.train.config import TrainConfig
from qradaptor.train.data import TokenizedSet
from qradaptor.train.loop import Trainer, TrainingDiverged
from qradaptor.train.state import trainable_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


def pattern_set(rows: int = 24, length: int = 16, seed: int = 0) -> TokenizedSet:
    """Sequences that repeat a random 4-token motif: learnable by a tiny model in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(rows):
        motif = torch.randint(3, 60, (4,), generator=generator).tolist()
        ids = (motif * (length // 4 + 1))[:length]
        examples.append((ids, list(ids)))
    return TokenizedSet(examples, pad_id=0, kind="text")


def build(llama_factory, plan: Plan | None = None, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    plan = plan or Plan.uniform(3, 4, 4)
    return apply_plan(llama_factory(), plan, lora_dropout=dropout)


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, lr=5e-3, warmup=1, progress=False, lora_dropout=0.0)
    return TrainConfig(**{**base, **overrides})


def test_training_lowers_the_loss(llama_factory) -> None:
    data, held = pattern_set(), pattern_set(8, seed=1)
    model = build(llama_factory)
    result = Trainer(model, data, held, config(max_steps=20, eval_every=10)).run()
    assert len(result.losses) == 20 and result.steps == 20
    assert sum(result.losses[-4:]) / 4 < sum(result.losses[:4]) / 4 - 0.3
    assert [step for step, _ in result.evals] == [10, 20]
    assert result.evals[-1][1] < result.evals[0][1]
    assert result.tokens == 20 * 4 * 16
    assert result.peak_memory is None  # CPU


def test_grad_accumulation_equals_the_big_batch(llama_factory) -> None:
    """A x B/A micro-batches of equal length give the same step as one batch of B (token-weighted)."""
    data = pattern_set(16)
    one = build(llama_factory)
    Trainer(one, data, None, config(max_steps=1, batch_size=8)).run()
    two = build(llama_factory)
    # the order depends on (seed, epoch) only: micro-batches 0 and 1 of size 4 are batch 0 of size 8
    Trainer(two, data, None, config(max_steps=1, batch_size=4, grad_accum=2)).run()
    for (name, a), b in zip(trainable_tensors(one).items(), trainable_tensors(two).values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


class Interrupt(Exception):
    pass


def stop_at(model, micro_batch: int):
    """A forward hook that raises on the given forward call (0-based), like a kill mid-run."""
    calls = {"n": 0}

    def hook(_module, _inputs, _output):
        if calls["n"] == micro_batch:
            raise Interrupt
        calls["n"] += 1

    return model.register_forward_hook(hook)


def test_resume_matches_an_uninterrupted_run(llama_factory, tmp_path) -> None:
    data, held = pattern_set(), pattern_set(8, seed=1)
    cfg = config(max_steps=8, save_every=3, lora_dropout=0.1, eval_every=4)  # dropout: RNG must resume too
    whole = build(llama_factory, dropout=0.1)
    expected = Trainer(whole, data, held, cfg, fingerprint={"plan": "p"}).run()

    first = build(llama_factory, dropout=0.1)
    handle = stop_at(first, 9)  # forwards: steps 1-4, 2 evals, steps 5-7, then dies in step 8
    with pytest.raises(Interrupt):
        Trainer(first, data, held, cfg, checkpoints=tmp_path, fingerprint={"plan": "p"}).run()
    handle.remove()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000003", "step-000006"]

    again = build(
        llama_factory, seed=99, dropout=0.1
    )  # another init: everything must come from the checkpoint
    resumed = Trainer(again, data, held, cfg, checkpoints=tmp_path, fingerprint={"plan": "p"}).run(
        resume=True
    )
    assert resumed.resumed_from == 6
    assert resumed.losses == pytest.approx(expected.losses, abs=1e-6)
    assert [s for s, _ in resumed.evals] == [s for s, _ in expected.evals]
    assert [v for _, v in resumed.evals] == pytest.approx([v for _, v in expected.evals], abs=1e-6)
    for (name, a), b in zip(trainable_tensors(whole).items(), trainable_tensors(again).values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_refuses_another_run(llama_factory, tmp_path) -> None:
    data = pattern_set()
    Trainer(
        build(llama_factory),
        data,
        None,
        config(max_steps=2, save_every=2),
        checkpoints=tmp_path,
        fingerprint={"plan_hash": "aaa", "data": "d"},
    ).run()
    other_plan = Trainer(
        build(llama_factory),
        data,
        None,
        config(max_steps=2, save_every=2),
        checkpoints=tmp_path,
        fingerprint={"plan_hash": "bbb", "data": "d"},
    )
    with pytest.raises(ValueError, match="another run.*plan_hash: checkpoint 'aaa', now 'bbb'"):
        other_plan.run(resume=True)
    other_lr = Trainer(
        build(llama_factory),
        data,
        None,
        config(max_steps=2, save_every=2, lr=1e-3),
        checkpoints=tmp_path,
        fingerprint={"plan_hash": "aaa", "data": "d"},
    )
    with pytest.raises(ValueError, match="other training settings.*lr"):
        other_lr.run(resume=True)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000002"]  # untouched


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(llama_factory, tmp_path) -> None:
    data = pattern_set()
    model = build(llama_factory)
    calls = {"n": 0}

    def poison(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th forward: step 5
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison)
    trainer = Trainer(
        model,
        data,
        None,
        config(max_steps=8, save_every=2),
        checkpoints=tmp_path,
        diagnose=lambda m, b: "Likely cause: test.",
    )
    with pytest.raises(
        TrainingDiverged, match=r"step 5 of 8: loss is nan\. Likely cause: test\..*step-000004"
    ):
        trainer.run()
    names = [p.name for p in complete_checkpoints(tmp_path)]
    assert names == ["step-000002", "step-000004"]
    kept = load_checkpoint(tmp_path / "step-000004")
    assert all(torch.isfinite(t).all() for t in kept.tensors.values())
    assert all(math.isfinite(v) for v in kept.state["losses"])


def poison_gradient(model, steps: set[int]) -> str:
    """NaN in one adapter's gradient at the given steps (1-based); returns the adapter's name."""
    name, param = list(trainable_tensors(model).items())[5]
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] in steps else grad

    param.register_hook(hook)
    return name


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_non_finite_gradient_is_skipped_not_applied(llama_factory, max_grad_norm) -> None:
    # Clipped, one NaN element made the norm NaN and every adapter NaN at the next step.
    data = pattern_set()
    model = build(llama_factory)
    name = poison_gradient(model, {5})
    notes: list[str] = []
    trainer = Trainer(model, data, None, config(max_grad_norm=max_grad_norm), on_note=notes.append)
    result = trainer.run()
    assert result.skipped_steps == [5] and result.steps == 8
    assert all(math.isfinite(v) for v in result.losses)
    assert all(torch.isfinite(t).all() for t in trainable_tensors(model).values())
    assert notes == [
        f"step 5: the gradient of {name} is not finite (the loss, {result.losses[4]:.4g}, is); "
        "the step was skipped and the adapters kept as they were"
    ]


def test_non_finite_gradients_in_a_row_stop_the_run(llama_factory, tmp_path) -> None:
    model = build(llama_factory)
    name = poison_gradient(model, {3, 4, 5})
    trainer = Trainer(model, pattern_set(), None, config(save_every=2), checkpoints=tmp_path, on_note=print)
    with pytest.raises(TrainingDiverged) as stopped:
        trainer.run()
    assert str(stopped.value).startswith(
        "training diverged at step 5 of 8: the gradient was not finite for 3 steps in a row while the "
        "loss was (now "
    )
    assert f"the first non-finite one is {name}'s. No adapter was written; the last good" in str(
        stopped.value
    )
    assert load_checkpoint(tmp_path / "step-000004").state["skipped_steps"] == [3, 4]


def test_exploding_loss_stops(llama_factory) -> None:
    data = pattern_set()
    model = build(llama_factory)
    calls = {"n": 0}

    def explode(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] >= 6:
            output.loss = output.loss * 100
        return output

    model.register_forward_hook(explode)
    with pytest.raises(TrainingDiverged, match=r"step 6 of 8: loss .* exceeds 4 x the lowest smoothed loss"):
        Trainer(model, data, None, config(max_steps=8)).run()


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['steps'\]"):
        TrainConfig.from_dict({"steps": 3})
    cfg = TrainConfig(epochs=2.0, grad_accum=2, warmup=0.1)
    assert cfg.total_steps(10) == 10 and cfg.warmup_steps(10) == 1
    assert TrainConfig(max_steps=7).total_steps(100) == 7
    assert TrainConfig(warmup=5).warmup_steps(3) == 3
    assert TrainConfig(lr=1e-3).differences(TrainConfig(save_every=5)) == ["lr: 0.0002 != 0.001"]


def test_a_collapsed_run_stops_unless_allowed(llama_factory) -> None:
    """Huge random logits score far worse than a uniform guess (as a 1-2 bit base can)."""
    from qradaptor.train.loop import TrainingCollapsed

    def confidently_wrong():
        model = llama_factory()
        with torch.no_grad():
            model.lm_head.weight.mul_(200)  # tied: the embedding too; logits of hundreds
        return apply_plan(model, Plan.uniform(3, 4, 4))

    data = pattern_set(8)
    cfg = config(max_steps=6, warmup=0, lr=1e-5, collapse_steps=3)
    model = confidently_wrong()
    with pytest.raises(TrainingCollapsed, match=r"at or above 5.545 = ln\(vocab\).* for 3 steps in a row"):
        Trainer(model, data, None, cfg).run()
    notes: list[str] = []
    model = confidently_wrong()
    allowed = replace(cfg, allow_collapse=True)
    result = Trainer(model, data, data, allowed, on_note=notes.append).run()
    assert result.steps == 6 and min(result.losses) > math.log(256)
    assert len(notes) == 2 and "continuing (--allow-collapse)" in notes[0]  # the steps, then the held-out
    assert "final held-out loss" in notes[1]


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_newest_intact_one(llama_factory, tmp_path) -> None:
    data = pattern_set()
    cfg = config(max_steps=6, save_every=2, keep_checkpoints=3)
    expected = Trainer(build(llama_factory), data, None, cfg, checkpoints=tmp_path).run()
    newest = tmp_path / "step-000006" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a disk that filled up
    notes: list[str] = []
    again = Trainer(build(llama_factory, seed=5), data, None, cfg, checkpoints=tmp_path, on_note=notes.append)
    resumed = again.run(resume=True)
    assert resumed.resumed_from == 4 and resumed.losses == pytest.approx(expected.losses, abs=1e-6)
    assert len(notes) == 1 and "step-000006" in notes[0] and "older intact checkpoint step-000004" in notes[0]
    for step in (2, 4, 6):
        (tmp_path / f"step-{step:06d}" / "optimizer.pt").write_bytes(b"\x80")
    with pytest.raises(ValueError, match=r"no checkpoint can be resumed from: .*optimizer.pt' is corrupt"):
        Trainer(build(llama_factory), data, None, cfg, checkpoints=tmp_path).run(resume=True)


def test_the_run_says_what_is_left_and_its_cost_after_its_second_step(llama_factory, capsys) -> None:
    """One line, after the warm-up step: steps left, held-out evaluations left, minutes measured."""
    data, held = pattern_set(), pattern_set(8, seed=1)
    Trainer(build(llama_factory), data, held, config(max_steps=12, eval_every=5, progress=True)).run()
    lines = [line for line in capsys.readouterr().err.splitlines() if "more steps" in line]
    assert len(lines) == 1, lines
    # after step 2 of 12: 10 steps and the evaluations at 5 and 10, then the final one
    assert lines[0].startswith("train: 10 more steps of 4 sequences, 3 held-out evaluations; about ")
    assert "(step 2 took " in lines[0]
    capsys.readouterr()
    Trainer(build(llama_factory), data, None, config(max_steps=2, progress=True)).run()
    assert "more steps" not in capsys.readouterr().err  # nothing left to price
