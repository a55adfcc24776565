"""Compiled steps: padding leaves the loss alone, compiled training follows eager, bad modes refused."""

from __future__ import annotations

import pytest
import torch

from qradaptor.build import apply_plan
from qradaptor.plan import Plan
from qradaptor.train import compiled
from qradaptor.train.compiled import forward_loss, heldout_loss, loss_sums, static_batch
from qradaptor.train.config import TrainConfig
from qradaptor.train.data import TokenizedSet
from qradaptor.train.loop import Trainer
from qradaptor.train.state import trainable_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


def ragged_set(rows: int, seed: int = 0) -> TokenizedSet:
    """Instruction-like examples of 6..17 tokens with the loss on the second half only."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(rows):
        length = 6 + (5 * i + seed) % 12
        ids = torch.randint(3, 60, (length,), generator=generator).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]
        examples.append((ids, labels))
    return TokenizedSet(examples, pad_id=0, kind="instructions")


def build(llama_factory, bits: int = 4):
    torch.manual_seed(0)
    model = apply_plan(llama_factory(), Plan.uniform(3, bits, 4), lora_dropout=0.0)
    with torch.no_grad():  # B = 0 at init would hide any difference in the adapter path
        for name, p in trainable_tensors(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def test_static_batch_pads_columns_masked_and_rows_attended() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
        "labels": torch.tensor([[-100, 6, 7], [-100, 9, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    out = static_batch(batch, rows=3, width=5, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, 9, -100, -100, -100], [-100] * 5]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert static_batch(batch, rows=2, width=3, pad_id=0) is batch  # already static: untouched
    with pytest.raises(ValueError, match=r"shape \(2, 3\) does not fit the static shape \(1, 5\)"):
        static_batch(batch, rows=1, width=5, pad_id=0)


def test_static_padding_gives_the_same_loss_and_gradients(llama_factory) -> None:
    data = ragged_set(3)
    batch = data.batch(0, 3, seed=0)  # 3 rows, padded to their longest
    padded = static_batch(batch, rows=5, width=batch["input_ids"].shape[1] + 7, pad_id=data.pad_id)
    model = build(llama_factory).train()
    grads = []
    losses = []
    for b in (batch, padded):
        model.zero_grad(set_to_none=True)
        loss = forward_loss(model, b)
        loss.backward()
        losses.append(float(loss))
        grads.append([p.grad.clone() for p in trainable_tensors(model).values()])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for a, b in zip(*grads, strict=True):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, atol=1e-5)
    model.eval()
    with torch.no_grad():
        (s0, n0), (s1, n1) = loss_sums(model, batch), loss_sums(model, padded)
    assert int(n0) == int(n1) == sum(1 for _, lab in data.examples for t in lab[1:] if t != -100)
    assert float(s1) == pytest.approx(float(s0), rel=1e-5)
    eager = heldout_loss(model, data, 2)
    assert heldout_loss(model, data, 2, static=True) == pytest.approx(eager, rel=1e-5)


def test_a_bad_compile_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"compile must be one of 'off'.*'default'.*'graphs'.*got 'fast'"):
        TrainConfig(compile="fast")  # type: ignore[arg-type]
    assert TrainConfig(compile="graphs").compile == "graphs"  # the device is checked where it is known


def test_graphs_on_a_cpu_is_refused(llama_factory) -> None:
    config = TrainConfig(max_steps=1, compile="graphs", progress=False)
    with pytest.raises(ValueError, match="compile 'graphs' records CUDA graphs and needs a CUDA device"):
        Trainer(build(llama_factory), ragged_set(4), None, config)


def test_compile_takes_part_in_the_resume_check() -> None:
    eager, compiled_ = TrainConfig(), TrainConfig(compile="default")
    assert eager.differences(compiled_) == ["compile: 'default' != 'off'"]
    # a checkpoint written before the field existed reads as eager
    old = {k: v for k, v in eager.to_dict().items() if k != "compile"}
    assert TrainConfig.from_dict(old).differences(eager) == []


@pytest.fixture
def counting_backend(monkeypatch):
    """aot_eager (traces forward and backward like inductor, but runs them eagerly: no C++
    build), counting the graphs compiled; dynamo's caches are emptied around the test."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(compiled, "_BACKEND", counter)
    yield counter
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_follows_eager_with_one_graph(llama_factory, counting_backend) -> None:
    # 10 examples in micro-batches of 4: every epoch ends on a batch of 2, widths vary per batch
    data, held = ragged_set(10), ragged_set(5, seed=1)
    base = dict(max_steps=6, batch_size=4, lr=5e-3, warmup=1, progress=False, lora_dropout=0.0, eval_every=3)
    eager = Trainer(build(llama_factory), data, held, TrainConfig(**base)).run()
    model = build(llama_factory)
    result = Trainer(model, data, held, TrainConfig(**base, compile="default")).run()
    assert result.losses == pytest.approx(eager.losses, abs=1e-4)
    assert eager.losses[-1] < eager.losses[0] - 0.1  # it learned: the comparison is not of constants
    assert [s for s, _ in result.evals] == [3, 6]
    assert [v for _, v in result.evals] == pytest.approx([v for _, v in eager.evals], abs=1e-4)
    # one training graph and one held-out graph served every step: no recompiles, no graph breaks
    assert counting_backend.frame_count == 2
    assert result.step_tokens == eager.step_tokens  # the real tokens, not the padding


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "graphs"])
def test_compiled_steps_on_cuda_follow_eager(llama_factory, mode) -> None:
    """Inductor itself (and CUDA graphs) over packed 4-bit layers, with accumulation over micro-batches."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    data, held = ragged_set(10), ragged_set(5, seed=1)
    base = dict(max_steps=6, batch_size=4, grad_accum=2, lr=5e-3, warmup=1, progress=False, lora_dropout=0.0)
    eager = Trainer(build(llama_factory).cuda(), data, held, TrainConfig(**base, eval_every=3)).run()
    model = build(llama_factory).cuda()
    result = Trainer(model, data, held, TrainConfig(**base, eval_every=3, compile=mode)).run()
    assert result.losses == pytest.approx(eager.losses, abs=1e-3)
    assert [v for _, v in result.evals] == pytest.approx([v for _, v in eager.evals], abs=1e-3)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    torch._dynamo.reset()
