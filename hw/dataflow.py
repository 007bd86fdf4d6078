"""Dataflow top: one component from a graph of streaming stages joined by FIFOs.

The lowering gives the stages (components with stream ports, by name) and the edges between their
ports; this module adds what the edges need (a `Fork` where an output feeds several inputs, a
`WidthConverter` where element counts per beat differ, a `StreamFIFO` of the edge's depth) and
exposes every FIFO's fill state so that a watchdog can name the edge where data stopped. A caller
that planned the plumbing itself (qfab's compiler does) names each part on its `Edge`; the
Dataflow checks that the named parts are exactly the ones the edges need and builds them under
those names.
"""

import dataclasses

from amaranth.hdl import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .plumbing import Fork, StreamFIFO, WidthConverter

__all__ = ["Edge", "Dataflow"]


@dataclasses.dataclass(frozen=True)
class Edge:
    """A stream connection from an output port to an input port.

    Parameters
    ----------
    source : str
        ``"stage.port"`` (an ``Out`` stream of a stage), ``"stage"`` for ``"stage.o"``, or ``"i"``
        for the graph input.
    sink : str
        ``"stage.port"`` (an ``In`` stream of a stage), ``"stage"`` for ``"stage.i"``, or ``"o"``
        for the graph output.
    depth : int
        FIFO depth in beats (of the sink's width); 0 connects directly, without a FIFO.
    name : str or None
        Name of the FIFO in `Dataflow.observe`; default ``"source.port->sink.port"``.
    fork, converter, fifo : str or None
        Submodule names of the edge's `Fork` (shared by every edge of one source), `WidthConverter`
        and `StreamFIFO`, when the caller planned them (each must start with ``"_"``); None: the
        Dataflow names what it inserts (``_forkK``, ``_convertN``, ``_fifoN``). A name given for a
        part the edge does not need, or a missing name where others are given, is an error.
    """
    source: str
    sink: str
    depth: int = 2
    name: str = None
    fork: str = None
    converter: str = None
    fifo: str = None


@dataclasses.dataclass(frozen=True)
class _End:
    stage: str              # None for the graph's own port
    port: str

    def __str__(self):
        return self.port if self.stage is None else f"{self.stage}.{self.port}"


def _stream_ports(stage, flow):
    """Names of the stream members of a stage's signature with the given flow."""
    ports = {}
    for name, member in stage.signature.members.items():
        if member.is_signature and not member.dimensions:
            sig = member.signature if member.flow == Out else member.signature.flip()
            if isinstance(sig, stream.Signature) and member.flow == flow:
                ports[name] = getattr(stage, name).payload.shape()
    return ports


class Dataflow(wiring.Component):
    """A streaming accelerator: stages connected by FIFOs, one input stream, one output stream.

    Every stage input port must receive exactly one edge and every stage output port feed at
    least one; ``"i"`` feeds at least one edge and ``"o"`` receives exactly one; the graph must
    be acyclic. On each edge, in order: a `Fork` output (when its source feeds several edges), a
    `WidthConverter` (when the payloads are ``ArrayLayout`` s of one element shape and different
    lengths), a `StreamFIFO` of ``depth`` beats (when ``depth > 0``). Residual blocks need a skip
    edge deep enough to hold what the main path takes in before it produces its first beat.

    Parameters
    ----------
    stages : dict of str to wiring.Component
        The stages by name (the lowering's node names, e.g. ``"conv0"``); names may not contain
        ``"."``, start with ``"_"`` (inserted parts are ``_fifoN``, ``_convertN``, ``_forkN``) nor
        be ``"i"`` or ``"o"``. Each becomes a submodule of that name.
    edges : list of Edge

    Members
    -------
    i : ``In(stream.Signature(layout))``
        The graph input; ``layout`` is that of the first port it feeds.
    o : ``Out(stream.Signature(layout))``
        The graph output; ``layout`` is that of the port feeding it.
    activity : ``Out(data.StructLayout({"stage.port": {"fire": 1, "wait": 1}}))``
        Per stage stream port, whether a beat moves in this cycle (``fire``: valid and ready) and
        whether one waits (``wait``: valid, not ready); `activity_ports` lists the entries. Plain
        wires: a simulation harness counts them (a bottleneck stage's inputs wait; the stages
        after it starve), a board top leaves them unconnected and synthesis removes them.
    observe : ``Out(data.StructLayout({fifo: {"level": ..., "full": 1, "empty": 1}}))``
        Fill state of each edge FIFO by `Edge` name (absent when no edge has a FIFO); `fifos`
        lists the names and depths, `describe` reads a sampled value. When the graph stalls, a
        full FIFO names a stage that stopped consuming (its sink), an empty one a stage that
        stopped producing (its source).

    Raises
    ------
    TypeError, ValueError
        On a malformed graph, with a message naming the stage, port or edge.
    """
    def __init__(self, stages, edges):
        if not isinstance(stages, dict) or not stages:
            raise TypeError(f"Stages must be a non-empty dict of name to component, "
                            f"not {stages!r}")
        for name, stage in stages.items():
            if (not isinstance(name, str) or not name or "." in name or name.startswith("_") or
                    name in ("i", "o")):
                raise ValueError(f"Stage name must be a non-empty string without '.', not "
                                 f"starting with '_', other than 'i' and 'o', not {name!r}")
            if not isinstance(stage, wiring.Component):
                raise TypeError(f"Stage {name!r} must be a wiring.Component, not {stage!r}")
        self._stages = dict(stages)
        self._inputs = {n: _stream_ports(s, In) for n, s in stages.items()}
        self._outputs = {n: _stream_ports(s, Out) for n, s in stages.items()}

        self._edges = []            # (name, source _End, sink _End, depth)
        self._parts = []            # (fork, converter, fifo) names given by the caller
        for edge in edges:
            if not isinstance(edge, Edge):
                raise TypeError(f"Edge must be an Edge, not {edge!r}")
            if not isinstance(edge.depth, int) or isinstance(edge.depth, bool) or edge.depth < 0:
                raise TypeError(f"Depth of edge {edge.source!r} -> {edge.sink!r} must be a "
                                f"non-negative integer, not {edge.depth!r}")
            source = self._resolve(edge.source, "o", self._outputs, "output")
            sink = self._resolve(edge.sink, "i", self._inputs, "input")
            name = edge.name if edge.name is not None else f"{source}->{sink}"
            if any(name == other[0] for other in self._edges):
                raise ValueError(f"Edge name {name!r} is used twice")
            for part in (edge.fork, edge.converter, edge.fifo):
                if part is not None and (not isinstance(part, str) or not part.startswith("_")
                                         or "." in part):
                    raise ValueError(f"Part name {part!r} of edge {name!r} must be a string starting "
                                     f"with '_' without '.'")
            self._edges.append((name, source, sink, edge.depth))
            self._parts.append((edge.fork, edge.converter, edge.fifo))
        self._check_ports()
        self._check_acyclic()

        first = next(e[2] for e in self._edges if e[1].stage is None)
        if first.stage is None:
            raise ValueError("The graph input 'i' must feed a stage first")
        in_layout = self._inputs[first.stage][first.port]
        last = next(e[1] for e in self._edges if e[2].stage is None)
        out_layout = in_layout if last.stage is None else self._outputs[last.stage][last.port]
        for name, source, sink, _ in self._edges:
            self._check_layouts(name, source, sink, in_layout)
        self._check_parts(in_layout, out_layout)
        members = {"i": In(stream.Signature(in_layout)), "o": Out(stream.Signature(out_layout))}
        fifos = {name: data.StructLayout({"level": unsigned(depth.bit_length()), "full": 1,
                                          "empty": 1})
                 for name, _, _, depth in self._edges if depth > 0}
        if fifos:
            members["observe"] = Out(data.StructLayout(fifos))
        self._counted = [f"{n}.{p}" for n in self._stages for p in
                         list(self._inputs[n]) + list(self._outputs[n])]
        pair = data.StructLayout({"fire": 1, "wait": 1})
        members["activity"] = Out(data.StructLayout({name: pair for name in self._counted}))
        super().__init__(members)

    def _resolve(self, text, default_port, ports, what):
        if not isinstance(text, str):
            raise TypeError(f"Edge end must be a string, not {text!r}")
        graph_port = "i" if default_port == "o" else "o"
        if text == graph_port:
            return _End(None, text)
        stage, _, port = text.partition(".")
        port = port or default_port
        if stage not in self._stages:
            raise ValueError(f"Edge end {text!r} names no stage (stages: "
                             f"{', '.join(self._stages)})")
        if port not in ports[stage]:
            raise ValueError(f"Edge end {text!r}: stage {stage!r} has no {what} stream port "
                             f"{port!r}")
        return _End(stage, port)

    def _check_ports(self):
        sources = [e[1] for e in self._edges]
        sinks = [e[2] for e in self._edges]
        for stage, ports in self._inputs.items():
            for port in ports:
                count = sinks.count(_End(stage, port))
                if count != 1:
                    raise ValueError(f"Input {stage}.{port} must receive exactly one edge, "
                                     f"not {count}")
        for stage, ports in self._outputs.items():
            for port in ports:
                if _End(stage, port) not in sources:
                    raise ValueError(f"Output {stage}.{port} feeds no edge")
        if _End(None, "i") not in sources:
            raise ValueError("The graph input 'i' feeds no edge")
        if sinks.count(_End(None, "o")) != 1:
            raise ValueError(f"The graph output 'o' must receive exactly one edge, "
                             f"not {sinks.count(_End(None, 'o'))}")

    def _check_acyclic(self):
        succ = {name: {e[2].stage for e in self._edges if e[1].stage == name}
                for name in self._stages}
        state = {}

        def visit(name, path):
            if state.get(name) == "done" or name is None:
                return
            if state.get(name) == "open":
                raise ValueError(f"The graph has a cycle through {' -> '.join(path + [name])}")
            state[name] = "open"
            for nxt in sorted(n for n in succ[name] if n is not None):
                visit(nxt, path + [name])
            state[name] = "done"

        for name in self._stages:
            visit(name, [])

    def _check_layouts(self, name, source, sink, in_layout):
        src = in_layout if source.stage is None else self._outputs[source.stage][source.port]
        if sink.stage is None:
            return
        dst = self._inputs[sink.stage][sink.port]
        for end, layout in ((source, src), (sink, dst)):
            if not isinstance(layout, data.ArrayLayout):
                raise TypeError(f"Port {end} must carry a data.ArrayLayout, not {layout!r}")
        if src.elem_shape == dst.elem_shape:
            return
        raise ValueError(f"Edge {name!r} joins payload {src!r} to {dst!r}: only the element "
                         f"count per beat may differ")

    def _check_parts(self, in_layout, out_layout):
        """Plumbing names given on the edges must be exactly the parts the edges need."""
        if all(p == (None, None, None) for p in self._parts):
            return
        count = {}
        for _, source, _, _ in self._edges:
            count[source] = count.get(source, 0) + 1
        forks = {}
        for (name, source, sink, depth), (fork, conv, fifo) in zip(self._edges, self._parts):
            src = in_layout if source.stage is None else self._outputs[source.stage][source.port]
            dst = out_layout if sink.stage is None else self._inputs[sink.stage][sink.port]
            for part, needed, what in ((fork, count[source] > 1, "fork"),
                                       (conv, src.length != dst.length, "width converter"),
                                       (fifo, depth > 0, "FIFO")):
                if (part is not None) != needed:
                    raise ValueError(f"Edge {name!r} {'needs a' if needed else 'has no'} {what}, "
                                     f"but {'no name was given' if needed else f'names {part!r}'}")
            if fork is not None and forks.setdefault(source, fork) != fork:
                raise ValueError(f"Edges from {source} name two forks: {forks[source]!r} and {fork!r}")
        names = [p for parts in self._parts for p in parts[1:] if p is not None] + list(set(forks.values()))
        if len(names) != len(set(names)):
            raise ValueError(f"Part names are used twice: {sorted(n for n in names if names.count(n) > 1)}")

    @property
    def stages(self):
        return dict(self._stages)

    @property
    def activity_ports(self):
        """The ``"stage.port"`` entries of `activity`, in port order."""
        return list(self._counted)

    @property
    def fifos(self):
        """``{edge name: depth}`` of the edges that have a FIFO, in edge order."""
        return {name: depth for name, _, _, depth in self._edges if depth > 0}

    def describe(self, observed):
        """A watchdog's reading of a sampled `observe` value (``ctx.get(dut.observe)``):
        ``{edge name: "full" | "empty" | "k/depth"}``, in edge order."""
        states = {}
        for name, depth in self.fifos.items():
            state = observed[name]
            states[name] = ("full" if state.full else "empty" if state.empty else
                            f"{state.level}/{depth}")
        return states

    def elaborate(self, platform):
        m = Module()
        for name, stage in self._stages.items():
            m.submodules[name] = stage

        def port(end, outward):
            if end.stage is None:
                return wiring.flipped(self.i if outward else self.o)
            return getattr(self._stages[end.stage], end.port)

        # one stream per edge: the source itself, or an output of a fork on it
        branch = {}
        by_source = {}
        for index, (_, source, _, _) in enumerate(self._edges):
            by_source.setdefault(source, []).append(index)
        for k, (source, indices) in enumerate(by_source.items()):
            src = port(source, True)
            if len(indices) == 1:
                branch[indices[0]] = src
                continue
            layout = src.payload.shape()
            fork = Fork(layout.elem_shape, layout.length, count=len(indices))
            m.submodules[self._parts[indices[0]][0] or f"_fork{k}"] = fork
            wiring.connect(m, src, fork.i)
            for j, index in enumerate(indices):
                branch[index] = fork.o[j]

        for index, (name, source, sink, depth) in enumerate(self._edges):
            s = branch[index]
            layout = s.payload.shape()
            if sink.stage is None:
                dst_layout = self.o.payload.shape()
            else:
                dst_layout = port(sink, False).payload.shape()
            if dst_layout != layout:
                conv = WidthConverter(layout.elem_shape, layout.length, dst_layout.length)
                m.submodules[self._parts[index][1] or f"_convert{index}"] = conv
                wiring.connect(m, s, conv.i)
                s = conv.o
            if depth > 0:
                fifo = StreamFIFO(dst_layout.elem_shape, dst_layout.length, depth)
                m.submodules[self._parts[index][2] or f"_fifo{index}"] = fifo
                wiring.connect(m, s, fifo.i)
                s = fifo.o
                m.d.comb += [
                    self.observe[name].level.eq(fifo.level),
                    self.observe[name].full.eq(fifo.level == depth),
                    self.observe[name].empty.eq(fifo.level == 0),
                ]
            wiring.connect(m, s, port(sink, False))
        for name in self._counted:
            stage, _, port_name = name.partition(".")
            st = getattr(self._stages[stage], port_name)
            m.d.comb += [self.activity[name].fire.eq(st.valid & st.ready),
                         self.activity[name].wait.eq(st.valid & ~st.ready)]
        return m
