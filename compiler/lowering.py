"""Lowering: an IR graph and a folding become a dataflow of `qfab.hw` stages.

This is the one module of the compiler that knows the hardware library. Each IR node maps to
stages with plain parameters taken from the node (docs/semantics.md is the contract on both sides):

| IR node        | stages                                            |
|----------------|---------------------------------------------------|
| Dense          | MVAU                                              |
| Conv2d         | SlidingWindow (pad = input zero point) -> MVAU    |
| MaxPool        | SlidingWindow (pad = code minimum) -> MaxPool     |
| AvgPool        | SlidingWindow (pad = input zero point) -> AvgPool |
| GlobalAvgPool  | GlobalAvgPool                                     |
| Add            | Fork at the skip source, then Add                 |
| Reshape        | nothing (the element order is already row-major) |

The result is a `Plan`: stages with their components, the streams between them (with element
counts per beat, so width converters can go where they differ, and FIFO depths), and the packing
of the accelerator's input and output streams.
"""

from dataclasses import dataclass, field, replace

from amaranth.hdl import signed, unsigned

from . import estimate
from qfab.base.errors import QfabError
from .folding import Fold
from .ir import Add, AvgPool, Conv2d, Dense, GlobalAvgPool, MaxPool, Reshape

__all__ = ["HwStage", "Edge", "Plan", "plan_graph", "element_shape", "build_top", "to_verilog"]

DEFAULT_FIFO_DEPTH = 4   # SyncFIFOBuffered needs depth >= 3 to pass a beat every cycle
SKIP_MARGIN = 8


def _ident(name):
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else "n_" + out


def element_shape(qtype):
    return signed(qtype.bits) if qtype.signed else unsigned(qtype.bits)


@dataclass
class HwStage:
    name: str                   # unique stage name, e.g. "conv_3.window"
    node: str                   # IR node it implements
    kind: str                   # "mvau", "window", "maxpool", "avgpool", "gap", "fork", "add"
    component: object
    in_per_beat: int
    out_per_beat: int
    cycles: int = 0             # per inference, at full rate
    fold: Fold | None = None
    inputs: tuple = ("i",)
    outputs: tuple = ("o",)
    buffered: int = 0           # elements it can take in before it must emit (line/vector buffers)


@dataclass(frozen=True)
class Edge:
    src: str                    # "stage.port" or "i" (the accelerator input)
    dst: str                    # "stage.port" or "o" (the accelerator output)
    per_beat_src: int
    per_beat_dst: int
    shape: object               # element shape
    depth: int = DEFAULT_FIFO_DEPTH
    tensor: str = ""


@dataclass
class Plan:
    stages: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)

    def stage(self, name):
        return next(s for s in self.stages if s.name == name)


def _mvau(graph, node, fold, rows, hw, logic_weights=None):
    """The MVAU of a Dense or Conv2d ``node``; ``logic_weights``: build the weights in as constants
    (`estimate.weights_in_logic`) or put them in block RAM; None leaves it to the MVAU (``AUTO``)."""
    tin, tout = graph.tensors[node.input], graph.tensors[node.output]
    wt = node.w_type
    kind = {None: hw["MemoryKind"].AUTO, True: hw["MemoryKind"].LOGIC, False: hw["MemoryKind"].BLOCK}[logic_weights]
    return hw["MVAU"](
        fold.pe, fold.simd, weights=rows, w_bits=wt.bits,
        w_encoding=hw["Encoding"].BIPOLAR if wt.bipolar else hw["Encoding"].SIGNED,
        a_bits=tin.qtype.bits, a_encoding=hw["Encoding"].SIGNED if tin.qtype.signed else hw["Encoding"].UNSIGNED,
        bias=node.bias.tolist(), m0=node.requant.m0.tolist(), shift=node.requant.shift.tolist(),
        out_zero_point=tout.qtype.zero_point, lo=node.requant.lo, hi=node.requant.hi,
        out_bits=tout.qtype.bits, out_signed=tout.qtype.signed, in_zero_point=tin.qtype.zero_point,
        point_multipliers=node.multipliers.tolist(), m_bits=graph.m_bits, weight_memory=kind,
        style=hw["MacStyle"].BIT_SERIAL if fold.style == "bit_serial" else hw["MacStyle"].BIT_PARALLEL)


def _hw():
    from qfab.hw.mac import Encoding, MacStyle
    from qfab.hw.mvau import MVAU
    from qfab.hw.weights import MemoryKind
    from qfab.hw.pool import AvgPool as HwAvgPool
    from qfab.hw.pool import GlobalAvgPool as HwGlobalAvgPool
    from qfab.hw.pool import MaxPool as HwMaxPool
    from qfab.hw.window import SlidingWindow
    from qfab.hw.add import Add as HwAdd
    return dict(MVAU=MVAU, Encoding=Encoding, MacStyle=MacStyle, MemoryKind=MemoryKind, AvgPool=HwAvgPool,
                GlobalAvgPool=HwGlobalAvgPool, MaxPool=HwMaxPool, SlidingWindow=SlidingWindow, Add=HwAdd)


def _line_buffer(tin, kernel, stride):
    h, w, c = tin.shape
    return min(kernel[0] + stride[0], h) * w * c


def _window(graph, node, simd, pad_value, hw, kernel, stride, padding):
    tin = graph.tensors[node.input]
    h, w, c = tin.shape
    return hw["SlidingWindow"](element_shape(tin.qtype), height=h, width=w, channels=c, kernel=kernel,
                               stride=stride, padding=padding, pad_value=pad_value, simd=simd)


def _no_hw():
    """`_hw` for a plan without components (`plan_graph` ``build=False``): the encodings are real,
    every component is None."""
    hw = _hw()
    return {k: (v if k in ("Encoding", "MacStyle", "MemoryKind") else (lambda *a, **k: None)) for k, v in hw.items()}


def plan_graph(graph, folds, stages_info, *, build=True, family="ice40"):
    """Stages and streams for ``graph`` with ``folds`` (by node name, see `qfab.compiler.folding`).

    ``stages_info``: the `Stage` work items by node name (for cycle counts, and where each MVAU
    keeps its weights: `estimate.weights_in_logic` on ``family``). ``build=False``
    plans the streams (edges, beats, FIFO depths) without building the stages' components
    (their ``component`` is None), as the resource estimates need it.
    """
    hw = _hw() if build else _no_hw()
    plan = Plan()
    m = estimate.model(family)

    def in_logic(node, fold):
        work = stages_info.get(node.name)
        return None if work is None else estimate.weights_in_logic(work, fold, m)

    # where each tensor's stream comes from: (endpoint, elements per beat)
    source = {}
    uses = {t: len(graph.consumers(t)) + (1 if t in graph.outputs else 0) for t in graph.tensors}
    first_consumer_simd = None

    def connect(tensor, dst, per_beat):
        src, src_beat = source[tensor]
        plan.edges.append(Edge(src, dst, src_beat, per_beat, element_shape(graph.tensors[tensor].qtype),
                               tensor=tensor))

    def add_stage(stage):
        plan.stages.append(stage)
        return stage

    names = {}

    def sname(node, suffix=""):
        base = _ident(node.name) + suffix
        name = base
        while name in names.values() or name in ("i", "o"):
            name += "_"
        names[(node.name, suffix)] = name
        return name

    for node in graph.nodes:
        if isinstance(node, Reshape):
            source[node.output] = source[node.input]
            continue
        fold = folds.get(node.name, Fold())
        work = stages_info.get(node.name)
        cycles = work.cycles(fold) if work else 0
        for t in node.inputs:
            if t in graph.inputs and t not in source:
                per = fold.simd
                source[t] = ("i", per)
                first_consumer_simd = per
        tin = graph.tensors[node.inputs[0]]
        tout = graph.tensors[node.output]
        if isinstance(node, Dense):
            s = add_stage(HwStage(sname(node), node.name, "mvau", _mvau(graph, node, fold, node.weight_rows().tolist(), hw, in_logic(node, fold)),
                                  fold.simd, fold.pe, cycles, fold, buffered=node.fan_in + 2 * fold.pe))
            connect(node.input, f"{s.name}.i", fold.simd)
            out = (f"{s.name}.o", fold.pe)
        elif isinstance(node, Conv2d):
            if node.groups != 1:
                raise QfabError(f"node {node.name!r}: grouped convolution has no hardware engine yet")
            win = add_stage(HwStage(sname(node, "_window"), node.name, "window",
                                    _window(graph, node, fold.simd, tin.qtype.zero_point, hw, node.kernel,
                                            node.stride, node.padding), fold.simd, fold.simd,
                                    buffered=_line_buffer(tin, node.kernel, node.stride)))
            connect(node.input, f"{win.name}.i", fold.simd)
            s = add_stage(HwStage(sname(node), node.name, "mvau", _mvau(graph, node, fold, node.weight_rows().tolist(), hw, in_logic(node, fold)),
                                  fold.simd, fold.pe, cycles, fold, buffered=node.fan_in + 2 * fold.pe))
            plan.edges.append(Edge(f"{win.name}.o", f"{s.name}.i", fold.simd, fold.simd, element_shape(tin.qtype),
                                   tensor=node.input + "#windows"))
            out = (f"{s.name}.o", fold.pe)
        elif isinstance(node, (MaxPool, AvgPool)):
            is_max = isinstance(node, MaxPool)
            pad = tin.qtype.qmin if is_max else tin.qtype.zero_point
            win = add_stage(HwStage(sname(node, "_window"), node.name, "window",
                                    _window(graph, node, fold.simd, pad, hw, node.kernel, node.stride, node.padding),
                                    fold.simd, fold.simd, buffered=_line_buffer(tin, node.kernel, node.stride)))
            connect(node.input, f"{win.name}.i", fold.simd)
            k = node.kernel[0] * node.kernel[1]
            c = tin.shape[2]
            if is_max:
                comp = hw["MaxPool"](element_shape(tin.qtype), window=k, channels=c, simd=fold.simd,
                                     lo=node.lo, hi=node.hi)
            else:
                comp = hw["AvgPool"](element_shape(tin.qtype), window=k, channels=c,
                                     zero_point=tin.qtype.zero_point, multiplier=int(node.requant.m0[0]),
                                     shift=int(node.requant.shift[0]), out_shape=element_shape(tout.qtype),
                                     out_zero_point=tout.qtype.zero_point, lo=node.requant.lo, hi=node.requant.hi,
                                     simd=fold.simd)
            s = add_stage(HwStage(sname(node), node.name, "maxpool" if is_max else "avgpool", comp,
                                  fold.simd, fold.simd, cycles, fold))
            plan.edges.append(Edge(f"{win.name}.o", f"{s.name}.i", fold.simd, fold.simd, element_shape(tin.qtype),
                                   tensor=node.input + "#windows"))
            out = (f"{s.name}.o", fold.simd)
        elif isinstance(node, GlobalAvgPool):
            h, w, c = tin.shape
            comp = hw["GlobalAvgPool"](element_shape(tin.qtype), height=h, width=w, channels=c,
                                       zero_point=tin.qtype.zero_point, multiplier=int(node.requant.m0[0]),
                                       shift=int(node.requant.shift[0]), out_shape=element_shape(tout.qtype),
                                       out_zero_point=tout.qtype.zero_point, lo=node.requant.lo,
                                       hi=node.requant.hi, simd=fold.simd)
            s = add_stage(HwStage(sname(node), node.name, "gap", comp, fold.simd, fold.simd, cycles, fold))
            connect(node.input, f"{s.name}.i", fold.simd)
            out = (f"{s.name}.o", fold.simd)
        elif isinstance(node, Add):
            ta, tb = graph.tensors[node.a], graph.tensors[node.b]
            comp = hw["Add"](element_shape(ta.qtype), element_shape(tb.qtype), element_shape(tout.qtype),
                             a_zero_point=ta.qtype.zero_point, b_zero_point=tb.qtype.zero_point,
                             a_multiplier=node.m_a, b_multiplier=node.m_b, shift=node.shift,
                             out_zero_point=tout.qtype.zero_point, lo=node.lo, hi=node.hi, simd=fold.simd)
            s = add_stage(HwStage(sname(node), node.name, "add", comp, fold.simd, fold.simd, cycles, fold,
                                  inputs=("a", "b")))
            connect(node.a, f"{s.name}.a", fold.simd)
            connect(node.b, f"{s.name}.b", fold.simd)
            out = (f"{s.name}.o", fold.simd)
        else:
            raise QfabError(f"node {node.name!r}: no hardware for {node.kind}")
        source[node.output] = out
    out_t = graph.outputs[0]
    src, per = source[out_t]
    tout = graph.tensors[out_t]
    plan.edges.append(Edge(src, "o", per, per, element_shape(tout.qtype), tensor=out_t))
    _size_skip_fifos(graph, plan)
    tin = graph.tensors[graph.inputs[0]]
    plan.input = {"tensor": tin.name, "shape": list(tin.shape), "elements": tin.size,
                  "per_beat": first_consumer_simd or 1, "bits": tin.qtype.bits, "signed": tin.qtype.signed}
    plan.output = {"tensor": out_t, "shape": list(tout.shape), "elements": tout.size, "per_beat": per,
                   "bits": tout.qtype.bits, "signed": tout.qtype.signed}
    return plan


def _size_skip_fifos(graph, plan):
    """Give the inputs of every Add a FIFO deep enough that the main path can fill.

    The skip path's FIFO must hold what the fork sends it while the main path takes in elements
    before it can emit one: the sum of the line and vector buffers on the main path, in beats of
    the skip stream, plus a margin; never more than one whole tensor.
    """
    by_dst = {e.dst: e for e in plan.edges}
    for stage in plan.stages:
        if stage.kind != "add":
            continue
        for port in ("a", "b"):
            edge = by_dst[f"{stage.name}.{port}"]
            # walk back along the path to count buffering until a fork point (a source feeding 2+ edges)
            held, src = 0, edge.src
            seen = set()
            while src != "i" and src not in seen:
                seen.add(src)
                if sum(1 for e in plan.edges if e.src == src) > 1:
                    break
                prev = plan.stage(src.split(".")[0])
                held += prev.buffered + 2 * DEFAULT_FIFO_DEPTH * max(prev.in_per_beat, prev.out_per_beat)
                ins = [e for e in plan.edges if e.dst.split(".")[0] == prev.name]
                if len(ins) != 1:
                    break
                src = ins[0].src
            size = graph.tensors[edge.tensor].size if edge.tensor in graph.tensors else held
            other = by_dst[f"{stage.name}.{'b' if port == 'a' else 'a'}"]
            # this edge waits for the other path's buffering: size it by the other path
            plan.edges[plan.edges.index(other)] = replace(other, depth=max(
                other.depth, min(size // other.per_beat_dst + 2, held // other.per_beat_dst + SKIP_MARGIN)))


def build_top(plan, counters=False):
    """The `qfab.hw.dataflow.Dataflow` of ``plan`` (with per-stage activity counters if asked)."""
    from qfab.hw.dataflow import Dataflow
    from qfab.hw.dataflow import Edge as HwEdge
    edges = []
    for k, e in enumerate(plan.edges):
        edges.append(HwEdge(e.src, e.dst, e.depth, name=f"e{k}"))
    return Dataflow({s.name: s.component for s in plan.stages}, edges, counters=counters)


def to_verilog(top, name="qfab_top"):
    from amaranth.back import verilog
    return verilog.convert(top, name=name, emit_src=False)
