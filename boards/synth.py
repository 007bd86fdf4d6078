"""Yosys runs for measurement: a design in, cell counts out, per module and in total.

`synthesize` runs Yosys (``synth_ice40`` or ``synth_ecp5``, through `qfab.boards.toolchain`) on
RTLIL or Verilog text, or on an Amaranth elaboratable, and reads the statistics from its
``stat -json`` output. With ``keep="children"`` every direct submodule of the top (each stage of
a `qfab.hw.dataflow.Dataflow`) gets the ``keep_hierarchy`` attribute: everything below a stage is
flattened into it and optimized as usual, but the stages stay apart, so each has its own counts.
On the digits CNN this changes the whole design's LUT count by under 2 % against a flat run
(cross-stage optimization is small).
"""

import re
import tempfile
from dataclasses import dataclass, field

from qfab.base.errors import QfabError

from .toolchain import FAMILIES, PREPARE, Cells, ToolTimeout, cells_of, read_stat, run_yosys

__all__ = ["Cells", "SynthResult", "SynthesisTimeout", "synthesize", "read_stat", "cells_of", "FAMILIES"]

# a run that did not finish in the time given (the toolchain's timeout)
SynthesisTimeout = ToolTimeout


@dataclass(frozen=True)
class SynthResult:
    """What `synthesize` measured: the whole design and each module's own cells.

    ``modules`` maps module names (Amaranth's hierarchical names, ``"top.conv_3"``) to the cells
    of that module alone, without its kept submodules; with ``keep="children"`` the top's entry is
    only the glue between the stages.
    """
    family: str
    total: Cells
    modules: dict
    seconds: float
    log: str = field(default="", repr=False, compare=False)


def _text_of(design, top, family=None):
    """(file name, text) of an Amaranth elaboratable, RTLIL text or Verilog text."""
    if isinstance(design, str):
        is_verilog = re.search(r"^\s*endmodule\b", design, re.M) is not None
        return ("top.v", design) if is_verilog else ("top.il", design)
    from amaranth.back import rtlil

    from qfab.hw.cells import Cells  # the family's own cells, as `qfab compile` writes the netlist
    return "top.il", rtlil.convert(design, name=top, platform=Cells(family) if family else None)


def _children(text, top):
    """Names of the modules directly below ``top`` in Amaranth's hierarchical naming."""
    names = re.findall(r"^\s*module\s+\\?([^\s(;]+)", text, re.M)
    prefix = top + "."
    return [n for n in names if n.startswith(prefix) and "." not in n[len(prefix):]]


def synthesize(design, family="ice40", *, top="top", keep=None, options="", timeout=None,
               log=print, what="yosys"):
    """Synthesize ``design`` with Yosys and return a `SynthResult`.

    Parameters
    ----------
    design : str or Amaranth elaboratable
        RTLIL or Verilog text (whose top module is ``top``), or an elaboratable (converted to
        RTLIL with the name ``top``).
    family : "ice40" or "ecp5"
    keep : None, "children" or list of str
        Modules to keep apart (``keep_hierarchy``); ``"children"``: every module directly below
        ``top``. None: one flat netlist.
    options : str
        Extra options of ``synth_ice40`` / ``synth_ecp5`` (``"-dsp"``: wide multiplies on the
        iCE40's ``SB_MAC16``, as the bitstream flow does).
    timeout : float, optional
        Seconds before giving up (`SynthesisTimeout`).
    log : callable or None
        Receives progress lines: each step as it starts, with the time since the start.
    what : str
        Name of the design in the progress lines.

    Raises
    ------
    QfabError
        If Yosys fails (`qfab.boards.toolchain.ToolError`, with the last lines of its log), or
        `SynthesisTimeout`.
    """
    if family not in FAMILIES:
        raise QfabError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    name, text = _text_of(design, top, family)
    kept = _children(text, top) if keep == "children" else list(keep or [])
    keep_cmd = f"setattr -mod -set keep_hierarchy 1 {' '.join(kept)}; " if kept else ""
    read = "read_rtlil" if name.endswith(".il") else "read_verilog -sv"
    script = f"{read} {name}; hierarchy -top {top}; {keep_cmd}{PREPARE}; synth_{family} -top {top} {options}"
    say = log or (lambda *_: None)
    say(f"{what}: synth_{family} {options}".rstrip()
        + (f", {len(kept)} modules kept apart" if kept else "") + f" ({len(text) // 1024} kB netlist)")
    with tempfile.TemporaryDirectory(prefix="qfab_yosys_") as tmp:
        with open(f"{tmp}/{name}", "w") as f:
            f.write(text)
        run = run_yosys(script, tmp, family, what=what, timeout=timeout, log=log)
    total = run.total
    say(f"  [{run.seconds:5.0f} s] {what}: done, {total.luts} LUT4, {total.ffs} FF, {total.carries} carry, "
        f"{total.bram} block RAM, {total.dsps} DSP")
    return SynthResult(family, total, run.modules, run.seconds, run.log)
