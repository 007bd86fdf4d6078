"""Integer code ranges and widths (docs/semantics.md, sections 1 and 5).

Standard library only: the compiler (`qfab.compiler.intops`), the hardware library (`qfab.hw`) and
the host driver compute ranges and widths here, so that each formula is written once.
"""

import numbers

__all__ = ["code_range", "bits_for_range", "acc_bits"]


def _check_bits(bits, max_bits):
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits < 1 or \
            (max_bits is not None and bits > max_bits):
        if max_bits is None:
            raise ValueError(f"bits must be a positive integer, not {bits!r}")
        raise ValueError(f"bits must be an integer from 1 to {max_bits}, not {bits!r}")
    return int(bits)


def code_range(bits: int, signed: bool, bipolar: bool = False, *,
               max_bits: int | None = None) -> tuple[int, int]:
    """Smallest and largest code of a type of ``bits`` bits.

    Parameters
    ----------
    bits : int
        Width of the code, a positive integer (a ``numpy`` integer too); at most ``max_bits``
        when that is given.
    signed : bool
        Two's complement (``-2**(bits-1) .. 2**(bits-1) - 1``) or unsigned (``0 .. 2**bits - 1``).
    bipolar : bool
        One bit standing for -1 or +1: the range is ``(-1, 1)`` whatever ``signed`` says.

    Raises
    ------
    ValueError
        If ``bits`` is not an integer in range, or a bipolar type has more than one bit.
    """
    bits = _check_bits(bits, max_bits)
    if bipolar:
        if bits != 1:
            raise ValueError(f"a bipolar type has 1 bit, not {bits}")
        return -1, 1
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def bits_for_range(lo: int, hi: int, signed: bool | None = None) -> int:
    """The smallest width whose codes hold every integer in ``[lo, hi]`` (at least 1).

    ``signed`` chooses two's complement (``True``) or unsigned (``False``); by default the range
    is signed when ``lo`` is negative.

    Raises
    ------
    ValueError
        If ``lo > hi``, or an unsigned width is asked for a negative ``lo``.
    """
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"the range's lo must not exceed its hi, not {lo} > {hi}")
    if signed is None:
        signed = lo < 0
    if not signed:
        if lo < 0:
            raise ValueError(f"an unsigned width cannot hold {lo}")
        return max(1, hi.bit_length())
    # two's complement of b bits holds -2**(b-1) .. 2**(b-1) - 1; ~lo = -lo - 1 >= 0 when lo < 0
    return 1 + max((~lo).bit_length() if lo < 0 else 0, hi.bit_length() if hi > 0 else 0)


def acc_bits(bound: int) -> int:
    """Signed width of an accumulator whose values lie in ``[-bound, bound]``.

    ``1 + max(1, bound.bit_length())`` (docs/semantics.md, section 5): the smallest such width
    for every ``bound >= 1`` and 2 bits for ``bound == 0``.

    Raises
    ------
    ValueError
        If ``bound`` is not a non-negative integer.
    """
    if isinstance(bound, bool) or not isinstance(bound, numbers.Integral) or bound < 0:
        raise ValueError(f"bound must be a non-negative integer, not {bound!r}")
    return 1 + max(1, int(bound).bit_length())
