# amaranth: UnusedElaboratable=no
"""SlidingWindow against the numpy window model: every element of every window, under
backpressure, over shapes, kernels, strides, paddings, SIMD folds and element types."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.window import SlidingWindow

from .dataflow_models import beats, codes, element_shape, simulate, unbeat, windows_model
from .streams import get_all, put_all


def test_init():
    dut = SlidingWindow(signed(4), height=5, width=7, channels=6, kernel=(3, 2), stride=(2, 1),
                        padding=(1, 0, 1, 0), pad_value=-3, simd=3)
    assert dut.output_size == (3, 6)
    assert dut.buffer_rows == 5
    assert dut.window_beats == 3 * 2 * 6 // 3
    assert dut.simd == 3


def test_init_wrong_shape():
    with pytest.raises(TypeError, match=r"Element shape must be a signed or unsigned shape of "
                                        r"1 to 32 bits, not 0"):
        SlidingWindow(0, height=2, width=2, channels=1, kernel=1)


def test_init_wrong_height():
    with pytest.raises(TypeError, match=r"Height must be a positive integer, not 0"):
        SlidingWindow(unsigned(2), height=0, width=2, channels=1, kernel=1)


def test_init_wrong_kernel():
    with pytest.raises(TypeError, match=r"Kernel must be a positive integer or a pair of positive "
                                        r"integers, not \(3, 0\)"):
        SlidingWindow(unsigned(2), height=4, width=4, channels=1, kernel=(3, 0))


def test_init_wrong_stride():
    with pytest.raises(TypeError, match=r"Stride must be a positive integer or a pair of positive "
                                        r"integers, not 'x'"):
        SlidingWindow(unsigned(2), height=4, width=4, channels=1, kernel=1, stride="x")


def test_init_wrong_padding():
    with pytest.raises(TypeError, match=r"Padding must be a non-negative integer or a tuple "
                                        r"\(top, left, bottom, right\) of them, not \(1, 1\)"):
        SlidingWindow(unsigned(2), height=4, width=4, channels=1, kernel=1, padding=(1, 1))


def test_init_wrong_simd():
    with pytest.raises(ValueError, match=r"SIMD width must divide the channel count 6, not 4"):
        SlidingWindow(unsigned(2), height=4, width=4, channels=6, kernel=1, simd=4)


def test_init_wrong_kernel_size():
    with pytest.raises(ValueError, match=r"Kernel \(4, 2\) must fit the padded input \(3, 4\)"):
        SlidingWindow(unsigned(2), height=2, width=4, channels=1, kernel=(4, 2),
                      padding=(1, 0, 0, 0))


def test_init_wrong_pad_value():
    with pytest.raises(ValueError, match=r"Pad value must be in the element shape's range "
                                         r"-2..1, not 2"):
        SlidingWindow(signed(2), height=2, width=2, channels=1, kernel=1, pad_value=2)


def run_window(dut, x_images, *, gap=0.0, stall=0.0, seed=0):
    """Sends the images, returns the received elements as a flat array."""
    ho, wo = dut.output_size
    count = len(x_images) * ho * wo * dut.window_beats
    got = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(np.stack(x_images), dut.simd), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count, stall_prob=stall, seed=seed + 1))

    simulate(dut, producer, consumer)
    return unbeat(got)


@st.composite
def window_cases(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
    top, left, bottom, right = padding
    kernel = (draw(st.integers(1, min(5, h + top + bottom))),
              draw(st.integers(1, min(5, w + left + right))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    channels = draw(st.integers(1, 4))
    simd = draw(st.sampled_from([d for d in range(1, channels + 1) if channels % d == 0]))
    return dict(height=h, width=w, channels=channels, kernel=kernel, stride=stride,
                padding=padding, simd=simd)


@settings(max_examples=25, deadline=None)
@given(window_cases(), st.integers(1, 8), st.booleans(), st.integers(1, 2), st.floats(0, 0.5),
       st.floats(0, 0.5), st.integers(0, 2**16))
def test_sim(case, bits, is_signed, images, gap, stall, seed):
    rng = np.random.default_rng(seed)
    lo, hi = intops.qrange(bits, is_signed)
    pad_value = int(rng.integers(lo, hi + 1))
    dut = SlidingWindow(element_shape(bits, is_signed), pad_value=pad_value, **case)
    x = [codes(rng, (case["height"], case["width"], case["channels"]), bits, is_signed)
         for _ in range(images)]
    got = run_window(dut, x, gap=gap, stall=stall, seed=seed)
    want = np.concatenate([windows_model(xi, case["kernel"], case["stride"], case["padding"],
                                         pad_value).reshape(-1) for xi in x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", [
    dict(height=1, width=1, channels=2, kernel=1, stride=1, padding=0, simd=2),
    dict(height=4, width=3, channels=2, kernel=(4, 3), stride=1, padding=0, simd=1),
    dict(height=3, width=3, channels=1, kernel=3, stride=1, padding=(2, 2, 2, 2), simd=1),
    dict(height=7, width=5, channels=2, kernel=1, stride=(3, 2), padding=0, simd=1),
    dict(height=6, width=6, channels=4, kernel=3, stride=2, padding=(1, 1, 0, 0), simd=2),
])
def test_sim_corner(case):
    """1x1, whole-input kernels, all-padding windows, unused tail rows, strides with padding."""
    rng = np.random.default_rng(1)
    dut = SlidingWindow(signed(3), pad_value=-4, **case)
    x = [codes(rng, (case["height"], case["width"], case["channels"]), 3, True)
         for _ in range(3)]
    got = run_window(dut, x, gap=0.3, stall=0.3)
    kernel = case["kernel"] if isinstance(case["kernel"], tuple) else (case["kernel"],) * 2
    stride = case["stride"] if isinstance(case["stride"], tuple) else (case["stride"],) * 2
    padding = case["padding"] if isinstance(case["padding"], tuple) else (case["padding"],) * 4
    want = np.concatenate([windows_model(xi, kernel, stride, padding, -4).reshape(-1)
                           for xi in x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", [
    dict(height=6, width=6, channels=2, kernel=3, stride=1, padding=1, simd=1),
    dict(height=5, width=8, channels=4, kernel=(2, 3), stride=1, padding=0, simd=2),
    dict(height=8, width=8, channels=2, kernel=1, stride=1, padding=0, simd=2),
    dict(height=8, width=6, channels=1, kernel=2, stride=2, padding=0, simd=1),
])
def test_throughput(case):
    """No backpressure, input always valid: per image, the unit takes at most
    ``max(input beats, output beats)`` cycles plus 5% and a few cycles at the boundary; the
    first image also waits for the rows of its first window."""
    images = 3
    dut = SlidingWindow(unsigned(4), **case)
    ho, wo = dut.output_size
    out_beats = ho * wo * dut.window_beats
    in_beats = case["height"] * case["width"] * case["channels"] // case["simd"]
    rng = np.random.default_rng(0)
    x = [codes(rng, (case["height"], case["width"], case["channels"]), 4, False)
         for _ in range(images)]
    last_cycle = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(np.stack(x), dut.simd))

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = received = 0
        while received < images * out_beats:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            cycle += 1
            received += valid
        last_cycle.append(cycle)

    simulate(dut, producer, consumer)
    kh = case["kernel"] if isinstance(case["kernel"], int) else case["kernel"][0]
    fill = kh * in_beats // case["height"] + 3
    bound = fill + images * (1.05 * max(in_beats, out_beats) + 2)
    assert last_cycle[0] <= bound, (last_cycle[0], bound)


def run_checking_ready(case, images, gap, stall, seed):
    """`run_window` that also checks, on every cycle, that the input's ready (a register computed
    a cycle ahead from the row and image ends) equals ``written < limit``: the rows written, and
    the rows that may be; and that the reader's go (``have_rows``, a register too) equals
    ``written >= need``, the rows the current output row needs. Returns the received windows and
    the cycles where either did not."""
    rng = np.random.default_rng(seed)
    dut = SlidingWindow(signed(4), pad_value=-8, **case)
    top = dut.elaborate(None)               # simulated itself: its signals are the ones below
    written, limit = dut._ready_terms
    have_rows, written_, need = dut._have_terms
    x = [codes(rng, (case["height"], case["width"], case["channels"]), 4, True) for _ in range(images)]
    ho, wo = dut.output_size
    count = images * ho * wo * dut.window_beats
    got, mismatches = [], []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(np.stack(x), dut.simd), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count, stall_prob=stall, seed=seed + 1))

    async def checker(ctx):
        cycle = 0
        async for _, _, ready, w, lim, have, n in ctx.tick().sample(dut.i.ready, written, limit, have_rows, need):
            cycle += 1
            if ready != (w < lim):
                mismatches.append((cycle, "ready", ready, w, lim))
            if have != (w >= n):
                mismatches.append((cycle, "have_rows", have, w, n))

    limit_cycles = 40 * (count + len(x) * np.prod(x[0].shape) // dut.simd) + 2_000   # far above a stalled rate
    simulate(top, producer, consumer, background=[checker], max_cycles=int(limit_cycles))
    want = np.concatenate([windows_model(xi, dut._kernel, dut._stride, dut._padding, -8).reshape(-1) for xi in x])
    return unbeat(got), want, mismatches


@settings(max_examples=30, deadline=None)
@given(window_cases(), st.integers(2, 3), st.floats(0, 0.3), st.floats(0.2, 0.8), st.integers(0, 2**16))
def test_ready_is_written_below_limit_every_cycle(case, images, gap, stall, seed):
    """Output stalled so that the writer runs into the limit: the ready is exact, the windows right."""
    got, want, mismatches = run_checking_ready(case, images, gap, stall, seed)
    assert not mismatches, mismatches[:5]
    np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(window_cases(), st.integers(2, 3), st.floats(0, 0.3), st.floats(0.2, 0.8), st.integers(0, 2**16))
def test_the_row_values_computed_past_the_table_are_the_tables(case, images, gap, stall, seed):
    """Past `TABLE_ROWS` output rows the values for the row after next (``limit_after``,
    ``need_after``) are computed from the row's registers rather than read from a table: with
    the table limited to 2 rows, every window of 3 or more output rows takes that path, and its
    ready, ``have_rows`` and windows are exact."""
    from qfab.hw import window
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(window, "TABLE_ROWS", 2)
        got, want, mismatches = run_checking_ready(case, images, gap, stall, seed)
    assert not mismatches, mismatches[:5]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("table_rows", [64, 2])
@pytest.mark.parametrize("case", [
    # top padding 2 at stride 1: the limit does not move at the end of output row 0
    dict(height=5, width=3, channels=1, kernel=3, stride=1, padding=(2, 0, 0, 0), simd=1),
    # the last output rows need no new input row: the limit stops at H + R
    dict(height=4, width=2, channels=1, kernel=2, stride=1, padding=(0, 0, 2, 0), simd=1),
    # the bottom row is in no window: the last output row (``need_after`` two rows ahead) still
    # waits for the whole image, or ``written`` loses H before the image is written
    dict(height=7, width=3, channels=1, kernel=2, stride=2, padding=(0, 0, 0, 0), simd=1),
])
def test_ready_where_the_limit_stands_still(case, table_rows, monkeypatch):
    """Row ends at which ``limit`` does not move, hit in the cycle a row is written: where a ready
    that missed this cycle's row would let the writer overwrite a row still to be read (the row
    values from the table, and computed: ``table_rows``)."""
    from qfab.hw import window
    monkeypatch.setattr(window, "TABLE_ROWS", table_rows)
    for seed in range(60):
        got, want, mismatches = run_checking_ready(case, 3, 0.1 * (seed % 6), 0.1 * (seed // 6 % 8), seed)
        assert not mismatches, (seed, mismatches[:5])
        np.testing.assert_array_equal(got, want)
