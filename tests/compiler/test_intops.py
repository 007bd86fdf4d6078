"""Integer primitives against exact rational arithmetic (docs/semantics.md, sections 3 and 5)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from qfab.base.errors import QfabError
from qfab.compiler import intops

SETTINGS = settings(max_examples=300, deadline=None)

big_ints = st.integers(-(2**55), 2**55)
shifts = st.integers(0, intops.MAX_SHIFT)


def exact_round_shift(v, n):
    """floor(v / 2^n + 1/2), on rationals."""
    return math.floor(Fraction(v, 2**n) + Fraction(1, 2))


# ---- round_shift -----------------------------------------------------------------------------

@SETTINGS
@given(v=big_ints, n=shifts)
@example(v=-1, n=1)
@example(v=1, n=1)
@example(v=-3, n=1)
@example(v=2**55, n=62)
@example(v=-(2**55), n=62)
@example(v=-(2**55), n=0)
def test_round_shift_is_exact(v, n):
    assert int(intops.round_shift(v, n)) == exact_round_shift(v, n)


@SETTINGS
@given(v=big_ints, n=st.integers(1, intops.MAX_SHIFT))
def test_round_shift_rounds_ties_up(v, n):
    tie = v * 2**n + 2 ** (n - 1)                      # v + 1/2 exactly
    assume(abs(tie) < 2**61)
    assert int(intops.round_shift(tie, n)) == v + 1


@settings(max_examples=50, deadline=None)
@given(vs=st.lists(big_ints, min_size=1, max_size=20), data=st.data())
def test_round_shift_broadcasts_arrays(vs, data):
    ns = data.draw(st.lists(shifts, min_size=len(vs), max_size=len(vs)))
    got = intops.round_shift(np.array(vs, dtype=np.int64), np.array(ns, dtype=np.int64))
    assert got.dtype == np.int64
    assert got.tolist() == [exact_round_shift(v, n) for v, n in zip(vs, ns)]
    one_n = intops.round_shift(np.array(vs, dtype=np.int64), ns[0])
    assert one_n.tolist() == [exact_round_shift(v, ns[0]) for v in vs]


@pytest.mark.parametrize("n", [-1, 63, 100])
def test_round_shift_rejects_bad_shift(n):
    with pytest.raises(ValueError, match="shift must be in 0..62"):
        intops.round_shift(5, n)


# ---- requantize ------------------------------------------------------------------------------

def slow_requantize(acc, m0, n, zp, lo, hi):
    prod = acc * m0
    rounded = prod if n == 0 else math.floor(Fraction(prod, 2**n) + Fraction(1, 2))
    return min(max(zp + rounded, lo), hi)


@st.composite
def requant_case(draw):
    m_bits = draw(st.sampled_from([8, 16, 24, 32]))
    acc_bits = 62 - m_bits                                # the verifier's product limit
    channels = draw(st.integers(1, 6))
    acc = draw(st.lists(st.integers(-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1),
                        min_size=channels * 3, max_size=channels * 3))
    m0 = draw(st.lists(st.integers(0, 2**m_bits - 1), min_size=channels, max_size=channels))
    n = draw(st.lists(shifts, min_size=channels, max_size=channels))
    bits = draw(st.integers(1, 8))
    qmin, qmax = intops.qrange(bits, draw(st.booleans()))
    zp = draw(st.integers(qmin, qmax))
    lo = draw(st.integers(qmin, qmax))
    hi = draw(st.integers(lo, qmax))
    return np.array(acc, dtype=np.int64).reshape(3, channels), m0, n, zp, lo, hi


@SETTINGS
@given(case=requant_case())
def test_requantize_matches_slow_per_element(case):
    acc, m0, n, zp, lo, hi = case
    got = intops.requantize(acc, np.array(m0, dtype=np.int64), np.array(n, dtype=np.int64), zp, lo, hi)
    assert got.shape == acc.shape and got.dtype == np.int64
    want = [[slow_requantize(int(a), m0[c], n[c], zp, lo, hi) for c, a in enumerate(row)] for row in acc]
    assert got.tolist() == want


def test_requantize_zero_multiplier_gives_zero_point_clamped():
    acc = np.array([-(2**40), -1, 0, 7, 2**40])
    assert intops.requantize(acc, 0, 10, 3, -8, 7).tolist() == [3] * 5
    assert intops.requantize(acc, 0, 0, 3, 5, 7).tolist() == [5] * 5


# ---- dyadic ----------------------------------------------------------------------------------

positive_reals = st.floats(min_value=2.0**-80, max_value=2.0**33, allow_nan=False, allow_infinity=False,
                           exclude_min=False)


@SETTINGS
@given(r=positive_reals, m_bits=st.integers(2, 32))
@example(r=1.0, m_bits=24)
@example(r=2.0**24 - 1, m_bits=24)
@example(r=2.0**24 - 0.75, m_bits=24)
@example(r=0.5 - 2.0**-40, m_bits=8)
@example(r=2.0**-70, m_bits=24)
@example(r=127.9, m_bits=8)                 # r * 2 rounds up to 2^8: the shift must come down to 0
def test_dyadic_is_the_largest_shift_and_rounds(r, m_bits):
    limit = 2**m_bits
    exact = Fraction(r)
    if round(exact) >= limit:                  # no pair: even n = 0 rounds to 2^m_bits
        with pytest.raises(ValueError, match="does not fit"):
            intops.dyadic(r, m_bits)
        return
    m0, n = intops.dyadic(r, m_bits)
    assert isinstance(m0, int) and isinstance(n, int)
    assert 0 <= n <= intops.MAX_SHIFT and 0 <= m0 < limit
    assert m0 == round(exact * 2**n)                       # M0 = round(r * 2^n)
    assert n == intops.MAX_SHIFT or round(exact * 2 ** (n + 1)) >= limit    # n is maximal
    assert abs(Fraction(m0, 2**n) - exact) <= Fraction(1, 2 ** (n + 1))


@SETTINGS
@given(r=st.floats(min_value=2.0**-39, max_value=2.0**24, exclude_max=True, width=32))
@example(r=float(np.float32(0.1)))
@example(r=float(np.nextafter(np.float32(2**24), np.float32(0))))
@example(r=2.0**-39)
def test_dyadic_is_exact_for_float32_at_24_bits(r):
    m0, n = intops.dyadic(r, 24)
    assert Fraction(m0, 2**n) == Fraction(r)


@pytest.mark.parametrize("m_bits", [2, 8, 16, 24, 32])
def test_dyadic_limit(m_bits):
    with pytest.raises(ValueError, match=f"does not fit in {m_bits} bits"):
        intops.dyadic(2.0**m_bits, m_bits)
    with pytest.raises(ValueError, match="does not fit"):
        intops.dyadic(1e300, m_bits)
    m0, n = intops.dyadic(2.0**m_bits - 1, m_bits)
    assert (m0, n) == (2**m_bits - 1, 0)


def test_dyadic_zero():
    assert intops.dyadic(0.0) == (0, 0)
    assert intops.dyadic(-0.0) == (0, 0)


def test_dyadic_default_is_24_bits():
    assert intops.dyadic(1.0) == (2**23, 23)           # the largest M0 below 2^24 is 2^23 * 1.0
    assert intops.dyadic(0.75) == (3 * 2**22, 24)


@pytest.mark.parametrize("r", [-1.0, -1e-300, float("nan"), float("inf"), float("-inf")])
def test_dyadic_rejects_negative_and_non_finite(r):
    with pytest.raises(ValueError, match="finite and non-negative"):
        intops.dyadic(r)


@pytest.mark.parametrize("m_bits", [0, 1, 33, 24.0, "24", None])
def test_dyadic_rejects_bad_m_bits(m_bits):
    with pytest.raises(ValueError, match="m_bits must be an integer from 2 to 32"):
        intops.dyadic(0.5, m_bits)


# ---- qrange ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 33))
def test_qrange_all_widths(bits):
    assert intops.qrange(bits, True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert intops.qrange(bits, False) == (0, 2**bits - 1)
    assert intops.qrange(np.int64(bits), False) == (0, 2**bits - 1)


def test_qrange_bipolar():
    assert intops.qrange(1, True, bipolar=True) == (-1, 1)
    assert intops.qrange(1, False, bipolar=True) == (-1, 1)
    with pytest.raises(ValueError, match="bipolar type has 1 bit, not 2"):
        intops.qrange(2, True, bipolar=True)


@pytest.mark.parametrize("bits", [0, -1, 33, 2.0, "8", None])
def test_qrange_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 32"):
        intops.qrange(bits, True)


# ---- acc_bound / acc_bits --------------------------------------------------------------------

def holds(width, bound):
    return -(2 ** (width - 1)) <= -bound and bound <= 2 ** (width - 1) - 1


@SETTINGS
@given(bound=st.integers(1, 2**70))
@example(bound=1)
@example(bound=2**61 - 1)
@example(bound=2**61)
def test_acc_bits_holds_bound_and_is_minimal(bound):
    w = intops.acc_bits(bound)
    assert holds(w, bound)
    assert not holds(w - 1, bound)
    ceil_log2 = next(k for k in range(200) if 2**k >= bound + 1)
    assert w == 1 + ceil_log2                   # 1 + ceil(log2(bound + 1)), docs/semantics.md


def test_acc_bits_of_zero_holds_zero():
    assert holds(intops.acc_bits(0), 0)
    assert intops.acc_bits(0) <= 2


@SETTINGS
@given(fan_in=st.integers(1, 2**20), w_max=st.integers(0, 128), x_max=st.integers(0, 255),
       bias_max=st.integers(0, 2**31), points=st.integers(1, 4), m_max=st.integers(0, 2**15))
def test_acc_bound_is_the_semantics_formula(fan_in, w_max, x_max, bias_max, points, m_max):
    bound = intops.acc_bound(fan_in, w_max, x_max, bias_max, points, m_max)
    assert bound == bias_max + points * m_max * fan_in * w_max * x_max
    assert isinstance(bound, int)
    assert intops.acc_bound(np.int64(fan_in), np.int64(w_max), np.int64(x_max)) == fan_in * w_max * x_max


# ---- quantize_float / dequantize -------------------------------------------------------------

def test_quantize_float_rounds_half_to_even_and_saturates():
    x = np.array([0.25, 0.75, -0.25, 1e9, -1e9, 0.5], dtype=np.float32)
    q = intops.quantize_float(x, 0.5, 3, 0, 255)
    assert q.tolist() == [3, 5, 3, 255, 0, 4]
    assert intops.dequantize(q, 0.5, 3).tolist() == [0.0, 1.0, 0.0, 126.0, -1.5, 0.5]


# ---- round_shift_even, and requantize with it ------------------------------------------------

def exact_round_shift_even(v, n):
    """v / 2^n rounded to the nearest integer, ties to the even one, on rationals."""
    q = Fraction(v, 2**n)
    low = math.floor(q)
    if q - low != Fraction(1, 2):
        return math.floor(q + Fraction(1, 2))
    return low if low % 2 == 0 else low + 1


@SETTINGS
@given(v=big_ints, n=shifts)
@example(v=1, n=1)          # 0.5 -> 0
@example(v=3, n=1)          # 1.5 -> 2
@example(v=-1, n=1)         # -0.5 -> 0
@example(v=-3, n=1)         # -1.5 -> -2
@example(v=5, n=2)          # 1.25 -> 1
@example(v=7, n=2)          # 1.75 -> 2
@example(v=-(2**55), n=0)
@example(v=2**55 - 1, n=62)
def test_round_shift_even_is_exact(v, n):
    assert int(intops.round_shift_even(v, n)) == exact_round_shift_even(v, n)


@SETTINGS
@given(v=st.integers(-(2**40), 2**40), n=st.integers(1, 20))
def test_round_shift_even_rounds_ties_to_even(v, n):
    tie = v * 2**n + 2 ** (n - 1)                      # v + 1/2 exactly
    assert int(intops.round_shift_even(tie, n)) == (v if v % 2 == 0 else v + 1)


def test_round_shift_even_broadcasts_and_rejects_bad_shift():
    vs = np.array([-6, -5, -3, -1, 1, 3, 5, 6, 7], dtype=np.int64)
    ns = np.array([2, 1, 1, 1, 1, 1, 1, 2, 0], dtype=np.int64)
    got = intops.round_shift_even(vs, ns)
    assert got.dtype == np.int64
    assert got.tolist() == [exact_round_shift_even(int(v), int(n)) for v, n in zip(vs, ns)]
    for n in (-1, 63):
        with pytest.raises(ValueError, match="shift must be in 0..62"):
            intops.round_shift_even(5, n)


def test_requantize_rounding_names_the_rule():
    acc = np.array([1, 3, 5, -1, -3, -5, 7], dtype=np.int64)          # halves after the shift by 1
    up = intops.requantize(acc, 1, 1, 0, -100, 100)
    even = intops.requantize(acc, 1, 1, 0, -100, 100, rounding="half_even")
    assert up.tolist() == [1, 2, 3, 0, -1, -2, 4]
    assert even.tolist() == [0, 2, 2, 0, -2, -2, 4]
    assert intops.ROUNDING == {"half_up": intops.round_shift, "half_even": intops.round_shift_even}


# ---- quantize_float at the edges -------------------------------------------------------------

@pytest.mark.parametrize("zp, qmin, qmax", [(0, 0, 255), (128, 0, 255), (-3, -8, 7), (7, -8, 7), (-8, -8, 7)])
def test_quantize_float_saturates_exactly_at_the_range(zp, qmin, qmax):
    """Codes one step inside, at, and one step beyond each end; infinities and huge values saturate."""
    scale = 0.25
    codes = np.arange(qmin - 3, qmax + 4)
    x = ((codes - zp) * scale).astype(np.float32)
    assert intops.quantize_float(x, scale, zp, qmin, qmax).tolist() == np.clip(codes, qmin, qmax).tolist()
    edge = np.array([np.inf, -np.inf, 3e38, -3e38, 1e19, -1e19], dtype=np.float32)
    assert intops.quantize_float(edge, scale, zp, qmin, qmax).tolist() == [qmax, qmin] * 3


def test_quantize_float_names_the_first_nan():
    x = np.zeros((2, 3), dtype=np.float32)
    x[1, 2] = x[0, 1] = np.nan
    with pytest.raises(QfabError, match=r"^NaN at index \(0, 1\) cannot be quantized .*2 of 6 elements are NaN"):
        intops.quantize_float(x, 0.5, 0, 0, 255)


def test_quantize_float_divides_in_float32_like_onnxruntime():
    """x = 0.25 + 1e-12 is 0.25 in float32: 0.25 / 0.5 = 0.5 is a tie, rounded to even (0); in
    float64 the quotient is just above 0.5 (1)."""
    q = intops.quantize_float([0.25 + 1e-12, 0.75 + 1e-12], 0.5, 0, 0, 255)
    assert q.tolist() == [0, 2] and q.dtype == np.int64
    assert intops.quantize_float(np.float64(0.25 + 1e-12), 0.5, 3, 0, 255).tolist() == 3


def test_dequantize_narrow_codes_do_not_wrap():
    """int8 and uint8 codes minus a zero point leave their type's range (-128 - 127, 0 - 128)."""
    assert intops.dequantize(np.array([-128, 127], np.int8), 1.0, 127).tolist() == [-255.0, 0.0]
    assert intops.dequantize(np.array([0, 255], np.uint8), 0.5, 128).tolist() == [-64.0, 63.5]


def test_dequantize():
    q = np.array([0, 3, 255, -8])
    assert intops.dequantize(q, 0.5, 3).tolist() == [-1.5, 0.0, 126.0, -5.5]
    assert intops.dequantize(q, 0.5, 3).dtype == np.float64
