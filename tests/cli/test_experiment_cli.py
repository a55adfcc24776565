"""``qra experiment`` in-process: --dry-run, --only, the option checks, --report-only, and a whole
run whose steps are a fake qra (a script writing each step's files), then its resumption.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qradaptor.eval.results import EvalRecord
from qradaptor.eval.results import to_json as eval_to_json
from qradaptor.eval.suite import GROUPS
from qradaptor.experiment import runner
from qradaptor.experiment.config import load
from qradaptor.experiment.runner import write_cell_record

TINY = """\
name: tiny
model: /m
seeds: [0, 1]
reference: lora16
methods:
  - {label: lora16, method: lora16}
  - {label: C, plan: {bits: 4, ranks: 8}}
  - {label: qra, search: {steps: 2}, budgets: [3.5bits]}
"""
"""16 commands in 8 jobs: 2 searches, lora16 2 x 2, C 2 x 3 (plan, train, eval), qra 2 x 2."""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_dry_run_prints_the_commands_and_writes_nothing(cli, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", tiny, "-o", out, "--dry-run")
    # qra's searches name no --preset, so their size would follow the device: said once.
    assert code == 0 and err.count("\n") == 1
    assert err.startswith("qra experiment: 2 searches to run name no fixed preset")
    lines = stdout.splitlines()
    cells = load(tiny, out).cells
    key = cells[4].search.key
    assert (
        lines[0]
        == f"searches/{key}: qra search /m --budget 3.5bits --seed 0 --steps 2 -o {out}/searches/{key}"
    )
    train = f"qra train /m --method lora16 --seed 0 -o {out}/tiny/lora16/seed0/train"
    assert lines[2] == f"tiny/lora16/seed0: {train}"
    assert lines[6] == f"tiny/C/seed0: qra plan /m --bits 4 --ranks 8 -o {out}/tiny/C/seed0/plan.json"
    assert lines[
        -2
    ] == f"tiny/qra@3.5bits/seed1: qra eval --run {out}/tiny/qra@3.5bits/seed1/train -o " + str(
        out / "tiny" / "qra@3.5bits" / "seed1" / "eval.json"
    )
    assert len(lines) == 17 and lines[-1] == "16 commands to run, in 8 jobs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no output folder
    # What is done already is not listed again.
    done = cells[0].steps[1].done
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    code, stdout, _ = cli("experiment", tiny, "-o", out, "--dry-run")
    assert stdout.splitlines()[-1] == "15 commands to run, in 8 jobs"
    assert "tiny/lora16/seed0: qra eval" not in stdout and "tiny/lora16/seed1: qra eval" in stdout


def test_searches_with_a_preset_run_without_a_note(cli, tiny: Path, tmp_path: Path) -> None:
    tiny.write_text(TINY.replace("search: {steps: 2}", "search: {steps: 2, preset: quick}"))
    code, stdout, err = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run")
    assert code == 0 and err == "" and "--preset quick" in stdout
    # auto is the device's size again, so it is said as no preset is.
    tiny.write_text(TINY.replace("search: {steps: 2}", "search: {steps: 2, preset: auto}"))
    code, _, err = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run")
    assert code == 0 and err.startswith("qra experiment: 2 searches to run name no fixed preset")


@pytest.mark.parametrize(
    ("only", "count"),
    [
        ("lora16", "4 commands to run, in 2 jobs"),
        ("qra@3.5bits", "6 commands to run, in 4 jobs"),
        ("qra", "6 commands to run, in 4 jobs"),
        ("C,lora16", "10 commands to run, in 4 jobs"),
        ("tiny", "16 commands to run, in 8 jobs"),
        ("qra@3.5bits/seed1", "3 commands to run, in 2 jobs"),  # its search, train and eval
        ("lora16/seed0,C", "8 commands to run, in 3 jobs"),
    ],
)
def test_only_restricts_the_run(cli, tiny: Path, tmp_path: Path, only: str, count: str) -> None:
    code, stdout, _ = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run", "--only", only)
    assert code == 0 and stdout.splitlines()[-1] == count


def test_only_lora16_lists_only_its_commands(cli, tiny: Path, tmp_path: Path) -> None:
    _, stdout, _ = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run", "--only", "lora16")
    names = [line.split(": ")[0] for line in stdout.splitlines()[:-1]]
    assert names == ["tiny/lora16/seed0"] * 2 + ["tiny/lora16/seed1"] * 2


def test_only_an_unknown_name_is_one_error_listing_the_known(cli, tiny: Path, tmp_path: Path) -> None:
    code, stdout, err = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run", "--only", "lora16,nope")
    assert (code, stdout) == (2, "")
    assert err == (
        "qra experiment: error: --only 'nope' is no experiment, label or LABEL/seedN here; "
        "known: C, lora16, qra, qra@3.5bits, tiny\n"
    )


@pytest.mark.parametrize(
    ("only", "message"),
    [
        ("nope/seed0", "--only 'nope/seed0' is no experiment, label or LABEL/seedN here; known: C,"),
        ("lora16/seed7", "--only 'lora16/seed7': lora16 has no such seed; its seeds: 0, 1"),
    ],
)
def test_only_a_cell_of_no_label_or_seed_is_one_error(cli, tiny: Path, tmp_path: Path, only, message) -> None:
    code, stdout, err = cli("experiment", tiny, "-o", tmp_path / "out", "--dry-run", "--only", only)
    assert (code, stdout) == (2, "") and err.startswith(f"qra experiment: error: {message}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dry-run", "--report-only"], "give --dry-run or --report-only, not both"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
        (["--gpus", "x"], "--gpus must be GPU indices separated by commas (e.g. 0,1), got 'x'"),
        (["--gpus", "0,a"], "--gpus must be GPU indices separated by commas (e.g. 0,1), got '0,a'"),
        (["--gpus", "0", "--device", "cpu"], "--gpus goes with a GPU; it was given with --device cpu"),
    ],
)
def test_bad_options_are_one_clear_error_and_run_nothing(cli, tiny, tmp_path, args, message) -> None:
    code, stdout, err = cli("experiment", tiny, "-o", tmp_path / "out", *args)
    assert (code, stdout) == (2, "") and err == f"qra experiment: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_bad_files_are_one_clear_error(cli, tiny: Path, tmp_path: Path) -> None:
    code, _, err = cli("experiment", tiny, tiny, "-o", tmp_path / "out", "--dry-run")
    assert code == 2 and err == "qra experiment: error: two experiment files have the name 'tiny'\n"
    (tmp_path / "file").write_text("")
    code, _, err = cli("experiment", tiny, "-o", tmp_path / "file", "--dry-run")
    assert code == 2 and "--output '" in err and "file' is a file; it must be a folder" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("name: tiny", "name: bad\neval: {tasks: [a, b], limt: 3}"))
    code, _, err = cli("experiment", bad, "-o", tmp_path / "out", "--dry-run")
    assert code == 2 and err.startswith(
        f"qra experiment: error: {bad}: lora16 makes a command its verb refuses:"
    )
    assert err.endswith("eval.json: qra: error: unrecognized arguments: --limt (see qra --help)\n")
    code, _, err = cli("experiment", tmp_path / "none.yaml", "-o", tmp_path / "out")
    assert code == 2 and "none.yaml' does not exist" in err
    code, _, err = cli("experiment", tiny, "-o", tmp_path / "out", "--device", "tpu")
    assert code == 2 and "argument --device: invalid choice: 'tpu'" in err


def train_json(avg_bits: float, tokens_per_s: float) -> str:
    """The train.json keys the report reads (train/outputs.summary writes these and more)."""
    memory = {"avg_bits": avg_bits, "avg_rank": 8.0, "predicted_peak": 2**30, "measured_peak": None}
    train = {"memory": memory, "tokens": 5000, "steady_tokens_per_second": tokens_per_s}
    return json.dumps({**train, "train_seconds": 5.0, "final_eval_loss": 2.0})


def eval_json(ppl: float) -> str:
    """eval.json through the real writer: the two perplexity corpora, its meta naming the suite
    (the tasks a cell asks for by default; one it lacks would be scored again with --resume)."""
    corpora = (("ppl_wiki", ppl), ("ppl_lambada", 2 * ppl))
    records = [EvalRecord(task, "ppl", v, None, 100, "/m", "h", "run/adapter", 1.0) for task, v in corpora]
    return eval_to_json(records, {"model": "/m", "tasks": list(GROUPS["suite"])})


@pytest.mark.parametrize("only", [[], ["--only", "C"]])
def test_report_only_tabulates_the_cell_folders_and_runs_nothing(
    cli, tiny: Path, tmp_path: Path, only
) -> None:
    """With --only too: it picks what runs, and the report still has every label's rows."""
    out = tmp_path / "out"
    cells = load(tiny, out).cells
    for cell, ppl, tps in ((cells[0], 10.0, 1000.0), (cells[1], 12.0, 1200.0)):  # lora16 seeds 0 and 1
        write_cell_record(cell, "done")
        (cell.folder / "train").mkdir()
        (cell.folder / "train" / "train.json").write_text(train_json(16.0, tps))
        (cell.folder / "eval.json").write_text(eval_json(ppl))
    write_cell_record(cells[2], "failed", "CUDA out of memory")  # C seed 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, stdout, err = cli("experiment", tiny, "-o", out, "--report-only", *only)
    assert code == 0 and err == ""
    folder = out / "tiny"
    assert stdout.startswith(f"tiny: {folder / 'results.md'}, {folder / 'results.json'}, ")
    text = (folder / "results.md").read_text()
    assert "2 of 6 cells done." in text  # every planned cell counts, run or not
    assert "| lora16 | 2/2 | 16.00 ± 0.00 | 8.0 ± 0.0 | 11.00 ± 1.41 | 22.00 ± 2.83 |" in text
    # Peak memory and the search columns measured nothing and are left out.
    assert "| lora16 | 16.00 ± 0.00 | 1,100 ± 141 | 1.00 |" in text
    assert "- C seed 0: failed (CUDA out of memory)" in text and "- C seed 1: pending" in text
    assert "- qra@3.5bits seed 0: pending" in text  # no folder yet: planned, not run
    # Nothing ran: only the results were added, and the cells' records are as written.
    results = [folder / name for name in ("results.md", "results.json", "metrics.png", "efficiency.png")]
    assert all(path.is_file() for path in results)
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p not in results)
    assert after == before
    assert json.loads((cells[2].folder / "cell.json").read_text())["state"] == "failed"


def test_report_only_without_any_cell_says_so(cli, tiny: Path, tmp_path: Path) -> None:
    code, stdout, _ = cli("experiment", tiny, "-o", tmp_path / "out", "--report-only")
    assert code == 0 and stdout == "tiny: no cell has run yet; no results\n"


FAKE = """\
import json, os, sys
from pathlib import Path

verb, args = sys.argv[1], sys.argv[2:]
out = Path(args[args.index("-o") + 1])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(verb + " " + str(out) + "\\n")
if os.environ.get("FAKE_GPU_LOG"):
    with open(os.environ["FAKE_GPU_LOG"], "a") as log:
        log.write(os.environ.get("CUDA_VISIBLE_DEVICES", "unset") + "\\n")
if os.environ.get("FAKE_FAIL") == str(out):
    sys.exit("fake failure")
files = {"train": (out / "train.json", TRAIN), "eval": (out, EVAL), "plan": (out, "{}")}
path, text = files[verb]
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(text)
"""


@pytest.fixture
def fake_qra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Makes qra experiment run its steps with a fake qra; returns the log of what it ran."""
    script = tmp_path / "fake_qra.py"
    script.write_text(f"TRAIN = {train_json(4.5, 800.0)!r}\nEVAL = {eval_json(20.0)!r}\n" + FAKE)
    command = [sys.executable, "-S", str(script)]

    class FakeRunner(runner.Runner):
        def __init__(self, jobs, **options) -> None:
            super().__init__(jobs, command=command, **options)

    monkeypatch.setattr(runner, "Runner", FakeRunner)
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.01)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "ran.log"))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_GPU_LOG", raising=False)
    return tmp_path / "ran.log"


E2E = "name: e2e\nseeds: [0, 1]\nmethods:\n  - {label: C, plan: {bits: 4, ranks: 8}}\n"
"""One label, two seeds: each cell runs plan, train and eval."""


def ran_e2e(cli, tmp_path: Path) -> tuple[Path, Path]:
    """E2E's file and output folder, after one whole run with the fake qra."""
    config, out = tmp_path / "e2e.yaml", tmp_path / "out"
    config.write_text(E2E)
    assert cli("experiment", config, "-o", out)[0] == 0
    return config, out


def test_a_run_then_its_resumption(cli, fake_qra: Path, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "e2e.yaml"
    config.write_text(E2E)
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", str(out / "e2e" / "C" / "seed1" / "train"))
    code, stdout, err = cli("experiment", config, "-o", out, "--jobs", "2")
    assert code == 1
    assert "5 commands run in " in stdout and "; 1 job done, 1 failed" in stdout
    log = out / "e2e" / "C" / "seed1" / "logs" / "train.log"
    assert "1 job failed (run the same command again to retry them):" in err
    assert f"  e2e/C/seed1: qra train failed (exit code 1); see {log}: " in err and "fake failure" in err
    assert "1 of 2 cells done." in (out / "e2e" / "results.md").read_text()
    assert sorted(fake_qra.read_text().splitlines()) == sorted(
        [f"plan {out}/e2e/C/seed{s}/plan.json" for s in (0, 1)]
        + [f"train {out}/e2e/C/seed{s}/train" for s in (0, 1)]
        + [f"eval {out}/e2e/C/seed0/eval.json"]
    )
    monkeypatch.delenv("FAKE_FAIL")
    code, stdout, err = cli("experiment", config, "-o", out)
    assert code == 0 and "2 commands run in " in stdout and "; 2 jobs done, 0 failed" in stdout
    assert fake_qra.read_text().splitlines()[5:] == [
        f"train {out}/e2e/C/seed1/train",
        f"eval {out}/e2e/C/seed1/eval.json",
    ]
    text = (out / "e2e" / "results.md").read_text()
    assert "2 of 2 cells done." in text and "| C | 2/2 | 4.50 ± 0.00 | 8.0 ± 0.0 | 20.00 ± 0.00 |" in text


@pytest.mark.parametrize(
    ("visible", "gpus", "given"),
    [
        ("5,7", None, {"5", "7"}),  # every GPU this process sees, by the machine's numbers
        ("5,7", "1", {"7"}),  # index 1 of this process's two is the machine's GPU 7
        (None, None, {"0", "1"}),
    ],
)
def test_steps_get_the_gpus_as_this_process_numbers_them(
    cli, fake_qra: Path, tmp_path: Path, monkeypatch, visible, gpus, given
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("FAKE_GPU_LOG", str(tmp_path / "gpus.log"))
    config = tmp_path / "e2e.yaml"
    config.write_text(E2E)
    options = ["--gpus", gpus] if gpus else []
    code, _, err = cli("experiment", config, "-o", tmp_path / "out", "--jobs", "2", *options)
    assert code == 0, err
    assert set((tmp_path / "gpus.log").read_text().split()) == given


def test_gpus_beyond_those_seen_are_one_error(cli, tiny: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, stdout, err = cli("experiment", tiny, "-o", tmp_path / "out", "--gpus", "0", "--dry-run")
    assert (code, stdout) == (2, "")
    assert err == "qra experiment: error: --gpus 0: GPU 0 does not exist; this process sees none\n"


def test_redo_moves_the_named_cells_aside_and_a_run_makes_them_again(
    cli, fake_qra: Path, tmp_path: Path
) -> None:
    # e.g. a label redefined since its cells ran (main.yaml's qra: the paper's search, then the halving one)
    config, out = ran_e2e(cli, tmp_path)
    before = (out / "e2e" / "C" / "seed1" / "eval.json").read_text()
    code, stdout, err = cli("experiment", config, "-o", out, "--redo", "C/seed1", "--report-only")
    assert code == 0 and "1 of 2 cells done." in (out / "e2e" / "results.md").read_text()
    (stamp,) = (out / "archive").iterdir()
    assert f"qra experiment: moved 1 cell to {stamp}" in err
    assert (stamp / "e2e" / "C" / "seed1" / "eval.json").read_text() == before  # kept, not deleted
    assert (
        not (out / "e2e" / "C" / "seed1").exists() and (out / "e2e" / "C" / "seed0" / "eval.json").is_file()
    )
    ran = len(fake_qra.read_text().splitlines())
    code, stdout, err = cli("experiment", config, "-o", out)
    assert code == 0 and "3 commands run in " in stdout
    assert [line.split()[0] for line in fake_qra.read_text().splitlines()[ran:]] == ["plan", "train", "eval"]
    assert "2 of 2 cells done." in (out / "e2e" / "results.md").read_text()
    code, _, err = cli("experiment", config, "-o", out, "--redo", "C", "--report-only")  # the whole label
    assert code == 0 and "moved 2 cells to " in err and not (out / "e2e" / "C").exists(), err
    assert len(list((out / "archive").iterdir())) == 2  # a second archive, even within the same second
    assert "0 of 2 cells done." in (out / "e2e" / "results.md").read_text()


def test_an_eval_on_a_fine_tune_copied_without_its_adapter_is_one_error_before_anything_runs(
    cli, fake_qra: Path, tmp_path: Path
) -> None:
    # The GPU runs bring cells back with their results only; a task added to the file since (the
    # pilot's MMLU) would need the adapter again, and qra eval would refuse each cell on the GPU.
    config, out = ran_e2e(cli, tmp_path)
    run = out / "e2e" / "C" / "seed1" / "train"
    layers = {str(b): {"bits": 4, "rank": 8} for b in range(2)}
    (run / "plan.json").write_text(json.dumps({"format": 1, "layers": layers}))
    (out / "e2e" / "C" / "seed1" / "eval.json").unlink()
    ran = fake_qra.read_text()
    for extra in ([], ["--dry-run"]):
        code, stdout, err = cli("experiment", config, "-o", out, *extra)
        assert (code, stdout) == (2, "") and err == (
            "qra experiment: error: 1 cell to evaluate on a fine-tune whose adapter is not here (copied "
            "with its results only): e2e/C/seed1; fine-tune them again with --redo C\n"
        )
    assert fake_qra.read_text() == ran and cli("experiment", config, "-o", out, "--report-only")[0] == 0
    (run / "adapter").mkdir()  # the weights are here after all: only the evaluation runs
    code, stdout, err = cli("experiment", config, "-o", out)
    assert code == 0 and "1 command run in " in stdout, err
    assert fake_qra.read_text()[len(ran) :].split() == [
        "eval",
        str(out / "e2e" / "C" / "seed1" / "eval.json"),
    ]
    (run / "adapter").rmdir()
    (out / "e2e" / "C" / "seed1" / "eval.json").unlink()
    plain = {str(b): {"bits": 4, "rank": 0} for b in range(2)}  # a plan without adapters needs none
    (run / "plan.json").write_text(json.dumps({"format": 1, "layers": plain}))
    assert cli("experiment", config, "-o", out, "--dry-run")[0] == 0
    (run / "plan.json").write_text(json.dumps({"format": 1, "layers": layers}))
    code, stdout, err = cli("experiment", config, "-o", out, "--redo", "C/seed1")  # made again
    assert code == 0 and "moved 1 cell to " in err and "3 commands run in " in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redo", "D"], "--redo 'D' is no experiment, label or LABEL/seedN here; known: C, e2e"),
        (["--redo", "C/seed5"], "--redo 'C/seed5': C has no such seed; its seeds: 0, 1"),
        (["--redo", "C", "--dry-run"], "--redo moves cells; not with --dry-run"),
    ],
)
def test_bad_redo_is_one_error_and_moves_nothing(cli, fake_qra: Path, tmp_path: Path, argv, message) -> None:
    config, out = ran_e2e(cli, tmp_path)
    code, _, err = cli("experiment", config, "-o", out, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (out / "archive").exists()


TWINS = "name: twins\nseeds: [0]\nmethods:\n  - {label: A, plan: {bits: 4, ranks: 8}}\n"
TWINS += "  - {label: B, plan: {bits: 4, ranks: 8}}\n"
"""Two labels of one plan, seed and recipe: B would fine-tune exactly what A did."""


@pytest.mark.parametrize("no_reuse", [False, True])
def test_a_cell_takes_a_done_twins_results_unless_no_reuse(cli, fake_qra, tmp_path, no_reuse) -> None:
    config, out = tmp_path / "twins.yaml", tmp_path / "out"
    config.write_text(TWINS)
    code, stdout, err = cli("experiment", config, "-o", out, *(["--no-reuse"] if no_reuse else []))
    assert code == 0, err
    ran = fake_qra.read_text().splitlines()
    b_steps = [line.split()[0] for line in ran if "/B/" in line]
    b_record = json.loads((out / "twins" / "B" / "seed0" / "cell.json").read_text())
    text = (out / "twins" / "results.md").read_text()
    assert "2 of 2 cells done." in text
    if no_reuse:
        assert b_steps == ["plan", "train", "eval"] and "reused_from" not in b_record
        assert "| B | 1/1 |" in text and "Reused" not in text
    else:
        assert b_steps == ["plan"] and "4 commands run in " in stdout  # its plan decides; no train, eval
        assert b_record["reused_from"] == "twins/A/seed0" and b_record["state"] == "done"
        assert "reused twins/B/seed0: same plan, seed and options as twins/A/seed0" in stdout + err
        assert "| B | 1/1 (1 reused) |" in text and "- B seed 0: same plan and seed as twins/A/seed0" in text


def test_a_stamp_taken_gets_a_suffix(tmp_path: Path) -> None:
    from qradaptor.experiment.archive import ARCHIVE, fresh_stamp

    assert fresh_stamp(tmp_path, "20261206T184913Z") == "20261206T184913Z"
    (tmp_path / ARCHIVE / "20261206T184913Z").mkdir(parents=True)
    assert fresh_stamp(tmp_path, "20261206T184913Z") == "20261206T184913Z-2"
    (tmp_path / ARCHIVE / "20261206T184913Z-2").mkdir()
    assert fresh_stamp(tmp_path, "20261206T184913Z") == "20261206T184913Z-3"
