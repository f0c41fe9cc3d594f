"""Stake concentration metrics, exact: integers in, rationals rounded once at the end.

For stakes ``s_i`` with total ``S``: HHI = sum((s_i / S)^2) in [1/n, 1]; the Nakamoto
coefficient is the fewest validators whose combined stake exceeds one third of ``S`` (the
share that can halt a BFT chain such as Monad); top-k share = the k largest stakes over ``S``.
Shares are computed as ``fractions.Fraction`` and rounded half-even to 18 decimals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pyarrow as pa

SHARE_SCALE = 18
BFT_THRESHOLD = Fraction(1, 3)
_QUANTUM = Decimal(1).scaleb(-SHARE_SCALE)


def to_decimal(value: Fraction) -> Decimal:
    """``value`` rounded half-even to 18 decimal places."""
    with localcontext() as ctx:
        ctx.prec = 80
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
            _QUANTUM, rounding=ROUND_HALF_EVEN
        )


def hhi(stakes: Sequence[int]) -> Fraction:
    """Herfindahl-Hirschman index of positive stakes (0 when there is no stake)."""
    total = sum(stakes)
    if total <= 0:
        return Fraction(0)
    return Fraction(sum(s * s for s in stakes), total * total)


def nakamoto(stakes: Sequence[int], threshold: Fraction = BFT_THRESHOLD) -> int:
    """Fewest validators whose stake together exceeds ``threshold`` of the total (0 if none)."""
    total = sum(stakes)
    if total <= 0:
        return 0
    acc = 0
    for n, s in enumerate(sorted(stakes, reverse=True), start=1):
        acc += s
        if Fraction(acc, total) > threshold:
            return n
    return len(stakes)


def top_share(stakes: Sequence[int], k: int) -> Fraction:
    """Share of the ``k`` largest stakes in the total (0 when there is no stake)."""
    total = sum(stakes)
    if total <= 0:
        return Fraction(0)
    return Fraction(sum(sorted(stakes, reverse=True)[:k]), total)


def concentration_rows(
    stakes_at: Mapping[int, Mapping[int, int]], top_k: Sequence[int]
) -> pa.Table:
    """One row per point in time: validators, total stake, HHI, Nakamoto coefficient and the
    top-k shares (columns ``top{k}_share``), as an Arrow table with exact decimal columns."""
    share = pa.decimal128(38, SHARE_SCALE)
    cols: dict[str, list[object]] = {
        "block_number": [],
        "validators": [],
        "total_stake": [],
        "hhi": [],
        "nakamoto_coefficient": [],
    }
    for k in top_k:
        cols[f"top{k}_share"] = []
    for block in sorted(stakes_at):
        stakes = [s for s in stakes_at[block].values() if s > 0]
        cols["block_number"].append(block)
        cols["validators"].append(len(stakes))
        cols["total_stake"].append(Decimal(sum(stakes)))
        cols["hhi"].append(to_decimal(hhi(stakes)))
        cols["nakamoto_coefficient"].append(nakamoto(stakes))
        for k in top_k:
            cols[f"top{k}_share"].append(to_decimal(top_share(stakes, k)))
    types = {
        "block_number": pa.uint64(),
        "validators": pa.uint32(),
        "total_stake": pa.decimal128(38, 0),
        "hhi": share,
        "nakamoto_coefficient": pa.uint32(),
    }
    return pa.table({name: pa.array(vals, types.get(name, share)) for name, vals in cols.items()})
