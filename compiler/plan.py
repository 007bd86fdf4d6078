"""The lowering's plan: the accelerator as plain data.

A `Plan` is everything the hardware is built from, decided once by `qfab.compiler.lowering.plan_graph`:
the stages (which `qfab.hw` engine, with which constructor parameters), the streams between them
(elements per beat, FIFO depths) and the stream plumbing the edges need (a fork where one output
feeds several inputs, a width converter where the element counts per beat differ, a FIFO where the
depth is positive), each with the name it has in the hardware. `qfab.compiler.lowering.build_top`
builds the `qfab.hw.dataflow.Dataflow` from it, the estimates count its parts
(`qfab.compiler.compile.design_estimates`), the build folder's manifest records it and the benches
read it. No Amaranth here: parameters are plain values (element types as `ElementType`, modes as
lower-case names of the hardware's enums).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["ElementType", "Fold", "Stage", "PlanStage", "PlanEdge", "PlanFork", "StreamPacking", "Plan", "PLAN_VERSION"]

PLAN_VERSION = 1
DEFAULT_FIFO_DEPTH = 4   # SyncFIFOBuffered needs depth >= 3 to pass a beat every cycle


@dataclass(frozen=True)
class ElementType:
    """An element of a stream: ``bits`` wide, two's complement when ``signed``."""
    bits: int
    signed: bool

    @property
    def width(self) -> int:
        return self.bits

    def describe(self) -> str:
        return f"{'i' if self.signed else 'u'}{self.bits}"


@dataclass(frozen=True)
class Fold:
    """How many output (``pe``) and input (``simd``) lanes a stage gets, its MAC style, and how
    many output pixels (``pixels``) a convolution computes at once (FINN's MMV: ``pixels`` copies
    of a fully unfolded engine, fed whole windows by a `qfab.hw.wide_window.WideWindow`).

    ``requant``: how a matrix engine requantizes (a mode of `qfab.compiler.estimate.REQUANT_MODES`);
    None, the default, is the cheapest by the device family's exchange rates
    (`qfab.compiler.estimate.choose_requant`). ``--board`` folding sets ``"multiply"`` where it
    spends DSPs a design leaves unused (`qfab.compiler.compile.spend_dsps`)."""
    pe: int = 1
    simd: int = 1
    style: str = "bit_parallel"     # "bit_parallel" | "bit_serial"
    pixels: int = 1
    requant: str | None = None


@dataclass(frozen=True)
class Stage:
    """One hardware stage's work per inference, what the folding balances.

    ``kind``: "mvau" (Dense/Conv2d), "maxpool", "avgpool", "gap", "add". For an mvau, ``n`` outputs,
    ``k`` inputs per vector, ``vectors`` per inference; ``simd_of`` is what SIMD must divide (the
    window's channel count for a convolution, so no beat straddles two pixels). For pools, ``k`` is
    the window size and ``n`` the channel count.

    ``row_pixels``: for a convolution, its output row's width ``WO``. Such a stage may also take
    whole windows per beat (``simd = k``, from a `WideWindow`), and at ``pe = n``, ``simd = k``
    several output pixels per beat (``pixels`` dividing ``WO``): a first layer with few input
    channels is then not floored at ``KH * KW`` cycles per output pixel.
    """
    name: str
    kind: str
    n: int
    k: int
    vectors: int
    points: int = 1
    simd_of: int = 1
    w_bits: int = 8
    a_bits: int = 8
    row_pixels: int = 0

    def cycles(self, fold: Fold) -> int:
        if self.kind == "mvau":
            c = self.vectors // fold.pixels * self.points * (self.n // fold.pe) * (self.k // fold.simd)
            return c * (self.a_bits if fold.style == "bit_serial" else 1)
        # pools and adds move SIMD channels per cycle through every window element
        return self.vectors * self.k * (self.n // fold.simd)

    def folds(self, style: str = "bit_parallel") -> list:
        """Every legal fold of this stage."""
        divisors = _divisors
        if self.kind == "mvau":
            folds = [Fold(pe, simd, style) for pe in divisors(self.n) for simd in divisors(self.simd_of)]
            if self.row_pixels and self.k != self.simd_of:       # whole windows per beat
                folds += [Fold(pe, self.k, style) for pe in divisors(self.n)]
            if self.row_pixels:
                folds += [Fold(self.n, self.k, style, m) for m in divisors(self.row_pixels) if m > 1]
            return folds
        return [Fold(1, simd) for simd in divisors(self.n)]


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class PlanStage:
    """One hardware stage.

    ``engine`` names the `qfab.hw` component (``"MVAU"``, ``"SlidingWindow"``, ``"MaxPool"``,
    ``"AvgPool"``, ``"GlobalAvgPool"``, ``"Add"``) and ``params`` its constructor's keyword
    arguments; ``kind`` is the stage kind the folding and estimates know (``"mvau"``,
    ``"window"``, ``"maxpool"``, ``"avgpool"``, ``"gap"``, ``"add"``).
    """
    name: str                   # unique stage name, a legal identifier
    node: str                   # the IR node it implements
    kind: str
    engine: str
    params: dict
    in_per_beat: int
    out_per_beat: int
    cycles: int = 0             # per inference, at full rate
    fold: Fold | None = None
    inputs: tuple = ("i",)
    outputs: tuple = ("o",)
    buffered: int = 0           # elements it takes in before it must emit (line and vector buffers)


@dataclass(frozen=True)
class PlanEdge:
    """A stream from ``src`` (``"stage.port"`` or ``"i"``, the accelerator input) to ``dst``
    (``"stage.port"`` or ``"o"``). ``fork``: the fork it leaves through (None: straight from its
    source); ``converter``: the width converter's name when the beats differ; a FIFO named
    ``name`` of ``depth`` beats when ``depth > 0``."""
    name: str
    src: str
    dst: str
    per_beat_src: int
    per_beat_dst: int
    element: ElementType
    depth: int
    tensor: str = ""
    fork: str | None = None
    converter: str | None = None

    @property
    def shape(self) -> ElementType:
        return self.element

    @property
    def fifo(self) -> str | None:
        """The FIFO's name in the hardware, if the edge has one."""
        return f"_fifo_{self.name}" if self.depth > 0 else None


@dataclass(frozen=True)
class PlanFork:
    """A fork copying the stream of ``source`` to ``count`` edges."""
    name: str
    source: str
    per_beat: int
    element: ElementType
    count: int


@dataclass(frozen=True)
class StreamPacking:
    """How the accelerator's input or output tensor travels: ``per_beat`` elements of ``bits``
    bits per beat, in the IR's (row-major, channels-last) order."""
    tensor: str
    shape: tuple
    elements: int
    per_beat: int
    bits: int
    signed: bool

    def as_dict(self) -> dict:
        return {"tensor": self.tensor, "shape": list(self.shape), "elements": self.elements,
                "per_beat": self.per_beat, "bits": self.bits, "signed": self.signed}


@dataclass(frozen=True)
class Plan:
    """The whole accelerator: `PlanStage` s, `PlanEdge` s (in hardware order), `PlanFork` s,
    and the packing of its input and output streams."""
    stages: tuple
    edges: tuple
    forks: tuple
    input: StreamPacking
    output: StreamPacking
    family: str = "ice40"
    version: int = PLAN_VERSION

    def stage(self, name: str) -> PlanStage:
        return next(s for s in self.stages if s.name == name)

    @property
    def fifos(self) -> tuple:
        """The edges that have a FIFO."""
        return tuple(e for e in self.edges if e.depth > 0)

    @property
    def converters(self) -> tuple:
        return tuple(e for e in self.edges if e.converter is not None)

    def summary(self) -> dict:
        """The plan as JSON-ready data (stages without their parameters), for the manifest."""
        return {
            "version": self.version,
            "stages": [{"name": s.name, "node": s.node, "kind": s.kind, "engine": s.engine,
                        "pe": s.fold.pe if s.fold else None, "simd": s.fold.simd if s.fold else None,
                        "pixels": s.fold.pixels if s.fold else None,
                        "style": s.fold.style if s.fold and s.kind in ("mvau", "vvau") else None,
                        "cycles": s.cycles, "in_per_beat": s.in_per_beat, "out_per_beat": s.out_per_beat}
                       for s in self.stages],
            "edges": [{"name": e.name, "from": e.src, "to": e.dst, "tensor": e.tensor,
                       "elements_per_beat": [e.per_beat_src, e.per_beat_dst], "element": e.element.describe(),
                       "depth": e.depth, "fork": e.fork, "converter": e.converter} for e in self.edges],
            "forks": [dataclasses.asdict(f) | {"element": f.element.describe()} for f in self.forks],
            "input": self.input.as_dict(), "output": self.output.as_dict(),
        }


@dataclass
class PlanBuilder:
    """Collects stages and edges while a graph is lowered; `finish` names the plumbing."""
    stages: list = field(default_factory=list)
    edges: list = field(default_factory=list)      # PlanEdge without names and plumbing yet

    def add_stage(self, stage: PlanStage) -> PlanStage:
        self.stages.append(stage)
        return stage

    def add_edge(self, src, dst, per_beat_src, per_beat_dst, element, *, tensor="", depth=None):
        self.edges.append(PlanEdge("", src, dst, per_beat_src, per_beat_dst, element,
                                   DEFAULT_FIFO_DEPTH if depth is None else depth, tensor))

    def finish(self, input_packing, output_packing, family) -> Plan:
        """The `Plan`: edges named ``e0, e1, ...`` in order, a fork ``_fork<k>`` for the k-th
        source (in order of first use) that feeds several edges, a converter ``_convert_<edge>``
        on each edge whose beats differ, a FIFO ``_fifo_<edge>`` on each edge of positive depth
        (the names of these parts in the hardware: a stage name never starts with ``_``)."""
        by_source = {}
        for e in self.edges:
            by_source.setdefault(e.src, []).append(e)
        forks, fork_of = [], {}
        for k, (src, out) in enumerate(by_source.items()):
            if len(out) > 1:
                name = f"_fork{k}"
                forks.append(PlanFork(name, src, out[0].per_beat_src, out[0].element, len(out)))
                fork_of[src] = name
        edges = []
        for k, e in enumerate(self.edges):
            name = f"e{k}"
            edges.append(dataclasses.replace(
                e, name=name, fork=fork_of.get(e.src),
                converter=f"_convert_{name}" if e.per_beat_src != e.per_beat_dst else None))
        return Plan(tuple(self.stages), tuple(edges), tuple(forks), input_packing, output_packing, family)
