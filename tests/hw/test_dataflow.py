# amaranth: UnusedElaboratable=no
"""Dataflow top: chains and residual DAGs of real units and small test stages, under
backpressure, against numpy; FIFO observation; graph checks."""

import numpy as np
import pytest
from amaranth import Module, Mux, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.add import Add
from qfab.hw.dataflow import Dataflow, Edge
from qfab.hw.pool import AvgPool, MaxPool
from qfab.hw.window import SlidingWindow

from .dataflow_models import add_model, avgpool_model, beats, codes, maxpool_model, simulate, unbeat, windows_model
from .streams import get_all, put_all


class Scale(wiring.Component):
    """Test stage: ``y = clamp(x * factor + offset)`` per element, registered (latency 1)."""
    def __init__(self, shape, n, factor=1, offset=0):
        self._shape, self._factor, self._offset = shape, factor, offset
        self._n = n
        layout = data.ArrayLayout(shape, n)
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def model(self, x):
        lo, hi = intops.qrange(self._shape.width, self._shape.signed)
        return intops.clamp(np.asarray(x) * self._factor + self._offset, lo, hi)

    def elaborate(self, platform):
        m = Module()
        lo, hi = intops.qrange(self._shape.width, self._shape.signed)
        m.d.comb += [self.i.ready.eq(~self.o.valid | self.o.ready)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += self.o.valid.eq(1)
            for e in range(self._n):
                y = self.i.payload[e] * self._factor + self._offset
                m.d.sync += self.o.payload[e].eq(Mux(y < lo, lo, Mux(y > hi, hi, y)))
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m


def run_graph(dut, x, simd_in, count, *, gap, stall, seed):
    got = []
    n_out = dut.o.payload.shape().length

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x, simd_in), gap_prob=gap, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, count // n_out, stall_prob=stall, seed=seed + 1))

    simulate(dut, producer, consumer)
    return unbeat(got)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def map_case(draw):
    h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    channels = draw(st.sampled_from([1, 2, 4]))
    return h, w, channels


# --- chain: window -> maxpool -> (converter) -> scale ------------------------------------------

@settings(max_examples=20, deadline=None)
@given(map_case(), st.data(), st.floats(0, 0.5), st.floats(0, 0.5), st.integers(0, 2**16))
def test_chain(shape, draw, gap, stall, seed):
    h, w, c = shape
    bits = draw.draw(st.integers(2, 8))
    is_signed = draw.draw(st.booleans())
    elem = signed(bits) if is_signed else unsigned(bits)
    qmin, qmax = intops.qrange(bits, is_signed)
    k = draw.draw(st.integers(1, min(3, h, w)))
    stride = draw.draw(st.integers(1, 2))
    pad = draw.draw(st.integers(0, k - 1))
    simd = draw.draw(st.sampled_from(divisors(c)))
    scale_n = draw.draw(st.sampled_from(divisors(c)))
    depths = [draw.draw(st.integers(0, 4)) for _ in range(4)]
    lo, hi = sorted((draw.draw(st.integers(qmin, qmax)), draw.draw(st.integers(qmin, qmax))))

    window = SlidingWindow(elem, height=h, width=w, channels=c, kernel=k, stride=stride,
                           padding=pad, pad_value=qmin, simd=simd)
    pool = MaxPool(elem, window=k * k, channels=c, simd=simd, lo=lo, hi=hi)
    scale = Scale(elem, scale_n, factor=-1 if is_signed else 1, offset=1)
    dut = Dataflow({"window0": window, "pool0": pool, "scale0": scale}, [
        Edge("i", "window0", depth=depths[0]),
        Edge("window0", "pool0", depth=depths[1]),
        Edge("pool0", "scale0", depth=depths[2]),
        Edge("scale0", "o", depth=depths[3]),
    ])
    x = codes(np.random.default_rng(seed), (2, h, w, c), bits, is_signed)
    ho, wo = window.output_size
    want = np.concatenate([
        scale.model(maxpool_model(windows_model(xi, (k, k), (stride,) * 2, (pad,) * 4, qmin),
                                  c, lo, hi)).reshape(-1) for xi in x])
    got = run_graph(dut, x, simd, 2 * ho * wo * c, gap=gap, stall=stall, seed=seed)
    np.testing.assert_array_equal(got, want)


# --- residual: pre -> fork -> [window -> avgpool] / [skip FIFO] -> add ---------------------------

def residual(h, w, c, *, zx, main_simd, add_simd, skip_depth, from_input, seed=0):
    rng = np.random.default_rng(seed)
    elem = unsigned(4)
    window = SlidingWindow(elem, height=h, width=w, channels=c, kernel=3, padding=1,
                           pad_value=zx, simd=main_simd)
    m0, n = intops.dyadic(1 / 9)
    pool = AvgPool(elem, window=9, channels=c, zero_point=zx, multiplier=m0, shift=n,
                   out_shape=signed(5), out_zero_point=-1, simd=main_simd)
    ma, mb, shift = int(rng.integers(1, 300)), int(rng.integers(1, 300)), 8
    add = Add(signed(5), elem, signed(6), a_zero_point=-1, b_zero_point=zx, a_multiplier=ma,
              b_multiplier=mb, shift=shift, out_zero_point=3, lo=-20, hi=25, simd=add_simd)
    stages = {"window0": window, "pool0": pool, "add0": add}
    edges = [Edge("window0", "pool0", depth=2), Edge("pool0", "add0.a", depth=2),
             Edge("add0", "o", depth=2)]
    skip_source = "i"
    if from_input:
        edges.append(Edge("i", "window0", depth=2))
    else:
        stages["pre0"] = pre = Scale(elem, main_simd, offset=1)
        edges += [Edge("i", "pre0", depth=2), Edge("pre0", "window0", depth=0)]
        skip_source = "pre0"
    edges.append(Edge(skip_source, "add0.b", depth=skip_depth, name="skip"))
    dut = Dataflow(stages, edges)

    def model(x):
        if not from_input:
            x = pre.model(x)
        y = avgpool_model(windows_model(x, (3, 3), (1, 1), (1,) * 4, zx), c, zx, m0, n, -1,
                          -16, 15)
        return add_model(y.reshape(-1), x.reshape(-1), -1, zx, ma, mb, shift, 3, -20, 25)

    return dut, model


@settings(max_examples=15, deadline=None)
@given(map_case(), st.data(), st.booleans(), st.floats(0, 0.5), st.floats(0, 0.5),
       st.integers(0, 2**16))
def test_residual(shape, draw, from_input, gap, stall, seed):
    h, w, c = shape
    main_simd = draw.draw(st.sampled_from(divisors(c)))
    add_simd = draw.draw(st.sampled_from(divisors(c)))
    zx = draw.draw(st.integers(0, 15))
    # the skip path holds what the main path takes in before its first output: 2 rows + 1 pixel
    skip_depth = (2 * w + 2) * c // add_simd + 2
    dut, model = residual(h, w, c, zx=zx, main_simd=main_simd, add_simd=add_simd,
                          skip_depth=skip_depth, from_input=from_input, seed=seed)
    x = codes(np.random.default_rng(seed), (2, h, w, c), 4, False)
    got = run_graph(dut, x, main_simd, 2 * h * w * c, gap=gap, stall=stall, seed=seed)
    np.testing.assert_array_equal(got, np.concatenate([model(xi) for xi in x]))


# --- FIFO observation ----------------------------------------------------------------------------

def test_observe_names_full_skip_fifo():
    """A skip FIFO too shallow for the main path's fill: the graph stalls, and `observe` shows
    the skip FIFO full while the main path's FIFOs are empty (the window starves: the fork
    waits for the skip path): the watchdog's diagnosis."""
    dut, _ = residual(6, 6, 1, zx=0, main_simd=1, add_simd=1, skip_depth=3, from_input=True)
    assert list(dut.fifos) == ["window0.o->pool0.i", "pool0.o->add0.a", "add0.o->o",
                               "i->window0.i", "skip"]
    seen = {}

    async def producer(ctx):
        sent = 0
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        for _ in range(300):
            ctx.set(dut.i.payload, [sent % 16])
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            sent += ready
        observed = ctx.get(dut.observe)
        seen.update({name: (observed[name].level, observed[name].full, observed[name].empty)
                     for name in dut.fifos})
        seen["sent"] = sent
        seen["describe"] = dut.describe(observed)

    simulate(dut, producer)
    assert seen["sent"] < 36
    assert seen["skip"] == (3, 1, 0)
    assert seen["window0.o->pool0.i"][2] == 1 and seen["pool0.o->add0.a"][2] == 1
    assert seen["add0.o->o"][2] == 1
    assert seen["describe"] == {"window0.o->pool0.i": "empty", "pool0.o->add0.a": "empty",
                                "add0.o->o": "empty", "i->window0.i": "empty", "skip": "full"}


def test_observe_levels():
    """With the consumer stopped, the FIFOs fill from the output backwards."""
    scale0, scale1 = Scale(unsigned(4), 1), Scale(unsigned(4), 1)
    dut = Dataflow({"scale0": scale0, "scale1": scale1}, [
        Edge("i", "scale0", depth=3, name="in"), Edge("scale0", "scale1", depth=2, name="mid"),
        Edge("scale1", "o", depth=4, name="out")])
    assert dut.fifos == {"in": 3, "mid": 2, "out": 4}

    async def tb(ctx):
        observed = ctx.get(dut.observe)
        assert all(observed[n].empty and not observed[n].full for n in dut.fifos)
        ctx.set(dut.i.valid, 1)
        sent = 0
        for _ in range(30):
            ctx.set(dut.i.payload, [sent])
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            sent += ready
        observed = ctx.get(dut.observe)
        assert [observed[n].level for n in dut.fifos] == [3, 2, 4]
        assert all(observed[n].full for n in dut.fifos)
        assert sent == 3 + 1 + 2 + 1 + 4       # FIFOs and the two stage registers
        ctx.set(dut.i.valid, 0)
        got = await get_all(ctx, dut.o, sent)
        assert got == [[v] for v in range(sent)]

    simulate(dut, tb)


def test_wide_edges_sliced():
    """Beats wider than `StreamFIFO.SLICE_BITS` (here 10 x 8 bits: FIFOs of two 40-bit slices and a
    control queue) pass bit-exact under backpressure, and their FIFOs report level and full."""
    from qfab.hw.plumbing import StreamFIFO
    assert StreamFIFO(unsigned(8), 10, 4).slices == [40, 40]
    stages = {"a": Scale(unsigned(8), 10, factor=1, offset=3), "b": Scale(unsigned(8), 10, factor=2)}
    dut = Dataflow(stages, [Edge("i", "a", depth=4, name="in"), Edge("a", "b", depth=5, name="mid"),
                            Edge("b", "o", depth=3, name="out")])
    x = np.random.default_rng(5).integers(0, 256, 300)
    got = run_graph(dut, x, 10, 300, gap=0.3, stall=0.4, seed=7)
    np.testing.assert_array_equal(got, stages["b"].model(stages["a"].model(x)))

    dut = Dataflow({"a": Scale(unsigned(8), 10), "b": Scale(unsigned(8), 10)}, [
        Edge("i", "a", depth=4, name="in"), Edge("a", "b", depth=5, name="mid"),
        Edge("b", "o", depth=3, name="out")])

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        sent = 0
        for _ in range(30):
            ctx.set(dut.i.payload, [sent] * 10)
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            sent += ready
        observed = ctx.get(dut.observe)
        assert [observed[n].level for n in dut.fifos] == [4, 5, 3]
        assert all(observed[n].full for n in dut.fifos)
        assert sent == 4 + 1 + 5 + 1 + 3
        ctx.set(dut.i.valid, 0)
        assert await get_all(ctx, dut.o, sent) == [[v] * 10 for v in range(sent)]
        assert all(ctx.get(dut.observe)[n].empty for n in dut.fifos)

    simulate(dut, tb)


# --- graph checks --------------------------------------------------------------------------------

def two_scales():
    return {"a": Scale(unsigned(4), 1), "b": Scale(unsigned(4), 2)}


def test_init_wrong_stages():
    with pytest.raises(TypeError, match=r"Stages must be a non-empty dict of name to component, "
                                        r"not \[\]"):
        Dataflow([], [])


def test_init_wrong_stage_name():
    with pytest.raises(ValueError, match=r"Stage name must be a non-empty string without '.', "
                                         r"not starting with '_', other than 'i' and 'o', "
                                         r"not 'o'"):
        Dataflow({"o": Scale(unsigned(4), 1)}, [])
    with pytest.raises(ValueError, match=r"Stage name .* not '_fifo0'"):
        Dataflow({"_fifo0": Scale(unsigned(4), 1)}, [])


def test_init_wrong_stage():
    with pytest.raises(TypeError, match=r"Stage 'a' must be a wiring.Component, not 3"):
        Dataflow({"a": 3}, [])


def test_init_wrong_edge_end():
    with pytest.raises(ValueError, match=r"Edge end 'c' names no stage \(stages: a, b\)"):
        Dataflow(two_scales(), [Edge("i", "c")])
    with pytest.raises(ValueError, match=r"Edge end 'a.o': stage 'a' has no input stream port "
                                         r"'o'"):
        Dataflow(two_scales(), [Edge("i", "a.o")])


def test_init_wrong_depth():
    with pytest.raises(TypeError, match=r"Depth of edge 'i' -> 'a' must be a non-negative "
                                        r"integer, not -1"):
        Dataflow(two_scales(), [Edge("i", "a", depth=-1)])


def test_init_wrong_unconnected():
    with pytest.raises(ValueError, match=r"Input b.i must receive exactly one edge, not 0"):
        Dataflow(two_scales(), [Edge("i", "a"), Edge("a", "o")])
    with pytest.raises(ValueError, match=r"Input b.i must receive exactly one edge, not 2"):
        Dataflow(two_scales(), [Edge("i", "a"), Edge("a", "b"), Edge("i", "b"), Edge("b", "o")])
    with pytest.raises(ValueError, match=r"Output a.o feeds no edge"):
        Dataflow(two_scales(), [Edge("i", "a"), Edge("i", "b"), Edge("b", "o")])


def test_init_wrong_cycle():
    stages = {"a": Scale(unsigned(4), 1), "b": Scale(unsigned(4), 1), "j": Add(
        unsigned(4), unsigned(4), unsigned(4), a_zero_point=0, b_zero_point=0, a_multiplier=1,
        b_multiplier=1, shift=0, out_zero_point=0)}
    with pytest.raises(ValueError, match=r"The graph has a cycle through a -> j -> b -> a"):
        Dataflow(stages, [Edge("i", "j.a"), Edge("j", "b"), Edge("b", "a"), Edge("a", "j.b"),
                          Edge("a", "o")])


def test_init_wrong_layout():
    stages = {"a": Scale(unsigned(4), 1), "b": Scale(signed(4), 1)}
    with pytest.raises(ValueError, match=r"Edge 'a.o->b.i' joins payload .* only the element "
                                         r"count per beat may differ"):
        Dataflow(stages, [Edge("i", "a"), Edge("a", "b"), Edge("b", "o")])


def test_init_wrong_edge_name():
    with pytest.raises(ValueError, match=r"Edge name 'x' is used twice"):
        Dataflow(two_scales(), [Edge("i", "a", name="x"), Edge("a", "b", name="x"),
                                Edge("b", "o")])


def test_convert():
    """The residual top converts to RTLIL (every name and width legal for synthesis)."""
    from amaranth.back import rtlil
    dut, _ = residual(4, 4, 2, zx=3, main_simd=1, add_simd=2, skip_depth=24, from_input=False)
    text = rtlil.convert(dut, name="top")
    assert "observe" in text and "window0" in text


def test_width_conversion_chain():
    """Element counts 1 -> 2 -> 1 per beat: converters inserted, nothing lost."""
    dut = Dataflow(two_scales(), [Edge("i", "a"), Edge("a", "b", depth=0), Edge("b", "o")])
    assert dut.i.payload.shape() == data.ArrayLayout(unsigned(4), 1)
    assert dut.o.payload.shape() == data.ArrayLayout(unsigned(4), 2)
    x = np.arange(40) % 16
    got = run_graph(dut, x, 1, 40, gap=0.3, stall=0.3, seed=3)
    np.testing.assert_array_equal(got, x)
