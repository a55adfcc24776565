"""The Optuna study as the search's memory: fingerprints, one evaluation per plan, replay."""

from __future__ import annotations

import math

import optuna
import pytest

from qradaptor.distributed.study import StudyObjective, completed_records, open_study, sqlite_url
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.proxy import ProxyScore
from qradaptor.search.records import TrialRecord, records_from_csv, records_to_csv
from qradaptor.search.space import MemoryTable, SearchSpace

FINGERPRINT = {"model_signature": "abc", "bits": [2, 4], "ranks": [4, 8], "proxy": {"steps": 3}}


class FakeEvaluator:
    """Scores a plan by its mean bits (lower loss for more bits); counts the calls."""

    def __init__(self, diverge_at_bits: int | None = None) -> None:
        self.calls: list[str] = []
        self.diverge_at_bits = diverge_at_bits

    def __call__(self, plan: Plan) -> ProxyScore:
        self.calls.append(plan.plan_hash)
        bits = plan.block_bits()
        loss = math.inf if self.diverge_at_bits in bits else 10.0 / (sum(bits) / len(bits))
        return ProxyScore(plan.plan_hash, loss, loss + 1.0, (1.0, 0.5), 0.25, 128)


@pytest.fixture
def table(tiny_llama) -> MemoryTable:
    structure = inspect_model(tiny_llama)
    return MemoryTable.build(structure, SearchSpace.for_structure(structure, bits=(2, 4), ranks=(4, 8)))


def test_a_new_study_stores_its_fingerprint_and_reopens_with_it(tmp_path) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    study = open_study(storage, FINGERPRINT)
    assert study.user_attrs["qradaptor.fingerprint"] == FINGERPRINT
    assert open_study(storage, dict(FINGERPRINT)).study_name == "qradaptor"


def test_another_fingerprint_is_refused_naming_each_difference_and_nothing_changes(tmp_path, table) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    objective = StudyObjective(open_study(storage, FINGERPRINT), FakeEvaluator(), table)
    objective(Plan.uniform(3, 4, 8))
    other = {**FINGERPRINT, "bits": [2, 3, 4], "proxy": {"steps": 5}}
    with pytest.raises(ValueError) as err:
        open_study(storage, other)
    message = str(err.value)
    assert "bits: study has [2, 4], this run has [2, 3, 4]" in message
    assert "proxy: study has {'steps': 3}, this run has {'steps': 5}" in message
    assert "its trials are kept" in message and "ranks" not in message
    study = optuna.load_study(study_name="qradaptor", storage=storage)
    assert len(study.trials) == 1 and study.user_attrs["qradaptor.fingerprint"] == FINGERPRINT


def test_a_study_not_made_by_qradaptor_is_refused(tmp_path) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    optuna.create_study(storage=storage, study_name="qradaptor")
    with pytest.raises(ValueError, match="was not made by qradaptor"):
        open_study(storage, FINGERPRINT)


def test_each_plan_is_evaluated_once_and_replayed_from_a_fresh_objective(tmp_path, table) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    evaluator = FakeEvaluator()
    objective = StudyObjective(open_study(storage, FINGERPRINT), evaluator, table)
    objective.phase, objective.generation = "nsga2", 2
    plans = [
        Plan.from_lists([4, 2, 2], [8, 4, 4]),
        Plan.uniform(3, 2, 4),
        Plan.from_lists([4, 2, 2], [8, 4, 4]),
    ]
    losses = [objective(p) for p in plans]
    assert losses == [pytest.approx(10 / (8 / 3)), 5.0, pytest.approx(10 / (8 / 3))]
    assert len(evaluator.calls) == 2 and objective.evaluated == 2 and len(objective.records) == 2
    first = objective.records[0]
    assert (first.phase, first.generation, first.bits, first.ranks) == ("nsga2", 2, (4, 2, 2), (8, 4, 4))
    assert first.bytes == int(table.bytes_of(table.space.from_plan(plans[0])))
    assert (first.loss_before, first.seconds, first.tokens) == (pytest.approx(first.loss + 1), 0.25, 128)

    again = FakeEvaluator()
    replay = StudyObjective(open_study(storage, FINGERPRINT), again, table)
    assert [replay(p) for p in plans] == losses and again.calls == []
    assert replay.records == objective.records and replay.replayed == 2 and replay.evaluated == 0
    assert completed_records(replay.study, table.space) == objective.records


def test_a_new_trial_is_read_back_by_its_id_when_another_writer_adds_one_meanwhile(tmp_path, table) -> None:
    """Another process's trial lands right after ours: reading "the last trial" would pair
    this plan's hash with that trial's loss."""
    study = open_study(sqlite_url(tmp_path / "s.db"), FINGERPRINT)
    storage = study._storage
    create = storage.create_new_trial

    def and_another(study_id, template_trial=None):
        mine = create(study_id, template_trial=template_trial)
        attrs = {**template_trial.user_attrs, "plan_hash": "someone-else", "name": "other"}
        other = optuna.trial.create_trial(
            params=dict(template_trial.params),
            distributions=dict(template_trial.distributions),
            values=[99.0, 1.0],
            user_attrs=attrs,
        )
        create(study_id, template_trial=other)
        return mine

    storage.create_new_trial = and_another
    plan = Plan.uniform(3, 4, 8)
    record = StudyObjective(study, FakeEvaluator(), table).record(plan)
    assert (record.plan_hash, record.loss) == (plan.plan_hash, pytest.approx(2.5))
    assert record.number == 0


def test_a_diverged_plan_is_stored_as_inf_and_read_back_as_inf(tmp_path, table) -> None:
    storage = sqlite_url(tmp_path / "s.db")
    objective = StudyObjective(open_study(storage, FINGERPRINT), FakeEvaluator(diverge_at_bits=2), table)
    assert objective(Plan.uniform(3, 2, 4)) == math.inf
    (record,) = completed_records(open_study(storage, FINGERPRINT), table.space)
    assert record.loss == math.inf and record.loss_before == math.inf


def test_records_round_trip_through_dicts_and_csv() -> None:
    record = TrialRecord(3, "bayes", 1, "h", (2, 4), (4, 8), math.inf, 2.5, 1000, 3.25, 0.5, "x", 64)
    assert TrialRecord.from_dict(record.to_dict()) == record
    assert record.to_dict()["loss"] is None
    lines = records_to_csv([record]).splitlines()
    assert lines[0].startswith("number,phase,generation,name,loss")
    assert lines[1] == "3,bayes,1,x,inf,2.500000,1000,3.2500,0.500,64,h,2 4,4 8"
    assert records_from_csv(records_to_csv([record])) == [record]  # values exact at the CSV's rounding
    with pytest.raises(ValueError, match=r"not a trials.csv of records_to_csv \(KeyError\('number'\)\)"):
        records_from_csv("x\n1\n")
    with pytest.raises(ValueError, match="phase must be one of"):
        TrialRecord(0, "warmup", 0, "h", (2,), (4,), 1.0, 1.0, 1, 2.0, 0.1)
