"""Reliability: one writer per run folder and study, no secret on disk or in argv, corrupt files
as one line, collapsed training stopped, outputs checked before loading, incomplete runs refused."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qradaptor.lock import LOCK_FILE, RunLock
from qradaptor.redact import STORAGE_ENV, redact

SECRET = "hunter2-s3cret"
URL = f"postgresql+psycopg2://me:{SECRET}@db.example:5432/qra"


# ----- one writer -----------------------------------------------------------------------------
def test_a_second_lock_on_a_run_folder_is_refused_naming_the_holder(tmp_path) -> None:
    run = tmp_path / "run"
    with RunLock(run, "qra search"):
        with pytest.raises(ValueError, match=rf"in use by qra search \(PID {os.getpid()} on host "):
            RunLock(run, "qra train").acquire()
    with RunLock(run, "qra train"):  # released: the next writer gets it
        pass
    assert not run.exists()  # made by the lock and left empty: removed with it


def test_a_killed_holder_leaves_no_lock_behind(tmp_path) -> None:
    code = f"from qradaptor.lock import RunLock; RunLock({str(tmp_path)!r}, 'qra train').acquire(); input()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / LOCK_FILE).is_file() or not (tmp_path / LOCK_FILE).read_text():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
            time.sleep(0.05)
        with pytest.raises(ValueError, match=rf"PID {child.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path, "qra train").acquire()
    finally:
        child.kill()  # -9: the kernel drops its flock
        child.wait()
    with RunLock(tmp_path, "qra train"):
        pass


def test_a_second_search_on_the_folder_is_refused_before_the_model_loads(
    cli, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    import qradaptor.models.loading as loading

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    run = tmp_path / "run"
    with RunLock(run, "qra search"):
        code, _, err = cli("search", tiny_model_dir, "--budget", "4.5bits", "-o", run, "--device", "cpu")
    assert code == 2 and f"is in use by qra search (PID {os.getpid()}" in err and err.count("\n") == 1, err


def test_a_second_search_on_a_shared_study_is_refused_and_a_dead_owner_is_taken_over(tmp_path) -> None:
    from qradaptor.distributed.owner import StudyClaim
    from qradaptor.distributed.queue import open_storage
    from qradaptor.distributed.study import sqlite_url

    storage = open_storage(sqlite_url(tmp_path / "shared.db"))
    with StudyClaim(storage, "qradaptor"):
        with pytest.raises(ValueError, match=rf"being searched by qra search \(PID {os.getpid()} on host"):
            StudyClaim(open_storage(sqlite_url(tmp_path / "shared.db")), "qradaptor").acquire()
        with StudyClaim(storage, "another"):  # another study of the same storage is free
            pass
    # No process has PID pid_max (PIDs stay below it), where an exited child's PID may be reused.
    pid_max = Path("/proc/sys/kernel/pid_max")
    dead = int(pid_max.read_text()) if pid_max.is_file() else 2**22 + 1
    claim = StudyClaim(storage, "qradaptor").acquire()
    storage.set_study_user_attr(claim._id, "pid", dead)  # its owner died without releasing
    claim._stop.set()
    claim._id = None
    taken = StudyClaim(storage, "qradaptor").acquire()  # taken over, not refused
    taken.release()
    names = [s.study_name for s in storage.get_all_studies()]
    assert names == []  # every claim removed


# ----- secrets -------------------------------------------------------------------------------
def test_redact_hides_every_url_password() -> None:
    line = f"qra search --storage {URL} --study s --storage=mysql://u:{SECRET}@h/d sqlite:////a/b.db"
    shown = redact(line)
    assert SECRET not in shown and shown.count("***") == 2 and "sqlite:////a/b.db" in shown
    assert redact("postgresql://me@host/db") == "postgresql://me@host/db"


def test_config_json_hides_the_password_and_follows_the_umask(tmp_path, monkeypatch) -> None:
    from qradaptor.cli.search_output import write_config

    monkeypatch.setattr(sys, "argv", ["qra", "search", "--storage", URL])
    old = os.umask(0o077)
    try:
        write_config(tmp_path, {"study": "s", "note": f"storage {URL}"})
    finally:
        os.umask(old)
    text = (tmp_path / "config.json").read_text()
    assert SECRET not in text and "me:***@db.example" in json.loads(text)["command"]
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600


def test_local_workers_get_the_url_in_their_environment_not_argv(tmp_path, monkeypatch) -> None:
    from qradaptor.distributed.launch import LocalWorkers
    from qradaptor.distributed.queue import QueueSettings

    started = []

    class Popen:
        def __init__(self, argv, stdout=None, stderr=None, env=None) -> None:
            started.append((argv, env))

    monkeypatch.setattr(subprocess, "Popen", Popen)
    LocalWorkers(URL, "s", ["cpu", "cpu"], tmp_path / "logs", QueueSettings()).start()
    assert len(started) == 2
    for argv, env in started:
        assert not any(SECRET in a or "postgresql" in a for a in argv), argv
        assert env[STORAGE_ENV] == URL and "--study" in argv


def test_the_worker_reads_its_storage_from_the_environment(cli, monkeypatch) -> None:
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg2://me:secret@127.0.0.1:1/db")
    code, _, err = cli("worker")
    assert code == 2 and "cannot open storage 'postgresql+psycopg2://me:***@127.0.0.1:1/db'" in err
    monkeypatch.delenv(STORAGE_ENV)
    code, _, err = cli("worker")
    assert code == 2 and f"--storage URL, or the environment variable {STORAGE_ENV}" in err


# ----- corrupt files ---------------------------------------------------------------------------
def test_a_damaged_gguf_is_one_line_from_a_verb(cli, tmp_path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07" * 40)  # a header cut short
    code, _, err = cli("info", gguf)
    assert code == 2 and err.count("\n") == 1 and "damaged or truncated" in err and str(gguf) in err, err


def _lora_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "rank_pattern": {}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_a_truncated_adapter_is_refused_naming_the_file(tmp_path) -> None:
    import torch
    from safetensors.torch import save

    from qradaptor.assemble import read_adapter

    whole = save({"a": torch.ones(64, 64)})
    assert read_adapter(_lora_folder(tmp_path / "ok", whole)).peft_type == "LORA"
    with pytest.raises(ValueError, match=r"adapter weights '.*cut/adapter_model.safetensors' is corrupt"):
        read_adapter(_lora_folder(tmp_path / "cut", whole[: len(whole) // 2]))


def test_an_unreadable_data_file_names_the_file(tmp_path) -> None:
    from qradaptor.data import load_texts

    (tmp_path / "cut.jsonl").write_text('{"text": "a b"}\n{"text": "a')
    with pytest.raises(ValueError, match=r"cut.jsonl' must be valid JSON \(line 2\)"):
        load_texts(str(tmp_path / "cut.jsonl"))
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin.txt' is not UTF-8 text \(byte 3"):
        load_texts(str(tmp_path / "bin.txt"))


# ----- outputs and run folders ------------------------------------------------------------------
@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no file can be created in, even by root (whose permissions a chmod does not stop)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for folder in (locked, Path("/sys"), Path("/proc")):
        try:
            (folder / ".probe").touch()
        except OSError:
            yield folder
            break
        (folder / ".probe").unlink()
    else:
        pytest.skip("no unwritable folder here")
    locked.chmod(0o700)


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "-o", "{bad}/prof"],
        ["eval", "--tasks", "ppl_wiki", "-o", "{bad}/eval.json"],
        ["train", "--plan", "uniform:4:4", "-o", "{bad}/run"],
        ["search", "--budget", "4.5bits", "-o", "{bad}/search"],
        ["eval", "--tasks", "ppl_wiki", "-o", "{file}/eval.json"],
        ["train", "--plan", "uniform:4:4", "-o", "{file}/run"],
    ],
)
def test_an_unwritable_output_is_refused_before_the_model_loads(
    cli, tiny_model_dir, tmp_path, unwritable, monkeypatch, argv
) -> None:
    import qradaptor.models.loading as loading

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    (tmp_path / "a-file").write_text("x")
    filled = [a.format(bad=unwritable, file=tmp_path / "a-file") for a in argv]
    code, _, err = cli(filled[0], tiny_model_dir, *filled[1:], "--device", "cpu")
    assert code == 2 and err.count("\n") == 1, err
    assert "is not writable" in err or "is a file, not a folder" in err, err


def test_an_incomplete_run_is_refused_by_eval_and_export(cli, tmp_path) -> None:
    from qradaptor.plan import Plan
    from qradaptor.runs import read_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(Plan.uniform(3, 4, 0).to_json())
    assert read_run(run).finished is False  # hand-made: readable, with a warning from the verbs
    (run / ".incomplete").write_text("")  # qra train was killed while writing the folder
    for argv in (["eval", "--run", run, "--tasks", "ppl_wiki"], ["export", run, "-o", tmp_path / "out"]):
        code, _, err = cli(*argv)
        assert code == 2 and "is incomplete: qra train stopped before writing train.json" in err, err
    (run / ".incomplete").unlink()
    (run / "checkpoints").mkdir()  # killed mid-training: checkpoints, no train.json
    with pytest.raises(ValueError, match="is incomplete"):
        read_run(run)
    (run / "train.json").write_text(json.dumps({"method": "lora", "model": "m"}))
    files = read_run(run)
    assert files.finished and files.source == "m"


def test_a_rank_above_the_layers_width_is_refused(tiny_llama) -> None:
    from qradaptor.models.structure import inspect_model
    from qradaptor.plan import Plan

    structure = inspect_model(tiny_llama)  # hidden 64, k/v projections 64 -> 32
    Plan.uniform(3, 4, 32).validate(structure)
    with pytest.raises(ValueError, match=r"rank 33 of model.layers.0.self_attn.k_proj exceeds .* width 32"):
        Plan.uniform(3, 4, 33).validate(structure)
