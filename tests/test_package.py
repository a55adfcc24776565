from __future__ import annotations

import subprocess
import sys

import qradaptor


def test_public_api_resolves() -> None:
    for name in qradaptor.__all__:
        assert getattr(qradaptor, name) is not None


def test_import_is_light_and_does_not_initialise_cuda() -> None:
    code = (
        "import sys, qradaptor, qradaptor.plan; "
        "print('torch' in sys.modules and sys.modules['torch'].cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", "import sys, qradaptor; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
