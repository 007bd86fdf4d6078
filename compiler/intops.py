"""Integer primitives of qfab's semantics (see docs/semantics.md, section 3).

Pure numpy, no Amaranth, no IR: the reference, the quantizer and the hardware tests all use these
functions, so that requantization is written exactly once.
"""

import math

import numpy as np

from qfab.base import ints

__all__ = [
    "qrange", "round_shift", "clamp", "requantize", "dyadic", "acc_bound", "acc_bits",
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


def clamp(v, lo, hi):
    return np.minimum(np.maximum(v, lo), hi)


def requantize(acc, m0, n, zp, lo, hi):
    """``clamp(zp + round_shift(acc * m0, n), lo, hi)``, elementwise (int64).

    ``m0`` and ``n`` broadcast against ``acc`` (per output channel: shape ``(C,)`` against a
    channels-last ``acc``).
    """
    acc = np.asarray(acc, dtype=np.int64)
    prod = acc * np.asarray(m0, dtype=np.int64)
    return clamp(zp + round_shift(prod, n), lo, hi)


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
    float32 like onnxruntime so that inputs agree with it code for code.
    """
    x = np.asarray(x, dtype=np.float32)
    q = np.rint(x / np.float32(scale)).astype(np.int64) + int(zero_point)
    return clamp(q, qmin, qmax)


def dequantize(q, scale, zero_point):
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale
