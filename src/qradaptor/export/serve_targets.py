"""What ``--serve`` takes: the engines a knapsack or a search can keep its plans to.

One tuple for ``qra plan``, ``qra search`` (``recipes.search_options.Serve`` is its copy as a
type; a test checks they agree) and the library. Each engine's rules are a module of their own:
``vllm_constraints`` (compressed-tensors, fused q/k/v and gate/up) and ``llama_cpp_constraints``
(GGUF's Q4_0/Q5_0/Q8_0 holding symmetric codes unchanged).
"""

from __future__ import annotations

SERVE_TARGETS: tuple[str, ...] = ("vllm", "llama.cpp")
"""What ``--serve`` takes."""
DEFAULT_GROUP_SIZE = 64
"""--group-size when not given, but for --serve llama.cpp (``Plan``'s and ``SearchConfig``'s)."""
DEFAULT_QUANT_METHOD = "hqq"
"""--quant-method when not given, but for --serve llama.cpp (``Plan``'s and ``SearchConfig``'s)."""


def check_serve_target(serve: str) -> None:
    """Raises ValueError naming ``SERVE_TARGETS`` unless ``serve`` is one of them."""
    if serve not in SERVE_TARGETS:
        raise ValueError(f"--serve must be one of {', '.join(SERVE_TARGETS)}, got {serve!r}")


def quantiser(
    serve: str | None, group_size: int | None, quant_method: str | None, double_quant: bool = False
) -> tuple[int, str]:
    """(group size, quant method) of a profile, knapsack or search kept to ``serve``: those
    given (None: not given), else llama.cpp's for --serve llama.cpp (32, symmetric), else
    ``DEFAULT_GROUP_SIZE`` and ``DEFAULT_QUANT_METHOD``.

    Raises:
        ValueError: with --serve llama.cpp, a group size, quantiser or --double-quant that
            GGUF would re-quantise (``llama_cpp_constraints.llama_cpp_choices``).
    """
    if serve == "llama.cpp":
        from qradaptor.export.llama_cpp_constraints import llama_cpp_choices

        _, group_size, quant_method = llama_cpp_choices(None, group_size, quant_method, double_quant)
    return (
        DEFAULT_GROUP_SIZE if group_size is None else group_size,
        DEFAULT_QUANT_METHOD if quant_method is None else quant_method,
    )


def served_bits(
    serve: str,
    bits: tuple[int, ...] | None,
    group_size: int | None,
    quant_method: str | None,
    double_quant: bool = False,
) -> tuple[int, ...]:
    """The bit choices of a profile, knapsack or search kept to ``serve``: ``bits`` (None: not
    given) checked against what the engine serves, else the engine's own (16 included).

    Raises:
        ValueError: an unknown ``serve``, bits the engine would re-quantise, or with --serve
            llama.cpp a group size, quantiser or --double-quant it would
            (``llama_cpp_constraints.llama_cpp_choices``; ``vllm_constraints.vllm_bits``).
    """
    check_serve_target(serve)
    if serve == "llama.cpp":
        from qradaptor.export.llama_cpp_constraints import llama_cpp_choices

        return llama_cpp_choices(bits, group_size, quant_method, double_quant)[0]
    from qradaptor.export.vllm_constraints import vllm_bits

    return vllm_bits(bits)
