"""What a bitstream build used and achieved, read from the tools' own outputs.

- nextpnr's ``--report`` JSON: utilization per cell type (used / available), the achieved Fmax
  per clock, and the critical paths;
- nextpnr's log: the device utilisation it prints before placement (the only record when a design
  does not fit) and its errors;
- Yosys's ``stat -json``: cells after synthesis (LUT4s, flip-flops, carries, block RAM, DSPs), read
  by `qfab.boards.toolchain.read_stat`.

A known gap of nextpnr-ice40: an SB_MAC16 used without its registers is timed as if it were
registered on its (unused, constant) clock, which shows up as a clock named ``$PACKER_GND_NET``.
Paths through such DSPs are then missing from the design clock's Fmax. `NextpnrReport` keeps the
delay around them (into, between and out of the DSPs) and `Report.warnings` says so.
"""

import json
import math
import re
from dataclasses import dataclass, field

from qfab.base.errors import QfabError

__all__ = ["Report", "NextpnrReport", "CELLS", "parse_report", "overused",
           "fit_error", "timing_warning", "readable_cell", "critical_kind", "critical_path_kind"]

# nextpnr cell types shown in reports, with what they are
CELLS = {"ice40": {"ICESTORM_LC": "logic cells", "ICESTORM_RAM": "block RAM (4 kbit)", "ICESTORM_SPRAM": "SPRAM",
                   "ICESTORM_DSP": "DSP (SB_MAC16)", "SB_IO": "I/O", "ICESTORM_PLL": "PLL",
                   "SB_GB": "global buffers"},
         "ecp5": {"TRELLIS_COMB": "LUT4 (comb)", "TRELLIS_FF": "flip-flops", "DP16KD": "block RAM (18 kbit)",
                  "MULT18X18D": "DSP (18x18)", "TRELLIS_IO": "I/O", "EHXPLLL": "PLL", "TRELLIS_RAMW": "LUT RAM"}}
_CONSTANT_CLOCK = re.compile(r"\$PACKER_(GND|VCC)_NET")


def readable_cell(name):
    """A netlist cell name without the suffixes synthesis and packing add:
    ``core.link.rx_SB_LUT4_I3_LC`` -> ``core.link.rx``."""
    cut = re.split(r"_(?:SB_|TRELLIS_|LUT4|DFF|CCU2C|PFUMX|L6MUX|MULT18|DP16KD|\$)", name, maxsplit=1)[0]
    return cut or name


def critical_kind(cell, manifest):
    """The timing kind (`qfab.compiler.estimate.timing_kinds`) a routed cell of a ``qfab build``
    belongs to, from its hierarchical name and the build's `Manifest`: a stage's kind, its
    requantization by mode (``requant.search``), ``fifo``/``convert``/``fork``, ``link`` (the
    host link) or ``top`` (the rest of the board top); None for a name packing left unreadable."""
    parts = readable_cell(cell).split(".")
    if parts[0] != "core" or len(parts) < 2:
        return None
    if parts[1] == "link":
        return "link"
    if parts[1] != "accelerator" or len(parts) < 3:
        return "top"
    part = parts[2]
    for prefix, kind in (("_fifo", "fifo"), ("_convert", "convert"), ("_fork", "fork")):
        if part.startswith(prefix):
            return kind
    stage = next((s for s in manifest.stages if s.name == part), None)
    if stage is None:
        return None
    if stage.kind in ("mvau", "vvau") and len(parts) > 3 and parts[3] == "requant":
        return f"requant.{stage.requant}" if stage.requant else None     # a manifest before the mode was kept
    return stage.kind


def critical_path_kind(path, manifest):
    """The timing kind of a critical path (start and end cells): where it ends (the logic in
    front of the end register is the end's), else where it starts; None if neither is readable."""
    for cell in reversed(tuple(path)):
        kind = critical_kind(cell, manifest)
        if kind is not None:
            return kind
    return None


@dataclass(frozen=True)
class NextpnrReport:
    """The parts of nextpnr's ``--report`` JSON a `Report` needs.

    ``fmax_mhz`` is the slowest real clock's (constant "clocks" of unregistered DSPs excluded),
    ``critical_path`` its start and end cells, ``untimed_dsp_ns`` the longest delay into, between
    and out of unregistered iCE40 DSPs (None when there are none).
    """
    utilization: dict
    fmax_mhz: float | None
    clock: str | None
    critical_path: tuple
    untimed_dsp_ns: float | None


def parse_report(report_json):
    """Read nextpnr's ``--report`` JSON text into a `NextpnrReport`."""
    doc = json.loads(report_json)
    util = {k: (int(v["used"]), int(v["available"])) for k, v in doc.get("utilization", {}).items()}
    clocks = {k: v["achieved"] for k, v in doc.get("fmax", {}).items()
              if "achieved" in v and not _CONSTANT_CLOCK.search(k)}
    slowest = min(clocks, key=clocks.get) if clocks else None
    path, worst = (), {}
    for crit in doc.get("critical_paths", []):
        steps = crit.get("path") or []
        if not steps:
            continue
        src, dst = crit.get("from", ""), crit.get("to", "")
        if slowest and src == dst == f"posedge {slowest}":
            path = (steps[0]["from"]["cell"], steps[-1]["to"]["cell"])
        kind = (bool(_CONSTANT_CLOCK.search(src)), bool(_CONSTANT_CLOCK.search(dst)))
        if kind != (False, False) and "<async>" not in (src, dst):
            worst[kind] = max(worst.get(kind, 0.0), sum(s.get("delay", 0.0) for s in steps))
    untimed = sum(worst.values()) if worst else None
    return NextpnrReport(util, clocks.get(slowest), slowest, path, untimed)


def overused(log_text):
    """Resources a nextpnr log shows over 100 %, as ``[(cell type, used, available)]``: from the
    utilisation it prints before placement, or the type it ran out of while placing."""
    usage = {}
    for m in re.finditer(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log_text):
        usage[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    found = [(cell, used, avail) for cell, (used, avail) in usage.items() if used > avail]
    for m in re.finditer(r"no BELs remaining to implement cell type '(\w+)'", log_text):
        if m.group(1) not in [f[0] for f in found]:
            used, avail = usage.get(m.group(1), (None, None))
            found.append((m.group(1), used, avail))
    return found


def fit_error(board, over):
    """The `QfabError` for a design that does not fit ``board``: the resources, and what to change."""
    cells = CELLS[board.family]
    what = ", ".join(f"{cells.get(c, c)} ({c}) {u} used of {a}" if u is not None else f"{cells.get(c, c)} ({c}) exhausted"
                     for c, u, a in over)
    return QfabError(f"the design does not fit the {board.name} ({board.device}): {what}. Fold it further (a larger "
                     f"--target-ii), use fewer bits (--wbits/--abits), or pick a bigger board (qfab boards)")


@dataclass
class Report:
    """A bitstream build: what it used and achieved.

    Members
    -------
    board, family : str
    utilization : dict
        nextpnr cell type -> (used, available).
    yosys : `qfab.boards.toolchain.Cells` or None
        Cell counts after synthesis (None when Yosys left no statistics).
    fmax_mhz : float or None
        Achieved Fmax of the design clock (nextpnr's timing analysis after routing).
    requested_mhz : float
        The clock the design runs at (oscillator or PLL output).
    bitstream : pathlib.Path or None
    baud : int
        The host link's rate built into the bitstream.
    seconds : dict
        Tool time: ``synthesis``, ``place_and_route``, ``pack``, and ``tools`` (all of them).
    critical_path : tuple
        Start and end cell of the design clock's critical path.
    untimed_dsp_ns : float or None
        Delay around unregistered iCE40 DSPs that nextpnr leaves out of Fmax (see the module).
    warnings : list of str
        Timing missed, untimed paths.
    attempts : tuple of (float, float or None)
        ``(requested MHz, achieved Fmax)`` of each place and route, the last one this report's
        (more than one when a missed clock was retried: `qfab.boards.bitstream.build_bitstream`).
    """
    board: str
    family: str
    utilization: dict
    yosys: dict
    fmax_mhz: float | None
    requested_mhz: float
    bitstream: object
    baud: int
    seconds: dict = field(default_factory=dict)
    critical_path: tuple = ()
    untimed_dsp_ns: float | None = None
    warnings: list = field(default_factory=list)
    attempts: tuple = ()

    @property
    def timing_met(self):
        return self.fmax_mhz is not None and self.fmax_mhz >= self.requested_mhz

    def format_table(self, estimates=None):
        """Used / available per resource next to the lowering's ``estimates`` (the manifest's
        ``estimates.total``: luts, ffs, dsps, bram_bits, logic_cells) plus the board top's
        reserve, then Fmax, times and warnings."""
        est = _estimate_columns(self.board, estimates or {})
        lines = [f"{'resource':<34}{'used':>8}{'available':>11}{'share':>8}{'estimate':>10}"]
        for cell, (used, avail) in self.utilization.items():
            if used == 0 and cell not in est:
                continue
            share = f"{100 * used / avail:.1f}%" if avail else ""
            name = f"{CELLS[self.family].get(cell, cell.lower())} ({cell})" if cell in CELLS[self.family] else cell
            lines.append(f"{name:<34}{used:>8}{avail:>11}{share:>8}{est.get(cell, ''):>10}")
        if self.yosys:
            y = self.yosys
            lines.append(f"after synthesis (Yosys): {y.luts} LUT4, {y.ffs} flip-flops"
                         + (f" (accelerator estimate {estimates['ffs']})" if estimates and "ffs" in estimates
                            else "")
                         + f", {y.carries} carry, {y.bram} block RAM, {y.dsps} DSP")
        if self.fmax_mhz is not None:
            verdict = "met" if self.timing_met else "MISSED"
            lines.append(f"timing: Fmax {self.fmax_mhz:.2f} MHz for a {self.requested_mhz:g} MHz clock: {verdict}")
        else:
            lines.append("timing: no Fmax reported")
        if len(self.attempts) > 1:
            lines.append("attempts: " + "; ".join(f"{r:g} MHz -> Fmax {f:.2f}" if f else f"{r:g} MHz -> no Fmax"
                                                 for r, f in self.attempts))
        if self.seconds:
            lines.append("tool time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in self.seconds.items()))
        if self.bitstream:
            lines.append(f"bitstream: {self.bitstream}")
        if self.untimed_dsp_ns is not None:
            lines.append(f"note: Fmax leaves out paths through DSPs used without their registers (nextpnr-ice40 "
                         f"does not time them): {self.untimed_dsp_ns:.1f} ns of routing plus the DSPs' own delay")
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self):
        return {"board": self.board, "family": self.family,
                "utilization": {k: list(v) for k, v in self.utilization.items()},
                "yosys": self.yosys.as_dict() if self.yosys else None,
                "fmax_mhz": self.fmax_mhz, "requested_mhz": self.requested_mhz, "timing_met": self.timing_met,
                "baud": self.baud, "bitstream": str(self.bitstream) if self.bitstream else None,
                "seconds": self.seconds, "critical_path": list(self.critical_path),
                "untimed_dsp_ns": self.untimed_dsp_ns, "warnings": self.warnings,
                "attempts": [list(a) for a in self.attempts]}


def _estimate_columns(board, est):
    """The manifest's accelerator estimate plus the board top's reserve (`Board.top_reserve`), per
    nextpnr cell type, so the column compares with what the whole bitstream uses."""
    from .registry import get_board
    if not est:
        return {}
    board = get_board(board)
    family, top = board.family, board.top_reserve
    blocks = -(-est.get("bram_bits", 0) // board.block_bits) + top["bram_blocks"]
    if family == "ice40":
        cells = est.get("logic_cells", est.get("luts", 0))
        return {"ICESTORM_LC": round(cells) + top["logic_cells"], "ICESTORM_RAM": blocks,
                "ICESTORM_DSP": est.get("dsps", "")}
    return {"TRELLIS_COMB": est.get("luts", 0) + top["luts"], "TRELLIS_FF": est.get("ffs", 0) + top["ffs"],
            "DP16KD": blocks, "MULT18X18D": est.get("dsps", "")}


def timing_warning(nextpnr, requested_mhz):
    """The warnings for a routed design: timing missed (naming the critical path and what to
    change), and paths nextpnr did not time."""
    warnings = []
    if nextpnr.fmax_mhz is not None and nextpnr.fmax_mhz < requested_mhz:
        where = ""
        if nextpnr.critical_path:
            start, end = map(readable_cell, nextpnr.critical_path)
            where = f"; critical path from {start} to {end}"
        warnings.append(f"timing MISSED: Fmax {nextpnr.fmax_mhz:.2f} MHz < the {requested_mhz:g} MHz clock{where}. "
                        f"The bitstream was kept but may compute wrong results: ask for a lower --freq "
                        f"(at most {math.floor(nextpnr.fmax_mhz * 10) / 10:.1f}) or fold deeper (a larger --target-ii)")
    if nextpnr.untimed_dsp_ns is not None and nextpnr.untimed_dsp_ns > 1000 / requested_mhz:
        warnings.append(f"paths through DSPs used without their registers take at least "
                        f"{nextpnr.untimed_dsp_ns:.1f} ns, more than the {1000 / requested_mhz:.1f} ns clock period; "
                        f"nextpnr-ice40 does not time them (its Fmax leaves them out): ask for a lower --freq")
    return warnings
