"""benchmarks/rank_benefit.py: one plan's bits at each rank; bad arguments refused before the model loads."""

from __future__ import annotations

import pytest

from qradaptor.plan import LayerSpec, Plan

from .conftest import load_benchmark


def test_at_rank_keeps_bits_and_group_sizes_and_changes_every_rank() -> None:
    plan = Plan.from_lists([4, 5, 16], [4, 8, 4], group_size=64, name="k", double_quant=True)
    plan = Plan.from_dict(
        {
            **plan.to_dict(),
            "layers": {**plan.to_dict()["layers"], "1": {"bits": 5, "rank": 8, "group_size": 128}},
        }
    )
    moved = load_benchmark("rank_benefit").at_rank(plan, 16)
    assert moved.block_bits() == [4, 5, 16] and moved.block_ranks() == [16, 16, 16]
    assert moved.layers["1"] == LayerSpec(5, 16, 128) and moved.double_quant and moved.name == "k-r16"
    assert moved.plan_hash != plan.plan_hash


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ranks", "8,4"], "two or more ascending ranks"),
        (["--ranks", "8"], "two or more ascending ranks"),
        (["--steps", "0"], "a rank is worth nothing untrained"),
        (["--ranks", "4,x"], "--ranks"),
    ],
)
def test_bad_arguments_are_one_line_before_the_model_loads(run_benchmark, tmp_path, args, message) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(Plan.from_lists([4, 4], [4, 4]).to_json())
    done = run_benchmark("rank_benefit.py", str(plan), *args)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
