"""The sensitivity profile as data: ``SensitivityTable`` (Eq. 6's S_l(b) for every block and
bit-width), its files (sensitivity.json, sensitivity.csv) and its plot.

Plain data and no torch: the knapsack, the search and the CLI read a profile through this
module without loading the profiler (``sensitivity.py``), which measures one on a model.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SENSITIVITY_FORMAT = 1


@dataclass(frozen=True)
class SensitivityTable:
    """Mean per-token KL divergence caused by quantising one block at one bit-width (Eq. 6)."""

    bits: tuple[int, ...]
    """Candidate bit-widths, ascending; the column order of ``kl``."""
    kl: tuple[tuple[float, ...], ...]
    """kl[block][i]: mean KL(P_fp || P_q) in nats per token with only ``block`` at ``bits[i]``."""
    tokens: int
    """Calibration positions the mean runs over (padding excluded)."""
    group_size: int
    """Input columns per quantisation group used for the quantised weights."""
    quant_method: str
    """How the codes were fitted ("rtn" or "hqq")."""
    double_quant: bool = False
    """Whether the scales and zeros were double-quantised to 8 bits (``Plan.double_quant``)."""

    def __post_init__(self) -> None:
        if not self.bits:
            raise ValueError("bits must name at least one bit-width, got ()")
        for row in self.kl:
            if len(row) != len(self.bits):
                raise ValueError(
                    f"kl rows must have one value per bit-width ({len(self.bits)}), got {len(row)}"
                )

    @property
    def num_blocks(self) -> int:
        """Number of blocks profiled."""
        return len(self.kl)

    def column(self, bits: int) -> tuple[float, ...]:
        """S_l at ``bits`` for every block l.

        Raises:
            ValueError: if ``bits`` was not profiled.
        """
        if bits not in self.bits:
            raise ValueError(f"bits must be one of the profiled {self.bits}, got {bits!r}")
        i = self.bits.index(bits)
        return tuple(row[i] for row in self.kl)

    def min_bits_profile(self) -> tuple[float, ...]:
        """The paper's S_l (Eq. 6): KL per block at the lowest candidate bit-width."""
        return self.column(min(self.bits))

    def normalised(self, bits: int | None = None) -> tuple[float, ...]:
        """S_l / sum_l S_l at ``bits`` (default: the lowest), for reports (the search's initial
        population uses a min-max normalisation instead, ``search.initial.normalise``).

        A uniform profile is returned when every S_l is zero (nothing to prefer).
        """
        column = self.column(min(self.bits) if bits is None else bits)
        total = sum(column)
        if not total > 0:
            return tuple(1.0 / len(column) for _ in column)
        return tuple(value / total for value in column)

    # ----- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` reads it back."""
        return {
            "format": SENSITIVITY_FORMAT,
            "bits": list(self.bits),
            "kl": [list(row) for row in self.kl],
            "tokens": self.tokens,
            "group_size": self.group_size,
            "quant_method": self.quant_method,
            # Left out when false, so files written before the option existed read the same.
            **({"double_quant": True} if self.double_quant else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: if a field is missing or the format is unknown.
        """
        if data.get("format", SENSITIVITY_FORMAT) != SENSITIVITY_FORMAT:
            raise ValueError(f"sensitivity format must be {SENSITIVITY_FORMAT}, got {data.get('format')!r}")
        missing = [k for k in ("bits", "kl", "tokens", "group_size", "quant_method") if k not in data]
        if missing:
            raise ValueError(f"sensitivity dict must have fields {missing}, got keys {sorted(data)}")
        return cls(
            bits=tuple(int(b) for b in data["bits"]),
            kl=tuple(tuple(float(v) for v in row) for row in data["kl"]),
            tokens=int(data["tokens"]),
            group_size=int(data["group_size"]),
            quant_method=str(data["quant_method"]),
            double_quant=bool(data.get("double_quant", False)),
        )

    def to_csv(self) -> str:
        """CSV text: a header ``block,kl_2bit,kl_3bit,...`` then one row per block."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["block", *(f"kl_{b}bit" for b in self.bits)])
        for block, row in enumerate(self.kl):
            writer.writerow([block, *(repr(v) for v in row)])
        return out.getvalue()


def plot_sensitivity(table: SensitivityTable, path: str | os.PathLike[str]) -> None:
    """Plots S_l by block depth, one line per bit-width, log y axis; writes ``path`` atomically.

    The format follows the suffix (e.g. ``.png``, ``.pdf``).
    """
    from qradaptor.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    blocks = list(range(table.num_blocks))
    for b in table.bits:
        # log axis: zero KL (possible at 8 bits on tiny models) would vanish, so floor it.
        values = [max(v, 1e-12) for v in table.column(b)]
        ax.plot(blocks, values, marker="o", markersize=3, label=f"{b}-bit")
    ax.set_yscale("log")
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("mean KL(P_fp || P_q), nats/token")
    ax.set_title(
        f"Block sensitivity (Eq. 6), {table.quant_method}, group {table.group_size}, {table.tokens} tokens"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a line
    save_figure(fig, path)
