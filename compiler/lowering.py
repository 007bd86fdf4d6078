"""Lowering: an IR graph and a folding become a `qfab.compiler.plan.Plan`, and a plan becomes a
`qfab.hw.dataflow.Dataflow`.

`plan_graph` is pure data: each IR node's operator (`qfab.compiler.ops`, ``Op.lower``) adds its
stages -- which `qfab.hw` engine, with which parameters taken from the node (docs/semantics.md is
the contract on both sides) -- and the streams between them; then the skip FIFOs of residual joins
are sized and the plumbing (forks, width converters, FIFOs) is named. `build_top` is the one place
that turns a plan into Amaranth components; this is the one module of the compiler that imports
the hardware library.

| IR node        | stages                                            |
|----------------|---------------------------------------------------|
| Dense          | MVAU                                              |
| Conv2d         | SlidingWindow (pad = input zero point) -> MVAU    |
| MaxPool        | SlidingWindow (pad = code minimum) -> MaxPool     |
| AvgPool        | SlidingWindow (pad = input zero point) -> AvgPool |
| GlobalAvgPool  | GlobalAvgPool                                     |
| Add            | Fork at the skip source, then Add                 |
| Reshape        | nothing (the element order is already row-major) |
"""

import dataclasses
from dataclasses import dataclass

from qfab.base.errors import QfabError

from . import estimate
from .ops import op_for
from .plan import DEFAULT_FIFO_DEPTH, ElementType, Fold, Plan, PlanBuilder, PlanStage, StreamPacking

__all__ = ["WeightPolicy", "Lowering", "plan_graph", "element_type", "build_top", "to_verilog", "to_netlists", "Netlists", "stage_component",
           "DEFAULT_FIFO_DEPTH"]

SKIP_MARGIN = 8
WEIGHT_MODES = ("rule", "logic", "block", "engine")


def legal_name(name):
    """``name`` as an identifier (letters, digits, ``_``; not starting with a digit or ``_``)."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() and not out.startswith("_") else "n_" + out.lstrip("_")


def element_type(qtype):
    return ElementType(qtype.bits, qtype.signed)


@dataclass(frozen=True)
class WeightPolicy:
    """Where each MVAU keeps its weights: ``"rule"`` (the default: as constants in logic when
    `qfab.compiler.estimate.weights_in_logic` says so for ``family``'s fixed structure, else in block
    RAM), ``"logic"``, ``"block"``, or ``"engine"`` (the MVAU's own AUTO choice). The rule reads
    only `qfab.compiler.estimate.structure`, never the fitted estimate model, so refitting the
    estimates does not change the hardware."""
    mode: str = "rule"
    family: str = "ice40"

    def __post_init__(self):
        if self.mode not in WEIGHT_MODES:
            raise QfabError(f"weight policy must be one of {', '.join(WEIGHT_MODES)}, not {self.mode!r}")

    def in_logic(self, work, fold):
        """True (constants), False (block RAM) or None (the engine decides)."""
        if self.mode == "rule":
            return estimate.weights_in_logic(work, fold, estimate.structure(self.family))
        return {"logic": True, "block": False, "engine": None}[self.mode]


class Lowering:
    """The state of one `plan_graph`: what the operators' ``lower`` methods build with."""

    def __init__(self, graph, policy):
        self.graph = graph
        self.policy = policy
        self.builder = PlanBuilder()
        self._source = {}           # tensor -> (endpoint, elements per beat)
        self._names = set()

    def element(self, qtype):
        return element_type(qtype)

    def weights_in_logic(self, work, fold):
        return None if work is None else self.policy.in_logic(work, fold)

    def source_of(self, tensor):
        return self._source[tensor]

    def set_source(self, tensor, endpoint, per_beat):
        self._source[tensor] = (endpoint, per_beat)

    def stage(self, node, suffix="", **fields):
        """Add a `PlanStage` for ``node``, named after it (legal and unique)."""
        name = legal_name(node.name + suffix)
        while name in self._names or name in ("i", "o"):
            name += "_"
        self._names.add(name)
        return self.builder.add_stage(PlanStage(name=name, node=node.name, **fields))

    def edge(self, src, dst, per_beat_src, per_beat_dst, element, *, tensor=""):
        self.builder.add_edge(src, dst, per_beat_src, per_beat_dst, element, tensor=tensor)

    def connect(self, tensor, dst, per_beat):
        """A stream from wherever ``tensor`` comes from to ``dst``."""
        src, src_beat = self._source[tensor]
        self.edge(src, dst, src_beat, per_beat, element_type(self.graph.tensors[tensor].qtype), tensor=tensor)


def plan_graph(graph, folds, works, *, family="ice40", policy=None):
    """The `Plan` of ``graph`` with ``folds`` (by node name, see `qfab.compiler.folding`).

    ``works``: the `Stage` work items by node name (`qfab.compiler.folding.stages_of`: cycle
    counts, and the weight placement of ``policy``, a `WeightPolicy`, by default the rule on
    ``family``).
    """
    policy = policy or WeightPolicy("rule", family)
    lw = Lowering(graph, policy)
    first_simd = None
    for node in graph.nodes:
        fold = folds.get(node.name, Fold())
        for t in node.inputs:
            if t in graph.inputs and t not in lw._source:
                per_beat = op_for(node).input_per_beat(graph, node, fold, works.get(node.name))
                lw.set_source(t, "i", per_beat)
                first_simd = first_simd or per_beat
        lw.set_source(node.output, *op_for(node).lower(lw, node, fold, works.get(node.name)))
    out_t = graph.outputs[0]
    src, per = lw.source_of(out_t)
    tout = graph.tensors[out_t]
    lw.edge(src, "o", per, per, element_type(tout.qtype), tensor=out_t)
    _size_skip_fifos(graph, lw.builder)
    tin = graph.tensors[graph.inputs[0]]
    packing_in = StreamPacking(tin.name, tuple(tin.shape), tin.size, first_simd or 1, tin.qtype.bits, tin.qtype.signed)
    packing_out = StreamPacking(out_t, tuple(tout.shape), tout.size, per, tout.qtype.bits, tout.qtype.signed)
    return lw.builder.finish(packing_in, packing_out, family)


def _size_skip_fifos(graph, builder):
    """Give the inputs of every Add a FIFO deep enough that the main path can fill.

    The skip path's FIFO must hold what the fork sends it while the main path takes in elements
    before it can emit one: the sum of the line and vector buffers on the main path, in beats of
    the skip stream, plus a margin; never more than one whole tensor.
    """
    edges = builder.edges
    by_dst = {e.dst: e for e in edges}
    stages = {s.name: s for s in builder.stages}
    for stage in builder.stages:
        if stage.kind != "add":
            continue
        for port in ("a", "b"):
            edge = by_dst[f"{stage.name}.{port}"]
            # walk back along the path to count buffering until a fork point (a source feeding 2+ edges)
            held, src = 0, edge.src
            seen = set()
            while src != "i" and src not in seen:
                seen.add(src)
                if sum(1 for e in edges if e.src == src) > 1:
                    break
                prev = stages[src.split(".")[0]]
                held += prev.buffered + 2 * DEFAULT_FIFO_DEPTH * max(prev.in_per_beat, prev.out_per_beat)
                ins = [e for e in edges if e.dst.split(".")[0] == prev.name]
                if len(ins) != 1:
                    break
                src = ins[0].src
            size = graph.tensors[edge.tensor].size if edge.tensor in graph.tensors else held
            other = by_dst[f"{stage.name}.{'b' if port == 'a' else 'a'}"]
            # this edge waits for the other path's buffering: size it by the other path
            k = edges.index(other)
            edges[k] = dataclasses.replace(other, depth=max(
                other.depth, min(size // other.per_beat_dst + 2, held // other.per_beat_dst + SKIP_MARGIN)))
            by_dst[other.dst] = edges[k]


# ---- plan -> hardware ---------------------------------------------------------------------------
ENGINES = {"MVAU": "mvau", "SlidingWindow": "window", "WideWindow": "wide_window", "MaxPool": "pool",
           "AvgPool": "pool", "GlobalAvgPool": "pool", "Add": "add", "VVAU": "vvau"}


def _engine(name):
    """The `qfab.hw` component class named ``name`` (imported when first used), or None."""
    import importlib
    module = ENGINES.get(name)
    return None if module is None else getattr(importlib.import_module(f"qfab.hw.{module}"), name)


def _hw_value(key, value):
    """A plan parameter as the hardware takes it: element types as Amaranth shapes, mode names
    as the hardware's enums."""
    from amaranth.hdl import signed, unsigned

    from qfab.hw.mac import Encoding, MacStyle
    from qfab.hw.requant import RequantMode
    from qfab.hw.weights import MemoryKind
    if isinstance(value, ElementType):
        return signed(value.bits) if value.signed else unsigned(value.bits)
    enum = {"w_encoding": Encoding, "a_encoding": Encoding, "style": MacStyle, "weight_memory": MemoryKind,
            "requant": RequantMode}.get(key)
    if enum is not None:
        return enum[value.upper()]
    return value


def stage_component(stage):
    """The `qfab.hw` component of one `PlanStage`."""
    engine = _engine(stage.engine)
    if engine is None:
        raise QfabError(f"stage {stage.name!r}: no hardware engine named {stage.engine!r}")
    return engine(**{k: _hw_value(k, v) for k, v in stage.params.items()})


def build_top(plan: Plan):
    """The `qfab.hw.dataflow.Dataflow` of ``plan``: every stage's engine, and every fork, converter
    and FIFO under the plan's name. One top serves synthesis and simulation: its ``activity`` port
    (a fire and a wait bit per stage port) is counted by the simulation harness and left
    unconnected on a board."""
    from qfab.hw.dataflow import Dataflow, Edge as HwEdge
    edges = [HwEdge(e.src, e.dst, e.depth, name=e.name, fork=e.fork, converter=e.converter, fifo=e.fifo)
             for e in plan.edges]
    return Dataflow({s.name: stage_component(s) for s in plan.stages}, edges)


@dataclass(frozen=True)
class Netlists:
    """One design in two texts: ``rtlil``, Amaranth's netlist, and ``verilog``, what Yosys's
    ``write_verilog`` makes of exactly that netlist."""
    rtlil: str
    verilog: str


def to_netlists(top, name="qfab_top", *, log=None, times=None, family=None) -> Netlists:
    """The component ``top`` (module ``name``) as RTLIL and as Verilog (`Netlists`), as
    ``amaranth.back.verilog.convert`` writes it, in three steps that ``log`` (a callable) hears
    about as they start and end: elaborate (the components' ``elaborate``), netlist (Amaranth's
    netlist and RTLIL) and Verilog (Yosys's ``write_verilog``). ``times``, a dict, receives the
    seconds of each step.

    Both are kept because Yosys reads them at very different speeds: ``write_verilog`` gives an
    initialized memory as one ``mem[i] = ...`` statement per word in an ``initial`` block, and
    Yosys's Verilog front end takes minutes per thousand words (FINN's CNV, 1.5 Mbit of weights:
    still reading after 30 minutes), while the same memory in RTLIL is one cell with one init
    constant. Simulators read the Verilog; the board flow synthesizes the RTLIL.

    With ``family``, the components are elaborated for `qfab.hw.cells.Cells` of that family: the
    vendor cells they instantiate themselves (`qfab.hw.cells.DspProduct`, a MULT18X18D with its
    registers on the ECP5) are cells of the netlist, and the Verilog ends with their simulation
    models (`qfab.hw.cells.simulation_models`), so that simulators and the board run one netlist."""
    import time

    from amaranth.back import rtlil, verilog
    from amaranth.hdl import Fragment, Value
    from amaranth.hdl._ir import PortDirection  # as verilog.convert builds its ports (Amaranth 0.5)
    from amaranth.lib.wiring import In

    times = {} if times is None else times
    say = log or (lambda *a: None)
    ports = {}
    for path, member, value in top.signature.flatten(top):
        ports["__".join(map(str, path))] = (Value.cast(value),
                                            PortDirection.Input if member.flow == In else PortDirection.Output)
    from qfab.hw.cells import Cells, simulation_models

    platform = Cells(family) if family is not None else None
    steps = (("elaborate", "elaborating the components", lambda _: Fragment.get(top, platform)),
             ("netlist", "building the netlist", lambda f: rtlil.convert_fragment(f, ports, name, emit_src=False)[0]),
             ("verilog", "writing Verilog (Yosys)", lambda text: verilog._convert_rtlil_text(text)))
    value, texts = None, []
    for key, what, step in steps:
        say(f"  {what} ...")
        start = time.perf_counter()
        value = step(value)
        times[key] = time.perf_counter() - start
        say(f"  {what}: {times[key]:.1f} s")
        texts.append(value)
    return Netlists(rtlil=texts[1], verilog=texts[2] + simulation_models(texts[2]))


def to_verilog(top, name="qfab_top", *, log=None, times=None):
    """The Verilog of `to_netlists`."""
    return to_netlists(top, name, log=log, times=times).verilog
