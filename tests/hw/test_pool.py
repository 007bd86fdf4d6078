# amaranth: UnusedElaboratable=no
"""MaxPool, AvgPool and GlobalAvgPool against docs/semantics.md (numpy models on intops)."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.pool import AvgPool, GlobalAvgPool, MaxPool

from .dataflow_models import avgpool_model, beats, codes, element_shape, maxpool_model, shapes, simulate, unbeat
from .streams import get_all, put_all

SETTINGS = settings(max_examples=25, deadline=None)


def run_pool(dut, x, count, *, gap, stall, seed):
    got = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, dut.simd), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count // dut.simd, stall_prob=stall, seed=seed + 1))

    simulate(dut, producer, consumer)
    return unbeat(got)


@st.composite
def folding(draw):
    channels = draw(st.integers(1, 6))
    simd = draw(st.sampled_from([d for d in range(1, channels + 1) if channels % d == 0]))
    return channels, simd


@st.composite
def clamp_range(draw, bits, is_signed):
    lo, hi = intops.qrange(bits, is_signed)
    a, b = sorted((draw(st.integers(lo, hi)), draw(st.integers(lo, hi))))
    return draw(st.sampled_from([(a, b), (lo, hi)]))


# --- MaxPool -----------------------------------------------------------------------------------

def test_maxpool_init():
    dut = MaxPool(signed(4), window=9, channels=6, simd=2)
    assert (dut.window, dut.channels, dut.simd) == (9, 6, 2)


def test_maxpool_init_wrong_window():
    with pytest.raises(TypeError, match=r"Window size must be a positive integer, not 0"):
        MaxPool(signed(4), window=0, channels=1)


def test_maxpool_init_wrong_simd():
    with pytest.raises(ValueError, match=r"SIMD width must divide the channel count 6, not 4"):
        MaxPool(signed(4), window=4, channels=6, simd=4)


def test_maxpool_init_wrong_clamp():
    with pytest.raises(ValueError, match=r"Output clamp hi must be in the output shape's range "
                                         r"-8..7, not 8"):
        MaxPool(signed(4), window=4, channels=1, hi=8)
    with pytest.raises(ValueError, match=r"Output clamp lo must not exceed hi, not 3 > 2"):
        MaxPool(signed(4), window=4, channels=1, lo=3, hi=2)


@SETTINGS
@given(shapes(), st.integers(1, 9), folding(), st.integers(1, 4), st.data(), st.floats(0, 0.5),
       st.floats(0, 0.5), st.integers(0, 2**16))
def test_maxpool_sim(elem, window, fold, pixels, draw, gap, stall, seed):
    bits, is_signed = elem
    channels, simd = fold
    lo, hi = draw.draw(clamp_range(bits, is_signed))
    dut = MaxPool(element_shape(bits, is_signed), window=window, channels=channels, simd=simd,
                  lo=lo, hi=hi)
    x = codes(np.random.default_rng(seed), (pixels, window * channels), bits, is_signed)
    got = run_pool(dut, x, pixels * channels, gap=gap, stall=stall, seed=seed)
    np.testing.assert_array_equal(got, maxpool_model(x, channels, lo, hi).reshape(-1))


# --- AvgPool / GlobalAvgPool ------------------------------------------------------------------

def avg_params(draw, bits, is_signed):
    """zx, (M0, n), output type, zy, lo, hi, drawn like a quantizer would produce them."""
    zx = draw.draw(st.integers(*intops.qrange(bits, is_signed)))
    out_bits, out_signed = draw.draw(shapes())
    zy = draw.draw(st.integers(*intops.qrange(out_bits, out_signed)))
    m0, n = intops.dyadic(draw.draw(st.floats(1e-3, 4.0)), m_bits=draw.draw(st.sampled_from(
        [8, 16, 24])))
    if draw.draw(st.booleans()):
        m0, n = draw.draw(st.integers(0, 300)), draw.draw(st.integers(0, 10))
    lo, hi = draw.draw(clamp_range(out_bits, out_signed))
    return dict(zero_point=zx, multiplier=m0, shift=n,
                out_shape=element_shape(out_bits, out_signed), out_zero_point=zy, lo=lo, hi=hi)


def test_avgpool_init_wrong_zero_point():
    with pytest.raises(ValueError, match=r"Zero point must be in the element shape's range "
                                         r"0..15, not -1"):
        AvgPool(unsigned(4), window=4, channels=1, zero_point=-1, multiplier=1, shift=0,
                out_shape=unsigned(4), out_zero_point=0)


def test_avgpool_init_wrong_shift():
    with pytest.raises(ValueError, match=r"Shift must be in 0..62, not 63"):
        AvgPool(unsigned(4), window=4, channels=1, zero_point=0, multiplier=1, shift=63,
                out_shape=unsigned(4), out_zero_point=0)


def test_avgpool_init_wrong_multiplier():
    with pytest.raises(TypeError, match=r"Multiplier must be a non-negative integer, not -3"):
        AvgPool(unsigned(4), window=4, channels=1, zero_point=0, multiplier=-3, shift=0,
                out_shape=unsigned(4), out_zero_point=0)


def test_avgpool_init_wrong_out_zero_point():
    with pytest.raises(ValueError, match=r"Output zero point must be in the output shape's range "
                                         r"-2..1, not 2"):
        AvgPool(unsigned(4), window=4, channels=1, zero_point=0, multiplier=1, shift=0,
                out_shape=signed(2), out_zero_point=2)


def test_global_avgpool_init_wrong_height():
    with pytest.raises(TypeError, match=r"Height must be a positive integer, not None"):
        GlobalAvgPool(unsigned(4), height=None, width=2, channels=1, zero_point=0, multiplier=1,
                      shift=0, out_shape=unsigned(4), out_zero_point=0)


@SETTINGS
@given(shapes(), st.integers(1, 9), folding(), st.integers(1, 3), st.data(), st.floats(0, 0.5),
       st.floats(0, 0.5), st.integers(0, 2**16))
def test_avgpool_sim(elem, window, fold, pixels, draw, gap, stall, seed):
    bits, is_signed = elem
    channels, simd = fold
    p = avg_params(draw, bits, is_signed)
    dut = AvgPool(element_shape(bits, is_signed), window=window, channels=channels, simd=simd, **p)
    x = codes(np.random.default_rng(seed), (pixels, window * channels), bits, is_signed)
    got = run_pool(dut, x, pixels * channels, gap=gap, stall=stall, seed=seed)
    want = avgpool_model(x, channels, p["zero_point"], p["multiplier"], p["shift"],
                         p["out_zero_point"], p["lo"], p["hi"])
    np.testing.assert_array_equal(got, want.reshape(-1))


@SETTINGS
@given(shapes(), st.integers(1, 4), st.integers(1, 4), folding(), st.integers(1, 2), st.data(),
       st.floats(0, 0.5), st.floats(0, 0.5), st.integers(0, 2**16))
def test_global_avgpool_sim(elem, height, width, fold, images, draw, gap, stall, seed):
    bits, is_signed = elem
    channels, simd = fold
    p = avg_params(draw, bits, is_signed)
    dut = GlobalAvgPool(element_shape(bits, is_signed), height=height, width=width,
                        channels=channels, simd=simd, **p)
    x = codes(np.random.default_rng(seed), (images, height, width, channels), bits, is_signed)
    got = run_pool(dut, x, images * channels, gap=gap, stall=stall, seed=seed)
    acc = (x - p["zero_point"]).sum(axis=(1, 2))
    want = intops.requantize(acc, p["multiplier"], p["shift"], p["out_zero_point"], p["lo"],
                             p["hi"])
    np.testing.assert_array_equal(got, want.reshape(-1))


def test_avgpool_rounding():
    """Round half up, arithmetic shift: -2.5 -> -2, 2.5 -> 3, -0.5 -> 0 (not toward zero)."""
    dut = AvgPool(signed(4), window=2, channels=1, zero_point=0, multiplier=1, shift=1,
                  out_shape=signed(4), out_zero_point=0)
    x = np.array([[-3, -2], [2, 3], [-1, 0], [-8, -7]])   # sums -5, 5, -1, -15
    got = run_pool(dut, x, 4, gap=0.0, stall=0.0, seed=0)
    np.testing.assert_array_equal(got, [-2, 3, 0, -7])


def test_pool_throughput():
    """No backpressure: one input beat per cycle."""
    dut = MaxPool(unsigned(4), window=4, channels=4, simd=2)
    x = np.arange(64 * 16).reshape(64, 16) % 16
    cycles = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, 2))

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = received = 0
        while received < 64 * 2:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            cycle += 1
            received += valid
        cycles.append(cycle)

    simulate(dut, producer, consumer)
    assert cycles[-1] <= 64 * 8 + 2
