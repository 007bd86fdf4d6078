"""The build report: ``report.html`` in a build folder, one page a person reads to judge a design.

`build_report` reads what the build folder holds and writes the page (`qfab.page`: inline style,
plots embedded, no network, no script). Each section comes from one source, and says in one line
what to run when that source is not there yet:

- model: ``model.qfab`` (`qfab.compiler.info.layer_table`: layers, bits, parameters, MACs);
- folding: the manifest's stages (PE, SIMD, cycles per inference) against the initiation
  interval, and the compile plot (`qfab.compiler.plots.build_figure`);
- resources: the manifest's estimates against every board's budget
  (`qfab.boards.registry.budget_for`), and what nextpnr placed (``reports/bitstream_<board>.json``);
- timing: Fmax against the clock and the critical path, from the same bitstream reports;
- simulation: ``reports/simulation.json`` (`qfab.flow.SimulationReport`);
- accuracy: ``reports/accuracy.json`` (`record_accuracy`);
- commands: ``reports/commands.json``, one entry per flow step (`record_command`).

The flow refreshes the page after each step that writes a report (`step_done`, which never fails
the step); ``qfab report BUILD`` writes it again.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import pathlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qfab.base.errors import QfabError
from qfab.compiler.buildfolder import Build
from qfab.page import (
    Html,
    Section,
    badge,
    bar,
    code,
    details,
    esc,
    figure,
    missing,
    paragraph,
    render_page,
    table,
    write_page,
)

__all__ = ["REPORT", "build_report", "write_report", "build_sections", "step_done", "record_command",
           "record_accuracy", "command_line", "render_page", "Section"]

REPORT = "report.html"
COMMANDS = "commands"           # reports/commands.json
ACCURACY = "accuracy"           # reports/accuracy.json
MAX_COMMANDS = 200

_COMMAND: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("qfab_command", default=None)


# -- recording what made the build ---------------------------------------------------------------

@contextlib.contextmanager
def command_line(argv: Sequence[str]) -> Iterator[None]:
    """Within this block, flow steps record ``argv`` (``["qfab", "compile", ...]``) as the
    command that ran them (the ``qfab`` command sets it around each run)."""
    token = _COMMAND.set(tuple(str(a) for a in argv))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _current_command() -> dict[str, Any]:
    argv = _COMMAND.get()
    if argv is not None:
        return {"command": list(argv)}
    name = pathlib.Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in ("qfab", "qfab.exe") or sys.argv[0].replace("\\", "/").endswith("qfab/cli.py"):
        return {"command": ["qfab", *sys.argv[1:]]}
    return {"command": None, "process": [pathlib.Path(sys.executable).name, *sys.argv]}


def record_command(build: Build, step: str, **details: Any) -> None:
    """Add an entry for flow step ``step`` to the build's commands log: the time, the ``qfab``
    command line that ran it (or, from a script, the process's), the working folder, qfab's
    version and ``details`` (the step's arguments, JSON-able)."""
    log = _read_commands(build)
    entry = {"step": step, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             **_current_command(), "cwd": os.getcwd(), "qfab": _version(),
             "details": {k: _jsonable(v) for k, v in details.items() if v is not None}}
    build.write_report(COMMANDS, {"commands": (log + [entry])[-MAX_COMMANDS:]})


def _read_commands(build):
    """The commands log's entries (none when it is missing or not a list of entries)."""
    try:
        entries = build.read_report(COMMANDS).get("commands")
    except (QfabError, AttributeError):
        return []
    return [e for e in entries if isinstance(e, dict) and "step" in e] if isinstance(entries, list) else []


def record_accuracy(build: Build, rows: Sequence[Mapping[str, Any]], *, dataset: str,
                    float_accuracy: float | None = None) -> None:
    """Save the accuracy of this model and its siblings at other bit widths (``reports/accuracy.json``).

    ``rows``: one mapping per model with ``w_bits``, ``a_bits``, ``accuracy`` (a fraction) and
    optionally ``samples`` and ``this_build`` (True for the model this build implements)."""
    for row in rows:
        if not {"w_bits", "a_bits", "accuracy"} <= set(row):
            raise ValueError(f"an accuracy row needs w_bits, a_bits and accuracy, not {dict(row)!r}")
    build.write_report(ACCURACY, {"dataset": dataset, "float_accuracy": float_accuracy,
                                  "rows": [{k: _jsonable(v) for k, v in row.items()} for row in rows]})


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def step_done(build: Build, step: str, *, log=print, **details: Any) -> pathlib.Path | None:
    """After flow step ``step``: record it (`record_command`) and write the report again. A
    failure here is a warning in ``log``, never the step's failure; returns the page or None."""
    try:
        record_command(build, step, **details)
        path = build_report(build.folder)
    except Exception as e:       # noqa: BLE001 - the report must never fail the step that made the build
        log(f"warning: {pathlib.Path(build.folder) / REPORT} not updated ({type(e).__name__}: {e})")
        return None
    log(f"report: {path}")
    return path


# -- the page ------------------------------------------------------------------------------------

def build_report(build_dir: str | os.PathLike) -> pathlib.Path:
    """Write ``report.html`` in the build folder ``build_dir`` from what it holds; return its path."""
    build = Build.load(build_dir)
    page = render_page(f"qfab build {build.folder.name}", build_sections(build), subtitle=_subtitle(build),
                       footer=f"written by qfab {_version()} on {datetime.datetime.now():%Y-%m-%d %H:%M}; "
                              f"qfab report {build.folder} writes it again")
    try:
        return write_page(build.folder / REPORT, page)
    except OSError as e:
        raise QfabError(f"{build.folder / REPORT}: cannot write the report ({e.strerror or e})") from None


write_report = build_report


def build_sections(build: Build) -> list[Section]:
    """The report's sections for ``build``, in order; a section whose source cannot be read says so."""
    facts = _Facts(build)
    sections = []
    for key, title, make in _SECTIONS:
        try:
            body = make(facts)
        except Exception as e:       # noqa: BLE001 - one unreadable source must not hide the others
            body = missing(f"could not show this section: {type(e).__name__}: {e}")
        sections.append(Section(key, title, body))
    return sections


class _Facts:
    """What the sections share: the build, its reports, the boards it was built or folded for."""

    def __init__(self, build):
        self.build = build
        self.manifest = build.manifest
        self.names = build.reports()
        self.bitstreams = {}
        for name in self.names:
            if name.startswith("bitstream_"):
                try:
                    self.bitstreams[name.removeprefix("bitstream_")] = build.read_report(name)
                except QfabError:
                    pass
        self.commands = _read_commands(build)
        compiled = [c for c in self.commands if c.get("step") == "compile"]
        self.compile_board = compiled[-1].get("details", {}).get("board") if compiled else None
        self.folder = str(build.folder)

    def report(self, name):
        return self.build.read_report(name) if name in self.names else None

    @property
    def board(self):
        """The board the page measures the build against (None: all of them)."""
        return self.compile_board or next(iter(self.bitstreams), None)


def _subtitle(build):
    m = build.manifest
    return [f"build folder {build.folder.absolute()}",
            f"{len(m.stages)} stages, initiation interval {m.initiation_interval} cycles per inference, "
            f"estimated latency {m.latency_estimate} cycles; input {m.input.tensor} {m.input.shape}, "
            f"output {m.output.tensor} {m.output.shape}"]


def _model(f):
    from qfab.compiler.info import layer_table
    graph = f.build.load_model()
    rows = layer_table(graph)
    body = [table(["layer", "kind", "input", "output", "weights", "activations in", "output", "parameters",
                   "parameter bytes", "MACs"],
                  [(r.name, r.kind, "x".join(map(str, r.in_shape)), "x".join(map(str, r.out_shape)), r.w_bits,
                    r.a_bits, r.out_bits, r.params, (r.param_bits + 7) // 8, r.macs) for r in rows],
                  total=("total", "", "", "", "", "", "", sum(r.params for r in rows),
                         sum((r.param_bits + 7) // 8 for r in rows), sum(r.macs for r in rows)))]
    i, o = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    body.append(paragraph(f"input {i.name} {tuple(i.shape)} {i.qtype.describe()} (scale {i.qtype.scale:.6g}, "
                          f"zero point {i.qtype.zero_point}); output {o.name} {tuple(o.shape)} {o.qtype.describe()} "
                          f"(scale {o.qtype.scale:.6g}, zero point {o.qtype.zero_point}); requantization "
                          f"multipliers of {graph.m_bits} bits"))
    if graph.metadata:
        body.append(paragraph("how it was made: ", "; ".join(f"{k} {v}" for k, v in graph.metadata.items())))
    return Html("\n".join(body))


def _folding(f):
    m = f.manifest
    ii = m.initiation_interval
    rows = []
    for s in m.stages:
        share = (s.cycles or 0) / ii
        rows.append((s.name, s.node, s.kind, s.pe if s.pe is not None else "", s.simd if s.simd is not None else "",
                     s.style or "", s.cycles if s.cycles is not None else "",
                     bar(share, f"{100 * share:.0f}%" + (" bottleneck" if s.cycles == ii else ""))))
    body = [paragraph(f"initiation interval {ii} cycles per inference, set by the slowest stage; a balanced "
                      f"pipeline has every engine near it. Estimated latency {m.latency_estimate} cycles."),
            table(["stage", "node", "kind", "PE", "SIMD", "MAC style", "cycles per inference", "of the interval"],
                  rows)]
    plumbing = [f"{len(m.fifos)} FIFOs ({sum(x.depth for x in m.fifos)} entries in all)"]
    if m.converters:
        plumbing.append(f"{len(m.converters)} width converters")
    if m.forks:
        plumbing.append(f"{len(m.forks)} forks")
    body.append(paragraph("between the stages: ", ", ".join(plumbing)))
    body.append(details("FIFOs", table(["FIFO", "from", "to", "depth", "tensor", "elements per beat"],
                                       [(x.name, x.src, x.dst, x.depth, x.tensor, x.elements_per_beat)
                                        for x in m.fifos])))
    try:
        from qfab.compiler.plots import build_figure
        budget = None
        if f.board:
            from qfab.boards.registry import budget_for
            budget = budget_for(f.board)
        body.append(Html("<h3>pipeline balance and estimated resources"
                         + (f" against the {esc(f.board)} budget" if budget else "") + "</h3>"))
        body.append(figure(build_figure(m, budget), "pipeline balance and estimated resources per layer"))
    except QfabError as e:      # matplotlib is an extra
        body.append(missing(f"no plot: {e}"))
    return Html("\n".join(body))


def _resources(f):
    from qfab.boards.registry import BOARDS, budget_for
    est = f.manifest.estimates
    counts = ("luts", "ffs", "dsps", "bram_bits", "bram_blocks")
    rows = [(name, *(getattr(r, k) for k in counts)) for name, r in est.per_layer.items()]
    rows += [(f"streams: {name}", *(getattr(r, k) for k in counts)) for name, r in est.streams.items()]
    t = est.total
    body = [Html(f"<h3>estimated per layer ({esc(est.family)})</h3>"),
            paragraph(f"estimate model: {est.model or '-'}"),
            table(["", "LUTs", "FFs", "DSPs", "block RAM bits", "block RAMs"], rows,
                  total=("total" + (f" ({t.logic_cells:,} iCE40 logic cells)" if t.logic_cells is not None else ""),
                         *(getattr(t, k) for k in counts)))]
    budget_rows = []
    for name, board in BOARDS.items():
        b = budget_for(board)
        fits, why = b.check(t)
        cells = [bar(t.logic_cells / b.logic_cells, f"{t.logic_cells:,} / {b.logic_cells:,}")
                 if b.logic_cells and t.logic_cells is not None else "-"]
        mark = " (compiled for)" if name == f.compile_board else " (bitstream)" if name in f.bitstreams else ""
        budget_rows.append((name + mark, *cells, bar(t.luts / b.luts, f"{t.luts:,} / {b.luts:,}"),
                            bar(t.ffs / b.ffs, f"{t.ffs:,} / {b.ffs:,}"),
                            bar(t.dsps / b.dsps if b.dsps else 0, f"{t.dsps} / {b.dsps}"),
                            bar(t.bram_bits / b.bram_bits, f"{t.bram_bits // 1024} / {b.bram_bits // 1024} kbit"),
                            badge("fits", "ok") if fits else badge(why, "bad")))
    body += [Html("<h3>estimate against each board's budget (the device less its host link and board top)</h3>"),
             table(["board", "logic cells", "LUTs", "FFs", "DSPs", "block RAM", "by the estimate"], budget_rows)]
    if not f.bitstreams:
        body.append(missing(f"no bitstream yet, so nothing measured: qfab bitstream {f.folder} --board "
                            f"{f.board or 'NAME'}"))
    for board, rep in f.bitstreams.items():
        body.append(_measured(board, rep, t))
    return Html("\n".join(body))


def _measured(board, rep, total):
    from qfab.boards.report import CELLS, _estimate_columns
    est = _estimate_columns(board, total.as_dict())
    names = CELLS.get(rep.get("family"), {})
    rows = []
    for cell, (used, available) in rep.get("utilization", {}).items():
        if used == 0 and cell not in est:
            continue
        rows.append((f"{names[cell]} ({cell})" if cell in names else cell, used, available,
                     bar(used / available) if available else "", est.get(cell, "")))
    out = [Html(f"<h3>measured on the {esc(board)} (nextpnr, the whole bitstream: accelerator, host link, "
                f"board top)</h3>"),
           table(["resource", "used", "available", "share", "estimate + board top"], rows)]
    y = rep.get("yosys")
    if y:
        out.append(paragraph(f"after synthesis (Yosys): {y.get('luts')} LUT4, {y.get('ffs')} flip-flops "
                             f"(accelerator estimate {total.ffs}), {y.get('carries')} carries, {y.get('bram')} "
                             f"block RAMs, {y.get('dsps')} DSPs"))
    return Html("\n".join(out))


def _timing(f):
    if not f.bitstreams:
        return missing(f"no bitstream yet: qfab bitstream {f.folder} --board {f.board or 'NAME'} "
                       f"(Fmax and the critical path come from nextpnr)")
    from qfab.boards.report import readable_cell
    ii = f.manifest.initiation_interval
    rows, notes = [], []
    for board, rep in f.bitstreams.items():
        fmax, clock = rep.get("fmax_mhz"), rep.get("requested_mhz")
        path = rep.get("critical_path") or []
        verdict = ("no Fmax reported", "warn") if fmax is None else ("met", "ok") if fmax >= clock else ("MISSED", "bad")
        rows.append((board, f"{clock:g} MHz", f"{fmax:.2f} MHz" if fmax is not None else "-", badge(*verdict),
                     " to ".join(readable_cell(c) for c in path) if path else "-",
                     f"{clock * 1e6 / ii:,.0f}", f"{fmax * 1e6 / ii:,.0f}" if fmax else "-",
                     ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in (rep.get("seconds") or {}).items())))
        if rep.get("untimed_dsp_ns") is not None:
            notes.append(paragraph(f"{board}: Fmax leaves out paths through DSPs used without their registers "
                                   f"(nextpnr-ice40 does not time them): {rep['untimed_dsp_ns']:.1f} ns of routing "
                                   f"plus the DSPs' own delay"))
        notes += [paragraph(badge("warning", "warn"), f" {board}: {w}") for w in rep.get("warnings") or []]
        if rep.get("bitstream"):
            notes.append(paragraph(f"{board} bitstream: ", code(rep["bitstream"])))
    return Html("\n".join([table(["board", "clock", "Fmax", "timing", "critical path (from, to)",
                                  "inferences/s at the clock", "at Fmax", "tool time"], rows), *notes]))


def _simulation(f):
    sim = f.report("simulation")
    if sim is None:
        return missing(f"not simulated yet: qfab simulate {f.folder} --input X.npy -o Y.npy")
    exact = sim["verdict"] == "bit-exact"
    verdict = (badge("bit-exact", "ok") if exact else badge("MISMATCH", "bad"))
    what = (f" all {sim['elements']:,} output elements of {sim['inferences']} inferences equal the bit-exact "
            f"reference" if exact else f" {sim['mismatches']:,} of {sim['elements']:,} output elements differ "
            f"from the reference")
    rows = [("inferences", sim["inferences"]), ("cycles simulated", sim["cycles"]),
            ("latency of the first result", f"{sim['latency']:,} cycles (estimate {f.manifest.latency_estimate:,})"),
            ("steady-state interval", f"{sim['interval']:g} cycles per inference"),
            ("analytical bound", f"{sim['bound']:,} cycles (interval / bound {sim['ratio']:.3f})"),
            ("random input gaps and output stalls",
             f"probability {sim['stall']:g} per cycle (seed {sim['seed']}): gaps held back a beat in "
             f"{sim.get('gap_cycles', 0):,} cycles, stalls held back a valid beat in {sim.get('hold_cycles', 0):,}"
             if sim["stall"] else "none (full rate)"),
            ("Verilator", f"build {sim['build_seconds']:.1f} s, run {sim['run_seconds']:.1f} s")]
    body = [paragraph(verdict, what), table(None, rows)]
    util = sim.get("utilization") or {}
    if util:
        body += [Html("<h3>utilization per stage (share of the simulated cycles)</h3>"),
                 table(["stage", "compute (analytical cycles)", "input blocked (stage busy)",
                        "output blocked (next stage busy)"],
                       [(name, bar(u["compute"]), bar(u["input_blocked"]), bar(u["output_blocked"]))
                        for name, u in util.items()])]
    return Html("\n".join(body))


def _accuracy(f):
    acc = f.report(ACCURACY)
    if not acc or not acc.get("rows"):
        return missing("accuracy not recorded for this build: qfab sweep records it per bit width "
                       "(qfab demo prints it)")
    base = acc.get("float_accuracy")
    rows = [(f"w{r['w_bits']}a{r['a_bits']}" + (" (this build)" if r.get("this_build") else ""),
             f"{100 * r['accuracy']:.2f}%", f"{100 * (r['accuracy'] - base):+.2f}" if base is not None else "-",
             r.get("samples", "")) for r in acc["rows"]]
    head = paragraph(f"on {acc.get('dataset', 'the test set')}"
                     + (f"; float model {100 * base:.2f}%" if base is not None else ""))
    return Html(head + table(["bits", "accuracy", "vs float (points)", "samples"], rows))


def _commands(f):
    if not f.commands:
        return missing("no commands recorded: the build was made before qfab recorded them, or below qfab.flow "
                       "(the Python API of qfab.compiler)")
    rows, last = [], None
    for c in f.commands:
        line = " ".join(_quote(a) for a in c["command"]) if c.get("command") else \
            f"qfab.flow.{c['step']}() from: " + " ".join(_quote(a) for a in c.get("process", []))
        details_ = ", ".join(f"{k}={v}" for k, v in (c.get("details") or {}).items())
        if last is not None and last[2] == code(line) and c.get("command"):
            last[1] += f", {c['step']}"              # one command ran several steps (qfab build)
            continue
        last = [c.get("time", "").replace("T", " "), c["step"], code(line), details_]
        rows.append(last)
    return Html(table(["time", "steps", "command", "arguments"], rows)
                + paragraph(f"working folder of the last: {f.commands[-1].get('cwd', '?')}; "
                            f"qfab {f.commands[-1].get('qfab', '?')}"))


def _quote(arg):
    import shlex
    return shlex.quote(str(arg))


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("qfab")
    except PackageNotFoundError:
        from qfab import __version__
        return __version__


_SECTIONS = [("model", "Model", _model), ("folding", "Folding and pipeline balance", _folding),
             ("resources", "Resources", _resources), ("timing", "Timing", _timing),
             ("simulation", "Simulation", _simulation), ("accuracy", "Accuracy", _accuracy),
             ("commands", "Commands", _commands)]
