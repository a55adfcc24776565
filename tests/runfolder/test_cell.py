"""cell.json: CellRecord round-trips, reads files from before it had a format, refuses bad ones."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qradaptor.runfolder.cell import CELL_FILE, CellRecord

ROOT = Path(__file__).resolve().parents[2]
RECORD = CellRecord(
    "pilot", "qra@3.5bits", "lora", "3.5bits", 1, "../../searches/k", ("qra train", "qra eval"), "done"
)


def test_a_cell_record_round_trips_through_its_file(tmp_path: Path) -> None:
    data = RECORD.to_dict()
    assert (
        next(iter(data)) == "format" and data["format"] == 1 and data["commands"] == ["qra train", "qra eval"]
    )
    assert CellRecord.from_dict(json.loads(json.dumps(data))) == RECORD
    failed = replace(RECORD, state="failed", error="CUDA out of memory", search=None, budget=None)
    failed.save(tmp_path / "a" / "seed1")  # the folder is made
    assert CellRecord.load(tmp_path / "a" / "seed1") == failed


def test_the_reuse_fields_are_written_only_when_set_and_read_back(tmp_path: Path) -> None:
    assert {"fingerprint", "reused_from", "reused_run"}.isdisjoint(RECORD.to_dict())
    reused = replace(
        RECORD, fingerprint="0123456789abcdef", reused_from="pilot/knapsack@3.5bits/seed1", reused_run="../t"
    )
    data = reused.to_dict()
    assert list(data)[-3:] == ["fingerprint", "reused_from", "reused_run"]
    reused.save(tmp_path)
    assert CellRecord.load(tmp_path) == reused


def test_every_committed_cell_json_reads_and_round_trips() -> None:
    paths = sorted((ROOT / "docs" / "results" / "paper").glob(f"*/*/seed*/{CELL_FILE}"))
    assert len(paths) > 50
    for path in paths:
        old = json.loads(path.read_text())
        record = CellRecord.load(path.parent)
        again = record.to_dict()
        if "format" not in old:  # written before cell.json had one
            again.pop("format")
        assert again == old, path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(seed=True), r"field 'seed' must be an integer, got True"),
        (lambda d: d.pop("label"), r"field 'label' is missing"),
        (lambda d: d.update(format=2), r"format 2 is not supported"),
        (lambda d: d.update(reused_from=3), r"field 'reused_from' must be a string or null, got 3"),
    ],
)
def test_a_bad_cell_json_is_one_error_naming_the_file(tmp_path: Path, edit, message: str) -> None:
    data = RECORD.to_dict()
    edit(data)
    (tmp_path / CELL_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{CELL_FILE}: {message}"):
        CellRecord.load(tmp_path)
