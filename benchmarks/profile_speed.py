"""Where the time of ``qra profile`` goes on the embedded SmolLM2-135M, before and after.

Times, side by side in one run on the same machine:
  * the weight fits of all 210 block linears at each bit-width: the HQQ fit as it was before
    commit 153622a (``_hqq_fit_before``, kept here verbatim) against ``quantizer._hqq_fit``,
    checking the two give identical scales and zeros; and the RTN fit;
  * the 30 per-block forwards of one bit-width for each calibration size N x T: every forward
    from the embedding (``reuse_prefix=False``, as before) against replaying the recorded
    outputs of the blocks before the scored one (``reuse_prefix=True``), fits taken from a
    cache so only forward passes are timed;
and prints a markdown table, then the estimated profile at bits 2,3,4,8 for each N x T:
fits + 4 x the 30 forwards.

    python benchmarks/profile_speed.py                      # windows of 256 tokens: 1, 4
    python benchmarks/profile_speed.py --windows 1,2,4,8 --seq-len 256 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from qradaptor.build import _dense_weight
from qradaptor.data import load_texts, pack_texts
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.quant.cache import QuantCache
from qradaptor.quant.quantizer import _hqq_fit, _minmax_fit
from qradaptor.sensitivity import profile_sensitivity

BITS = (2, 3, 4, 8)


def _load_reference():
    """``hqq_fit_reference`` of tests/quant/test_quantizer.py: the fit before 153622a."""
    import importlib.util

    path = Path(__file__).parents[1] / "tests" / "quant" / "test_quantizer.py"
    spec = importlib.util.spec_from_file_location("test_quantizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hqq_fit_reference


_hqq_fit_before = _load_reference()


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    """Runs the timings and prints the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=_ints, default=[1, 4], help="calibration window counts")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(None, dtype=torch.float32)
    model, structure = loaded.model, inspect_model(loaded.model)
    weights = {
        structure.module_path(block, info.name): _dense_weight(
            model.get_submodule(structure.module_path(block, info.name)), info
        )
        for block in range(structure.num_blocks)
        for info in structure.linears
    }
    rows: list[tuple[str, float, float]] = []
    fits: dict[str, float] = {"before": 0.0, "after": 0.0, "rtn": 0.0}
    for bits in BITS:
        qmax = (1 << bits) - 1
        before = after = rtn = 0.0
        identical = 0
        for w in weights.values():
            groups = w.float().reshape(-1, 64)  # (rows * cols / 64, 64)
            # Alternate the two per weight, so load from other processes hits both alike.
            t_before, old = _timed(lambda g=groups, m=qmax: _hqq_fit_before(g, m))
            t_after, new = _timed(lambda g=groups, m=qmax: _hqq_fit(g, m))
            t_rtn, _ = _timed(lambda g=groups, m=qmax: _minmax_fit(g, m))
            before, after, rtn = before + t_before, after + t_after, rtn + t_rtn
            identical += all(torch.equal(a, b) for a, b in zip(old, new, strict=True))  # type: ignore[arg-type]
        rows.append((f"hqq fit {bits}-bit, {len(weights)} linears ({identical} identical)", before, after))
        rows.append((f"rtn fit {bits}-bit, {len(weights)} linears", rtn, rtn))
        fits["before"] += before
        fits["after"] += after
        fits["rtn"] += rtn

    cache = QuantCache()  # 8-bit RTN fits, so the forward timings below include no fitting
    for path, w in weights.items():
        cache.get(path, w, 8, 64, "rtn")
    texts = load_texts(None)
    forwards: dict[int, tuple[float, float]] = {}
    for n in args.windows:
        calibration = pack_texts(texts, loaded.tokenizer, args.seq_len, num_sequences=n, seed=0)  # (N, T)
        timings = []
        for reuse in (False, True):
            seconds, _ = _timed(
                lambda c=calibration, r=reuse: profile_sensitivity(
                    model, c, bits=(8,), quant_method="rtn", cache=cache, progress=False, reuse_prefix=r
                )
            )
            timings.append(seconds)
        forwards[n] = (timings[0], timings[1])
        rows.append((f"30 block forwards, {n} x {args.seq_len} tokens", *timings))

    print(
        f"\nSmolLM2-135M (embedded), {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}\n"
    )
    print("| step | before (s) | after (s) | before / after |\n|---|---:|---:|---:|")
    for name, before, after in rows:
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f} |")
    print("\nEstimated profile at bits 2,3,4,8 (fits + 4 x 30 forwards); after with hqq and with rtn\n")
    print("| N x T | before, hqq (s) | after, hqq (s) | after, rtn (s) | before / after (hqq) |")
    print("|---|---:|---:|---:|---:|")
    for n, (full, replay) in forwards.items():
        before, after = fits["before"] + 4 * full, fits["after"] + 4 * replay
        print(
            f"| {n} x {args.seq_len} | {before:.0f} | {after:.0f} | {fits['rtn'] + 4 * replay:.0f} "
            f"| {before / after:.2f} |"
        )


if __name__ == "__main__":
    main()
