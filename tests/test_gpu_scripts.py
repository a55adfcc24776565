"""scripts/gpu/: the GPU recipe runs where nothing can be fixed mid-session (30 minutes of device
time, no network), so what can be checked here is: every script parses, and every batch of
driver.sh names configs that exist and, where it has --only, cells that they have; and wait.sh,
run against a stand-in for the machine's /root, brings back what it should, even when killed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts" / "gpu").glob("*.sh"))


def driver_batches() -> list[str]:
    text = (ROOT / "scripts" / "gpu" / "driver.sh").read_text()
    block = re.search(r"^batches=\((.*?)^\)", text, re.S | re.M)
    assert block is not None, "driver.sh has no batches=( ... ) array"
    return re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_driver_has_batches() -> None:
    assert len(driver_batches()) >= 1


def test_a_batchs_own_options_come_after_the_drivers() -> None:
    # argparse keeps the last --jobs, so an entry's --jobs 1 wins only when the entry comes last.
    text = (ROOT / "scripts" / "gpu" / "driver.sh").read_text()
    lines = [x for x in text.splitlines() if not x.lstrip().startswith("#")]
    line = next(x for x in lines if "qradaptor experiment" in x)
    assert line.index('--jobs "$jobs"') < line.index("$batch"), line


@pytest.mark.parametrize("batch", driver_batches())
def test_every_batch_names_configs_and_cells_that_exist(cli, tmp_path: Path, batch: str) -> None:
    words = batch.split()
    flags = [i for i, w in enumerate(words) if w.startswith("--")]
    configs = words[: flags[0]] if flags else words
    assert configs and all((ROOT / c).is_file() for c in configs), f"{batch!r}: configs first"
    options = words[len(configs) :]
    pairs = dict(zip(options[::2], options[1::2], strict=True)) if len(options) % 2 == 0 else None
    # --jobs N (a batch that must run alone, e.g. Table 4's one run per GPU) wins over the
    # driver's own, which comes before the entry on its command line.
    assert pairs is not None and set(pairs) <= {"--only", "--jobs"}, (
        f"{batch!r}: --only LABELS, --jobs N, or nothing"
    )
    assert "--jobs" not in pairs or pairs["--jobs"].isdigit(), f"{batch!r}: --jobs takes a count"
    argv = [ROOT / c for c in configs]
    code, stdout, err = cli("experiment", *argv, "-o", tmp_path / "out", "--dry-run", *options)
    assert code == 0, err
    assert "commands to run" in stdout.splitlines()[-1]


def _gpu_root(tmp_path: Path) -> tuple[Path, Path]:
    """A machine's /root after go.sh: start.marker, then a finished cell (train.json and its
    adapter weights) and the driver's log; and an empty $OUT."""
    root, out = tmp_path / "root", tmp_path / "out"
    cell = root / "repo" / "docs" / "results" / "paper" / "pilot" / "A" / "seed0"
    (cell / "train").mkdir(parents=True)
    out.mkdir()
    old = cell / "plan.json"
    old.write_text("{}")  # written before go.sh: not this run's
    (root / "start.marker").write_text("")
    past = time.time() - 60
    os.utime(old, (past - 60, past - 60))
    os.utime(root / "start.marker", (past, past))
    (cell / "train" / "train.json").write_text("{}")
    (cell / "train" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (root / "driver.log").write_text("=== batch configs/pilot.yaml\n")
    return root, out


def _wait_for_finished_run(root: Path, out: Path) -> None:
    """wait.sh where driver.sh and scale.sh have both finished: it collects at once and exits 0."""
    (root / "driver.done").write_text("")
    (root / "scale.done").write_text("")
    env = {"PATH": "/usr/bin:/bin", "GPU_ROOT": str(root), "OUT": str(out)}
    script = ROOT / "scripts" / "gpu" / "wait.sh"
    result = subprocess.run(["bash", str(script), "30"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def _archived(out: Path) -> list[str]:
    listing = subprocess.run(["tar", "-tJf", str(out / "runs.tar.xz")], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    return sorted(listing.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xz") is None, reason="needs bash, xz")
def test_wait_brings_back_the_runs_new_small_files(tmp_path: Path) -> None:
    root, out = _gpu_root(tmp_path)
    _wait_for_finished_run(root, out)
    assert _archived(out) == ["docs/results/paper/pilot/A/seed0/train/train.json"]  # no weights, nothing old
    assert (out / "driver.log").read_text().startswith("=== batch")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xz") is None, reason="needs bash, xz")
def test_wait_leaves_out_hidden_temporaries_and_locks(tmp_path: Path) -> None:
    # A run writes each file as a hidden temporary, then renames it; one that find lists and
    # tar no longer finds failed a whole refresh on 2026-12-07. None of them is a result.
    root, out = _gpu_root(tmp_path)
    cell = root / "repo" / "docs" / "results" / "paper" / "pilot" / "A" / "seed0"
    (cell / "train" / ".qra.lock").write_text("")
    (cell / ".eval.json.k2x9.json").write_text("{}")
    (cell / "train" / ".adapter.tmp-3fq1").mkdir()
    (cell / "train" / ".adapter.tmp-3fq1" / "adapter_config.json").write_text("{}")
    _wait_for_finished_run(root, out)
    assert _archived(out) == ["docs/results/paper/pilot/A/seed0/train/train.json"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xz") is None, reason="needs bash, xz")
def test_a_wait_killed_at_its_time_limit_still_brings_back_what_had_finished(tmp_path: Path) -> None:
    # On 2026-12-07 `setup.sh && go.sh 585` ran past its call's 595 s and was killed before
    # wait.sh wrote anything: now $OUT is refreshed during the wait (every 120 s; 1 s here).
    root, out = _gpu_root(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "GPU_ROOT": str(root), "OUT": str(out), "WAIT_REFRESH_S": "1"}
    script = ROOT / "scripts" / "gpu" / "wait.sh"
    process = subprocess.Popen(["bash", str(script), "600"], env=env, start_new_session=True)
    try:
        # Killed once the first refresh is there (a loaded machine may take seconds to write it),
        # still waiting: the run has not finished.
        deadline = time.monotonic() + 60
        while not (out / "runs.tar.xz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a refresh or two more, each written aside and renamed
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # The last whole refresh is there (a kill during a later one leaves that one's .runs.tar.xz
    # beside it, never a half-written runs.tar.xz).
    assert _archived(out) == ["docs/results/paper/pilot/A/seed0/train/train.json"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xz") is None, reason="needs bash, xz")
def test_wait_without_a_run_says_so_and_leaves_no_half_written_archive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "GPU_ROOT": str(tmp_path / "root"), "OUT": str(out)}
    script = ROOT / "scripts" / "gpu" / "wait.sh"
    result = subprocess.run(["bash", str(script), "5"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "no run to wait for: go.sh writes" in result.stderr
    assert list(out.iterdir()) == []
    # A run whose checkout is gone (start.marker, no repo/): the archives fail, and their
    # temporary files go with them.
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "start.marker").write_text("")
    (tmp_path / "root" / "driver.done").write_text("")
    (tmp_path / "root" / "scale.done").write_text("")
    subprocess.run(["bash", str(script), "5"], capture_output=True, text=True, env=env, timeout=30)
    assert not (out / ".runs.tar.xz").exists() and not (out / ".scale.tar.xz").exists()
