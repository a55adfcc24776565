from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qradaptor


def test_public_api_resolves() -> None:
    for name in qradaptor.__all__:
        assert getattr(qradaptor, name) is not None


def test_import_is_light_and_does_not_initialise_cuda() -> None:
    code = (
        "import sys, qradaptor, qradaptor.plan; "
        "print('torch' in sys.modules and sys.modules['torch'].cuda.is_initialized())"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys, qradaptor; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(
    os.environ.get("CI") != "true", reason="checks an environment made by scripts/install.sh (CI=true)"
)
def test_constraints_pin_every_installed_dependency_at_its_installed_version() -> None:
    """install.sh installs with constraints.txt: a dependency missing there floats to new releases.

    Compared with what CI installed, so a fresh machine that runs install.sh reproduces CI.
    """
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("freeze", root / "scripts" / "freeze_constraints.py")
    freeze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(freeze)
    pinned = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[name] = version
    installed = freeze.closure("qradaptor", freeze.EXTRAS)
    assert {"transformers", "accelerate", "numpy", "peft", "optuna"} <= set(installed)
    differ = {
        name: (pinned.get(name), version)
        for name, version in installed.items()
        if pinned.get(name) != version
    }
    assert not differ, (
        f"constraints.txt (pinned, installed): {differ}; refresh with scripts/freeze_constraints.py"
    )
