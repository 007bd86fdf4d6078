"""``qfab compile``: IR graph -> build folder (readable Verilog, manifest, the quantized model).

The compiler takes a resource budget (numbers), never a board: the CLI turns ``--board`` into a
`Budget`.
"""

import io
import json
import pathlib
import time
from dataclasses import dataclass, replace

from qfab.base.errors import QfabError

from . import estimate
from .buildfolder import (
    Build,
    BuildFiles,
    ConverterInfo,
    Estimates,
    FieldSlice,
    FifoInfo,
    ForkInfo,
    Manifest,
    ResourceCount,
    StageInfo,
    StreamFormat,
)
from .folding import Fold, choose_folding, stages_of
from .latency import first_result_latency
from .lowering import build_top, plan_graph, to_netlists
from .modelfile import save
from .ops import op_for

__all__ = ["Budget", "compile_graph", "design_estimates", "load_folding", "check_graph_limits",
           "check_plan_limits", "spend_dsps", "plan_timing_kinds"]


@dataclass(frozen=True)
class Budget:
    """Resources the design may use (None: unlimited), and the device family they are counted in
    (``"ice40"`` or ``"ecp5"``: LUT4s, DSP and block RAM geometry differ). ``logic_cells`` limits
    iCE40 logic cells, one LUT4 and one FF each, as nextpnr packs them (`estimate.logic_cells`)."""
    luts: int | None = None
    ffs: int | None = None
    dsps: int | None = None
    bram_bits: int | None = None
    logic_cells: int | None = None
    family: str = "ice40"

    def check(self, res):
        """``(fits, why)`` for estimated `Resources` ``res``."""
        used = {key: round(getattr(res, key)) for key in ("luts", "ffs", "dsps", "bram_bits")}
        if self.logic_cells is not None:
            cells = estimate.logic_cells(res, self.family)
            used["logic_cells"] = round(cells) if cells is not None else None
        for key in ("logic_cells", "luts", "ffs", "dsps", "bram_bits"):
            limit = getattr(self, key)
            if limit is not None and used.get(key) is not None and used[key] > limit:
                return False, f"estimated {key.replace('_', ' ')} {used[key]} > {limit} available"
        return True, ""

    def fill(self, res):
        """The largest fraction of a limited resource that `Resources` ``res`` uses."""
        used = {key: getattr(res, key) for key in ("luts", "ffs", "dsps", "bram_bits")}
        if self.logic_cells is not None:
            used["logic_cells"] = estimate.logic_cells(res, self.family)
        return max((used[key] / limit for key in used
                    if (limit := getattr(self, key)) and used[key] is not None), default=0.0)


def load_folding(path):
    """Manual folding from a JSON file: ``{"layer": {"pe": 4, "simd": 8, "style": "bit_serial"}}``
    (optionally under a top-level ``"folding"`` key). ``pe``, ``simd`` and ``pixels`` (output
    pixels per beat of a convolution) are positive integers (default 1); ``requant`` names a
    matrix layer's requantization (`estimate.REQUANT_MODES`; default: the cheapest); anything
    else is a one-line `QfabError` naming the layer and field."""
    try:
        doc = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise QfabError(f"{path}: cannot read the folding config ({e})") from None
    if isinstance(doc, dict) and "folding" in doc:
        doc = doc["folding"]
    if not isinstance(doc, dict):
        raise QfabError(f"{path}: the folding config must be a JSON object of layers, "
                        f'like {{"fc1": {{"pe": 4, "simd": 8}}}}, not {type(doc).__name__}')
    folds = {}
    for name, spec in doc.items():
        if not isinstance(spec, dict) or set(spec) - {"pe", "simd", "style", "pixels", "requant"}:
            raise QfabError(f"{path}: folding of {name!r} must be an object with pe, simd and optionally style, "
                            f"pixels and requant, not {spec!r:.60}")
        lanes = {}
        for key in ("pe", "simd", "pixels"):
            value = spec.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise QfabError(f"{path}: {key} of {name!r} must be a positive integer, not {value!r:.40}")
            lanes[key] = value
        style = spec.get("style", "bit_parallel")
        if style not in ("bit_parallel", "bit_serial"):
            raise QfabError(f"{path}: style of {name!r} must be bit_parallel or bit_serial, not {style!r:.40}")
        requant = spec.get("requant")
        if requant is not None and requant not in estimate.REQUANT_MODES:
            raise QfabError(f"{path}: requant of {name!r} must be one of {', '.join(estimate.REQUANT_MODES)}, "
                            f"not {requant!r:.40}")
        folds[name] = Fold(lanes["pe"], lanes["simd"], style, lanes["pixels"], requant)
    return folds


# -- limits: a design far beyond any FPGA qfab supports is refused before any hardware is built ---
# The largest supported device (ECP5-85F) has 83,640 LUTs, 156 DSPs and 3.8 Mbit of block RAM;
# these limits are over twice that (memories) and six times (logic), so that only models that can
# never fit reach them. Writing their Verilog would take hours (a 1 Mbit line buffer alone takes
# Yosys over a minute).
MAX_STAGES = 1024
MAX_WEIGHT_BITS = 1 << 23
MAX_BUFFERED_BITS = 1 << 23
MAX_LUTS = 1 << 19
MAX_FFS = 1 << 19
MAX_DSPS = 1 << 12
MAX_BRAM_BITS = 1 << 23


def _refuse(what, value, limit, where=""):
    raise QfabError(f"the design is far beyond any FPGA qfab supports: {what} {value:,} > limit {limit:,}"
                    f"{where}; qfab refuses to build it (use a smaller model)")


def check_graph_limits(graph, stages):
    """Refuse a graph whose hardware would be absurd, before folding and planning: too many
    stages, or more weight bits than any device holds (the numbers and the limit in the message)."""
    if len(stages) > MAX_STAGES:
        _refuse("hardware stages", len(stages), MAX_STAGES)
    bits = {}
    for node in graph.nodes:
        op = op_for(node)
        if op.weighted:
            bits[node.name] = int(node.weights.size) * int(node.w_type.bits)
    total = sum(bits.values())
    if total > MAX_WEIGHT_BITS:
        worst = max(bits, key=bits.get)
        _refuse("weight bits", total, MAX_WEIGHT_BITS, f" (layer {worst!r} alone has {bits[worst]:,})")


def check_plan_limits(plan, per_layer, totals):
    """Refuse a plan whose buffers or estimated resources are far beyond any supported device
    (`MAX_BUFFERED_BITS`, `MAX_LUTS`, ...), before `build_top` builds any hardware."""
    buffered = {s.name: s.buffered * _element_bits(s) for s in plan.stages}
    if sum(buffered.values()) > MAX_BUFFERED_BITS:
        worst = max(buffered, key=buffered.get)
        stage = plan.stage(worst)
        _refuse("buffered bits", sum(buffered.values()), MAX_BUFFERED_BITS,
                f" (stage {worst!r} buffers {stage.buffered:,} elements of {_element_bits(stage)} bits)")
    for key, limit in (("luts", MAX_LUTS), ("ffs", MAX_FFS), ("dsps", MAX_DSPS), ("bram_bits", MAX_BRAM_BITS)):
        value = round(getattr(totals, key))
        if value > limit:
            worst = max(per_layer, key=lambda n: getattr(per_layer[n], key)) if per_layer else None
            where = f" (layer {worst!r}: {round(getattr(per_layer[worst], key)):,})" if worst else ""
            _refuse(f"estimated {key.replace('_', ' ')}", value, limit, where)


def _element_bits(stage):
    shape = stage.params.get("shape")
    return getattr(shape, "bits", 8)


def _stage_estimates(graph, stages, folds, m):
    """Estimated `Resources` of each layer: its operator's engine (with the layer's real
    requantization shifts, which size an MVAU's variable shifter) and the sliding window in front
    of it (`Op.estimate`)."""
    works = {s.name: s for s in stages}
    return {node.name: op_for(node).estimate(graph, node, works[node.name], folds[node.name], m)
            for node in graph.nodes if node.name in works}


def plan_stream_estimates(plan, m):
    """Estimated `Resources` of the plumbing the plan puts on its edges: its forks, width
    converters and FIFOs (`Plan.forks`, `Plan.converters`, `Plan.fifos`)."""
    return {
        "fifos": estimate.total([estimate.fifo_resources(e.depth, e.per_beat_dst * e.element.width, m)
                                 for e in plan.fifos]),
        "converters": estimate.total([estimate.converter_resources(e.per_beat_src, e.per_beat_dst, e.element.width, m)
                                      for e in plan.converters]),
        "forks": estimate.total([estimate.fork_resources(f.per_beat, f.element.width, f.count, m)
                                 for f in plan.forks]),
    }


def design_estimates(graph, stages, folds, family="ice40", plan=None):
    """``(per_layer, streams, total)``: the estimated `Resources` of each layer, of the FIFOs,
    width converters and forks between them, and of the whole accelerator on ``family``, for the
    plan that `compile_graph` lowers (``plan``, or planned here: the budget check and the
    manifest use these same numbers)."""
    m = estimate.model(family)
    if plan is None:
        plan = plan_graph(graph, folds, {s.name: s for s in stages}, family=family)
    per = _stage_estimates(graph, stages, folds, m)
    streams = plan_stream_estimates(plan, m)
    return per, streams, estimate.total(list(per.values()) + list(streams.values()))


def plan_timing_kinds(plan):
    """The timing kinds of a planned design on a board (`estimate.timing_kinds`): its stages'
    kinds and requantization modes, its plumbing and the board top."""
    return estimate.timing_kinds(
        [(s.kind, s.params.get("requant") if s.kind in ("mvau", "vvau") else None) for s in plan.stages],
        fifos=bool(plan.fifos), converters=bool(plan.converters), forks=bool(plan.forks))


CROWDED = 0.95      # of a budget's logic cells: a design above it routes badly on the iCE40 (`spend_dsps`)


def spend_dsps(graph, stages, folds, budget):
    """``folds``, or when their design does not fit ``budget`` or fills more than `CROWDED` of its
    logic cells, the same folds with matrix layers requantizing on DSPs the design leaves unused
    (``Fold.requant = "multiply"``).

    `estimate.choose_requant` prices a DSP at the family's exchange rate (an iCE40 DSP as 660
    logic cells), so a design whose logic does not fit may leave DSPs idle: the UP5K's eight
    SB_MAC16s take two 8-bit layers' 24-bit requantization multiplies, where shift-and-add in
    logic costs each 400-600 cells. The layers move greedily by logic saved per DSP while the
    budget's DSPs last. A budget without a DSP limit, or folds that fit with room, are returned
    unchanged. Crowded: the digits CNN w8a8 with every requantization in logic (estimated at 99 %
    of the UP5K budget's cells, 82 % of the device placed) was still routing after 17 minutes at
    36 MHz, 4,153 arcs left; with its first layer's on four idle SB_MAC16s (the estimate 11
    cells less) it routed in 34 seconds and met 36 MHz."""
    if budget.dsps is None:
        return folds
    per, _, total = design_estimates(graph, stages, folds, budget.family)
    cells = estimate.logic_cells(total, budget.family)
    crowded = budget.logic_cells is not None and cells is not None and cells > CROWDED * budget.logic_cells
    if budget.check(total)[0] and not crowded:
        return folds
    m = estimate.model(budget.family)

    def logic(res):
        cells = estimate.logic_cells(res, budget.family)
        return res.luts if cells is None else cells

    works = {s.name: s for s in stages}
    moves = []
    for node in graph.nodes:
        work = works.get(node.name)
        if work is None or work.kind not in ("mvau", "vvau") or folds[node.name].requant is not None:
            continue
        try:
            moved = op_for(node).estimate(graph, node, work, replace(folds[node.name], requant="multiply"), m)
        except QfabError:
            continue
        extra, saved = moved.dsps - per[node.name].dsps, logic(per[node.name]) - logic(moved)
        if extra > 0 and saved > 0:
            moves.append((saved / extra, node.name, extra))
    left = budget.dsps - total.dsps
    out = dict(folds)
    for _, name, extra in sorted(moves, reverse=True):
        if extra <= left:
            out[name] = replace(out[name], requant="multiply")
            left -= extra
    return out


def compile_graph(graph, out_dir, *, target_ii=None, budget=None, folding=None, style="bit_parallel",
                  family=None, log=print):
    """Lower ``graph`` and write the build folder ``out_dir``; return its `Build` (the manifest
    is ``build.manifest``).

    ``family``: the device family the estimates count in (default: the budget's, else iCE40).
    """
    out = pathlib.Path(out_dir)
    family = family or (budget.family if budget is not None else "ice40")
    if family not in ("ice40", "ecp5"):
        raise QfabError(f"family must be ice40 or ecp5, not {family!r}")
    stages = stages_of(graph)
    check_graph_limits(graph, stages)
    fits = speed = None
    if budget is not None:
        def fits(folds):
            return budget.check(design_estimates(graph, stages, folds, family)[2])

        def speed(folds):
            """Inferences per microsecond at the estimated Fmax (`estimate.fmax_estimate`: the
            slowest timing kind of the planned design, at its fill of the budget)."""
            plan = plan_graph(graph, folds, {s.name: s for s in stages}, family=family)
            fill = budget.fill(design_estimates(graph, stages, folds, family, plan=plan)[2])
            return estimate.fmax_estimate(family, fill, plan_timing_kinds(plan)) / max(
                s.cycles(folds[s.name]) for s in stages)
    folds = choose_folding(stages, target_ii=target_ii, budget=fits, cost=estimate.cost_luts, style=style,
                           manual=folding, speed=speed,
                           refine=None if budget is None else lambda f: spend_dsps(graph, stages, f, budget))
    t = time.perf_counter()
    plan = plan_graph(graph, folds, {s.name: s for s in stages}, family=family)
    per, streams, totals = design_estimates(graph, stages, folds, family, plan=plan)
    check_plan_limits(plan, per, totals)
    top = build_top(plan)
    log(f"lowered {len(graph.nodes)} nodes to {len(plan.stages)} stages; writing Verilog ...")
    netlists = to_netlists(top, log=log, family=family)
    verilog = netlists.verilog
    total = totals.rounded()
    cells = estimate.logic_cells(totals, family)
    if cells is not None:
        total["logic_cells"] = round(cells)
    ii = max(s.cycles(folds[s.name]) for s in stages)
    latency = first_result_latency(graph, plan)
    manifest = Manifest(
        input=_stream_format(plan.input), output=_stream_format(plan.output),
        initiation_interval=ii, latency_estimate=latency,
        stages=tuple(StageInfo(name=s.name, node=s.node, kind=s.kind, pe=s.fold.pe if s.fold else None,
                               simd=s.fold.simd if s.fold else None,
                               style=s.fold.style if s.fold and s.kind in ("mvau", "vvau") else None, cycles=s.cycles,
                               pixels=s.fold.pixels if s.fold and s.fold.pixels > 1 else None,
                               requant=s.params.get("requant", "multiply") if s.kind in ("mvau", "vvau") else None)
                     for s in plan.stages),
        fifos=tuple(FifoInfo(name=e.name, src=e.src, dst=e.dst, depth=e.depth, tensor=e.tensor,
                             elements_per_beat=e.per_beat_dst) for e in plan.fifos),
        forks=tuple(ForkInfo(name=f.name, source=f.source, count=f.count, per_beat=f.per_beat,
                             element=f.element.describe()) for f in plan.forks),
        converters=tuple(ConverterInfo(name=e.converter, edge=e.name, n_in=e.per_beat_src, n_out=e.per_beat_dst,
                                       element=e.element.describe()) for e in plan.converters),
        estimates=Estimates(per_layer={k: ResourceCount(**v.rounded()) for k, v in per.items()},
                            streams={k: ResourceCount(**v.rounded()) for k, v in streams.items()},
                            total=ResourceCount(**total), family=family,
                            model=estimate.model(family).get("source", "")),
        observe_layout=_field_offsets(top, "observe", "level"),
        counters_layout=_counter_offsets(top), activity_bits=_port_width(top, "activity"),
        m_bits=graph.m_bits, top="qfab_top", files=BuildFiles(netlist="qfab_top.il"))
    model = io.BytesIO()
    save(graph, model)
    build = Build.save(out, manifest, {manifest.files.verilog: verilog, manifest.files.netlist: netlists.rtlil,
                                       manifest.files.model: model.getvalue()})
    log(f"wrote {out}/qfab_top.v ({len(verilog.splitlines())} lines), qfab_top.il, manifest.json, model.qfab "
        f"in {time.perf_counter() - t:.1f} s")
    return build


def _stream_format(spec):
    """The plan's `StreamPacking` of the accelerator's input or output stream, as the manifest's."""
    return StreamFormat(tensor=spec.tensor, shape=tuple(spec.shape), elements=spec.elements,
                        per_beat=spec.per_beat, bits=spec.bits, signed=spec.signed)


def _port_width(top, port):
    member = top.signature.members.get(port)
    return 0 if member is None else member.shape.size


def _counter_offsets(top):
    """Where the simulation harness keeps each ``activity`` bit's 32-bit count: bit ``k`` of the
    port is counted in bits ``32k .. 32k + 31`` of the harness's ``counters`` vector."""
    return {name: {sub: FieldSlice(32 * part.offset, 32) for sub, part in subs.items()}
            for name, subs in _field_offsets(top, "activity", "fire", "wait").items()}


def _field_offsets(top, port, *subfields):
    """Bit offsets of each entry's sub-fields inside a struct port of ``top`` (for the simulator)."""
    member = top.signature.members.get(port)
    if member is None:
        return {}
    out = {}
    for name, field in member.shape:
        out[name] = {sub: FieldSlice(field.offset + field.shape[sub].offset, field.shape[sub].width)
                     for sub in subfields}
    return out
