"""train.json: TrainRecord and TrainMemory round-trip; every committed train.json reads back as written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qradaptor.runfolder.train_run import RUN_TRAIN, AdaloraRanks, TrainMemory, TrainRecord, recorded_base

ROOT = Path(__file__).resolve().parents[2]
MEMORY = TrainMemory(
    avg_bits=4.5,
    avg_rank=7.5,
    base_format="packed",
    weights_bytes=1000,
    predicted_peak=5000,
    predicted_parts={"weights": 1000, "gradients": 1000, "optimizer": 2000, "activations": 1000},
    trainable_params=4096,
    measured_peak=None,
    adalora=AdaloraRanks(
        24, 16, 7.5, {"model.layers.0.self_attn.q_proj": 8, "model.layers.0.mlp.up_proj": 7}
    ),
)
RECORD = TrainRecord(
    method="adalora",
    memory=MEMORY,
    tokens=50_000,
    train_seconds=12.5,
    steady_tokens_per_second=4000.0,
    method_summary="AdaLoRA on the base quantised per --plan",
    model="/models/tiny",
    plan_name="",
    plan_hash="3e6bcff168af",
    config={"epochs": 1.0, "max_steps": 3, "seed": 0},
    fingerprint={"plan_hash": "3e6bcff168af", "method": "adalora"},
    steps=3,
    tokens_per_second=3900.0,
    step_seconds=(0.1, 0.1, 0.1),
    final_train_loss=2.5,
    final_eval_loss=2.4,
    evals=((3, 2.4),),
    losses=(2.7, 2.6, 2.5),
    device="cuda",
    device_name="NVIDIA H200",
    date="2026-01-01",
    versions={"torch": "2", "peft": "0.21"},
    provenance={"format": "safetensors", "text": "model.safetensors stores 29 tensors (29 F32)"},
)


def test_a_train_record_round_trips_through_its_file(tmp_path: Path) -> None:
    data = RECORD.to_dict()
    assert list(data)[:3] == ["format", "method", "method_summary"] and data["format"] == 1
    assert data["memory"]["measured_peak"] is None and data["memory"]["adalora"]["init_r"] == 24
    assert data["evals"] == [[3, 2.4]]
    assert TrainRecord.from_dict(json.loads(json.dumps(data))) == RECORD
    RECORD.save(tmp_path)
    assert TrainRecord.load(tmp_path) == RECORD
    assert recorded_base(tmp_path) == ("/models/tiny", "adalora")
    assert RECORD.measured_on == "2026-01-01, NVIDIA H200, peft 0.21, torch 2"
    assert RECORD.weights == "model.safetensors stores 29 tensors (29 F32)"


def test_train_memory_leaves_out_what_was_not_recorded() -> None:
    plain = TrainMemory(avg_bits=16.0, avg_rank=16.0)
    assert plain.to_dict() == {"avg_bits": 16.0, "avg_rank": 16.0, "measured_peak": None}
    assert TrainMemory.from_dict(plain.to_dict()) == plain
    assert TrainMemory.from_dict(MEMORY.to_dict()) == MEMORY


def test_every_committed_train_json_reads_and_is_written_back_the_same() -> None:
    paths = sorted((ROOT / "docs" / "results" / "paper").glob(f"*/*/seed*/train/{RUN_TRAIN}"))
    assert len(paths) > 50
    for path in paths:
        old = json.loads(path.read_text())
        record = TrainRecord.load(path.parent)
        assert set(record.extra) <= {"note"}  # a key of older files, kept
        again = record.to_dict()
        assert again["format"] == 1
        if "format" not in old:  # written before train.json had one
            again.pop("format")
        assert again == old and list(again) == list(old), path
        assert TrainRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["memory"].pop("avg_rank"), r"key 'avg_rank' is missing"),
        (lambda d: d.pop("tokens"), r"key 'tokens' is missing"),
        (lambda d: d.update(format=9), r"format 9 is not supported"),
    ],
)
def test_a_bad_train_json_is_one_error_naming_the_file(tmp_path: Path, edit, message: str) -> None:
    data = RECORD.to_dict()
    edit(data)
    (tmp_path / RUN_TRAIN).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{RUN_TRAIN}: {message}"):
        TrainRecord.load(tmp_path)


def test_a_hand_made_train_json_still_names_its_base(tmp_path: Path) -> None:
    (tmp_path / RUN_TRAIN).write_text(json.dumps({"model": "m"}))
    assert recorded_base(tmp_path) == ("m", None)
    with pytest.raises(ValueError, match="key 'memory' is missing"):
        TrainRecord.load(tmp_path)
    assert replace(RECORD, method=None).to_dict()["method"] is None
