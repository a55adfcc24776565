"""qra train's path on the real embedded SmolLM2-135M-Instruct and the embedded QA mix (CPU, fp32).

Five steps of 4 QA examples (128 tokens at most) with LoRA on the 16-bit base (the Q4_1 GGUF
weights dequantised): the loss on the training responses falls, and the saved adapter reloads
through PEFT onto a freshly loaded base with identical logits. (At 256 tokens it took 57 s of CI,
at 128 about 25 s; eight steps at 128 took 55 s alone on a 2-core AMD EPYC without AVX-512,
2026-12-07, five about 35 s.)
"""

from __future__ import annotations

import json

import pytest
import torch

from qradaptor.train.config import TrainConfig
from qradaptor.train.outputs import write_run
from qradaptor.train.run import DataSpec, train_plan

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


def test_lora16_on_smollm2_learns_and_reloads_through_peft(tmp_path) -> None:
    from peft import PeftModel

    from qradaptor.models.loading import load_model

    config = TrainConfig(
        max_steps=5, batch_size=4, seq_len=128, lr=1e-3, warmup=1, progress=False, lora_dropout=0.0
    )
    # 20 examples, 4 of them held out: each of the 4 training batches is seen once, the 5th step
    # starts the second epoch, so the last loss and the first are of the same batch.
    outcome = train_plan(None, "lora16", config, DataSpec(limit=20, eval_size=4), rank=8, device="cpu")
    losses = outcome.result.losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert outcome.memory.avg_bits == 16.0 and outcome.memory.avg_rank == 8.0
    # r (in + out) per linear: q, o 576+576; k, v 576+192; gate, up, down 576+1536; 30 blocks
    assert outcome.memory.trainable_params == 8 * 30 * (2 * 1152 + 2 * 768 + 3 * 2112)
    write_run(tmp_path, outcome, device="cpu")
    assert json.loads((tmp_path / "train.json").read_text())["steps"] == 5

    base = load_model(None).model
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = outcome.tokenizer(
        "Question: What is the capital of France?\nAnswer:", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, outcome.model.eval()(input_ids=ids).logits)
