"""What ``--serve`` takes: the engines a knapsack or a search can keep its plans to.

One tuple for ``qra plan``, ``qra search`` (``recipes.search_options.Serve`` is its copy as a
type; a test checks they agree) and the library. Each engine's rules are a module of their own:
``vllm_constraints`` (compressed-tensors, fused q/k/v and gate/up) and ``llama_cpp_constraints``
(GGUF's Q4_0/Q5_0/Q8_0 holding symmetric codes unchanged).
"""

from __future__ import annotations

SERVE_TARGETS: tuple[str, ...] = ("vllm", "llama.cpp")
"""What ``--serve`` takes."""


def check_serve_target(serve: str) -> None:
    """Raises ValueError naming ``SERVE_TARGETS`` unless ``serve`` is one of them."""
    if serve not in SERVE_TARGETS:
        raise ValueError(f"--serve must be one of {', '.join(SERVE_TARGETS)}, got {serve!r}")
