"""Integer primitives of qfab's semantics (see docs/semantics.md, section 3).

Pure numpy, no Amaranth, no IR: the reference, the quantizer and the hardware tests all use these
functions, so that requantization is written exactly once.
"""

import math

import numpy as np

from qfab.base import ints
from qfab.base.errors import QfabError

__all__ = [
    "qrange", "round_shift", "round_shift_even", "ROUNDING", "clamp", "requantize", "dyadic", "acc_bound", "acc_bits",
    "quantize_float", "dequantize", "MAX_SHIFT", "MAX_PRODUCT_BITS", "MAX_CODE_BITS",
]

MAX_SHIFT = 62
MAX_PRODUCT_BITS = 62
MAX_CODE_BITS = 32


def qrange(bits, signed, bipolar=False):
    """Smallest and largest code of a type of ``bits`` bits, 1 to 32 (bipolar: -1 and +1).

    `qfab.base.ints.code_range` with the IR's 32-bit limit.
    """
    return ints.code_range(bits, signed, bipolar, max_bits=MAX_CODE_BITS)


def round_shift(v, n):
    """``floor((v + 2**(n-1)) / 2**n)``, or ``v`` when ``n == 0``: round half up.

    ``v`` and ``n`` are integers or int64 arrays (broadcast against each other).
    """
    v = np.asarray(v, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 0) or np.any(n > MAX_SHIFT):
        raise ValueError(f"shift must be in 0..{MAX_SHIFT}")
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return np.right_shift(v + half, n)


def round_shift_even(v, n):
    """``v / 2**n`` rounded to the nearest integer, ties to even (``v`` when ``n == 0``).

    ``floor((v + 2**(n-1) - 1 + b) / 2**n)`` with ``b = floor(v / 2**n) mod 2``: the rule of
    onnxruntime's float pools (``std::nearbyint``), used by pools imported from quantized ONNX.
    """
    v = np.asarray(v, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 0) or np.any(n > MAX_SHIFT):
        raise ValueError(f"shift must be in 0..{MAX_SHIFT}")
    odd = np.right_shift(v, n) & 1
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)) - 1 + odd, 0)
    return np.right_shift(v + half, n)


ROUNDING = {"half_up": round_shift, "half_even": round_shift_even}


def clamp(v, lo, hi):
    return np.minimum(np.maximum(v, lo), hi)


def requantize(acc, m0, n, zp, lo, hi, rounding="half_up"):
    """``clamp(zp + round_shift(acc * m0, n), lo, hi)``, elementwise (int64).

    ``m0`` and ``n`` broadcast against ``acc`` (per output channel: shape ``(C,)`` against a
    channels-last ``acc``). ``rounding`` names the shift's rule (`ROUNDING`): ``half_up``
    (`round_shift`) or ``half_even`` (`round_shift_even`).
    """
    acc = np.asarray(acc, dtype=np.int64)
    prod = acc * np.asarray(m0, dtype=np.int64)
    return clamp(zp + ROUNDING[rounding](prod, n), lo, hi)


def dyadic(r, m_bits=24):
    """The pair ``(M0, n)`` for a real multiplier ``r >= 0``: ``M0 / 2**n ~ r``.

    ``n`` is the largest shift (at most ``MAX_SHIFT``) with ``round(r * 2**n) < 2**m_bits``.
    Raises ``ValueError`` when ``r >= 2**m_bits`` (no pair exists) or ``r`` is not finite.
    """
    if not isinstance(m_bits, int) or not 2 <= m_bits <= 32:
        raise ValueError(f"m_bits must be an integer from 2 to 32, not {m_bits!r}")
    r = float(r)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"multiplier must be finite and non-negative, not {r!r}")
    limit = 1 << m_bits
    if r == 0.0:
        return 0, 0
    if round(r) >= limit:
        raise ValueError(f"multiplier {r!r} does not fit in {m_bits} bits (needs < {limit})")
    # largest n with round(r * 2^n) < 2^m_bits; math.frexp gives r = f * 2^e, 0.5 <= f < 1
    _, e = math.frexp(r)
    n = max(0, min(MAX_SHIFT, m_bits - e))
    while n > 0 and round(math.ldexp(r, n)) >= limit:
        n -= 1
    while n < MAX_SHIFT and round(math.ldexp(r, n + 1)) < limit:
        n += 1
    return int(round(math.ldexp(r, n))), n


def acc_bound(fan_in, w_max, x_max, bias_max=0, points=1, m_max=1):
    """Largest ``|acc|`` of a dot product (docs/semantics.md, section 5)."""
    return int(bias_max) + int(points) * int(m_max) * int(fan_in) * int(w_max) * int(x_max)


acc_bits = ints.acc_bits    # signed width holding every integer in ``[-bound, bound]``


def quantize_float(x, scale, zero_point, qmin, qmax):
    """Host-side quantization at the graph input, as ONNX ``QuantizeLinear``.

    ``round_half_to_even(x / scale) + zero_point``, saturated to ``[qmin, qmax]``. Computed in
    float32 like onnxruntime so that inputs agree with it code for code. Saturation happens
    before any cast to an integer, so ``+inf``, ``-inf`` and finite values too large for int64
    give ``qmax`` and ``qmin`` (docs/semantics.md, section 1). NaN has no code: it raises
    `QfabError` naming the index of the first NaN element.
    """
    x = np.asarray(x, dtype=np.float32)
    nan = np.isnan(x)
    if nan.any():
        index = tuple(int(i) for i in np.argwhere(nan)[0])
        raise QfabError(f"NaN at index {index} cannot be quantized (NaN has no code; "
                        f"{int(nan.sum())} of {x.size} elements are NaN)")
    with np.errstate(over="ignore"):      # a huge x / scale is inf in float32 and saturates
        r = np.rint(x / np.float32(scale)).astype(np.float64)
    zp = int(zero_point)
    # clip while still a float (exact: code bounds are far inside float64's integers)
    r = np.clip(r, qmin - zp - 1, qmax - zp + 1)
    return clamp(r.astype(np.int64) + zp, qmin, qmax)


def dequantize(q, scale, zero_point):
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale
