"""scripts/gpu/: the GPU recipe runs where nothing can be fixed mid-session (30 minutes of device
time, no network), so what can be checked here is: every script parses, and every batch of
driver.sh names configs that exist and, where it has --only, cells that they have."""

from __future__ import annotations

import re
import shutil
import subprocess
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
