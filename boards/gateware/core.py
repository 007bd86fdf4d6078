"""The inference core: the host link (`qfab.boards.gateware.link.Link`) around a build's accelerator.

The accelerator enters as an ``Instance`` of the build's own ``qfab_top`` (the design ``qfab
simulate`` verified; Yosys reads it from the build's ``qfab_top.il``, the netlist that
``qfab_top.v`` was written from), so the board runs what was simulated. `core_verilog` gives
the core as Verilog (``qfab_core``) for a Verilator run together with ``qfab_top.v``; a board top
(`qfab.boards.gateware.top`) puts the core on the board's pins.
"""

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfab.base.errors import QfabError
from qfab.boards.host import protocol
from qfab.compiler.buildfolder import Build

from .link import Link, Status

__all__ = ["InferenceCore", "core_verilog", "divisor_for"]


def divisor_for(clock_hz, baud):
    """Clock cycles per UART bit for ``baud`` at ``clock_hz``; error if off by more than 2 %."""
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise QfabError(f"{baud} baud needs a clock of at least {4 * baud / 1e6:g} MHz, not {clock_hz / 1e6:g} MHz")
    error = abs(clock_hz / divisor - baud) / baud
    if error > 0.02:
        raise QfabError(f"{baud} baud at {clock_hz / 1e6:g} MHz is {100 * error:.1f}% off (divisor {divisor}); "
                        f"pick a baud rate near {clock_hz / divisor:.0f}")
    return divisor


class InferenceCore(wiring.Component):
    """UART in, inference, UART out: a build's accelerator behind the framed link.

    Parameters
    ----------
    build_dir : path or `qfab.compiler.buildfolder.Build`
        A ``qfab compile`` build folder (``manifest.json``, ``qfab_top.v``).
    divisor : int
        Clock cycles per UART bit; or give ``clock_hz`` and ``baud`` instead (`divisor_for`).
    clock_hz : float
        The core's clock frequency; with ``divisor`` it only sets the default ``error_hold_cycles``.
    baud : int
        The UART's baud rate, with ``clock_hz``.
    timeout_cycles : int
        Silence inside a frame after which the link drops it (default: 64 byte times).
    error_hold_cycles : int
        How long ``status.error`` stays high after an error (default: a quarter second when
        ``clock_hz`` is known, else 2**20 cycles).

    Members
    -------
    rx : ``In(1, init=1)``, tx : ``Out(1, init=1)``
        The UART pins.
    status : ``Out(Status)``
        ``busy``, ``error``, ``activity``, for LEDs (`qfab.boards.gateware.link.Link`).

    Inside, a `Link` (attribute ``link``) feeds an ``Instance`` of the build's top module; its
    ``observe`` port is left unconnected.

    Raises
    ------
    QfabError
        If the build folder cannot be read, or the UART rate is not given exactly one way.
    """

    def __init__(self, build_dir, *, divisor=None, clock_hz=None, baud=None, timeout_cycles=None,
                 error_hold_cycles=None):
        if (divisor is None) == (baud is None):
            raise QfabError("give the UART rate as divisor=, or as clock_hz= and baud=, not both or neither")
        if baud is not None:
            if clock_hz is None:
                raise QfabError("baud= needs clock_hz=")
            divisor = divisor_for(clock_hz, baud)
        build = build_dir if isinstance(build_dir, Build) else Build.load(build_dir)
        self._manifest = build.manifest
        self._verilog = build.verilog
        self._synthesis = build.synthesis_files()
        i, o = self._manifest.input, self._manifest.output
        formats = dict(in_elements=i.elements, in_bits=i.bits, in_signed=i.signed, in_per_beat=i.per_beat,
                       out_elements=o.elements, out_bits=o.bits, out_signed=o.signed, out_per_beat=o.per_beat)
        if error_hold_cycles is None:
            error_hold_cycles = int(clock_hz) // 4 if clock_hz else 1 << 20
        self.link = Link(**formats, divisor=divisor, timeout_cycles=timeout_cycles or 64 * 10 * divisor,
                         design_id=protocol.design_id(self._manifest, self._verilog),
                         error_hold_cycles=error_hold_cycles)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "status": Out(Status)})

    manifest = property(lambda self: self._manifest)
    divisor = property(lambda self: self.link.divisor)
    design_id = property(lambda self: self.link.design_id)

    def verilog_files(self):
        """The accelerator's Verilog, ``{"qfab_top.v": text}``, for a simulator."""
        return {"qfab_top.v": self._verilog}

    def synthesis_files(self):
        """What Yosys reads for the accelerator, for ``platform.add_file``: the build's RTLIL
        (``{"qfab_top.il": text}``, the netlist its Verilog was written from, which Yosys reads in
        seconds where an ``initial`` block per weight memory takes it minutes), or its Verilog in a
        folder written before qfab kept the netlist (`Build.synthesis_files`)."""
        return dict(self._synthesis)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx), self.status.eq(link.status)]
        m.submodules.accelerator = Instance(
            self._manifest.top,
            i_clk=ClockSignal(), i_rst=ResetSignal(),
            i_i__valid=link.i.valid, o_i__ready=link.i.ready, i_i__payload=link.i.payload,
            o_o__valid=link.o.valid, i_o__ready=link.o.ready, o_o__payload=link.o.payload)
        return m


def core_verilog(build_dir, *, divisor=None, clock_hz=None, baud=None, timeout_cycles=None, error_hold_cycles=256):
    """The core as a Verilog module ``qfab_core`` (ports ``clk``, ``rst``, ``rx``, ``tx``,
    ``status[2:0]`` = busy, error, activity); the accelerator stays an instance of ``qfab_top``
    to be compiled from the build's ``qfab_top.v``. ``error_hold_cycles`` is short by default,
    for simulation."""
    from amaranth.back import verilog
    core = InferenceCore(build_dir, divisor=divisor, clock_hz=clock_hz, baud=baud, timeout_cycles=timeout_cycles,
                         error_hold_cycles=error_hold_cycles)
    return verilog.convert(core, name="qfab_core", emit_src=False)
