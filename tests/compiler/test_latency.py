"""The first-result latency model (`qfab.compiler.latency`): its stream recurrence; each engine's
schedule against the engine itself in the Amaranth simulator, beat for beat; the plumbing's
latencies likewise; whole small plans worked out by hand. tests/sim/test_latency.py compares whole
builds with Verilator."""

import dataclasses
import gc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qfab.base.errors import QfabError
from qfab.compiler import latency
from qfab.compiler.folding import Fold, stages_of
from qfab.compiler.latency import CONVERTER_LATENCY, FIFO_LATENCY, chain, estimate_latency
from qfab.compiler.lowering import plan_graph, stage_component
from qfab.compiler.ops import op_for
from qfab.compiler.ops.depthwise import DepthwiseConv2d
from qfab.compiler.ops.matrix import requant_queue_depth
from qfab.compiler.plan import ElementType, PlanEdge
from tests.compiler.graphs import conv_graph, dense_graph, every_kind_graphs, graph as make_graph

WINDOW = 2      # hw/window.py: a window leaves 2 cycles after the input beat completing its rows


def _plan(graph, folds=None):
    works = {s.name: s for s in stages_of(graph)}
    folds = {name: (folds or {}).get(name, Fold()) for name in works}
    return plan_graph(graph, folds, works)


def _node(graph, stage):
    return next(n for n in graph.nodes if n.name == stage.node)


def _latency(graph, stage):
    return op_for(_node(graph, stage)).latency(graph, _node(graph, stage), stage)


def _depthwise_graph():
    """A 3x3 depthwise convolution over a 5x6x4 map (the `Conv2d` of `conv_graph` with groups = C,
    as the DepthwiseConv2d node)."""
    base = conv_graph(cin=4, cout=4, groups=4)
    node = base.nodes[0]
    dw = DepthwiseConv2d(**{f.name: getattr(node, f.name) for f in dataclasses.fields(node)})
    return make_graph(list(base.inputs), [dw], list(base.tensors.values()))


def _beats_in(graph, stage):
    """Input beats of ``stage`` (each port) per inference."""
    node = _node(graph, stage)
    tin, tout = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    p = stage.params
    if stage.engine == "MVAU":
        n, k = len(p["weights"][0]), len(p["weights"][0][0])
        return tout.size // n * k // p["simd"] // p.get("pixels", 1)
    if stage.engine == "VVAU":
        c, k = len(p["weights"]), len(p["weights"][0])
        return tout.size // c * k * c // p["pe"]
    if stage.engine in ("MaxPool", "AvgPool"):
        return tout.size * p["window"] // p["simd"]
    if stage.engine == "WideWindow":
        return tin.size // (p["in_pixels"] * tin.shape[2])
    return tin.size // stage.in_per_beat


def _beats_out(graph, stage):
    """Output beats of ``stage`` per inference (a window: every window's ``KH * KW * C / simd``)."""
    node = _node(graph, stage)
    if stage.engine in ("SlidingWindow", "WideWindow"):
        ho, wo, _ = graph.tensors[node.output].shape
        c = graph.tensors[node.inputs[0]].shape[2]
        return ho * wo * node.kernel[0] * node.kernel[1] * c // stage.out_per_beat
    return graph.tensors[node.output].size // stage.out_per_beat


def _simulated(stage, beats, outputs):
    """The cycles at which the stage's `qfab.hw` engine, in the Amaranth simulator, takes ``beats``
    input beats offered from cycle 0 on (every input port, one per cycle, zero payloads) and emits
    its first ``outputs`` output beats (always ready): ``({port: cycles}, cycles)``."""
    from amaranth.hdl import UnusedElaboratable
    from amaranth.sim import Simulator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        dut = stage_component(stage)
    taken, out = {port: [] for port in stage.inputs}, []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for port in stage.inputs:
            ctx.set(getattr(dut, port).valid, 1)
        for cycle in range(100_000):
            for port in stage.inputs:
                stream = getattr(dut, port)
                if len(taken[port]) < beats and ctx.get(stream.valid) and ctx.get(stream.ready):
                    taken[port].append(cycle)
            if ctx.get(dut.o.valid):
                out.append(cycle)
            if len(out) == outputs and all(len(t) == beats for t in taken.values()):
                return
            await ctx.tick()
            for port in stage.inputs:
                if len(taken[port]) == beats:
                    ctx.set(getattr(dut, port).valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return taken, out


def _dense6():
    return dense_graph(k=12, n=6)


def _first_conv():
    """A first convolution: 2 input channels, 3 x 3, padding 1, stride 1 (6 x 4 outputs)."""
    return conv_graph(h=6, w=4, cin=2, cout=3)


def _strided_conv():
    return conv_graph(h=7, w=8, cin=1, cout=2, stride=(2, 2), padding=(1, 0, 0, 1))


LOW_OUTPUT = dict(out_bits=3, out_signed=False, out_zero_point=0, lo=0, hi=7)   # few levels: threshold modes

ENGINE_CASES = {
    "mvau_multiply_points": (_dense6, Fold(1, 1), "MVAU", {}),
    "mvau_shift_add": (_dense6, Fold(3, 4), "MVAU", {"requant": "shift_add", "requant_digit_bits": 3}),
    "mvau_thresholds": (_dense6, Fold(1, 1), "MVAU", dict(LOW_OUTPUT, requant="thresholds")),
    "mvau_search_throttles": (_dense6, Fold(3, 12), "MVAU", dict(LOW_OUTPUT, requant="search")),
    "mvau_bit_serial": (_dense6, Fold(1, 3, "bit_serial"), "MVAU", {}),
    "mvau_vectors": (conv_graph, Fold(1, 2), "MVAU", {}),
    "mvau_vectors_search": (conv_graph, Fold(4, 4), "MVAU", dict(LOW_OUTPUT, requant="search")),
    "mvau_fetch_register": (_dense6, Fold(3, 4), "MVAU", {"fetch_register": True}),
    "mvau_tree_registers": (_dense6, Fold(3, 4), "MVAU", {"fetch_register": True, "tree_registers": 3}),
    "mvau_tree_registers_serial": (_dense6, Fold(1, 3, "bit_serial"), "MVAU", {"tree_registers": 2}),
    "mvau_skid": (_dense6, Fold(3, 4), "MVAU", {"skid": True, "fetch_register": True}),
    "mvau_split_multiply": (_dense6, Fold(3, 4), "MVAU", {"skid": True, "split_multiply": True}),
    "mvau_reserve": (_dense6, Fold(3, 4), "MVAU", {"reserve": True, "skid": False, "fetch_register": True}),
    "mvau_reserve_unfolded": (_dense6, Fold(3, 12), "MVAU", {"reserve": True, "skid": False, "tree_registers": 2}),
    "mvau_reserve_serial": (_dense6, Fold(1, 3, "bit_serial"), "MVAU", {"reserve": True, "skid": False}),
    "mvau_reserve_search": (conv_graph, Fold(4, 4), "MVAU", dict(LOW_OUTPUT, requant="search", reserve=True, skid=False)),
    "mvau_dsp_pieces": (_dense6, Fold(3, 4), "MVAU", {"dsp_width": 16}),
    "mvau_skid_search": (conv_graph, Fold(4, 4), "MVAU", dict(LOW_OUTPUT, requant="search", skid=True)),
    "mvau_pixels": (_first_conv, Fold(3, 18, "bit_parallel", 4), "MVAU", {}),
    "wide_window": (_first_conv, Fold(3, 18), "WideWindow", {}),
    "wide_window_pixels": (_first_conv, Fold(3, 18, "bit_parallel", 2), "WideWindow", {}),
    "wide_window_stride": (_strided_conv, Fold(2, 9, "bit_parallel", 2), "WideWindow", {}),
    "wide_window_queue_full": (_first_conv, Fold(3, 18), "WideWindow", {"in_pixels": 4}),
    "wide_window_stride_wide_in": (_strided_conv, Fold(2, 9), "WideWindow", {"in_pixels": 8}),
    "window": (conv_graph, Fold(2, 2), "SlidingWindow", {}),
    "window_asymmetric": (lambda: every_kind_graphs()["conv_bipolar"], Fold(1, 1), "SlidingWindow", {}),
    "window_stride": (lambda: every_kind_graphs()["maxpool"], Fold(1, 1), "SlidingWindow", {}),
    "maxpool": (lambda: every_kind_graphs()["maxpool"], Fold(1, 1), "MaxPool", {}),
    "avgpool": (lambda: every_kind_graphs()["avgpool"], Fold(1, 1), "AvgPool", {}),
    "gap": (lambda: every_kind_graphs()["gap"], Fold(1, 1), "GlobalAvgPool", {}),
    "add": (lambda: every_kind_graphs()["add"], Fold(1, 1), "Add", {}),
    "requantize": (lambda: every_kind_graphs()["requantize"], Fold(1, 2), "AvgPool", {}),
    "vvau": (_depthwise_graph, Fold(2, 1), "VVAU", {}),
    "vvau_bit_serial": (_depthwise_graph, Fold(1, 1, "bit_serial"), "VVAU", {}),
    "vvau_split_multiply": (_depthwise_graph, Fold(2, 1), "VVAU", {"split_multiply": True}),
    "vvau_dsp_pieces": (_depthwise_graph, Fold(2, 1), "VVAU", {"dsp_width": 16}),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_schedule_is_the_hardwares(case):
    """Each engine's schedule in the model (which input beats it takes when, when each output beat
    leaves: its operator's `latency` and `output_interval`) equals, beat for beat, what the engine
    does in the Amaranth simulator for one inference offered at one beat per cycle."""
    make, fold, engine, params = ENGINE_CASES[case]
    graph = make()
    plan = _plan(graph, {n.name: fold for n in graph.nodes})
    stage = next(s for s in plan.stages if s.engine == engine)
    stage = dataclasses.replace(stage, params=dict(stage.params, **params))
    node = _node(graph, stage)
    op = op_for(node)
    beats = _beats_in(graph, stage)
    arrivals = {port: np.arange(beats, dtype=np.int64) for port in stage.inputs}
    taken, out = latency.ENGINES[engine](stage.params, arrivals, op.latency(graph, node, stage),
                                         op.output_interval(graph, node, stage))
    sim_taken, sim_out = _simulated(stage, beats, _beats_out(graph, stage))
    for port in stage.inputs:
        assert taken[port].tolist() == sim_taken[port], port
    assert out.tolist() == sim_out


def _engine_property(stage, read):
    """``read(engine)`` of the stage's built engine (the engine itself is dropped unelaborated)."""
    from amaranth.hdl import UnusedElaboratable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        engine = stage_component(stage)
        value = read(engine)
        del engine
        gc.collect()
    return value


@pytest.mark.parametrize("mode", [{}, {"requant": "shift_add", "requant_digit_bits": 1},
                                  {"requant": "shift_add", "requant_digit_bits": 3},
                                  dict(LOW_OUTPUT, requant="thresholds"), dict(LOW_OUTPUT, requant="search")],
                         ids=["multiply", "shift_add1", "shift_add3", "thresholds", "search"])
def test_mvau_interval_is_the_engines(mode):
    """`Op.output_interval` of an MVAU is its engine's `requant_interval`."""
    graph = dense_graph()
    stage = _plan(graph).stages[0]
    stage = dataclasses.replace(stage, params=dict(stage.params, **mode))
    interval = _engine_property(stage, lambda engine: engine.requant_interval)
    assert op_for(graph.nodes[0]).output_interval(graph, graph.nodes[0], stage) == interval


@pytest.mark.parametrize("fold,options", [
    (Fold(1, 1), {}), (Fold(5, 12), {}), (Fold(5, 12), {"tree_registers": 3}), (Fold(1, 4), {"fetch_register": True}),
    (Fold(1, 6), {"fetch_register": True, "tree_registers": 2}), (Fold(1, 3, "bit_serial"), {}),
    (Fold(5, 12, "bit_serial"), {"tree_registers": 2}),
])
def test_reserve_depth_is_the_engines(fold, options):
    """`reserve_depth` (the compiler's, for its estimate) is the MVAU's `queue_depth`."""
    from qfab.compiler.ops.matrix import reserve_depth
    graph = dense_graph()
    work = stages_of(graph)[0]
    stage = _plan(graph, {graph.nodes[0].name: fold}).stages[0]
    stage = dataclasses.replace(stage, params=dict(stage.params, reserve=True, skid=False, **options))
    depth = _engine_property(stage, lambda engine: engine.queue_depth)
    assert depth >= 1
    assert reserve_depth(stage.params, work.k // fold.simd) == depth


def _narrow_multipoint(scale):
    """A 3-point Dense of 2-bit weights on 4-bit codes (a narrow MAC accumulator), its point
    multipliers (at most 3) times ``scale``."""
    from qfab.compiler.ir import Dense, Tensor
    from tests.compiler.graphs import graph as make_graph, qtype, requant, weight_type
    rng = np.random.default_rng(3)
    x, y = Tensor("x", (12,), qtype(4, False)), Tensor("y", (5,), qtype(8, True))
    node = Dense("fc", "x", "y", weights=rng.integers(-2, 2, size=(3, 5, 12)).astype(np.int64),
                 multipliers=rng.integers(-3, 4, size=(3, 5)).astype(np.int64) * scale,
                 bias=rng.integers(-100, 100, size=5).astype(np.int64), w_type=weight_type(5, bits=2),
                 requant=requant(5, y, m0=1 << 20, shift=30))
    return make_graph(["x"], [node], [x, y])


@pytest.mark.parametrize("name,scale", [("dense", 1), ("dense_multipoint", 1), ("narrow_multipoint", 1),
                                        ("narrow_multipoint", 127), ("depthwise", 1)])
def test_ecp5_multiply_is_dsp_cell_pieces(name, scale):
    """On the ECP5 a ``multiply`` requantization is 18-bit pieces in MULT18X18D cells
    (`multiply_options`) whatever the accumulator the engine's requantization sees, point
    multipliers included: no halves (``split_multiply``), whose fabric registers around the DSP
    limited the MLP w4a4 to 94.8 MHz."""
    graph = {"depthwise": _depthwise_graph, "narrow_multipoint": lambda: _narrow_multipoint(scale)}.get(
        name, lambda: every_kind_graphs()[name])()
    works = {s.name: s for s in stages_of(graph)}
    plan = plan_graph(graph, {name_: Fold() for name_ in works}, works, family="ecp5")
    engines = [s for s in plan.stages if s.engine in ("MVAU", "VVAU")]
    assert engines
    for stage in engines:
        acc_bits = _engine_property(stage, lambda engine: engine._requant._acc_bits)
        assert "split_multiply" not in stage.params, (stage.name, acc_bits)
        assert stage.params["dsp_width"] == 18 and stage.params["dsp_cell"] == "MULT18X18D", stage.name
        assert _engine_property(stage, lambda engine: engine._requant._dsp_cell) == "MULT18X18D"
        # the MVAU's requantization never stalls, its queue as deep as the plan says (the estimate's)
        depth = _engine_property(stage, lambda engine: getattr(engine, "requant_queue_depth", 0))
        assert depth == requant_queue_depth(stage.params) == (8 if stage.engine == "MVAU" else 0), stage.name


# ---- the recurrence ---------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-50, 200), min_size=1, max_size=40), st.integers(1, 5), st.integers(-60, 100))
def test_chain_is_the_recurrence(ready, step, after):
    want, prev = [], after
    for r in ready:
        prev = max(r, prev + step)
        want.append(prev)
    assert chain(ready, step, after).tolist() == want


def test_chain_without_a_predecessor_starts_when_ready():
    assert chain([5, 0, 0, 9]).tolist() == [5, 6, 7, 9]


@pytest.mark.parametrize("label", sorted(every_kind_graphs()))
def test_every_kind_has_a_latency(label):
    graph = every_kind_graphs()[label]
    if label == "conv_depthwise":            # a grouped Conv2d: no engine (the DepthwiseConv2d node has one)
        return
    plan = _plan(graph)
    est = estimate_latency(graph, plan)
    assert set(est.stages) == {s.name for s in plan.stages}
    for stage in plan.stages:
        assert op_for(_node(graph, stage)).latency(graph, _node(graph, stage), stage) >= 1
    # the first result needs at least every stage's work on it and the input's beats
    work = max((s.cycles for s in plan.stages), default=0)
    assert est.cycles >= max(work, plan.input.elements // plan.input.per_beat)


def test_unknown_engine_names_the_stage():
    graph = dense_graph()
    plan = _plan(graph)
    odd = dataclasses.replace(plan, stages=(dataclasses.replace(plan.stages[0], engine="Mystery"),))
    with pytest.raises(QfabError, match="'fc'.*Mystery"):
        estimate_latency(graph, odd)


# ---- schedules worked out by hand ----------------------------------------------------------------

@pytest.mark.parametrize("pe,simd", [(1, 1), (5, 1), (1, 4), (5, 12)])
def test_dense_latency_by_hand(pe, simd):
    """Input beats at 0 .. SF-1, a FIFO, the MVAU issues the vector's NF * SF MAC beats from the cycle
    after its last beat is in, its last output beat `latency` after the last MAC beat, a FIFO."""
    k, n = 12, 5
    graph = dense_graph(k=k, n=n)
    plan = _plan(graph, {"fc": Fold(pe, simd)})
    stage = plan.stages[0]
    mvau_latency = op_for(graph.nodes[0]).latency(graph, graph.nodes[0], stage)
    sf, nf = k // simd, n // pe
    last_in = sf - 1 + FIFO_LATENCY
    issue_last = last_in + 1 + nf * sf - 1
    assert latency.first_result_latency(graph, plan) == issue_last + mvau_latency + FIFO_LATENCY


def test_bit_serial_issues_one_mac_beat_per_bit():
    graph = dense_graph(k=12, n=5)
    a_bits = graph.tensors["x"].qtype.bits
    serial = _plan(graph, {"fc": Fold(1, 1, "bit_serial")})
    parallel = _plan(graph, {"fc": Fold(1, 1)})
    macs = 5 * 12
    # every MAC beat but the last takes a_bits cycles instead of one (the last one's are in the latency)
    extra = (macs - 1) * (a_bits - 1) + _latency(graph, serial.stages[0]) \
        - _latency(graph, parallel.stages[0])
    assert latency.first_result_latency(graph, serial) - latency.first_result_latency(graph, parallel) == extra


def test_window_starts_when_its_first_rows_are_in():
    """3x3, padding 1: the first output row needs input rows 0 and 1; its first beat leaves 2 cycles
    after the beat completing row 1 is taken (input beats at 0, 1, ... plus a FIFO)."""
    h, w, c = 5, 6, 4
    for simd in (1, 2, 4):
        graph = conv_graph(h=h, w=w, cin=c, cout=4)
        plan = _plan(graph, {"conv": Fold(1, simd)})
        window = next(s for s in plan.stages if s.engine == "SlidingWindow")
        timing = estimate_latency(graph, plan).stages[window.name]
        row_beats = w * c // simd
        assert timing.first_in == FIFO_LATENCY
        assert timing.first_out == 2 * row_beats - 1 + FIFO_LATENCY + WINDOW
        # the last output row waits for the whole image, then emits its windows back to back
        out_beats = 5 * 6 * 9 * c // simd
        assert timing.last_out >= h * row_beats - 1 + FIFO_LATENCY + WINDOW + 6 * 9 * c // simd - 1
        assert timing.last_out >= timing.first_out + out_beats - 1


def test_mvau_behind_a_window_waits_for_whole_windows():
    graph = conv_graph(h=5, w=6, cin=4, cout=4)
    plan = _plan(graph)
    est = estimate_latency(graph, plan)
    window = next(s for s in plan.stages if s.engine == "SlidingWindow")
    mvau = next(s for s in plan.stages if s.engine == "MVAU")
    win = est.stages[window.name]
    # the first window (36 beats) through a FIFO, then 4 x 36 MAC beats, the MVAU's latency
    first_window_in = win.first_out + 36 - 1 + FIFO_LATENCY
    assert est.stages[mvau.name].first_out == first_window_in + 1 + 36 - 1 + _latency(graph, mvau)
    # the MVAU is the slow stage: 30 vectors of 144 MAC beats, back to back after the first
    assert est.stages[mvau.name].last_out == est.stages[mvau.name].first_out + 29 * 144 + 143 - 35


def test_converter_and_fifo_delay_each_beat():
    """A width converter from 4 to 1 element per beat: each narrow beat one cycle after the wide beat
    that brings it, one per cycle; a FIFO after it adds its two cycles."""
    t = np.array([10, 20], dtype=np.int64)
    edge = PlanEdge("e0", "s.o", "t.i", 4, 1, ElementType(8, False), 0, converter="_convert_e0")
    assert latency._through_edge(edge, {"s.o": t}).tolist() == [11, 12, 13, 14, 21, 22, 23, 24]
    fifo = dataclasses.replace(edge, depth=4)
    assert latency._through_edge(fifo, {"s.o": t}).tolist() == [13, 14, 15, 16, 23, 24, 25, 26]


def _first_out_cycle(dut, payload):
    """Cycles from a beat taken on ``dut.i`` (cycle 0, the output always ready) to the first beat on
    ``dut.o``, in the Amaranth simulator."""
    from amaranth.sim import Simulator
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, payload)
        ctx.set(dut.i.valid, 1)
        assert ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, 10):
            if ctx.get(dut.o.valid):
                seen.append(cycle)
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen[0]


def test_plumbing_latencies_are_the_hardwares():
    from amaranth.hdl import unsigned

    from qfab.hw.plumbing import StreamFIFO, WidthConverter
    assert _first_out_cycle(StreamFIFO(unsigned(8), 2, 4), [1, 2]) == FIFO_LATENCY
    assert _first_out_cycle(WidthConverter(unsigned(8), 2, 1), [1, 2]) == CONVERTER_LATENCY


@pytest.mark.parametrize("n_in,n_out", [(4, 1), (6, 4), (3, 2)])
def test_fork_waits_for_a_narrowing_converter(n_in, n_out):
    """A fork passes a beat when every branch takes it; a branch whose width converter narrows the
    stream takes input beats as the `WidthConverter` does in the Amaranth simulator (its output
    always taken), so the fork runs at that converter's input rate."""
    from amaranth.hdl import unsigned
    from amaranth.sim import Simulator

    from qfab.hw.plumbing import WidthConverter
    beats = 12 * n_out
    dut = WidthConverter(unsigned(4), n_in, n_out)
    taken = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for cycle in range(10 * beats):
            if ctx.get(dut.i.ready) and len(taken) < beats:
                taken.append(cycle)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    element = ElementType(4, False)
    plain = PlanEdge("e0", "s.o", "a.i", n_in, n_in, element, 4)
    narrowing = PlanEdge("e1", "s.o", "b.i", n_in, n_out, element, 64, converter="_convert_e1")
    assert latency._fork(np.arange(beats, dtype=np.int64), [plain, narrowing]).tolist() == taken
    assert latency._fork(np.arange(beats, dtype=np.int64), [plain]).tolist() == list(range(beats))
