"""Board tops: an inference core (`qfab.boards.core.InferenceCore`) on a board's clock, reset,
UART pins and LEDs.

Clocking: the board's oscillator drives ``sync`` directly, or through the PLL (`qfab.boards.pll`)
when another frequency is asked for; then reset is held until the PLL locks. LEDs, as the board
has them: heartbeat (about 1 Hz, the clock runs), activity (toggles with every good frame), error
(lit for a moment after an error frame), busy. Boards without a UART wired to the FPGA
(UPduino v3, OrangeCrab) take one on header pins (see `HEADER_UART`) for a 3.3 V USB-serial adapter.
"""

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth_boards.resources import UARTResource

from qfab.compiler.errors import QfabError

from .pll import pll_for, pll_instance

__all__ = ["BoardTop", "HEADER_UART", "clock_mhz"]

HEADER_UART = {   # board -> (rx pin, tx pin, connector) for boards without a UART to the FPGA
    "upduino_v3": ("6", "7", ("j", 0)),     # FPGA pins 23 and 25
    "orangecrab": ("0", "1", ("io", 0)),    # header pins 0 and 1
}


def clock_mhz(board, freq_mhz):
    """The clock the design will run at: the oscillator, or the PLL's closest output."""
    if freq_mhz is None or abs(freq_mhz - board.clock_mhz) < 1e-6:
        return board.clock_mhz
    return pll_for(board.family, board.clock_mhz, freq_mhz).out_mhz


class BoardTop(Elaboratable):
    """The top of a board's bitstream.

    Parameters
    ----------
    core : wiring.Component with ``rx: In(1)``, ``tx: Out(1)``, ``status`` (busy, error, activity)
        and ``verilog_files()``.
    board : `qfab.boards.registry.Board`
    freq_mhz : float or None
        Clock to run at; None for the board's oscillator.
    """

    def __init__(self, core, board, freq_mhz=None):
        self.core = core
        self.board = board
        self.freq_mhz = freq_mhz
        self.clock_mhz = clock_mhz(board, freq_mhz)

    def _clock(self, m, platform):
        """Set up ``sync`` (with reset held until the clock is good); return the PLL's lock or None."""
        has_pin = platform.default_clk in {r.name for r in platform.resources.values()}
        if not has_pin:
            if self.clock_mhz != self.board.clock_mhz:
                raise QfabError(f"{self.board.name}: its clock is the FPGA's internal oscillator "
                                f"({self.board.clock_mhz:g} MHz); --freq is not supported on this board")
            return None                     # the platform's own ``sync`` from the oscillator
        m.submodules.clk_buffer = clk_buffer = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        clk_in = clk_buffer.i
        m.domains.sync = cd = ClockDomain("sync")
        if self.clock_mhz == self.board.clock_mhz:
            m.d.comb += cd.clk.eq(clk_in)
            # power-on reset: sync leaves reset 255 cycles after configuration
            m.domains.por = ClockDomain("por", reset_less=True)
            count = Signal(8)
            with m.If(count != 0xFF):
                m.d.por += count.eq(count + 1)
            m.d.comb += [ClockSignal("por").eq(clk_in), cd.rst.eq(count != 0xFF)]
            return None
        setting = pll_for(self.board.family, self.board.clock_mhz, self.freq_mhz)
        lock = Signal()
        m.submodules.pll = pll_instance(setting, clk_in, cd.clk, lock)
        m.submodules.reset_sync = ResetSynchronizer(~lock, domain="sync")
        platform.add_clock_constraint(cd.clk, setting.out_mhz * 1e6)
        return lock

    def _leds(self, m, platform):
        ports = []
        for k in range(8):
            try:
                ports.append(platform.request("led", k, dir="-"))
            except ResourceError:
                break
        try:
            rgb = platform.request("rgb_led", 0, dir="-")
            ports += [rgb.g, rgb.b, rgb.r]
        except ResourceError:
            pass
        leds = []
        for k, port in enumerate(ports):
            m.submodules[f"led_buffer_{k}"] = buffer = io.Buffer("o", port)
            leds.append(buffer.o)
        return leds

    def elaborate(self, platform):
        m = Module()
        lock = self._clock(m, platform)
        for name, text in self.core.verilog_files().items():
            platform.add_file(name, text)
        if self.board.name in HEADER_UART:
            rx, tx, conn = HEADER_UART[self.board.name]
            platform.add_resources([UARTResource(0, rx=rx, tx=tx, conn=conn,
                                                 attrs=_io_attrs(self.board.family))])
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.submodules.core = core = self.core
        m.d.comb += [core.rx.eq(rx.i), tx.o.eq(core.tx)]
        heartbeat = Signal(range(int(self.clock_mhz * 1e6)))
        beat = Signal()
        with m.If(heartbeat == 0):
            m.d.sync += [heartbeat.eq(int(self.clock_mhz * 1e6 / 2) - 1), beat.eq(~beat)]
        with m.Else():
            m.d.sync += heartbeat.eq(heartbeat - 1)
        status = [beat, core.status.activity, core.status.error, core.status.busy]
        if lock is not None:
            status.append(lock)
        for led, value in zip(self._leds(m, platform), status):
            m.d.comb += led.eq(value)
        return m


def _io_attrs(family):
    from amaranth.build import Attrs
    return Attrs(IO_STANDARD="SB_LVCMOS") if family == "ice40" else Attrs(IO_TYPE="LVCMOS33")
