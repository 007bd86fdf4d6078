"""Requantization as logic, for the dataflow units (pooling, residual add). Private.

TODO(lead): a stand-in written while hw/requant.py (the compute half's requantization unit) was
being built; dedupe these units onto it once its API settles.
"""

from amaranth.hdl import Const, Mux

__all__ = ["requantize"]


def requantize(acc, multiplier, shift, zero_point, lo, hi):
    """``clamp(zero_point + round_shift(acc * multiplier, shift), lo, hi)``, combinational.

    ``acc`` is an Amaranth value (signed or not); ``multiplier >= 0``, ``0 <= shift <= 62``,
    ``zero_point``, ``lo`` and ``hi`` are Python integers. The same arithmetic as
    ``qfab.compiler.intops.requantize`` (docs/semantics.md, section 3): add half, then shift
    right arithmetically; Amaranth widens every intermediate, so nothing overflows.
    """
    product = acc if multiplier == 1 else acc * Const(multiplier, range(multiplier + 1))
    if shift > 0:
        product = (product + (1 << (shift - 1))) >> shift
    y = product + zero_point
    return Mux(y < lo, lo, Mux(y > hi, hi, y))
