"""The import layers of docs/ARCHITECTURE.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the package found first in ``src``, with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_every_contract_is_kept() -> None:
    pytest.importorskip("importlinter")
    done = _lint(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 kept, 0 broken" in done.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    pytest.importorskip("importlinter")
    copy = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src" / "qradaptor", copy / "qradaptor", ignore=ignore)
    knapsack = copy / "qradaptor" / "search" / "knapsack.py"
    # The exact allocator reaching for the model loader: what the third contract forbids.
    knapsack.write_text(knapsack.read_text() + "\nfrom qradaptor.models.loading import load_model  # noqa\n")
    done = _lint(copy)
    assert done.returncode != 0
    assert "The search's algorithm never touches a model" in done.stdout and "BROKEN" in done.stdout
    assert "qradaptor.search.knapsack -> qradaptor.models.loading" in done.stdout
