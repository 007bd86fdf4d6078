"""The Verilator build cache under concurrent and interrupted builds: two builders of one design
wait for each other and share one entry, a builder killed at any point leaves nothing that a later
run trusts, and an interrupt kills the compilers with the Python process."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from qfab.base.errors import QfabError
from qfab.sim import verilator
from qfab.sim.verilator import MARKER, cached_build, run_group

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _python(code, env=None, **kw):
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, **kw)


def _wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"       # a zombie is dead
    except FileNotFoundError:
        return False


def _leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".build") or p.name.startswith(".discard"))


# -- the cache's bookkeeping, with a stand-in for the compiler ------------------------------------

def test_concurrent_builders_share_one_entry(tmp_path):
    calls = []

    def populate(folder):
        calls.append(folder)
        time.sleep(0.3)
        (folder / "out").write_text("built")
    results = [None, None]

    def worker(k):
        results[k] = cached_build(tmp_path, "k1", populate, log=lambda m: None)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results[0][0] == results[1][0] == tmp_path / "k1"
    assert sorted(r[1] for r in results) == [False, True]
    assert (tmp_path / "k1" / "out").read_text() == "built"
    assert (tmp_path / "k1" / MARKER).read_text() == "k1"
    assert _leftovers(tmp_path) == []


def test_concurrent_processes_share_one_entry(tmp_path):
    code = f"""
        import pathlib, time
        from qfab.sim.verilator import cached_build
        def populate(folder):
            time.sleep(0.5)
            (folder / "out").write_text("built")
            with open({str(tmp_path / "calls")!r}, "a") as f:
                f.write("x")
        print(cached_build(pathlib.Path({str(tmp_path / "cache")!r}), "k", populate, log=lambda m: None)[1])
    """
    procs = [_python(code, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == ["False", "False", "True"]
    assert (tmp_path / "calls").read_text() == "x"
    assert (tmp_path / "cache" / "k" / "out").read_text() == "built"


def test_build_killed_midway_is_never_trusted(tmp_path):
    cache = tmp_path / "cache"
    proc = _python(f"""
        import pathlib, time
        from qfab.sim.verilator import cached_build
        def populate(folder):
            (folder / "half").write_text("half a build")
            time.sleep(600)
        cached_build(pathlib.Path({str(cache)!r}), "k", populate, log=lambda m: None)
    """)
    try:
        assert _wait_for(lambda: any(cache.glob(".k.*.build/half")))
    finally:
        proc.kill()
        proc.wait()
    assert not (cache / "k").exists()

    def populate(folder):
        assert not (folder / "half").exists()
        (folder / "out").write_text("whole")
    entry, built = cached_build(cache, "k", populate, log=lambda m: None)
    assert built and (entry / "out").read_text() == "whole" and not (entry / "half").exists()
    assert _leftovers(cache) == []


def test_incomplete_entry_and_stale_lock_are_rebuilt(tmp_path):
    stale = tmp_path / "k"
    stale.mkdir()
    (stale / "Vtop__pch.h.fast.gch").write_bytes(b"\0" * 10)    # what a killed older qfab left
    (tmp_path / ".k.lock").write_text("")
    (tmp_path / ".k.123.build").mkdir()

    def populate(folder):
        (folder / "out").write_text("new")
    entry, built = cached_build(tmp_path, "k", populate, log=lambda m: None)
    assert built and sorted(p.name for p in entry.iterdir()) == sorted([MARKER, "out"])
    assert _leftovers(tmp_path) == []
    (entry / MARKER).write_text("another key")                   # a marker that is not this entry's
    assert cached_build(tmp_path, "k", populate, log=lambda m: None)[1]
    assert cached_build(tmp_path, "k", populate, log=lambda m: None) == (entry, False)


def test_failed_build_leaves_nothing(tmp_path):
    def populate(folder):
        (folder / "half").write_text("x")
        raise QfabError("the compiler failed")
    with pytest.raises(QfabError, match="compiler failed"):
        cached_build(tmp_path, "k", populate, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.lock"]


# -- processes -------------------------------------------------------------------------------------

def test_interrupt_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    proc = _python(f"""
        import signal, sys
        from qfab.sim.verilator import run_group
        # Python turns SIGINT into KeyboardInterrupt only if its parent left SIGINT at the default:
        # a shell's background job (`... &` without job control) inherits it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            run_group(["sh", "-c", "sleep 300 & echo $! > {pidfile}; wait"], cwd=".")
        except KeyboardInterrupt:
            sys.exit(42)
    """)
    try:
        assert _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild)
        os.kill(proc.pid, signal.SIGINT)             # to the Python process alone, not its group
        assert proc.wait(timeout=30) == 42
        assert _wait_for(lambda: not _alive(grandchild), timeout=10), "the compiler outlived its parent"
    finally:
        proc.kill()
        proc.wait()


def test_run_group_exit_code(tmp_path):
    assert run_group(["sh", "-c", "exit 3"], cwd=tmp_path) == 3
    assert run_group(["true"], cwd=tmp_path) == 0


def test_missing_verilator_is_a_qfab_error(monkeypatch):
    monkeypatch.setattr(verilator, "verilator_version", lambda: None)
    with pytest.raises(QfabError, match="Verilator not found"):
        verilator.build("module qfab_top; endmodule", 8, 8, 1024, 1024, log=lambda m: None)


# -- real Verilator builds on a cold cache ------------------------------------------------------------

_DESIGN = """
    import json, sys
    import numpy as np
    from amaranth import signed
    from amaranth.back import verilog
    from amaranth.lib import data
    from qfab.sim.packing import pack_beats, unpack_beats
    from qfab.sim.verilator import run_stream
    from tests.hw.test_streams import _Fifo
    v = verilog.convert(_Fifo(data.ArrayLayout(signed(5), 3), 4), name="qfab_top")
    values = np.random.default_rng(3).integers(-16, 16, (200, 3))
    res = run_stream(v, 15, 15, pack_beats(values, 5), len(values), stall=0.2, seed=5, log=lambda m: None)
    out = unpack_beats(res.outputs, 3, 5, True)
    print(json.dumps({"exact": bool(np.array_equal(out, values)), "out": out.tolist(), "built": res.built}))
"""


def _cold(tmp_path):
    env = dict(os.environ, QFAB_CACHE=str(tmp_path / "cache"))
    return env


def _kill_builders(cache):
    """Clean up after a test that killed a builder: its make and compilers keep running (SIGKILL
    cannot be handled), in their own process group under the cache folder."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(cache).encode() in stat.read_bytes():
                os.killpg(os.getpgid(int(stat.parent.name)), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
@pytest.mark.verilator
def test_two_cold_cache_simulations_at_once(tmp_path):
    procs = [_python(_DESIGN, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cold(tmp_path))
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["exact"] for r in results)
    assert results[0]["out"] == results[1]["out"]
    assert sorted(r["built"] for r in results) == [False, True]      # one built, the other waited for it
    assert _leftovers(tmp_path / "cache" / "verilator") == []


@pytest.mark.slow
@pytest.mark.verilator
def test_killed_build_then_rerun_without_cleanup(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    root = cache / "verilator"
    proc = _python(_DESIGN, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_cold(tmp_path))
    try:
        # kill it while the C++ compiler is at work (object files appearing in its private folder)
        assert _wait_for(lambda: any(root.glob(".*.build/*.o")) or any(root.glob(".*.build/*.gch")),
                         timeout=600)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _kill_builders(cache)
    assert not any(p.is_dir() and (p / MARKER).exists() for p in root.iterdir())
    rerun = _python(_DESIGN, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cold(tmp_path))
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["exact"] and result["built"]
    assert _leftovers(root) == []
