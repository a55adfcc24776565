"""summary.json and config.json: SearchSummary and SearchSettings round-trip; old summaries read."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from qradaptor.runfolder.search_run import SEARCH_SUMMARY, SearchSettings, SearchSummary
from qradaptor.search import report
from qradaptor.search.records import TrialRecord

ROOT = Path(__file__).resolve().parents[2]


def _summary() -> SearchSummary:
    records = [
        TrialRecord(0, "reference", 0, "h0", (4, 4), (16, 16), 2.0, 3.0, 1000, 4.5, 1.0, "uniform-4bit", 64),
        TrialRecord(1, "initial", 0, "h1", (4, 3), (8, 16), 1.9, 2.9, 900, 4.0, 1.0, tokens=64),
        TrialRecord(2, "nsga2", 1, "h2", (3, 3), (8, 8), math.inf, math.inf, 800, 3.5, 1.0, tokens=64),
    ]
    summary = report.summarise(records, pareto=[1, 0], chosen_number=1)
    return replace(
        summary,
        budget="4.0 avg bits",
        note="",
        strategy="paper",
        screened={},
        evaluated_this_run=3,
        replayed_from_study=0,
        stage_seconds={"profile": 1.5},
        wall_seconds=9.0,
        proxy_tokens=128,
        epoch_tokens=1000,
        search_cost_epochs=0.128,
        data_roles={"calibration": "wiki", "selection": "qa"},
        chance_loss=None,
        collapsed_plans=0,
        chosen_collapsed=False,
    )


def test_a_search_summary_round_trips_through_its_file(tmp_path: Path) -> None:
    summary = _summary()
    data = summary.to_dict()
    assert list(data)[:4] == ["format", "evaluations", "seconds", "best_loss"]
    assert data["chosen"]["on_pareto"] is True and data["pareto"] == [0, 1]
    assert data["references"][0]["chosen_minus_reference"] == pytest.approx(-0.1)
    assert "bits_sensitivity_pearson" not in data  # no profile: not written at all
    assert SearchSummary.from_dict(json.loads(json.dumps(data))) == summary
    profiled = replace(summary, profiled=True, bits_sensitivity_pearson=None)  # a constant plan
    profiled.save(tmp_path)
    assert json.loads((tmp_path / SEARCH_SUMMARY).read_text())["bits_sensitivity_pearson"] is None
    assert SearchSummary.load(tmp_path) == profiled
    assert report.format_summary(summary).startswith("phase")  # the printed table reads the record


def test_summary_json_is_written_byte_for_byte_as_before(tmp_path: Path) -> None:
    # data/search_summary.json was written by the code before summarise returned a record (a
    # dict then read by SearchSummary.from_dict): the record must write the same bytes.
    replace(_summary(), profiled=True, bits_sensitivity_pearson=0.5).save(tmp_path)
    golden = (Path(__file__).parent / "data" / "search_summary.json").read_text()
    assert (tmp_path / SEARCH_SUMMARY).read_text() == golden


def test_every_committed_summary_json_reads_and_keeps_its_values() -> None:
    paths = sorted((ROOT / "docs" / "results" / "paper" / "searches").glob(f"*/{SEARCH_SUMMARY}"))
    assert len(paths) > 10
    for path in paths:
        old = json.loads(path.read_text())
        summary = SearchSummary.load(path.parent)
        assert summary.profiled == ("bits_sensitivity_pearson" in old)
        again = summary.to_dict()
        assert {k: again[k] for k in old} == old, path  # keys added since are None
        # and byte for byte: the same keys are written in the same order, with the same numbers
        text = json.dumps({k: v for k, v in again.items() if k in old}, indent=2, default=str) + "\n"
        assert text == path.read_text(), path
        assert SearchSummary.from_dict(again) == summary


def test_a_newer_summary_is_refused(tmp_path: Path) -> None:
    (tmp_path / SEARCH_SUMMARY).write_text(json.dumps({**_summary().to_dict(), "format": 2}))
    with pytest.raises(ValueError, match=f"{SEARCH_SUMMARY}: format 2 is not supported"):
        SearchSummary.load(tmp_path)


def test_search_settings_round_trip_with_the_password_hidden(tmp_path: Path) -> None:
    settings = SearchSettings({"model": "m", "budget": "4bits", "proxy": {"steps": 2}}, "qra search m")
    settings.save(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert list(data) == ["format", "model", "budget", "proxy", "command"]
    assert SearchSettings.load(tmp_path) == settings
    SearchSettings({"storage": "postgresql://me:secret@db/x"}, "qra search").save(tmp_path)
    assert "secret" not in (tmp_path / "config.json").read_text()
