"""The runner with a fake ``qra``: a tiny script that writes each step's output file and logs its
argv, times and CUDA_VISIBLE_DEVICES, so what ran, in which order and how many at once is checked
without a model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from qradaptor.experiment import runner
from qradaptor.experiment.config import load
from qradaptor.experiment.runner import Runner, pending_steps, plan_jobs

FAKE = """\
import json, os, sys, time
from pathlib import Path

verb, args = sys.argv[1], sys.argv[2:]
out = Path(args[args.index("-o") + 1])
start = time.time()
if os.environ.get("FAKE_MEET"):  # wait, up to 30 s, until this many steps have started
    log = Path(os.environ["FAKE_LOG"])
    (log.parent / f"{log.name}.meet{os.getpid()}").write_text("started")
    deadline = time.monotonic() + 30
    while len(list(log.parent.glob(log.name + ".meet*"))) < int(os.environ["FAKE_MEET"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
slow, _, seconds = os.environ.get("FAKE_SLOW", ":0").rpartition(":")
if slow and slow in str(out):
    if os.environ.get("FAKE_DEAF"):  # as a child that lost a SIGINT in its start-up
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    Path(os.environ["FAKE_LOG"] + ".slow").write_text("sleeping")
    time.sleep(float(seconds))
else:
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
failed = os.environ.get("FAKE_FAIL") == str(out)
oom_out, _, oom_times = os.environ.get("FAKE_OOM", ":0").rpartition(":")
if oom_out == str(out):
    tries = Path(os.environ["FAKE_LOG"] + ".oom")
    count = int(tries.read_text()) if tries.exists() else 0
    tries.write_text(str(count + 1))
    if count < int(oom_times):
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 96.00 MiB.")
        failed = True
if failed:
    print("fake failure of", verb, file=sys.stderr)
elif os.environ.get("FAKE_NOWRITE") != str(out):
    done = {"train": "train.json", "search": "summary.json", "profile": "sensitivity.json"}
    target = out / done[verb] if verb in done else out
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{}")
line = {"verb": verb, "argv": args, "start": start, "end": time.time(),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(line) + "\\n")
sys.exit(3 if failed else 0)
"""

SMALL = """\
name: small
model: /m
seeds: [0, 1]
methods:
  - {label: lora16, method: lora16}
  - {label: C, plan: {bits: 4, ranks: 8}}
  - {label: qra, search: {steps: 2}, budgets: [3.5bits]}
"""
THREE = "name: three\nseeds: [0, 1, 2]\nmethods:\n  - {label: lora16, method: lora16}\n"
"""Three cells of two steps and nothing to wait for."""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command of the fake qra; its log is read with ``ran(tmp_path)``."""
    script = tmp_path / "fake_qra.py"
    script.write_text(FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "ran.jsonl"))
    fakes = ("FAKE_SLOW", "FAKE_SLEEP", "FAKE_FAIL", "FAKE_NOWRITE", "FAKE_OOM", "FAKE_DEAF", "FAKE_MEET")
    for name in (*fakes, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.01)
    return [sys.executable, "-S", str(script)]  # -S: no site-packages, a faster start


def ran(tmp_path: Path) -> list[dict]:
    path = tmp_path / "ran.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def experiment(tmp_path: Path, text: str = SMALL):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return load(path, tmp_path / "out")


def cell_record(cell) -> dict:
    return json.loads((cell.folder / "cell.json").read_text())


def out_of(argv: list[str]) -> str:
    return argv[argv.index("-o") + 1]


def test_every_step_runs_once_in_order_and_cells_end_done(fake, tmp_path: Path) -> None:
    small = experiment(tmp_path)
    jobs = plan_jobs([small])
    assert len(pending_steps(jobs)) == 2 + 2 * 2 + 2 * 3 + 2 * 2
    states: list[tuple[str, str, bool, str]] = []

    def on_step(name, step, seconds, ok) -> None:
        # What cell.json says of lora16 seed 0 when each step ends (one worker: strictly in order).
        states.append((name, step.verb, ok, cell_record(small.cells[0])["state"]))

    summary = Runner(jobs, command=fake, on_step=on_step).run()

    assert summary.steps_run == 16 and summary.failed == {}
    assert summary.done == [job.name for job in jobs]
    lora0, lora1, _, _, qra0, qra1 = small.cells
    out = tmp_path / "out"
    # Searches first, then the cells in file order, each one's steps in order.
    expected = [(s.verb, list(s.argv)) for s in (qra0.search.step, qra1.search.step)]
    for cell in small.cells:
        expected += [
            (s.verb, [*s.argv, "--no-progress"] if s.verb == "train" else list(s.argv)) for s in cell.steps
        ]
    assert [(r["verb"], r["argv"]) for r in ran(tmp_path)] == expected
    made, trained = ["plan", "train", "eval"], ["train", "eval"]
    assert [r["verb"] for r in ran(tmp_path)] == ["search"] * 2 + trained * 2 + made * 2 + trained * 2
    assert out_of(ran(tmp_path)[6]["argv"]) == str(out / "small" / "C" / "seed0" / "plan.json")
    assert all(r["cuda"] is None for r in ran(tmp_path))  # no --gpus: none set
    # cell.json: pending until the cell starts, running between its steps, done at the end.
    assert states[:3] == [
        (f"searches/{qra0.search.key}", "search", True, "pending"),
        (f"searches/{qra1.search.key}", "search", True, "pending"),
        ("small/lora16/seed0", "train", True, "running"),
    ]
    assert states[3] == ("small/lora16/seed0", "eval", True, "running") and states[4][3] == "done"
    for cell in small.cells:
        record = cell_record(cell)
        assert record["state"] == "done" and record["error"] is None
        assert record["commands"] == cell.commands and record["seed"] == cell.seed
        assert (record["label"], record["method"], record["experiment"]) == (cell.label, cell.method, "small")
    assert cell_record(qra1)["search"] == f"../../../searches/{qra1.search.key}"
    assert cell_record(qra1)["budget"] == "3.5bits" and cell_record(lora0)["search"] is None
    commands = cell_record(qra1)["commands"]
    assert len(commands) == 3 and commands[0] == qra1.search.step.command
    # Each step's output went to a log beside its folder, after the command line.
    train_log = (lora1.folder / "logs" / "train.log").read_text()
    assert f"$ {lora1.steps[0].command}  # " in train_log
    assert (out / "searches" / "logs" / qra0.search.key / "search.log").is_file()
    assert pending_steps(jobs) == []


def test_a_second_run_runs_nothing(fake, tmp_path: Path) -> None:
    small = experiment(tmp_path)
    Runner(plan_jobs([small]), command=fake).run()
    before = ran(tmp_path)
    jobs = plan_jobs([small])
    summary = Runner(jobs, command=fake).run()
    assert summary.steps_run == 0 and summary.failed == {} and len(summary.done) == 6  # the cells
    assert ran(tmp_path) == before and len(before) == 16
    assert all(cell_record(c)["state"] == "done" for c in small.cells)


def test_a_done_cell_needs_no_search_even_when_its_folder_is_gone(fake, tmp_path: Path) -> None:
    # e.g. a search default changed: the same options name another folder; the cells stay done
    small = experiment(tmp_path)
    Runner(plan_jobs([small]), command=fake).run()
    before = ran(tmp_path)
    searched = [c for c in small.cells if c.search is not None]
    for cell in searched:
        shutil.rmtree(cell.search.folder, ignore_errors=True)
    jobs = plan_jobs([small])
    assert pending_steps(jobs) == [] and not any(job.name.startswith("searches/") for job in jobs)
    assert Runner(jobs, command=fake).run().steps_run == 0 and ran(tmp_path) == before
    (searched[0].folder / "eval.json").unlink()  # a cell with a step to do waits for its search again
    jobs = plan_jobs([small])
    assert [name for name, _ in pending_steps(jobs)] == [
        f"searches/{searched[0].search.key}",
        "small/qra@3.5bits/seed0",
    ]


def test_only_the_missing_steps_run(fake, tmp_path: Path) -> None:
    small = experiment(tmp_path)
    c0 = small.cells[2]
    for step in c0.steps[:2]:  # plan and train done before: only eval is left
        step.done.parent.mkdir(parents=True, exist_ok=True)
        step.done.write_text("{}")
    jobs = plan_jobs([small])
    assert [(name, step.verb) for name, step in pending_steps(jobs) if name == "small/C/seed0"] == [
        ("small/C/seed0", "eval")
    ]
    assert Runner(jobs, command=fake).run().steps_run == 14
    assert [r["verb"] for r in ran(tmp_path) if "/C/seed0/" in " ".join(r["argv"])] == ["eval"]


def test_an_evaluation_that_lacks_tasks_is_completed_with_resume(fake, tmp_path: Path) -> None:
    # e.g. the pilot study's MMLU added to eval options its cells were already scored with
    text = THREE.replace("name: three\n", "name: three\neval: {tasks: [suite, mmlu]}\n")
    three = experiment(tmp_path, text)
    Runner(plan_jobs([three]), command=fake).run()
    before = len(ran(tmp_path))
    first, second, third = (cell.steps[-1] for cell in three.cells)
    suite = ["ppl_wiki", "ppl_lambada", "arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande"]
    suite += ["boolq", "openbookqa"]
    first.done.write_text(json.dumps({"meta": {"tasks": suite}, "results": []}))
    second.done.write_text(json.dumps({"meta": {"tasks": [*suite, "mmlu"]}, "results": []}))
    assert first.missing_tasks() == ["mmlu"] and not first.finished()
    assert second.finished() and third.finished()  # all held; a file that lists none is left alone
    jobs = plan_jobs([three])
    assert [(name, step.verb) for name, step in pending_steps(jobs)] == [("three/lora16/seed0", "eval")]
    summary = Runner(jobs, command=fake).run()
    assert summary.steps_run == 1 and summary.failed == {}
    (again,) = ran(tmp_path)[before:]
    assert again["verb"] == "eval" and again["argv"] == [*first.argv, "--resume"]


def test_a_killed_fine_tune_resumes_or_starts_over(fake, tmp_path: Path) -> None:
    small = experiment(
        tmp_path, "name: resume\nseeds: [0, 1, 2, 3]\nmethods:\n  - {label: lora16, method: lora16}\n"
    )
    lora = small.cells
    (lora[0].folder / "train" / "checkpoints" / "step-000002").mkdir(parents=True)  # killed after one
    (lora[1].folder / "train").mkdir(parents=True)  # killed before its first checkpoint
    (lora[2].folder / "train" / "checkpoints").mkdir(parents=True)  # ... with the folder made
    Runner(plan_jobs([small]), command=fake).run()
    trains = {out_of(r["argv"]): r["argv"] for r in ran(tmp_path) if r["verb"] == "train"}
    flags = [trains[str(c.folder / "train")][-2:] for c in lora]
    assert flags == [
        ["--resume", "--no-progress"],
        ["--force", "--no-progress"],
        ["--force", "--no-progress"],
        [str(lora[3].folder / "train"), "--no-progress"],  # a fresh run: neither
    ]
    assert sum("--resume" in a or "--force" in a for a in trains.values()) == 3


def test_a_failed_search_fails_its_cells_and_no_other(fake, tmp_path: Path, monkeypatch) -> None:
    small = experiment(tmp_path)
    qra0, qra1 = small.cells[4:]
    failing = qra0.search.step.done.parent
    monkeypatch.setenv("FAKE_FAIL", str(failing))
    jobs = plan_jobs([small])
    summary = Runner(jobs, command=fake).run()
    log = tmp_path / "out" / "searches" / "logs" / qra0.search.key / "search.log"
    why = f"qra search failed (exit code 3); see {log}: "
    assert sorted(summary.failed) == [f"searches/{qra0.search.key}", "small/qra@3.5bits/seed0"]
    assert summary.failed[f"searches/{qra0.search.key}"].startswith(why)
    assert summary.failed[f"searches/{qra0.search.key}"].endswith("fake failure of search")
    record = cell_record(qra0)
    assert (
        record["state"] == "failed"
        and record["error"] == f"its search failed: {summary.failed[jobs[0].name]}"
    )
    assert "fake failure of search" in log.read_text()
    # The cell never trained; every other cell finished, the other seed's search included.
    assert not (qra0.folder / "train").exists() and summary.steps_run == 16 - 2
    assert all(cell_record(c)["state"] == "done" for c in small.cells if c is not qra0)
    # Run again (the cause mended): only the failed search and its cell run.
    monkeypatch.delenv("FAKE_FAIL")
    again = Runner(plan_jobs([small]), command=fake).run()
    assert again.failed == {} and again.steps_run == 3
    assert [(r["verb"], out_of(r["argv"])) for r in ran(tmp_path)[-3:]] == [
        ("search", str(failing)),
        ("train", str(qra0.folder / "train")),
        ("eval", str(qra0.folder / "eval.json")),
    ]
    assert cell_record(qra0)["state"] == "done" and cell_record(qra0)["error"] is None


def test_a_step_that_writes_nothing_fails_its_cell(fake, tmp_path: Path, monkeypatch) -> None:
    small = experiment(tmp_path)
    c1 = small.cells[3]
    monkeypatch.setenv("FAKE_NOWRITE", str(c1.folder / "train"))
    summary = Runner(plan_jobs([small]), command=fake).run()
    log = c1.folder / "logs" / "train.log"
    assert list(summary.failed) == ["small/C/seed1"]
    assert summary.failed["small/C/seed1"].startswith(
        f"qra train failed (no train.json written); see {log}: $ qra"
    )
    assert cell_record(c1)["state"] == "failed" and not (c1.folder / "eval.json").exists()


def overlaps(records: list[dict]) -> int:
    """The most steps that ran at one time."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    most = now = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        now += change
        most = max(most, now)
    return most


def test_two_workers_run_two_steps_at_once_and_never_more(fake, tmp_path: Path, monkeypatch) -> None:
    # The first two steps wait for each other, so they overlap however slowly a loaded machine
    # starts them (a sleep alone did not, on CI); one worker would leave the first waiting 30 s
    # alone, and the overlap would be 1.
    monkeypatch.setenv("FAKE_MEET", "2")
    monkeypatch.setenv("FAKE_SLEEP", "0.15")
    small = experiment(tmp_path, THREE)
    summary = Runner(plan_jobs([small]), workers=2, command=fake).run()
    assert summary.steps_run == 6 and summary.failed == {}
    assert overlaps(ran(tmp_path)) == 2


def test_gpus_are_spread_by_load(fake, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    small = experiment(tmp_path, THREE)
    Runner(plan_jobs([small]), workers=2, gpus=[0, 1], command=fake).run()
    records = ran(tmp_path)
    assert {r["cuda"] for r in records} == {"0", "1"}
    # Steps at the same time are on different GPUs; a cell keeps its GPU from step to step.
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["cuda"] != b["cuda"]
    for cell in small.cells:
        mine = {r["cuda"] for r in records if str(cell.folder) + os.sep in out_of(r["argv"]) + os.sep}
        assert len(mine) == 1, cell.label


def test_a_device_goes_to_search_train_and_eval_only(fake, tmp_path: Path) -> None:
    small = experiment(tmp_path)
    Runner(plan_jobs([small]), device="cpu", command=fake).run()
    tails = {r["verb"]: r["argv"][-3:] for r in ran(tmp_path)}
    assert tails["search"][-2:] == ["--device", "cpu"] and tails["eval"][-2:] == ["--device", "cpu"]
    assert tails["train"] == ["--device", "cpu", "--no-progress"]
    assert all("--device" not in r["argv"] for r in ran(tmp_path) if r["verb"] == "plan")
    assert sum("--device" in r["argv"] for r in ran(tmp_path)) == 16 - 2  # all but the two plan steps


def test_a_shared_profile_runs_once_before_the_searches_and_knapsack_plans_that_read_it(
    fake, tmp_path: Path
) -> None:
    text = (
        "name: shared\nmodel: /m\nseeds: [0, 1]\nprofile: {samples: 2}\nmethods:\n"
        "  - {label: kn, plan: knapsack, budgets: [4.0bits]}\n"
        "  - {label: qra, search: {}, budgets: [4.0bits]}\n"
    )
    shared = experiment(tmp_path, text)
    summary = Runner(plan_jobs([shared]), workers=3, command=fake).run()
    assert not summary.failed and len(summary.done) == 1 + 2 + 4  # the profile, two searches, four cells
    records = ran(tmp_path)
    profiles = [r for r in records if r["verb"] == "profile"]
    assert len(profiles) == 1
    readers = [r for r in records if "--sensitivity" in r["argv"]]
    assert sorted(r["verb"] for r in readers) == ["plan", "plan", "search", "search"]
    assert all(r["start"] >= profiles[0]["end"] for r in readers)
    again = Runner(plan_jobs([shared]), workers=3, command=fake).run()
    assert again.steps_run == 0 and len(ran(tmp_path)) == len(records)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_ctrl_c_stops_the_running_children(fake, tmp_path: Path, monkeypatch, sigint: str) -> None:
    import signal

    previous = signal.getsignal(signal.SIGINT)
    if sigint == "ignored":  # inherited by children, as under `cmd &` in a non-interactive shell
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _ctrl_c_stops_the_running_children(fake, tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


STOP = "name: stop\nseeds: [0]\nmethods:\n  - {label: quick, method: lora16}\n"
STOP += "  - {label: slow, method: dora}\n"
"""Two cells: ``quick``'s first step ends at once, ``slow``'s sleeps under FAKE_SLOW."""


def _interrupt_once_slow_sleeps():
    """An on_step that presses Ctrl-C once the slow child has started and is sleeping."""

    def interrupt(name, step, seconds, ok) -> None:
        deadline = time.monotonic() + 60
        while not Path(os.environ["FAKE_LOG"] + ".slow").exists():
            assert time.monotonic() < deadline, "the slow child did not start sleeping in 60 s"
            time.sleep(0.01)
        raise KeyboardInterrupt

    return interrupt


def _ctrl_c_stops_the_running_children(fake, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SLOW", "slow:30")
    monkeypatch.setattr(runner, "YOUNG_SECONDS", 0.0)  # every child is interrupted, none terminated
    quick, slow = experiment(tmp_path, STOP).cells
    interrupt = _interrupt_once_slow_sleeps()

    with pytest.raises(KeyboardInterrupt):
        Runner(plan_jobs([experiment(tmp_path, STOP)]), workers=2, command=fake, on_step=interrupt).run()
    record = cell_record(slow)
    assert record["state"] == "stopped" and "run the same command again to resume" in record["error"]
    assert not (slow.folder / "train" / "train.json").exists()
    assert [out_of(r["argv"]) for r in ran(tmp_path)] == [str(quick.folder / "train")]  # slow never logged


def test_ctrl_c_terminates_a_child_that_just_started(fake, tmp_path: Path, monkeypatch) -> None:
    # The slow child ignores SIGINT, as one that lost it while its interpreter started; it is
    # younger than YOUNG_SECONDS, so the stop terminates it rather than wait out its sleep.
    monkeypatch.setenv("FAKE_SLOW", "slow:3")
    monkeypatch.setenv("FAKE_DEAF", "1")
    monkeypatch.setattr(runner, "YOUNG_SECONDS", 60.0)
    quick, slow = experiment(tmp_path, STOP).cells
    with pytest.raises(KeyboardInterrupt):
        jobs = plan_jobs([experiment(tmp_path, STOP)])
        Runner(jobs, workers=2, command=fake, on_step=_interrupt_once_slow_sleeps()).run()
    assert cell_record(slow)["state"] == "stopped"
    time.sleep(3.5)  # past the sleep a surviving child would have ended with train.json
    assert not (slow.folder / "train" / "train.json").exists()


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        Runner([], workers=0)


def test_a_step_out_of_gpu_memory_runs_again_beside_fewer_others(fake, tmp_path, monkeypatch) -> None:
    three = experiment(tmp_path, THREE)
    train = three.cells[1].folder / "train"
    monkeypatch.setenv("FAKE_OOM", f"{train}:1")  # seed 1's fine-tune runs out of memory once
    monkeypatch.setenv("FAKE_SLOW", f"{three.cells[0].folder}:0.6")
    retries: list[tuple[str, str, int]] = []
    runner_ = Runner(
        plan_jobs([three]),
        workers=3,
        command=fake,
        on_retry=lambda name, step, workers: retries.append((name, step.verb, workers)),
    )
    summary = runner_.run()
    assert summary.failed == {} and len(summary.done) == 3
    # When seed 1 failed, seed 0 (slow) was still running and seed 2 may have been: the runner
    # then kept to that many steps at once (until RAISE_AFTER steps had succeeded).
    assert len(retries) == 1 and retries[0][:2] == ("three/lora16/seed1", "train")
    assert retries[0][2] in (1, 2)
    trains = [r for r in ran(tmp_path) if r["verb"] == "train" and out_of(r["argv"]) == str(train)]
    assert len(trains) == 2
    assert "--force" not in trains[0]["argv"]
    assert cell_record(three.cells[1])["state"] == "done"


@pytest.mark.parametrize(
    ("tail", "out_of_memory"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 96.00 MiB.", True),
        ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", False),
    ],
)
def test_out_of_memory_is_read_from_the_log_in_each_way_cuda_says_it(tmp_path, tail, out_of_memory) -> None:
    log = tmp_path / "eval.log"
    log.write_text("Traceback (most recent call last):\n  ...\n" + tail + "\n")
    assert runner._out_of_memory(log) is out_of_memory


def test_steps_at_once_go_back_up_once_steps_succeed_again(fake, tmp_path, monkeypatch) -> None:
    five = experiment(tmp_path, THREE.replace("[0, 1, 2]", "[0, 1, 2, 3, 4]"))
    train = five.cells[1].folder / "train"
    monkeypatch.setenv("FAKE_OOM", f"{train}:1")
    monkeypatch.setenv("FAKE_SLOW", f"{five.cells[0].folder}:0.6")
    retries: list[int] = []
    raises: list[int] = []
    runner_ = Runner(
        plan_jobs([five]),
        workers=3,
        command=fake,
        on_retry=lambda name, step, workers: retries.append(workers),
        on_raise=raises.append,
    )
    summary = runner_.run()
    assert summary.failed == {} and len(summary.done) == 5
    # Dropped to the steps still running, then one more each RAISE_AFTER successes, back to 3:
    # the other eight steps succeed after the drop, enough to climb from 1 or 2.
    assert retries in ([1], [2])
    assert raises == list(range(retries[0] + 1, 4)) and runner_.workers == 3


def test_a_step_always_out_of_memory_fails_after_its_retries(fake, tmp_path, monkeypatch) -> None:
    three = experiment(tmp_path, THREE.replace("[0, 1, 2]", "[0]"))
    train = three.cells[0].folder / "train"
    monkeypatch.setenv("FAKE_OOM", f"{train}:99")
    summary = Runner(plan_jobs([three]), command=fake).run()
    assert list(summary.failed) == ["three/lora16/seed0"]
    assert "train.log" in summary.failed["three/lora16/seed0"]
    assert "OutOfMemoryError" in summary.failed["three/lora16/seed0"]
    tries = [r for r in ran(tmp_path) if r["verb"] == "train"]
    assert len(tries) == runner.OOM_RETRIES + 1


def test_an_ordinary_failure_is_not_retried(fake, tmp_path, monkeypatch) -> None:
    three = experiment(tmp_path, THREE.replace("[0, 1, 2]", "[0]"))
    monkeypatch.setenv("FAKE_FAIL", str(three.cells[0].folder / "train"))
    summary = Runner(plan_jobs([three]), command=fake).run()
    assert list(summary.failed) == ["three/lora16/seed0"]
    assert len([r for r in ran(tmp_path) if r["verb"] == "train"]) == 1
