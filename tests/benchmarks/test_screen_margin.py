"""benchmarks/screen_margin.py: window losses whose mean is the screen's loss, a paired standard
error (the library's ``ProxyEvaluator.window_losses`` and ``screen_choice.paired_margin``, which
the benchmark calls), and bad arguments refused before the model loads."""

from __future__ import annotations

import math

import pytest
import torch

from qradaptor.plan import Plan
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.search.screen_choice import paired_margin


def test_the_mean_of_the_window_losses_is_the_screen_s_loss(llama_factory) -> None:
    model = llama_factory(layers=3, vocab_size=512, max_position_embeddings=64, seed=1)
    ids = torch.randint(0, 512, (8, 33), generator=torch.Generator().manual_seed(0))
    plan = Plan.from_lists([4, 2, 3], [4, 4, 4], group_size=32, quant_method="rtn")
    evaluator = ProxyEvaluator(model, ids[:4], ids, ProxyConfig(0, 4, eval_batches=2, warmup=0))
    screen = evaluator(plan).loss
    windows = evaluator.window_losses(plan)
    assert len(windows) == 8 and len(set(windows)) == 8
    assert sum(windows) / 8 == pytest.approx(screen, rel=1e-6)


def test_paired_gives_the_mean_difference_and_its_standard_error() -> None:
    # the benchmark's columns: the candidate (second) minus the reference (first)
    margin = paired_margin([1.5, 2.0, 3.5, 4.0], [1.0, 2.0, 3.0, 4.0])  # differences 0.5, 0, 0.5, 0
    assert margin.mean == pytest.approx(0.25) and margin.stderr == pytest.approx(math.sqrt(1 / 12) / 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--windows", "1"], "--windows must be at least 2"),
        ([], "give at least two plans"),
    ],
)
def test_bad_arguments_are_one_line_before_the_model_loads(run_benchmark, tmp_path, extra, message) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(Plan.from_lists([4, 4], [4, 4]).to_json())
    done = run_benchmark("screen_margin.py", f"k={plan}", *extra)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
