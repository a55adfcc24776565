"""``qra worker`` and ``launch``: each bad input is one clear error, and nothing is written to the study."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from qradaptor.distributed.launch import check_memory, place_workers
from qradaptor.distributed.queue import QueueEntry, QueueSettings, open_storage, submit
from qradaptor.distributed.study import FINGERPRINT_ATTR, sqlite_url

MIB = 2**20


def test_workers_are_placed_round_robin_over_the_gpus() -> None:
    assert place_workers(3, "cpu", None, 0) == ["cpu"] * 3
    assert place_workers(5, "cuda", [0, 1], 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert place_workers(2, "cuda", None, 1) == ["cuda:0", "cuda:0"]
    with pytest.raises(ValueError, match=r"--gpus 0,3: this machine shows 2 GPU\(s\), indices 0..1"):
        place_workers(2, "cuda", [0, 3], 2)
    with pytest.raises(ValueError, match="--workers must be an integer >= 1, got 0"):
        place_workers(0, "cpu", None, 0)


def test_too_many_workers_for_a_device_are_refused_with_the_numbers() -> None:
    check_memory(["cuda:0"] * 3, 10 * 1024 * MIB, {"cuda:0": 30 * 1024 * MIB})  # exactly fits
    with pytest.raises(ValueError) as err:
        check_memory(
            ["cuda:0", "cuda:1"] * 4, 10 * 1024 * MIB, {"cuda:0": 80 * 1024 * MIB, "cuda:1": 25 * 1024 * MIB}
        )
    message = str(err.value)
    assert "4 workers on cuda:1 need about 40,960 MiB (10,240 MiB each, predicted)" in message
    assert "25,600 MiB are free; at most 2 fit there" in message


def test_queue_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="grace_seconds .3. must exceed heartbeat_seconds .5."):
        QueueSettings(heartbeat_seconds=5, grace_seconds=3)
    with pytest.raises(ValueError, match="QueueSettings.heartbeat_seconds must be an integer >= 1, got 0"):
        QueueSettings(heartbeat_seconds=0)


def test_a_missing_sqlite_file_or_a_bad_url_is_one_error_and_creates_nothing(cli, tmp_path) -> None:
    db = tmp_path / "none" / "study.db"
    code, _, err = cli("worker", "--storage", sqlite_url(db))
    assert code == 2 and f"the SQLite file {db} does not exist (no study to join)" in err
    assert not db.parent.exists()
    code, _, err = cli("worker", "--storage", "not a url")
    assert code == 2 and "is not a database URL" in err


def test_an_unreachable_server_is_one_error_with_the_password_hidden(cli) -> None:
    pytest.importorskip("psycopg2")
    code, _, err = cli("worker", "--storage", "postgresql+psycopg2://me:secret@127.0.0.1:1/db")
    assert code == 2 and "cannot open storage 'postgresql+psycopg2://me:***@127.0.0.1:1/db'" in err
    assert "secret" not in err


def test_an_unknown_study_is_named_with_the_ones_there(cli, tmp_path) -> None:
    url = sqlite_url(tmp_path / "study.db")
    optuna.create_study(storage=open_storage(url), study_name="other")
    code, _, err = cli("worker", "--storage", url, "--study", "mine")
    assert code == 2 and "has no study 'mine'; it has ['other']" in err


def test_a_study_without_a_job_is_refused(cli, tmp_path) -> None:
    url = sqlite_url(tmp_path / "study.db")
    optuna.create_study(storage=open_storage(url), study_name="qradaptor")
    code, _, err = cli("worker", "--storage", url)
    assert code == 2 and "has no job for workers" in err


def test_a_worker_with_another_model_takes_no_trial(tiny_model_dir, llama_factory, tmp_path) -> None:
    """The study was made for one model; a worker that loads another is refused before it claims."""
    from qradaptor.distributed.job import write_job
    from qradaptor.distributed.study import open_study
    from qradaptor.distributed.worker import run_worker
    from qradaptor.fingerprint import tensor_digest, weights_digest
    from qradaptor.models.structure import inspect_model
    from qradaptor.plan import Plan

    other = llama_factory(seed=1)  # the same architecture, other weights
    ids = torch.randint(0, 50, (4, 8))
    fingerprint = {
        "model_signature": inspect_model(other).signature,
        "weights": weights_digest(other),
        "data": tensor_digest(ids, ids),
        "proxy": {},
    }
    url = sqlite_url(tmp_path / "study.db")
    study = open_study(url, fingerprint)
    write_job(study, str(tiny_model_dir), ids, ids)
    plan = Plan.uniform(inspect_model(other).num_blocks, 4, 8)
    submit(study, [QueueEntry({}, {}, {"plan_hash": plan.plan_hash, "plan": plan.to_json(), "bytes": 1})])
    before = [(t.state, dict(t.user_attrs)) for t in study.get_trials()]
    with pytest.raises(
        ValueError, match="not the one study 'qradaptor' was made for; no trial was taken"
    ) as err:
        run_worker(url, "qradaptor", model=str(tiny_model_dir))
    assert "weights: study has" in str(err.value)
    assert [(t.state, dict(t.user_attrs)) for t in study.get_trials()] == before
    assert before[0][0] == TrialState.WAITING
    assert study.user_attrs[FINGERPRINT_ATTR]["weights"] == weights_digest(other)
