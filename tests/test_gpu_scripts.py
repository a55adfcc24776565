"""scripts/gpu/: the GPU recipe runs where nothing can be fixed mid-session (30 minutes of device
time, no network), so what can be checked here is: every script parses, and every batch of
driver.sh names cells that configs/allocation.yaml has."""

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


@pytest.mark.parametrize("batch", driver_batches())
def test_every_batch_names_cells_of_the_allocation_experiment(cli, tmp_path: Path, batch: str) -> None:
    config = ROOT / "configs" / "allocation.yaml"
    code, stdout, err = cli("experiment", config, "-o", tmp_path / "out", "--dry-run", "--only", batch)
    assert code == 0, err
    assert "commands to run" in stdout.splitlines()[-1]
