# amaranth: UnusedElaboratable=no
"""Residual Add against docs/semantics.md, with independent backpressure on both inputs; the Add
of per-channel constants (a quantized bias add) under random input gaps and output stalls; both
rounding rules."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.add import Add
from qfab.hw.requant import RequantMode

from .dataflow_models import add_model, beats, codes, element_shape, shapes, simulate, unbeat
from .streams import get_all, put_all


def params(**changes):
    p = dict(a_zero_point=0, b_zero_point=0, a_multiplier=1, b_multiplier=1, shift=0,
             out_zero_point=0)
    p.update(changes)
    return p


def test_init():
    dut = Add(signed(4), unsigned(3), signed(8), simd=3, **params())
    assert dut.simd == 3
    assert len(dut.a.payload) == 3 and len(dut.b.payload) == 3


def test_init_wrong_a_shape():
    with pytest.raises(TypeError, match=r"Element shape of a must be a signed or unsigned shape "
                                        r"of 1 to 32 bits, not 'a'"):
        Add("a", unsigned(3), signed(8), **params())


def test_init_wrong_b_zero_point():
    with pytest.raises(ValueError, match=r"Zero point of b must be in b's shape's range 0..7, "
                                         r"not 8"):
        Add(signed(4), unsigned(3), signed(8), **params(b_zero_point=8))


def test_init_wrong_multiplier():
    with pytest.raises(TypeError, match=r"Multiplier of a must be a non-negative integer, "
                                        r"not -1"):
        Add(signed(4), unsigned(3), signed(8), **params(a_multiplier=-1))


def test_init_wrong_shift():
    with pytest.raises(ValueError, match=r"Shift must be in 0..62, not -1"):
        Add(signed(4), unsigned(3), signed(8), **params(shift=-1))


def test_init_wrong_rounding():
    with pytest.raises(ValueError, match=r"Rounding must be 'half_up' or 'half_even', not 'even'"):
        Add(signed(4), unsigned(3), signed(8), rounding="even", **params())


def test_init_constants():
    dut = Add(signed(4), None, signed(8), simd=2, b_constants=[5, -1 << 40, 3, 0], **params())
    assert dut.channels == 4 and not hasattr(dut, "b")
    assert Add(signed(4), unsigned(3), signed(8), **params()).channels is None


def test_init_constants_with_a_b_shape():
    with pytest.raises(TypeError, match=r"Element shape of b must be None with b_constants, not unsigned\(3\)"):
        Add(signed(4), unsigned(3), signed(8), b_constants=[1], **params())


def test_init_constants_not_a_multiple_of_simd():
    with pytest.raises(ValueError, match=r"b_constants must be a non-empty sequence whose length is a multiple "
                                         r"of the SIMD width 2, not 3 long"):
        Add(signed(4), None, signed(8), simd=2, b_constants=[1, 2, 3], **params())


def test_init_constant_not_an_integer():
    with pytest.raises(TypeError, match=r"Constant 1 of b must be an integer, not 2.5"):
        Add(signed(4), None, signed(8), b_constants=[1, 2.5], **params())


def test_init_wrong_simd():
    with pytest.raises(TypeError, match=r"SIMD width must be a positive integer, not 0"):
        Add(signed(4), unsigned(3), signed(8), simd=0, **params())


@settings(max_examples=25, deadline=None)
@given(shapes(), shapes(), shapes(), st.integers(1, 4), st.data(),
       st.lists(st.floats(0, 0.6), min_size=2, max_size=2), st.floats(0, 0.6),
       st.integers(0, 2**16))
def test_sim(a_type, b_type, y_type, simd, draw, gaps, stall, seed):
    (ab, a_signed), (bb, b_signed), (yb, y_signed) = a_type, b_type, y_type
    za = draw.draw(st.integers(*intops.qrange(ab, a_signed)))
    zb = draw.draw(st.integers(*intops.qrange(bb, b_signed)))
    zy = draw.draw(st.integers(*intops.qrange(yb, y_signed)))
    n = draw.draw(st.integers(0, 20))
    m_bits = draw.draw(st.sampled_from([4, 16, 24]))
    ma = draw.draw(st.integers(0, (1 << m_bits) - 1))
    mb = draw.draw(st.integers(0, (1 << m_bits) - 1))
    ylo, yhi = intops.qrange(yb, y_signed)
    lo, hi = sorted((draw.draw(st.integers(ylo, yhi)), draw.draw(st.integers(ylo, yhi))))
    lo, hi = draw.draw(st.sampled_from([(lo, hi), (ylo, yhi)]))
    dut = Add(element_shape(ab, a_signed), element_shape(bb, b_signed),
              element_shape(yb, y_signed), a_zero_point=za, b_zero_point=zb, a_multiplier=ma,
              b_multiplier=mb, shift=n, out_zero_point=zy, lo=lo, hi=hi, simd=simd)
    rng = np.random.default_rng(seed)
    count = 12 * simd
    a = codes(rng, (count,), ab, a_signed)
    b = codes(rng, (count,), bb, b_signed)
    got = []

    async def put_a(ctx):
        await put_all(ctx, dut.a, beats(a, simd), gap_prob=gaps[0], seed=seed)

    async def put_b(ctx):
        await put_all(ctx, dut.b, beats(b, simd), gap_prob=gaps[1], seed=seed + 1)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count // simd, stall_prob=stall, seed=seed + 2))

    simulate(dut, put_a, put_b, consumer)
    np.testing.assert_array_equal(unbeat(got), add_model(a, b, za, zb, ma, mb, n, zy, lo, hi))


def constants_model(a, k, za, zb, ma, mb, n, zy, lo, hi, rounding):
    """docs/semantics.md "BiasAdd" as ``Add`` computes it: element ``p`` adds ``k[p mod C]``."""
    a = np.asarray(a, dtype=np.int64)
    b = np.resize(np.asarray(k, dtype=np.int64), a.shape)
    return intops.requantize(ma * (a - za) + mb * (b - zb), 1, n, zy, lo, hi, rounding)


@settings(max_examples=30, deadline=None)
@given(shapes(), shapes(), st.integers(1, 3), st.integers(1, 4), st.data(), st.floats(0, 0.6),
       st.floats(0, 0.6), st.integers(0, 2**16))
def test_sim_constants(a_type, y_type, simd, folds, draw, gap, stall, seed):
    """Per-channel constants cycled by channel over the stream (``C = simd * folds`` channels, the
    stream several whole maps long and ending mid-map), under random input gaps and output stalls:
    every element equals the model, for both rounding rules and both ways of multiplying."""
    (ab, a_signed), (yb, y_signed) = a_type, y_type
    za = draw.draw(st.integers(*intops.qrange(ab, a_signed)))
    zy = draw.draw(st.integers(*intops.qrange(yb, y_signed)))
    n = draw.draw(st.integers(0, 30))
    ma = draw.draw(st.integers(0, (1 << 24) - 1))
    mb = draw.draw(st.sampled_from([0, 1, 3, 1 << 10]))
    zb = draw.draw(st.integers(-100, 100))
    rounding = draw.draw(st.sampled_from(["half_up", "half_even"]))
    mode = draw.draw(st.sampled_from([RequantMode.MULTIPLY, RequantMode.SHIFT_ADD]))
    channels = simd * folds
    rng = np.random.default_rng(seed)
    spread = max(1, ma) << ab
    k = [int(v) for v in rng.integers(-spread, spread + 1, channels)]
    if draw.draw(st.booleans()):
        k[0] = k[-1] = int(draw.draw(st.integers(-(1 << 40), 1 << 40)))   # wide constants
    if draw.draw(st.booleans()) and n > 0:           # every sum an exact tie: the rounding decides
        ma, mb = (ma >> n) << n, 1
        k = [zb + (1 << (n - 1)) + (int(v) << n) for v in rng.integers(-4, 4, channels)]
    ylo, yhi = intops.qrange(yb, y_signed)
    lo, hi = sorted((draw.draw(st.integers(ylo, yhi)), draw.draw(st.integers(ylo, yhi))))
    lo, hi = draw.draw(st.sampled_from([(lo, hi), (ylo, yhi)]))
    dut = Add(element_shape(ab, a_signed), None, element_shape(yb, y_signed), a_zero_point=za,
              b_zero_point=zb, a_multiplier=ma, b_multiplier=mb, shift=n, out_zero_point=zy, lo=lo, hi=hi,
              simd=simd, rounding=rounding, requant=mode, b_constants=k)
    count = (3 * folds + draw.draw(st.integers(0, folds - 1))) * simd
    a = codes(rng, (count,), ab, a_signed)
    got = []

    async def put_a(ctx):
        await put_all(ctx, dut.a, beats(a, simd), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count // simd, stall_prob=stall, seed=seed + 2))

    simulate(dut, put_a, consumer)
    np.testing.assert_array_equal(unbeat(got), constants_model(a, k, za, zb, ma, mb, n, zy, lo, hi, rounding))


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
def test_sim_rounding_of_ties(rounding):
    """``(a + b) / 4`` with every sum a tie (2 mod 4): half up and half to even differ on every other."""
    a = np.array([0, 2, 4, 6, -2, -6, 10, 14], dtype=np.int64)
    dut = Add(signed(8), signed(8), signed(8), rounding=rounding, **params(shift=2))
    got = []

    async def put_a(ctx):
        await put_all(ctx, dut.a, beats(a, 1))

    async def put_b(ctx):
        await put_all(ctx, dut.b, beats(np.zeros_like(a), 1))

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, len(a)))

    simulate(dut, put_a, put_b, consumer)
    want = intops.ROUNDING[rounding](a, 2)
    np.testing.assert_array_equal(unbeat(got), want)
    assert not np.array_equal(want, intops.ROUNDING["half_up" if rounding == "half_even" else "half_even"](a, 2))


def test_join_waits_for_both():
    """``a`` alone is not taken; once ``b`` arrives both are taken in the same cycle."""
    dut = Add(unsigned(4), unsigned(4), unsigned(5), **params())

    async def tb(ctx):
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.a.payload, [3])
        ctx.set(dut.o.ready, 1)
        for _ in range(3):
            await ctx.tick()
            assert not ctx.get(dut.a.ready) and not ctx.get(dut.o.valid)
        ctx.set(dut.b.valid, 1)
        ctx.set(dut.b.payload, [9])
        assert ctx.get(dut.a.ready) and ctx.get(dut.b.ready)
        await ctx.tick()
        ctx.set(dut.a.valid, 0)
        ctx.set(dut.b.valid, 0)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == [12]

    simulate(dut, tb)
