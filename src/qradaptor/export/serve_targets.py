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
"""--quant-method when not given, but for --serve (``Plan``'s and ``SearchConfig``'s)."""
VLLM_QUANT_METHOD = "symmetric"
"""--quant-method of a --serve vllm plan when not given: compressed-tensors holds a symmetric
fit's codes and scales unchanged, while an hqq/rtn fit's real-valued zeros are re-quantised to
integers on export (+5.6% ppl_wiki at uniform 4 bits, and 32.43 served against 31.68 for a
symmetric fit of 0.25 bit a weight less; docs/EXPORT.md)."""


def check_serve_target(serve: str) -> None:
    """Raises ValueError naming ``SERVE_TARGETS`` unless ``serve`` is one of them."""
    if serve not in SERVE_TARGETS:
        raise ValueError(f"--serve must be one of {', '.join(SERVE_TARGETS)}, got {serve!r}")


def quantiser(
    serve: str | None, group_size: int | None, quant_method: str | None, double_quant: bool = False
) -> tuple[int, str]:
    """(group size, quant method) of a profile, knapsack or search kept to ``serve``: those
    given (None: not given), else llama.cpp's for --serve llama.cpp (32, symmetric), else
    ``DEFAULT_GROUP_SIZE`` and, for --serve vllm ``VLLM_QUANT_METHOD``, otherwise
    ``DEFAULT_QUANT_METHOD``.

    Raises:
        ValueError: with --serve llama.cpp, a group size, quantiser or --double-quant that
            GGUF would re-quantise (``llama_cpp_constraints.llama_cpp_choices``); with --serve
            vllm, --double-quant (compressed-tensors stores 16-bit scales).
    """
    if serve == "llama.cpp":
        from qradaptor.export.llama_cpp_constraints import llama_cpp_choices

        _, group_size, quant_method = llama_cpp_choices(None, group_size, quant_method, double_quant)
    if serve == "vllm":
        if double_quant:
            raise ValueError(
                "--double-quant with --serve vllm: compressed-tensors stores each group's scale "
                "(and zero) at 16 bits, so 8-bit scales and zeros would not survive the export; "
                "drop --double-quant"
            )
        quant_method = VLLM_QUANT_METHOD if quant_method is None else quant_method
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
