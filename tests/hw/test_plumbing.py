# amaranth: UnusedElaboratable=no
"""StreamFIFO, WidthConverter and Fork: every element arrives once, in order, under backpressure."""

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In
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

    simulate(dut, producer, consumer, background=[monitor])
    np.testing.assert_array_equal(unbeat(got), x)
    assert max(levels) >= 1


@pytest.mark.parametrize("slice_bits", [None, 3, 1])
def test_fifo_level_full(slice_bits):
    """With the consumer stopped, the level climbs to the depth and the input stalls."""
    dut = StreamFIFO(unsigned(4), 1, 5, slice_bits=slice_bits)

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


def test_fifo_slices():
    assert StreamFIFO(unsigned(8), 72, 4).slices == [64] * 9           # the digits CNN's conv_13 input
    assert StreamFIFO(unsigned(8), 8, 4).slices == [64]                # one queue up to 64 bits
    assert StreamFIFO(signed(5), 4, 4, slice_bits=7).slices == [7, 7, 6]
    assert StreamFIFO(signed(5), 4, 4, slice_bits=1).slices == [1] * 20


def test_fifo_init_wrong_slice_bits():
    with pytest.raises(TypeError, match=r"Slice width must be a positive integer, not 0"):
        StreamFIFO(signed(4), 1, 2, slice_bits=0)


def test_fifo_sliced_converts_to_verilog():
    """The compiler writes Verilog of every FIFO (Yosys's backend, which no memory of no width
    passes): one queue per slice and the control queue."""
    from amaranth.back import verilog
    text = verilog.convert(StreamFIFO(unsigned(8), 72, 4), name="top")
    assert all(f"top.slice{k}" in text for k in range(9)) and "top.control" in text


class _Watched(StreamFIFO):
    """A StreamFIFO that keeps the queues it elaborated, for the test to watch."""
    def _make_queues(self):
        self.queues = super()._make_queues()
        return self.queues


class _Pair(wiring.Component):
    """A sliced FIFO and a single-queue one of the same beat and depth, on the same inputs."""
    def __init__(self, shape, n, depth, slice_bits):
        self.sliced = _Watched(shape, n, depth, slice_bits=slice_bits)
        self.single = StreamFIFO(shape, n, depth, slice_bits=self.sliced.layout.size)
        super().__init__({"valid": In(1), "payload": In(self.sliced.layout), "ready": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.sliced, m.submodules.single = self.sliced, self.single
        for dut in (self.sliced, self.single):
            m.d.comb += [dut.i.valid.eq(self.valid), dut.i.payload.eq(self.payload),
                         dut.o.ready.eq(self.ready)]
        return m


@SETTINGS
@given(shapes(), st.integers(1, 6), st.integers(1, 5), st.integers(1, 9), st.floats(0, 0.9),
       st.floats(0, 0.9), st.integers(0, 2**16))
def test_fifo_sliced_cycle_exact(elem, n, depth, slice_bits, p_valid, p_ready, seed):
    """Under random valid and ready in every cycle, a sliced FIFO shows in every cycle the same
    ready, valid, payload and level as a single queue; every slice's control holds the same state
    (lock step); and the beats leave bit-exact and in order (a queue model)."""
    bits, is_signed = elem
    pair = _Pair(element_shape(bits, is_signed), n, depth, slice_bits)
    sliced, single = pair.sliced, pair.single
    rng = np.random.default_rng(seed)
    x = codes(rng, (200, n), bits, is_signed)
    moved = [0, 0]

    async def tb(ctx):
        model = []
        for t in range(200):
            ctx.set(pair.valid, int(rng.random() < p_valid))
            ctx.set(pair.payload, [int(v) for v in x[t]])
            ctx.set(pair.ready, int(rng.random() < p_ready))
            for a, b in ((sliced.i.ready, single.i.ready), (sliced.o.valid, single.o.valid),
                         (sliced.level, single.level)):
                assert ctx.get(a) == ctx.get(b), (t, a)
            assert ctx.get(sliced.level) == len(model) and len(model) <= depth
            queues = sliced.queues
            assert len(queues) == (1 if len(sliced.slices) == 1 else len(sliced.slices) + 1)
            for q in queues[1:]:
                for a, b in ((q.w_rdy, queues[0].w_rdy), (q.r_rdy, queues[0].r_rdy),
                             (q.level, queues[0].level)):
                    assert ctx.get(a) == ctx.get(b), (t, a)
            if ctx.get(sliced.o.valid):
                got = [int(v) for v in ctx.get(sliced.o.payload)]
                assert got == [int(v) for v in ctx.get(single.o.payload)], t
                assert got == model[0], t
                if ctx.get(pair.ready):
                    model.pop(0)
                    moved[1] += 1
            if ctx.get(pair.valid) and ctx.get(sliced.i.ready):
                model.append([int(v) for v in x[t]])
                moved[0] += 1
            await ctx.tick()

    simulate(pair, tb)
    if p_valid > 0.2 and p_ready > 0.2:
        assert moved[1] > 0


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("slice_bits", [None, 5])
def test_fifo_rate(depth, slice_bits):
    """Producer and consumer always willing: the first beat leaves two cycles after it was written
    (one at depth 1, a single register), then one beat per cycle from depth 3 on, one every other
    cycle at depths 1 and 2."""
    dut = StreamFIFO(unsigned(8), 3, depth, slice_bits=slice_bits)
    assert len(dut.slices) == (1 if slice_bits is None else 5)
    count = 12
    out_cycles = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        sent = 0
        for t in range(4 * count):
            ctx.set(dut.i.valid, sent < count)
            ctx.set(dut.i.payload, [sent, sent + 1, 255 - sent])
            if ctx.get(dut.o.valid):
                assert [int(v) for v in ctx.get(dut.o.payload)] == [len(out_cycles), len(out_cycles) + 1,
                                                                    255 - len(out_cycles)]
                out_cycles.append(t)
            if sent < count and ctx.get(dut.i.ready):
                sent += 1
            await ctx.tick()

    simulate(dut, tb)
    assert len(out_cycles) == count and out_cycles[0] == (1 if depth == 1 else 2)
    step = 1 if depth >= 3 else 2
    assert np.diff(out_cycles).tolist() == [step] * (count - 1)


@pytest.mark.board
def test_fifo_slices_not_merged():
    """Synthesis keeps every slice's control registers (r_rdy, the inner level): the slices' loops
    from r_rdy back to itself stay apart, each driving its own slice's clock enables, instead of
    being merged back into one loop driving every bit of the beat."""
    from qfab.boards import synth
    single = synth.synthesize(StreamFIFO(unsigned(8), 16, 4, slice_bits=128), "ecp5", log=None)
    sliced_fifo = StreamFIFO(unsigned(8), 16, 4, slice_bits=32)
    sliced = synth.synthesize(sliced_fifo, "ecp5", log=None)
    assert single.total.ffs >= 128 + 3
    # the data bits' registers, and at least r_rdy and a 2-bit inner level in each of 5 queues
    assert sliced.total.ffs >= 128 + 3 * (len(sliced_fifo.slices) + 1)
    assert sliced.total.ffs > single.total.ffs


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
