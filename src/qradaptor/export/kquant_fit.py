"""Scale fits of llama.cpp's K-quants, as pure array functions over many sub-blocks at once.

Each function fits one scale (and for the affine types one minimum) per row of ``x``: a row is
one sub-block of 16 or 32 weights of a 256-weight super-block. They follow the reference
(non-imatrix) fits in ggml's ``ggml-quants.c`` that ``llama-quantize`` uses without an
importance matrix, vectorised across rows instead of looping over them:

    fit_affine      make_qkx2_quants   x ~ scale * L - the_min,  L in [0, nmax]   (Q2_K, Q4_K, Q5_K)
    fit_symmetric3  make_q3_quants     x ~ scale * L,  L in [-nmax, nmax - 1]     (Q3_K)
    fit_symmetric   make_qx_quants     the same, by a scan of 18 trial scales     (Q6_K)

The two scale searches (``fit_affine``, ``fit_symmetric``) run through one driver,
``keep_best``: each row keeps a trial grid where it wins, trials in ggml's order. All
arithmetic is float32 as in ggml, rounding is to nearest with ties to even (``np.rint``,
ggml's ``nearest_int``), and every sum over a sub-block is taken one term at a time from the
first (``ordered_sum``), as ggml's loops do: numpy's pairwise sums round differently, which
changed a fit in about 1% of super-blocks. So the fits give ggml's bytes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

F32 = np.float32
ZERO_GROUP = 1e-15
"""A sub-block whose largest magnitude is below this is all zero (ggml's GROUP_MAX_EPS)."""


def nearest(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties to even (ggml's ``nearest_int``), as int32."""
    return np.rint(x).astype(np.int32)


def ordered_sum(x: np.ndarray) -> np.ndarray:
    """Float32 sum over the last axis in ggml's loop order, ``((x0 + x1) + x2) + ...``.

    ``np.add.accumulate`` adds left to right by definition; ``np.sum`` sums pairwise.
    """
    return np.add.accumulate(x.astype(F32, copy=False), axis=-1, dtype=F32)[..., -1]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den != 0, else 0 (a degenerate row's value is masked out by its caller)."""
    out = np.zeros_like(num, dtype=F32)
    np.divide(num, den, out=out, where=den != 0)
    return out


State = tuple[np.ndarray, ...]
"""A fit's running state: arrays whose first axis is the row (sub-block), e.g. (codes, scale, error)."""


def keep_best(
    start: State, trials: Iterable[int], trial: Callable[[State, int], tuple[np.ndarray, State]]
) -> State:
    """The search every reference fit runs: trials in ggml's order, each kept row by row where better.

    ggml loops over one sub-block at a time and overwrites its best codes and scale when a trial
    wins; here all rows run at once and each takes the trial's state where it won.

    Args:
        start: the state before any trial.
        trials: the trial indices, in order.
        trial: (the best state so far, index) -> (rows where the trial wins, the trial's state).

    Returns:
        The best state of each row.
    """
    best = start
    for index in trials:
        wins, state = trial(best, index)
        best = tuple(
            np.where(wins.reshape(-1, *[1] * (old.ndim - 1)), new, old)
            for old, new in zip(best, state, strict=True)
        )
    return best


def fit_affine(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, steps: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, minimum and codes of ``x ~ scale * L - the_min`` minimising a weighted error.

    Starts from the min-max grid (the minimum clamped to at most 0), then tries ``steps + 1``
    grids of ``nmax + rmin + rdelta * i`` steps over the range, each refitted by weighted least
    squares for scale and minimum; a trial replaces the best so far when its weighted error
    (absolute with ``use_mad``, else squared) is lower. The range of later trials starts at the
    best minimum so far, as in ggml.

    Args:
        x: (rows, n) float32 weights of one sub-block per row.
        weights: (rows, n) float32 importance of each weight.
        nmax: the largest code (3, 15 or 31).
        rmin, rdelta, steps: the trial grid (ggml's values per type).
        use_mad: weigh absolute rather than squared errors.

    Returns:
        (scale (rows,), the_min (rows,) >= 0, codes (rows, n) int32 in [0, nmax]).
    """
    x, w = x.astype(F32), weights.astype(F32)
    lo = np.minimum(x.min(axis=1), F32(0))  # (rows,)
    hi = x.max(axis=1)
    sum_w, sum_x = ordered_sum(w), ordered_sum(w * x)
    flat = hi == lo  # all equal and <= 0: every code 0, the minimum alone gives the value

    def error(scale: np.ndarray, low: np.ndarray, codes: np.ndarray) -> np.ndarray:
        diff = scale[:, None] * codes + low[:, None] - x
        return ordered_sum(w * (np.abs(diff) if use_mad else diff * diff))

    def trial(best: State, step: int) -> tuple[np.ndarray, State]:
        _, _, low, best_error = best
        steps_over_range = (F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)  # float32, in ggml's order
        iscale = _safe_div(np.full_like(hi, steps_over_range), hi - low)
        codes = np.clip(nearest(iscale[:, None] * (x - low[:, None])), 0, nmax)
        tl = codes.astype(F32)
        sum_l, sum_l2, sum_xl = ordered_sum(w * tl), ordered_sum(w * tl * tl), ordered_sum(w * tl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        scale = _safe_div(sum_w * sum_xl - sum_x * sum_l, det)
        the_min = _safe_div(sum_l2 * sum_x - sum_l * sum_xl, det)
        positive = the_min > 0  # the offset may only lower the grid: refit the scale alone
        scale = np.where(positive, _safe_div(sum_xl, sum_l2), scale)
        the_min = np.where(positive, F32(0), the_min)
        trial_error = error(scale, the_min, tl)
        return (det > 0) & (trial_error < best_error) & ~flat, (codes, scale, the_min, trial_error)

    iscale = _safe_div(np.full_like(hi, nmax), hi - lo)
    scale = _safe_div(np.ones_like(hi), iscale)
    codes = np.clip(nearest(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    start = (codes, scale, lo, error(scale, lo, codes.astype(F32)))
    codes, scale, lo, _ = keep_best(start, range(steps + 1), trial)
    scale = np.where(flat, F32(0), scale)
    codes = np.where(flat[:, None], 0, codes)
    return scale.astype(F32), (-lo).astype(F32), codes


def _signed_start(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the signed weight of largest magnitude per row, rows that are all zero)."""
    at = np.abs(x).argmax(axis=1)
    peak = np.take_along_axis(x, at[:, None], axis=1)[:, 0]
    return peak, np.abs(peak) < ZERO_GROUP


def fit_symmetric3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and codes of ``x ~ scale * (L - nmax)`` by coordinate descent on x**2-weighted error.

    The grid starts with the weight of largest magnitude at code -nmax, then up to five sweeps
    move each code in turn to its best value given the others, keeping a move only if it raises
    (sum w x l)**2 / (sum w l**2) (the fitted scale's error reduction). A sweep that changes
    nothing leaves the state as it was, so later sweeps are no-ops, as ggml's early exit.

    Args:
        x: (rows, n) float32.
        nmax: 4 for Q3_K's codes in [-4, 3].

    Returns:
        (scale (rows,), codes (rows, n) int32 in [0, 2 * nmax - 1]; all 0 for an all-zero row).
    """
    x = x.astype(F32)
    peak, zero = _signed_start(x)
    iscale = _safe_div(np.full_like(peak, -nmax), peak)
    levels = np.clip(nearest(iscale[:, None] * x), -nmax, nmax - 1).astype(F32)  # (rows, n)
    w = x * x
    sum_lx, sum_l2 = ordered_sum(w * x * levels), ordered_sum(w * levels * levels)
    for _ in range(5):
        for i in range(x.shape[1]):
            xi, wi, li = x[:, i], w[:, i], levels[:, i]
            slx = sum_lx - wi * xi * li
            sl2 = sum_l2 - wi * li * li
            new = np.clip(nearest(_safe_div(xi * sl2, slx)), -nmax, nmax - 1).astype(F32)
            nslx, nsl2 = slx + wi * xi * new, sl2 + wi * new * new
            take = (
                (slx > 0)
                & (new != levels[:, i])
                & (nsl2 > 0)
                & (nslx * nslx * sum_l2 > sum_lx * sum_lx * nsl2)
            )
            levels[:, i] = np.where(take, new, levels[:, i])
            sum_lx, sum_l2 = np.where(take, nslx, sum_lx), np.where(take, nsl2, sum_l2)
    scale = np.where(zero, F32(0), _safe_div(sum_lx, sum_l2))
    return scale.astype(F32), np.where(zero[:, None], 0, levels.astype(np.int32) + nmax)


def fit_symmetric(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and codes of ``x ~ scale * (L - nmax)``, the best of 19 trial grids (x**2-weighted).

    Trial grids put the weight of largest magnitude at code -(nmax + 0.1 i), i in -9..9; each
    is scored by its least-squares scale's error reduction (sum w x l)**2 / (sum w l**2) with
    w = x**2, and the best one's codes and scale are kept (ggml's ``make_qx_quants`` with
    ``rmse_type`` 1).

    Args:
        x: (rows, n) float32.
        nmax: 32 for Q6_K's codes in [-32, 31].

    Returns:
        (scale (rows,), codes (rows, n) int32 in [0, 2 * nmax - 1]; all 0 for an all-zero row).
    """
    x = x.astype(F32)
    peak, zero = _signed_start(x)
    w = x * x

    def grid(step: int) -> State:
        """The grid with the peak at code -(nmax + 0.1 step): (codes, its least-squares scale,
        sum w x l, sum w l**2, and the error reduction scale * sum w x l)."""
        iscale = _safe_div(np.full_like(peak, -(nmax + F32(0.1) * step) if step else -nmax), peak)
        levels = np.clip(nearest(iscale[:, None] * x), -nmax, nmax - 1)
        lf = levels.astype(F32)
        sum_lx, sum_l2 = ordered_sum(w * x * lf), ordered_sum(w * lf * lf)
        scale = _safe_div(sum_lx, sum_l2)
        return levels, scale, sum_lx, sum_l2, scale * sum_lx

    def trial(best: State, step: int) -> tuple[np.ndarray, State]:
        state = grid(step)
        sum_lx, sum_l2 = state[2], state[3]
        return (sum_l2 > 0) & (sum_lx * sum_lx > best[4] * sum_l2), state

    levels, scale, *_ = keep_best(grid(0), (*range(-9, 0), *range(1, 10)), trial)
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), np.where(zero[:, None], 0, levels + nmax)
