# amaranth: UnusedElaboratable=no
"""StreamFIFO, WidthConverter and Fork: every element arrives once, in order, under backpressure."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from qfab.hw.plumbing import Fork, StreamFIFO, WidthConverter

from .dataflow_models import beats, codes, element_shape, shapes, simulate, unbeat
from .streams import get_all, put_all

SETTINGS = settings(max_examples=20, deadline=None)


# --- StreamFIFO --------------------------------------------------------------------------------

def test_fifo_init():
    dut = StreamFIFO(signed(5), 3, 8)
    assert dut.depth == 8
    assert dut.layout == data.ArrayLayout(signed(5), 3)
    assert dut.level.shape() == unsigned(4)


def test_fifo_init_wrong_shape():
    with pytest.raises(TypeError, match=r"Element shape must be a signed or unsigned shape of "
                                        r"1 to 32 bits, not 'x'"):
        StreamFIFO("x", 1, 2)


def test_fifo_init_wrong_n():
    with pytest.raises(TypeError, match=r"Elements per beat must be a positive integer, not 0"):
        StreamFIFO(signed(4), 0, 2)


def test_fifo_init_wrong_depth():
    with pytest.raises(TypeError, match=r"FIFO depth must be a positive integer, not -1"):
        StreamFIFO(signed(4), 1, -1)


@SETTINGS
@given(shapes(), st.integers(1, 3), st.integers(1, 6), st.floats(0, 0.6), st.floats(0, 0.6),
       st.integers(0, 2**16))
def test_fifo_sim(elem, n, depth, gap, stall, seed):
    bits, is_signed = elem
    dut = StreamFIFO(element_shape(bits, is_signed), n, depth)
    x = codes(np.random.default_rng(seed), (24 * n,), bits, is_signed)
    got, levels = [], set()

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, n), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, 24, stall_prob=stall, seed=seed + 1))

    async def monitor(ctx):
        async for _, _, level in ctx.tick().sample(dut.level):
            assert level <= depth
            levels.add(level)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    np.testing.assert_array_equal(unbeat(got), x)
    assert max(levels) >= 1


def test_fifo_level_full():
    """With the consumer stopped, the level climbs to the depth and the input stalls."""
    dut = StreamFIFO(unsigned(4), 1, 5)

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        for k in range(10):
            ctx.set(dut.i.payload, [k])
            await ctx.tick()
        assert ctx.get(dut.level) == 5
        assert not ctx.get(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        got = await get_all(ctx, dut.o, 5)
        assert got == [[k] for k in range(5)]
        await ctx.tick()
        assert ctx.get(dut.level) == 0

    simulate(dut, tb)


# --- WidthConverter ----------------------------------------------------------------------------

def test_converter_init():
    dut = WidthConverter(unsigned(3), 4, 6)
    assert (dut.n_in, dut.n_out) == (4, 6)
    assert dut.capacity == 4 + 6 + 4 - 2


def test_converter_init_wrong_n_in():
    with pytest.raises(TypeError, match=r"Input elements per beat must be a positive integer, "
                                        r"not 1.5"):
        WidthConverter(unsigned(3), 1.5, 2)


def test_converter_init_wrong_n_out():
    with pytest.raises(TypeError, match=r"Output elements per beat must be a positive integer, "
                                        r"not 0"):
        WidthConverter(unsigned(3), 2, 0)


@SETTINGS
@given(shapes(), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.floats(0, 0.6),
       st.floats(0, 0.6), st.integers(0, 2**16))
def test_converter_sim(elem, n_in, n_out, reps, gap, stall, seed):
    bits, is_signed = elem
    dut = WidthConverter(element_shape(bits, is_signed), n_in, n_out)
    length = np.lcm(n_in, n_out) * reps
    x = codes(np.random.default_rng(seed), (length,), bits, is_signed)
    got = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, n_in), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, length // n_out, stall_prob=stall, seed=seed + 1))

    simulate(dut, producer, consumer)
    np.testing.assert_array_equal(unbeat(got), x)


@pytest.mark.parametrize("n_in, n_out", [(1, 4), (4, 1), (2, 3), (3, 2), (6, 4), (5, 5)])
def test_converter_throughput(n_in, n_out):
    """No backpressure: the slower side moves one beat every cycle after the first output."""
    dut = WidthConverter(unsigned(4), n_in, n_out)
    length = int(np.lcm(n_in, n_out)) * 12
    x = np.arange(length) % 16
    got, cycles = [], []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, n_in))

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = 0
        while len(got) < length // n_out:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            if valid:
                got.append([int(v) for v in payload])
                cycles.append(cycle)

    simulate(dut, producer, consumer)
    np.testing.assert_array_equal(unbeat(got), x)
    span = cycles[-1] - cycles[0] + 1
    slow_beats = max(length // n_in, length // n_out)
    # the slower side moves every cycle: the outputs spread over at most its beat count
    assert span <= slow_beats + (n_out + n_in - 1) // n_in, (span, slow_beats)


# --- Fork --------------------------------------------------------------------------------------

def test_fork_init():
    dut = Fork(signed(8), 2, count=3)
    assert dut.count == 3
    assert len(dut.o) == 3


def test_fork_init_wrong_count():
    with pytest.raises(TypeError, match=r"Output count must be an integer of at least 2, not 1"):
        Fork(signed(8), 2, count=1)


@SETTINGS
@given(shapes(), st.integers(1, 3), st.integers(2, 3), st.floats(0, 0.6),
       st.lists(st.floats(0, 0.8), min_size=3, max_size=3), st.integers(0, 2**16))
def test_fork_sim(elem, n, count, gap, stalls, seed):
    bits, is_signed = elem
    dut = Fork(element_shape(bits, is_signed), n, count=count)
    x = codes(np.random.default_rng(seed), (30 * n,), bits, is_signed)
    got = [[] for _ in range(count)]

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, n), gap_prob=gap, seed=seed)

    def consumer(k):
        async def run(ctx):
            got[k].extend(await get_all(ctx, dut.o[k], 30, stall_prob=stalls[k], seed=seed + k))
        return run

    simulate(dut, producer, *[consumer(k) for k in range(count)])
    for k in range(count):
        np.testing.assert_array_equal(unbeat(got[k]), x)


def test_fork_independent():
    """One consumer that never stalls takes each beat as soon as it is offered, even while the
    other one holds the beat back; the input is accepted only when both took it."""
    dut = Fork(unsigned(4), 1)

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, [7])
        ctx.set(dut.o[0].ready, 1)
        ctx.set(dut.o[1].ready, 0)
        await ctx.delay(1e-9)
        assert ctx.get(dut.o[0].valid) and ctx.get(dut.o[1].valid)
        assert not ctx.get(dut.i.ready)
        await ctx.tick()
        assert not ctx.get(dut.o[0].valid)        # already taken by output 0
        assert ctx.get(dut.o[1].valid)
        ctx.set(dut.o[1].ready, 1)
        assert ctx.get(dut.i.ready)
        await ctx.tick()
        assert ctx.get(dut.o[0].valid) and ctx.get(dut.o[1].valid)   # the next beat

    simulate(dut, tb)
