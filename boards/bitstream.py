"""Bitstreams: a build folder on a board, through Yosys, nextpnr and the packer (yowasp builds
from PyPI by default), with progress while the tools run and a `Report` read from their outputs.

The amaranth-boards platform writes the build plan (RTLIL, pin constraints, its build script). We
run the script's tool lines one at a time in the build directory (the yowasp tools run under WASI:
they see only the current directory, with relative paths), following the tools' log files
(``qfab_board.rpt`` from Yosys, ``qfab_board.tim`` from nextpnr) for progress, then read nextpnr's
``report.json`` and Yosys's statistics (`qfab.boards.report`). The tools run through
`qfab.boards.toolchain` (its `~qfab.boards.toolchain.PREPARE` after reading, its ``stat -json``
after synthesis).

Running the lines ourselves also means no tool is required that the build does not run: the
ULX3S platform lists openFPGALoader and the OrangeCrab's script calls dfu-suffix; without a
``dfu-suffix`` on PATH we append the DFU suffix ourselves.
"""

import json
import pathlib
import re
import shutil
import time
import zlib

from .gateware.top import BoardTop
from .registry import get_board
from .report import CELLS, NextpnrReport, Report, fit_error, overused, parse_report, readable_cell, timing_warning
from .toolchain import (
    PREPARE,
    STAT,
    STAT_FILE,
    LogFollower,
    RouteWatch,
    ToolError,
    ToolStopped,
    read_stat,
    run_tool,
    tool_env,
)

__all__ = ["build_bitstream", "retry_mhz", "next_attempt", "find_programmer", "program_command", "Report", "DEFAULT_BAUD",
           "append_dfu_suffix", "RouteStalled", "ROUTE_SEEDS"]

DEFAULT_BAUD = 115200
NAME = "qfab_board"
STEPS = {"YOSYS": "synthesis", "NEXTPNR_ICE40": "place_and_route", "NEXTPNR_ECP5": "place_and_route",
         "ICEPACK": "pack", "ECPPACK": "pack", "DFU_SUFFIX": "dfu_suffix"}


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
    """Run one tool line (`qfab.boards.toolchain.run_tool`); a design that does not fit is named."""
    step = STEPS.get(variable, variable.lower())
    if variable == "DFU_SUFFIX" and "DFU_SUFFIX" not in env and shutil.which("dfu-suffix") is None:
        m = re.search(r"-a\s+(\S+)", line)
        if m and board.dfu_ids:
            append_dfu_suffix(folder / m.group(1), *board.dfu_ids)
            return
    logs = {"synthesis": [f"{NAME}.rpt"], "place_and_route": [f"{NAME}.tim"]}.get(step, [])
    try:
        run_tool(f"{preamble}\n{line}", folder, tool=variable, what=f"{step.replace('_', ' ')} for the {board.name}",
                 logs=logs, output=f"{step}.out", env=env, note=f"\n(logs in {folder})",
                 stop=RouteWatch(folder / f"{NAME}.tim") if step == "place_and_route" else None)
    except ToolError as e:
        over = overused(e.log) if step == "place_and_route" else []
        if over:
            raise fit_error(board, over) from None
        if step == "place_and_route" and _NO_LEGAL in e.log:
            cell = {"ice40": "ICESTORM_LC", "ecp5": "TRELLIS_COMB"}.get(board.family, "")
            used = _utilisation(e.log, cell)
            at = f" at {used[0]}/{used[1]} {cell} ({100 * used[0] / used[1]:.0f} %)" if used else ""
            raise NoLegalPlacement(f"place and route for the {board.name}: nextpnr found no legal placement{at}; "
                                   "fold deeper, use fewer bits or a larger device if it fails again (logs in "
                                   f"{folder})", e.log, e.returncode) from None
        raise


def retry_mhz(board, fmax_mhz, margin=0.02):
    """The clock to place and route again at after missing timing with ``fmax_mhz`` achieved: the
    highest frequency the board's oscillator or PLL gives (`qfab.boards.gateware.top.clock_mhz`)
    at most ``1 - margin`` of ``fmax_mhz`` (nextpnr's Fmax moves a few percent between runs), to
    0.1 MHz; None if there is none."""
    from qfab.base.errors import QfabError

    from .gateware.top import clock_mhz
    want = int(fmax_mhz * (1 - margin) * 10) / 10
    for step in range(40):
        ask = round(want * (1 - 0.005 * step), 1)
        try:
            got = clock_mhz(board, ask)
        except QfabError:
            continue
        if got <= fmax_mhz * (1 - margin / 2):
            return ask
    return None


SEED_SPREAD = 0.05      # a miss this close is within nextpnr's spread between placements (often 1-2 MHz at 36)


def next_attempt(board, requested_mhz, fmax_mhz, seed):
    """After a build at ``requested_mhz`` with placer ``seed`` (None: nextpnr's default) achieved
    ``fmax_mhz`` below it: ``(clock, seed)`` to place and route again at, or None. A miss within
    `SEED_SPREAD` of the clock, on the default seed, is placed again at the same clock with
    another seed (the spread between placements is that large, and a lower clock would give the
    design up); otherwise the clock comes down to the achieved one (`retry_mhz`), default seed."""
    if seed is None and fmax_mhz >= requested_mhz * (1 - SEED_SPREAD):
        return requested_mhz, 2
    again = retry_mhz(board, fmax_mhz)
    return None if again is None else (again, None)


def build_bitstream(build_dir, board_name, freq_mhz=None, out_dir=None, *, baud=None, core=None, log=print,
                    retries=0):
    """Synthesize, place and route a ``qfab compile`` build folder for a board; with ``retries``,
    a missed clock is placed and routed again at the achieved one (`retry_mhz`).

    Parameters
    ----------
    build_dir : path
        The build folder (``manifest.json``, ``qfab_top.v``).
    board_name : str
        A board of `qfab.boards.registry.BOARDS`.
    freq_mhz : float or None
        The clock to run at (through the PLL where the oscillator cannot give it); None for the
        board's default clock (`qfab.boards.gateware.top.clock_plan`).
    out_dir : path or None
        Where the tools work; default ``<build_dir>/bitstream/<board>/``.
    baud : int or None
        The host link's baud rate (default `DEFAULT_BAUD`).
    core : wiring.Component or None
        Another core with `BoardTop`'s interface instead of the build's
        `qfab.boards.gateware.core.InferenceCore` (tests, other gateware).
    log : callable
        Receives progress lines while the tools run.
    retries : int
        How many times a build that misses its clock is built again at the Fmax it achieved
        (`retry_mhz`: 2 % below it, at a frequency the PLL gives), without the user; a first miss
        of less than 5 % is first placed once more at the same clock with another placer seed
        (`next_attempt`; that attempt is not counted);
        only for the build's own core (``core=None``), whose UART divider follows the clock. ``qfab bitstream``
        and ``qfab build`` retry twice unless given ``--no-retry``. `Report.attempts` lists each
        attempt's requested and achieved MHz.

    Returns
    -------
    `Report` of the last attempt; it is also written to ``report.qfab.json`` in the tools' folder.

    Raises
    ------
    QfabError
        When the design does not fit (naming the resource, used and available, and what to
        change), a tool is missing or fails. A missed timing target (after the retries) is not an
        error: the bitstream is kept, `Report.timing_met` is False and ``Report.warnings`` (also
        logged) names the critical path.
    """
    attempts, synthesized = [], {}
    report, seed = _build_routed(build_dir, board_name, freq_mhz, out_dir, baud=baud, core=core, log=log,
                                 attempts=attempts, synthesized=synthesized)
    left = retries if core is None else 0
    while left > 0:
        if report.timing_met or not report.fmax_mhz:
            break
        board = get_board(board_name)
        nxt = next_attempt(board, report.requested_mhz, report.fmax_mhz, seed)
        if nxt is None:
            break
        again, seed = nxt
        left -= seed is None        # the seed's attempt is extra
        how = f"with placer seed {seed}" if seed is not None else "with the default seed"
        log(f"timing missed (Fmax {report.fmax_mhz:.2f} MHz < {report.requested_mhz:g} MHz): placing and "
            f"routing again at {again:g} MHz {how}")
        report, seed = _build_routed(build_dir, board_name, again, out_dir, baud=baud, core=core, log=log,
                                     attempts=attempts, seed=seed, synthesized=synthesized)
    return report


ROUTE_SEEDS = (2, 3)    # placer seeds tried, in turn, after a route that stopped making progress


def _build_routed(build_dir, board_name, freq_mhz, out_dir, *, seed=None, log, synthesized=None, **kwargs):
    """`_build_once` and the placer seed it used (None: nextpnr's default); a place and route
    stopped because its router made no progress (`qfab.boards.toolchain.RouteWatch`) is placed
    again with each of `ROUTE_SEEDS` in turn (another placement of the same netlist routes or
    not independently), so that a later retry (`next_attempt`) knows which seed it had.
    `RouteStalled` if none routes. ``synthesized``: `_build_once`'s record of the netlist in the
    tools' folder, shared by the attempts of one `build_bitstream`."""
    tried = []
    synthesized = {} if synthesized is None else synthesized
    for again in (seed, *(s for s in ROUTE_SEEDS if s != seed)):
        if tried:
            log(f"placing again with placer seed {again}: {tried[-1][1]}")
        try:
            return _build_once(build_dir, board_name, freq_mhz, out_dir, log=log, seed=again,
                               synthesized=synthesized, **kwargs), again
        except ToolStopped as e:
            tried.append((again, e.reason))
    seeds = ", ".join("default" if s is None else str(s) for s, _ in tried)
    folder = pathlib.Path(out_dir) if out_dir else pathlib.Path(build_dir) / "bitstream" / board_name
    raise RouteStalled(f"place and route for the {board_name}: the router stopped making progress with every "
                       f"placement tried (placer seeds {seeds}; last: {tried[-1][1]}); the design is too congested "
                       "for this device at this fold: fold deeper (a larger --target-ii), use fewer bits or a "
                       f"larger device (logs in {folder})", "", None)


class RouteStalled(ToolError):
    """nextpnr's router made no progress (`qfab.boards.toolchain.RouteWatch`) with any of the
    placements `build_bitstream` tried (`ROUTE_SEEDS`)."""


class NoLegalPlacement(ToolError):
    """nextpnr's placer found no legal place for every cell of a design that fits the device's
    counts (an iCE40 filled to about 95 % of its logic cells: its packing rules, not the count).
    Its simulated-annealing placer (``--placer sa``) failed on the same design too (a carry chain
    found no column), so there is no automatic second try; `qfab.boards.registry.budget_for`
    keeps `--board` designs below that fill."""


_NO_LEGAL = "Unable to find legal placement"


def _utilisation(log_text, cell):
    """``(used, available)`` of ``cell`` in nextpnr's "Device utilisation" lines, or None."""
    m = re.search(rf"{cell}:\s*(\d+)/\s*(\d+)", log_text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _build_once(build_dir, board_name, freq_mhz, out_dir, *, baud, core, log, attempts, seed=None,
                synthesized=None):
    """One synthesis, place and route and pack of ``build_dir`` for ``board_name`` at ``freq_mhz``
    with placer ``seed``. ``synthesized`` (a dict, or None) records the clock the tools' folder
    holds a netlist for; an attempt at the same clock (another placer seed) places that netlist
    instead of synthesizing the same design again (minutes on the ECP5)."""
    board = get_board(board_name)
    baud = baud or DEFAULT_BAUD
    folder = pathlib.Path(out_dir) if out_dir else pathlib.Path(build_dir) / "bitstream" / board.name
    if core is None:
        from .gateware.core import InferenceCore
        from .gateware.top import clock_mhz
        core = InferenceCore(build_dir, clock_hz=clock_mhz(board, freq_mhz) * 1e6, baud=baud)
    top = BoardTop(core, board, freq_mhz)
    folder.mkdir(parents=True, exist_ok=True)
    synthesized = {} if synthesized is None else synthesized
    # the netlist of an attempt before at the same clock (same core, baud and PLL) is this one's
    reuse = synthesized.get("mhz") == top.clock_mhz and (folder / f"{NAME}.json").is_file()
    synthesized.pop("mhz", None)            # until this attempt's synthesis is done, none is known
    for stale in ("report.json", f"{NAME}.tim", f"{NAME}.bin", f"{NAME}.bit") \
            + (() if reuse else (STAT_FILE, f"{NAME}.rpt", f"{NAME}.json")):
        (folder / stale).unlink(missing_ok=True)
    plan = board.new_platform().build(
        top, name=NAME, build_dir=str(folder), do_build=False,
        script_after_read=f"hierarchy -top {NAME}; {PREPARE}", script_after_synth=STAT,
        # iCE40: wide multiplies (requantization) on the SB_MAC16s, small ones in LUTs
        synth_opts="-dsp" if board.family == "ice40" else "",
        nextpnr_opts="--report report.json --timing-allow-fail" + (f" --seed {seed}" if seed is not None else ""))
    plan.extract(str(folder))
    preamble, steps = _script_steps((folder / f"build_{NAME}.sh").read_text())
    env = tool_env()
    pll = f" from the PLL ({', '.join(f'{k}={v}' for k, v in top.pll.params.items())})" if top.pll else ""
    log(f"building the {board.name} bitstream ({board.device}, {top.clock_mhz:g} MHz{pll}, UART {baud} baud) "
        f"in {folder}")
    seconds, start = {}, time.monotonic()
    with LogFollower([folder / f"{NAME}.rpt", folder / f"{NAME}.tim"], log, start=start):
        for variable, line in steps:
            step = STEPS.get(variable, variable.lower())
            if step == "synthesis" and reuse:
                log(f"synthesis: the netlist of the attempt before ({NAME}.json, same design and clock)")
            else:
                t = time.monotonic()
                _run_step(variable, line, preamble, folder, env, board)
                seconds[step] = seconds.get(step, 0.0) + time.monotonic() - t
            if step == "synthesis":
                synthesized["mhz"] = top.clock_mhz
    seconds["tools"] = time.monotonic() - start
    nextpnr = parse_report((folder / "report.json").read_text()) if (folder / "report.json").exists() \
        else NextpnrReport({}, None, None, (), None)
    stats = read_stat((folder / STAT_FILE).read_text(), board.family)[0] if (folder / STAT_FILE).exists() else None
    bitstream = next((folder / f"{NAME}.{ext}" for ext in ("bin", "bit") if (folder / f"{NAME}.{ext}").exists()), None)
    attempts.append((top.clock_mhz, nextpnr.fmax_mhz))
    report = Report(board.name, board.family, nextpnr.utilization, stats, nextpnr.fmax_mhz, top.clock_mhz, bitstream,
                    baud, {k: round(v, 1) for k, v in seconds.items()}, nextpnr.critical_path,
                    nextpnr.untimed_dsp_ns, timing_warning(nextpnr, top.clock_mhz), tuple(attempts))
    (folder / "report.qfab.json").write_text(json.dumps(report.as_dict(), indent=1))
    used = ", ".join(f"{u}/{a} {c}" for c, (u, a) in nextpnr.utilization.items() if c in CELLS[board.family] and u)
    log(f"done in {seconds['tools']:.0f} s: {used}; Fmax {nextpnr.fmax_mhz or 0:.1f} MHz at {top.clock_mhz:g} MHz"
        + (f" (critical path {' -> '.join(map(readable_cell, nextpnr.critical_path))})" if nextpnr.critical_path else ""))
    for warning in report.warnings:
        log(f"WARNING: {warning}")
    return report


def find_programmer(board):
    """The programming tool on PATH for ``board`` (a `Board` or its name), or None: the first of the
    board's ``programmers`` found (iCE40 boards: ``iceprog``, else ``openFPGALoader``; the ULX3S:
    ``openFPGALoader``; the OrangeCrab: ``dfu-util`` (its USB bootloader), else ``openFPGALoader``
    (JTAG))."""
    board = get_board(board) if isinstance(board, str) else board
    return next((tool for tool in board.programmers if shutil.which(tool)), None)


def program_command(board, bitstream):
    """The command (a list) that programs ``bitstream`` into ``board``, with the tool `find_programmer`
    finds, else the board's usual one. iceprog (``-S``) and openFPGALoader load the FPGA's SRAM (lost
    at power-off); dfu-util writes the OrangeCrab's flash through its bootloader (hold the button
    while plugging it in, or press it while a qfab bitstream runs)."""
    board = get_board(board) if isinstance(board, str) else board
    tool = find_programmer(board) or board.programmers[0]
    if tool == "iceprog":
        return ["iceprog", "-S", str(bitstream)]
    if tool == "dfu-util":
        return ["dfu-util", "--alt", "0", "--download", str(bitstream)]
    return ["openFPGALoader", "-b", board.openfpgaloader_board, str(bitstream)]
