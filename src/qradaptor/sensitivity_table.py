"""The sensitivity profile as data: ``SensitivityTable`` (Eq. 6's S_l(b) for every block, or
every linear module of every block, and bit-width), its files (sensitivity.json,
sensitivity.csv) and its plot.

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
GRANULARITIES = ("block", "module")
"""What one row of a table quantises: every linear of a block, or one linear of a block."""


@dataclass(frozen=True)
class SensitivityTable:
    """Mean per-token KL divergence caused by quantising one block (or one linear module of a
    block) at one bit-width (Eq. 6)."""

    bits: tuple[int, ...]
    """Candidate bit-widths, ascending; the column order of ``kl``."""
    kl: tuple[tuple[float, ...], ...]
    """kl[unit][i]: mean KL(P_fp || P_q) in nats per token with only ``unit`` at ``bits[i]``; a
    unit is a block, or per module a (block, module) pair in block-major order (row
    ``block * len(modules) + m`` is module ``modules[m]`` of ``block``)."""
    tokens: int
    """Calibration positions the mean runs over (padding excluded)."""
    group_size: int
    """Input columns per quantisation group used for the quantised weights."""
    quant_method: str
    """How the codes were fitted ("rtn", "hqq" or "symmetric"); a search or knapsack of another
    quantiser refuses the table by this name."""
    double_quant: bool = False
    """Whether the scales and zeros were double-quantised to 8 bits (``Plan.double_quant``)."""
    granularity: str = "block"
    """"block" (a row per block, all its linears quantised) or "module" (a row per linear)."""
    modules: tuple[str, ...] = ()
    """Per module: the linear names of one block (e.g. "self_attn.q_proj"), the order of each
    block's rows; empty per block."""

    def __post_init__(self) -> None:
        if not self.bits:
            raise ValueError("bits must name at least one bit-width, got ()")
        for row in self.kl:
            if len(row) != len(self.bits):
                raise ValueError(
                    f"kl rows must have one value per bit-width ({len(self.bits)}), got {len(row)}"
                )
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "block" and self.modules:
            raise ValueError(f"a per-block table names no modules, got modules {self.modules!r}")
        if self.granularity == "module":
            names = self.modules
            if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"a per-module table needs unique module names, got {names!r}")
            if len(self.kl) % len(names):
                raise ValueError(
                    f"a per-module table has one row per (block, module): {len(self.kl)} rows is not a "
                    f"multiple of its {len(names)} modules"
                )

    @property
    def num_blocks(self) -> int:
        """Number of blocks profiled."""
        return len(self.kl) // max(len(self.modules), 1)

    @property
    def num_units(self) -> int:
        """Rows of ``kl``: blocks, or blocks x modules."""
        return len(self.kl)

    @property
    def unit_names(self) -> tuple[str, ...]:
        """A Plan key per row: "3" per block, "3.self_attn.q_proj" per module."""
        if not self.modules:
            return tuple(str(b) for b in range(self.num_blocks))
        return tuple(f"{b}.{m}" for b in range(self.num_blocks) for m in self.modules)

    def require_granularity(self, granularity: str, where: str) -> None:
        """Raises ValueError unless the table is of ``granularity``, naming what ``where`` takes.

        Args:
            granularity: "block" or "module".
            where: who needs the table, e.g. "the knapsack at block granularity".
        """
        if self.granularity == granularity:
            return
        have = (
            f"a per-module one ({len(self.modules)} linears x {self.num_blocks} blocks)"
            if self.granularity == "module"
            else f"a per-block one ({self.num_blocks} blocks)"
        )
        how = "qra profile --granularity module" if granularity == "module" else "qra profile, the default"
        raise ValueError(
            f"{where} takes a per-{granularity} sensitivity table ({how}), got {have}: profile at "
            f"{granularity} granularity, or ask for {self.granularity} granularity"
        )

    def column(self, bits: int) -> tuple[float, ...]:
        """S_l at ``bits`` for every row l (a block, or per module a (block, module) unit).

        Raises:
            ValueError: if ``bits`` was not profiled.
        """
        if bits not in self.bits:
            raise ValueError(f"bits must be one of the profiled {self.bits}, got {bits!r}")
        i = self.bits.index(bits)
        return tuple(row[i] for row in self.kl)

    def min_bits_profile(self) -> tuple[float, ...]:
        """The paper's S_l (Eq. 6): KL per row (block or module) at the lowest candidate bit-width."""
        return self.column(min(self.bits))

    def block_profile(self) -> tuple[float, ...]:
        """S_l at the lowest bit-width per block; per module, the sum of the block's modules'
        (the additive approximation the knapsack's objective makes), so a module profile lines
        up with a plan's blocks."""
        column = self.min_bits_profile()
        if not self.modules:
            return column
        n = len(self.modules)
        return tuple(sum(column[b * n : (b + 1) * n]) for b in range(self.num_blocks))

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
            # Left out per block, so a block profile's file is what it was before modules.
            **({"granularity": "module", "modules": list(self.modules)} if self.modules else {}),
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
            granularity=str(data.get("granularity", "block")),
            modules=tuple(str(m) for m in data.get("modules", ())),
        )

    def to_csv(self) -> str:
        """CSV text: a header ``block,kl_2bit,kl_3bit,...`` then one row per block; per module
        ``block,module,kl_2bit,...`` and one row per (block, module)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        per_module = ["module"] if self.modules else []
        writer.writerow(["block", *per_module, *(f"kl_{b}bit" for b in self.bits)])
        for unit, row in enumerate(self.kl):
            if self.modules:
                block, m = divmod(unit, len(self.modules))
                writer.writerow([block, self.modules[m], *(repr(v) for v in row)])
            else:
                writer.writerow([unit, *(repr(v) for v in row)])
        return out.getvalue()


def plot_sensitivity(table: SensitivityTable, path: str | os.PathLike[str]) -> None:
    """Plots S_l by block depth, log y axis; writes ``path`` atomically.

    Per block, one line per bit-width; per module, one line per module at the lowest bits (a
    line per module and bit-width would be unreadable). The format follows the suffix (e.g.
    ``.png``, ``.pdf``).
    """
    from qradaptor.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    blocks = list(range(table.num_blocks))
    # log axis: zero KL (possible at 8 bits on tiny models) would vanish, so floor it.
    if table.modules:
        low = table.column(min(table.bits))
        for m, name in enumerate(table.modules):
            values = [max(low[b * len(table.modules) + m], 1e-12) for b in blocks]
            ax.plot(blocks, values, marker="o", markersize=3, label=f"{name}, {min(table.bits)}-bit")
    else:
        for b in table.bits:
            values = [max(v, 1e-12) for v in table.column(b)]
            ax.plot(blocks, values, marker="o", markersize=3, label=f"{b}-bit")
    ax.set_yscale("log")
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("mean KL(P_fp || P_q), nats/token")
    what = "Module" if table.modules else "Block"
    ax.set_title(
        f"{what} sensitivity (Eq. 6), {table.quant_method}, group {table.group_size}, {table.tokens} tokens"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a line
    save_figure(fig, path)
