"""benchmarks/reconstruction_error.py refuses a bad --methods before it loads any model."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("methods", "bits", "says"),
    [
        ("hqq,symmetric-dq", "4", "applies to rtn and hqq only"),
        ("symmetric", "1,4", "needs bits >= 2"),
        ("foo-dq", "4", "is not one of"),
    ],
)
def test_a_bad_method_is_refused_before_the_model_loads(
    methods: str, bits: str, says: str, run_benchmark
) -> None:
    # The model path does not exist: a refusal that names the method came before loading it.
    run = run_benchmark(
        "reconstruction_error.py", "--methods", methods, "--bits", bits, "--model", "/nonexistent/model"
    )
    assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
    assert "nonexistent" not in run.stderr


def test_the_defaults_pass_the_checks_and_reach_the_model(run_benchmark) -> None:
    # The documented bare command: bits 1..8 with rtn and hqq (symmetric in the defaults refused it).
    run = run_benchmark("reconstruction_error.py", "--model", "/nonexistent/model")
    assert run.returncode != 0 and "nonexistent" in run.stderr, run.stderr[-2000:]
