# amaranth: UnusedElaboratable=no
"""WideWindow against `qfab.compiler.ops.common.windows`: every element of every window, under
random input gaps and output stalls, over kernels, strides, paddings, channel counts, pixels per
beat in and out and element types; the stream rules; the throughput bound and the latency."""

import random

import numpy as np
import pytest
from amaranth import signed, unsigned
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.compiler.ops.common import windows
from qfab.hw.wide_window import WideWindow

from .dataflow_models import beats, codes, element_shape, simulate, unbeat
from .streams import get_all, put_all


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def out_width(width, kernel, stride, padding):
    return (width + padding[1] + padding[3] - kernel[1]) // stride[1] + 1


def run_wide(dut, images, *, gap=0.0, stall=0.0, seed=0):
    """Sends the images (H, W, C), returns the received elements as a flat array."""
    ho, wo = dut.output_size
    count = len(images) * ho * wo // dut.pixels
    got = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(np.stack(images), dut.in_pixels * images[0].shape[2]),
                      gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count, stall_prob=stall, seed=seed + 1))

    simulate(dut, producer, consumer)
    return unbeat(got)


def check_windows(shape, *, height, width, channels, kernel, stride, padding, pad_value, pixels, in_pixels,
                  images=3, gap=0.3, stall=0.3, seed=0):
    """Simulate ``images`` random images and compare every element with the numpy windows."""
    dut = WideWindow(shape, height=height, width=width, channels=channels, kernel=kernel, stride=stride,
                     padding=padding, pad_value=pad_value, pixels=pixels, in_pixels=in_pixels)
    rng = np.random.default_rng(seed)
    x = [codes(rng, (height, width, channels), shape.width, shape.signed) for _ in range(images)]
    got = run_wide(dut, x, gap=gap, stall=stall, seed=seed)
    want = windows(np.stack(x), kernel, stride, padding, pad_value).reshape(-1)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# -- construction ------------------------------------------------------------------------------

def test_init():
    dut = WideWindow(signed(4), height=6, width=8, channels=3, kernel=(3, 2), stride=(2, 1),
                     padding=(1, 0, 1, 1), pad_value=-3, pixels=4, in_pixels=2)
    assert dut.shape == signed(4)
    assert dut.output_size == (3, 8)
    assert dut.window_size == 3 * 2 * 3
    assert (dut.pixels, dut.in_pixels) == (4, 2)
    assert dut.buffer_rows == 5                     # max(KH + SH, 2 KH + SH - 1 - top - bottom)
    assert dut.queue_columns == 5 + 5 - 1           # the row's last beat's 5, the next beat's 5
    assert dut.buffer_elements == 5 * 8 * 3
    assert dut.register_elements == (9 + 2) * 3 * 3
    assert dut.latency == 3 + 3                     # the first beat's 5 columns: 3 words of 2
    layout_i = dut.signature.members["i"].signature.members["payload"].shape
    layout_o = dut.signature.members["o"].signature.members["payload"].shape
    assert (layout_i.length, layout_o.length) == (2 * 3, 4 * 18)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(shape=0), TypeError, r"Element shape must be a signed or unsigned shape of 1 to 32 bits, not 0"),
    (dict(height=0), TypeError, r"Height must be a positive integer, not 0"),
    (dict(width=1.5), TypeError, r"Width must be a positive integer, not 1\.5"),
    (dict(channels=-1), TypeError, r"Channel count must be a positive integer, not -1"),
    (dict(kernel=(3, 0)), TypeError, r"Kernel must be a positive integer or a pair of positive integers, "
                                     r"not \(3, 0\)"),
    (dict(stride="x"), TypeError, r"Stride must be a positive integer or a pair of positive integers, not 'x'"),
    (dict(padding=(1, 1)), TypeError, r"Padding must be a non-negative integer or a tuple \(top, left, bottom, "
                                      r"right\) of them, not \(1, 1\)"),
    (dict(pixels=0), TypeError, r"Output pixels per beat must be a positive integer, not 0"),
    (dict(in_pixels=True), TypeError, r"Input pixels per beat must be a positive integer, not True"),
    (dict(kernel=(4, 2), padding=(1, 0, 0, 0)), ValueError,
     r"Kernel \(4, 2\) must fit the padded input \(3, 4\)"),
    (dict(shape=signed(2), pad_value=2), ValueError, r"Pad value must be in the element shape's range -2\.\.1, "
                                                     r"not 2"),
    (dict(in_pixels=3), ValueError, r"Input pixels per beat must divide the width 4, not 3"),
    (dict(kernel=2, pixels=2), ValueError, r"Output pixels per beat must divide the output width 3, not 2"),
])
def test_init_wrong(kwargs, error, message):
    args = dict(shape=unsigned(2), height=2, width=4, channels=1, kernel=1) | kwargs
    with pytest.raises(error, match=message):
        WideWindow(args.pop("shape"), **args)


# -- every element, against the numpy windows --------------------------------------------------

@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("kernel", [(kh, kw) for kh in (1, 2, 3) for kw in (1, 2, 3)])
def test_sim_kernel_stride(kernel, stride):
    """Each kernel and stride with a drawn size, padding (0 or 1 a side), channel count, pixels
    in and out, element type and pad value at an end of the type's range; 3 images, 30 % input
    gaps and output stalls."""
    rng = random.Random(hash((kernel, stride)) % 2**32)
    height, width = rng.randint(max(1, kernel[0] - 1), 7), rng.randint(max(1, kernel[1] - 1), 7)
    padding = tuple(rng.randint(0, 1) for _ in range(4))
    if kernel[0] > height + padding[0] + padding[2] or kernel[1] > width + padding[1] + padding[3]:
        padding = (1, 1, 1, 1)
    bits, is_signed = rng.randint(1, 8), rng.random() < 0.5
    lo, hi = intops.qrange(bits, is_signed)
    check_windows(element_shape(bits, is_signed), height=height, width=width, channels=rng.choice([1, 2, 3]),
                  kernel=kernel, stride=stride, padding=padding, pad_value=rng.choice([lo, hi]),
                  pixels=rng.choice(divisors(out_width(width, kernel, stride, padding))),
                  in_pixels=rng.choice(divisors(width)), seed=rng.randrange(2**16))


@st.composite
def wide_cases(draw):
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
    top, left, bottom, right = padding
    kernel = (draw(st.integers(1, min(4, height + top + bottom))), draw(st.integers(1, min(4, width + left + right))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return dict(height=height, width=width, channels=draw(st.integers(1, 4)), kernel=kernel, stride=stride,
                padding=padding, pixels=draw(st.sampled_from(divisors(out_width(width, kernel, stride, padding)))),
                in_pixels=draw(st.sampled_from(divisors(width))))


@settings(max_examples=40, deadline=None)
@given(wide_cases(), st.integers(1, 8), st.booleans(), st.integers(1, 3), st.floats(0, 0.6), st.floats(0, 0.6),
       st.integers(0, 2**16))
def test_sim(case, bits, is_signed, images, gap, stall, seed):
    lo, hi = intops.qrange(bits, is_signed)
    pad_value = random.Random(seed).randint(lo, hi)
    check_windows(element_shape(bits, is_signed), pad_value=pad_value, images=images, gap=gap, stall=stall,
                  seed=seed, **case)


@pytest.mark.parametrize("case", [
    dict(height=1, width=1, channels=2, kernel=1),                              # a 1x1 map
    dict(height=1, width=6, channels=1, kernel=(1, 3), padding=(0, 1, 0, 1), pixels=3, in_pixels=2),
    dict(height=5, width=1, channels=3, kernel=(3, 1), padding=(1, 0, 1, 0)),   # W = 1
    dict(height=4, width=3, channels=2, kernel=(4, 3)),                         # the whole input
    dict(height=3, width=3, channels=1, kernel=5, padding=1),                   # the whole padded input
    dict(height=3, width=3, channels=1, kernel=3, padding=(2, 2, 2, 2)),        # windows of padding only
    dict(height=7, width=5, channels=2, kernel=1, stride=(3, 2)),               # rows and columns skipped
    dict(height=6, width=8, channels=1, kernel=2, stride=3, padding=(0, 0, 1, 1), pixels=3),
    dict(height=6, width=6, channels=4, kernel=3, stride=2, padding=(1, 1, 0, 0), in_pixels=3),
    dict(height=8, width=8, channels=1, kernel=3, padding=1, pixels=8, in_pixels=8),   # a row per beat
    dict(height=5, width=6, channels=3, kernel=(2, 3), padding=(0, 2, 1, 0), pixels=2, in_pixels=6),
])
def test_sim_corner(case):
    """Maps of one row or column, kernels as large as the (padded) input, windows wholly in the
    padding, strides that skip input rows and columns, a whole row per beat in and out."""
    args = dict(stride=1, padding=0, pixels=1, in_pixels=1) | case
    args["kernel"] = args["kernel"] if isinstance(args["kernel"], tuple) else (args["kernel"],) * 2
    args["stride"] = args["stride"] if isinstance(args["stride"], tuple) else (args["stride"],) * 2
    args["padding"] = args["padding"] if isinstance(args["padding"], tuple) else (args["padding"],) * 4
    check_windows(signed(3), pad_value=-4, **args)


@pytest.mark.parametrize("shape,pad_value", [
    (unsigned(1), 0), (unsigned(1), 1), (signed(1), -1), (signed(1), 0),
    (unsigned(8), 0), (unsigned(8), 255), (signed(8), -128), (signed(8), 127),
])
def test_sim_element_types(shape, pad_value):
    """Signed and unsigned elements of 1 and 8 bits, the pad value at either end of the range."""
    check_windows(shape, height=5, width=6, channels=2, kernel=(3, 3), stride=(1, 2), padding=(1, 1, 1, 0),
                  pad_value=pad_value, pixels=1, in_pixels=2)


# -- stream rules -----------------------------------------------------------------------------

def test_stream_rules():
    """``o.valid`` does not depend on ``o.ready`` nor ``i.ready`` on ``i.valid`` within a cycle, and
    an offered output beat stays unchanged until taken."""
    dut = WideWindow(unsigned(3), height=5, width=4, channels=2, kernel=3, padding=1, pixels=2, in_pixels=2)
    rng = random.Random(3)
    x = codes(np.random.default_rng(3), (3, 5, 4, 2), 3, False)
    sent = beats(x, 4)
    ho, wo = dut.output_size
    total = 3 * ho * wo // 2
    received = []

    async def bench(ctx):
        held = None
        while len(received) < total:
            offer, take = bool(sent) and rng.random() < 0.7, rng.random() < 0.6
            if sent:
                ctx.set(dut.i.payload, sent[0])
            seen = set()
            for valid in (0, 1):
                for ready in (0, 1):
                    ctx.set(dut.i.valid, valid)
                    ctx.set(dut.o.ready, ready)
                    seen.add((ctx.get(dut.i.ready), ctx.get(dut.o.valid)))
            assert len(seen) == 1, seen
            ctx.set(dut.i.valid, offer)
            ctx.set(dut.o.ready, take)
            i_ready, o_valid = seen.pop()
            payload = [int(v) for v in ctx.get(dut.o.payload)]
            if held is not None:
                assert o_valid and payload == held
            held = payload if o_valid and not take else None
            if o_valid and take:
                received.append(payload)
            if offer and i_ready:
                sent.pop(0)
            await ctx.tick()

    simulate(dut, bench)
    want = windows(x, (3, 3), (1, 1), (1, 1, 1, 1), 0).reshape(-1)
    np.testing.assert_array_equal(unbeat(received), want)


# -- throughput and latency ---------------------------------------------------------------------

def cycles_to_last_beat(dut, images):
    """Cycles from the start until the last output beat, input always valid, output always ready."""
    ho, wo = dut.output_size
    total = len(images) * ho * wo // dut.pixels
    done = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(np.stack(images), dut.in_pixels * images[0].shape[2]))

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = received = 0
        while received < total:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            cycle += 1
            received += valid
        done.append(cycle)

    simulate(dut, producer, consumer)
    return done[0]


THROUGHPUT_CASES = [
    dict(height=8, width=8, channels=1, kernel=3, padding=1),                        # the digits
    dict(height=8, width=8, channels=1, kernel=3, padding=1, pixels=8, in_pixels=8),
    dict(height=12, width=12, channels=1, kernel=3, padding=0, pixels=2, in_pixels=2),
    dict(height=12, width=12, channels=1, kernel=3, padding=0, pixels=1, in_pixels=2),   # output bound
    dict(height=12, width=12, channels=3, kernel=5, padding=2, pixels=3, in_pixels=3),
    dict(height=12, width=12, channels=3, kernel=3, stride=2, padding=1, pixels=2, in_pixels=6),
    dict(height=10, width=8, channels=1, kernel=(4, 3), padding=(0, 0, 1, 1), in_pixels=2),
    dict(height=9, width=9, channels=2, kernel=2, stride=3, padding=(1, 0, 0, 1)),   # input bound
]


@pytest.mark.parametrize("case", THROUGHPUT_CASES)
def test_throughput(case):
    """No gaps or stalls: ``N`` images take at most ``N * max(H * W / in_pixels, HO * max(W /
    in_pixels, WO / pixels))`` cycles plus ``max(min(KH, H) * W / in_pixels, WO / pixels) + latency``."""
    dut = WideWindow(unsigned(4), **case)
    h, w, c = case["height"], case["width"], case["channels"]
    kh = case["kernel"] if isinstance(case["kernel"], int) else case["kernel"][0]
    ho, wo = dut.output_size
    words = w // dut.in_pixels
    per_image = max(h * words, ho * max(words, wo // dut.pixels))
    rng = np.random.default_rng(0)
    for n in (1, 3):
        x = [codes(rng, (h, w, c), 4, False) for _ in range(n)]
        fill = max(min(kh, h) * words, wo // dut.pixels) + dut.latency
        assert cycles_to_last_beat(dut, x) <= n * per_image + fill


@pytest.mark.parametrize("case", THROUGHPUT_CASES + [
    dict(height=6, width=6, channels=2, kernel=3, padding=0),                # the first beat: 3 words
    dict(height=6, width=6, channels=1, kernel=(2, 4), padding=(1, 1, 0, 0), in_pixels=2),
    dict(height=3, width=4, channels=1, kernel=(3, 2), pixels=3, in_pixels=4),
])
def test_latency(case):
    """``o.valid`` rises ``latency`` cycles after the input beat that completes the rows the first
    output beat needs."""
    dut = WideWindow(unsigned(4), **case)
    h, w, c = case["height"], case["width"], case["channels"]
    kh = case["kernel"] if isinstance(case["kernel"], int) else case["kernel"][0]
    padding = case.get("padding", 0)
    top = padding if isinstance(padding, int) else padding[0]
    last_beat = min(kh - top, h) * (w // dut.in_pixels) - 1     # of the rows the first beat needs
    payloads = beats(codes(np.random.default_rng(0), (h, w, c), 4, False), dut.in_pixels * c)
    cycles = {}

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        taken = cycle = 0
        while "valid" not in cycles:
            ctx.set(dut.i.payload, payloads[min(taken, len(payloads) - 1)])
            _, _, transfer, valid = await ctx.tick().sample(dut.i.valid & dut.i.ready, dut.o.valid)
            if transfer:
                if taken == last_beat:
                    cycles["input"] = cycle
                taken += 1
                ctx.set(dut.i.valid, taken < len(payloads))
            if valid:
                cycles["valid"] = cycle
            cycle += 1

    simulate(dut, bench)
    assert cycles["valid"] - cycles["input"] == dut.latency
