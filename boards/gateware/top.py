"""Board tops: an inference core on a board's clock, reset, UART pins and LEDs.

Clocking. The board's oscillator drives ``sync`` directly, or through the PLL (`qfab.boards.gateware.pll`)
when another frequency is asked for: SB_PLL40_PAD on the iCEBreaker (its 12 MHz pin 35 is the
PLL's own pad), SB_PLL40_CORE from SB_HFOSC (48 MHz) on the UPduino v3, EHXPLLL on ECP5.

Reset. ``sync`` is held in reset for 100 us after configuration (iCE40 block RAM reads zeros for a
few microseconds, SB_HFOSC needs 100 us to settle), until the PLL locks, and while the board's
reset button is pressed (iCEBreaker: the user button; ULX3S: PWR). The OrangeCrab's button
instead drives its ``program`` pin, back to the DFU bootloader, so it can be reprogrammed without
unplugging.

UART. The core's ``rx``/``tx`` go to ``platform.request("uart", 0)``. Boards without a UART wired
to the FPGA take one on header pins (the board description's ``header_uart``), for a 3.3 V USB-serial adapter: UPduino v3
FPGA pins 23 (rx) and 25 (tx); OrangeCrab Feather pins 0 (rx) and 1 (tx), since its USB port
would need a soft USB-serial core.

LEDs (`LED_ROLES`, in order, as many as the board has; which LED is which: the board
description's ``leds``): heartbeat (about 1 Hz while the clock runs),
error (lit a moment after a bad frame), activity (toggles with each good frame), busy, PLL lock
(without a PLL: out of reset).
"""

import math

from amaranth.build import Attrs, ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth_boards.resources import UARTResource

from qfab.base.errors import QfabError
from qfab.boards.registry import Board, get_board

from .pll import pll_for, pll_instance

__all__ = ["BoardTop", "LED_ROLES", "clock_mhz", "clock_plan"]

LED_ROLES = ("heartbeat", "error", "activity", "busy", "lock")
POWER_ON_RESET_SECONDS = 100e-6


HFOSC_DIVIDER = {48: "0b00", 24: "0b01", 12: "0b10", 6: "0b11"}     # SB_HFOSC output MHz -> CLKHF_DIV


def clock_plan(board, freq_mhz=None):
    """``(oscillator MHz, PllSetting or None)`` for running ``board`` at ``freq_mhz`` (None: the
    board's default clock). No PLL when the oscillator gives the frequency itself: its own, or on
    the UPduino an SB_HFOSC division (48, 24, 12, 6 MHz).

    Raises `QfabError` when ``freq_mhz`` is not positive or no PLL setting comes within 1 % of it.
    """
    board = get_board(board) if isinstance(board, str) else board
    if freq_mhz is not None and not (isinstance(freq_mhz, (int, float)) and freq_mhz > 0):
        raise QfabError(f"freq_mhz must be a positive number of MHz or None, not {freq_mhz!r}")
    want = freq_mhz if freq_mhz is not None else board.default_mhz or board.clock_mhz
    if board.hfosc:
        for mhz in HFOSC_DIVIDER:
            if math.isclose(want, mhz):
                return float(mhz), None
    if math.isclose(want, board.clock_mhz):
        return board.clock_mhz, None
    return board.clock_mhz, pll_for(board.family, board.clock_mhz, want)


def clock_mhz(board, freq_mhz=None):
    """The frequency ``sync`` will run at (`clock_plan`): the oscillator's, or the PLL's closest
    output to ``freq_mhz``."""
    oscillator, pll = clock_plan(board, freq_mhz)
    return pll.out_mhz if pll else oscillator


class BoardTop(Elaboratable):
    """The top of a board's bitstream: clock, reset, UART and LEDs around ``core``.

    Parameters
    ----------
    core : wiring.Component
        With members ``rx: In(1)``, ``tx: Out(1)``, ``status: Out(StructLayout)`` with ``busy``,
        ``error`` and ``activity``, and a method ``synthesis_files() -> {name: text}`` (the Verilog
        (``.v``) or RTLIL (``.il``) its instances need; `qfab.boards.gateware.core.InferenceCore`).
    board : `qfab.boards.registry.Board` or str
        The board, or its registry name.
    freq_mhz : float or None
        The clock to run ``sync`` at; ``None``: the board's default (`clock_plan`). A frequency
        the oscillator gives itself needs no PLL.

    Raises
    ------
    QfabError
        If the core lacks a member, ``freq_mhz`` is not positive, or the PLL cannot come within
        1 % of it.
    """

    def __init__(self, core, board, freq_mhz=None):
        members = getattr(getattr(core, "signature", None), "members", {})
        if not all(name in members for name in ("rx", "tx", "status")) or not hasattr(core, "synthesis_files"):
            raise QfabError(f"the core must be a wiring.Component with rx, tx and status members and "
                            f"synthesis_files(), not {core!r}")
        board = get_board(board) if isinstance(board, str) else board
        if not isinstance(board, Board):
            raise QfabError(f"board must be a registry Board or its name, not {board!r}")
        self._core = core
        self._board = board
        self._oscillator_mhz, self._pll = clock_plan(board, freq_mhz)

    core = property(lambda self: self._core)
    board = property(lambda self: self._board)
    pll = property(lambda self: self._pll, doc="The `PllSetting`, or None when the oscillator drives ``sync``.")

    @property
    def clock_mhz(self):
        """The frequency of ``sync``."""
        return self._pll.out_mhz if self._pll else self._oscillator_mhz

    def _oscillator(self, m, platform):
        """The board's oscillator as a fabric signal (None when its pad feeds the PLL directly) and
        the raw pad (for SB_PLL40_PAD)."""
        if platform.default_clk == "SB_HFOSC":
            clk = Signal()
            divider = HFOSC_DIVIDER[round(self._oscillator_mhz)]
            m.submodules.hfosc = Instance("SB_HFOSC", p_CLKHF_DIV=divider, i_CLKHFEN=Const(1), i_CLKHFPU=Const(1),
                                          o_CLKHF=clk)
            return clk, None
        port = platform.request(platform.default_clk, dir="-")
        if self._pll and self._board.family == "ice40":
            return None, port.io
        m.submodules.clk_buffer = buffer = io.Buffer("i", port)
        return buffer.i, None

    def _clock_and_reset(self, m, platform):
        """``sync`` with its reset; returns the PLL's lock signal (or None)."""
        m.domains.sync = ClockDomain("sync")
        clk, pad = self._oscillator(m, platform)
        lock = None
        if self._pll:
            lock = Signal()
            m.submodules.pll = pll_instance(self._pll, pad if pad is not None else clk, ClockSignal("sync"), lock,
                                            pad=pad is not None)
        else:
            m.d.comb += ClockSignal("sync").eq(clk)
        # power-on reset, counted on the design's own clock by reset-less flip-flops
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(ClockSignal("sync"))
        cycles = max(16, math.ceil(POWER_ON_RESET_SECONDS * self.clock_mhz * 1e6))
        timer = Signal(range(cycles + 1))
        with m.If(timer != cycles):
            m.d.por += timer.eq(timer + 1)
        hold = timer != cycles
        if lock is not None:
            hold |= ~lock
        button = self._button(m, platform)
        if button is not None:
            hold |= button
        m.submodules.reset_sync = ResetSynchronizer(hold, domain="sync")
        return lock

    def _button(self, m, platform):
        """The reset button's level (pressed = 1), or None; wires the OrangeCrab's bootloader button."""
        spec = self._board.button
        if spec is None:
            return None
        name, number, action = spec
        m.submodules.button_buffer = buffer = io.Buffer("i", platform.request(name, number, dir="-"))
        if action == "reset":
            return buffer.i
        m.submodules.program_buffer = program = io.Buffer("o", platform.request("program", 0, dir="-"))
        m.d.comb += program.o.eq(buffer.i)      # `program` is active low (PinsN): pressed pulls it low
        return None

    def _uart(self, m, platform):
        if self._board.header_uart is not None:
            conn, rx, tx = self._board.header_uart
            attrs = (Attrs(IO_STANDARD="SB_LVCMOS", PULLUP=1) if self._board.family == "ice40"
                     else Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))
            platform.add_resources([UARTResource(0, rx=rx, tx=tx, conn=conn, attrs=attrs)])
        try:
            uart = platform.request("uart", 0, dir="-")
        except ResourceError:
            raise QfabError(f"{self._board.name}: the platform has no UART resource; give the board a "
                            f"header_uart in qfab/boards/registry.py") from None
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.d.comb += [self._core.rx.eq(rx.i), tx.o.eq(self._core.tx)]

    def _led_ports(self, platform):
        """The LED ports in `LED_ROLES` order."""
        if self._board.extra_resources:
            platform.add_resources(getattr(platform, self._board.extra_resources))
        wanted = list(self._board.leds)
        if not wanted:              # its plain LEDs in number order
            wanted = []
            for number in range(len(LED_ROLES)):
                try:
                    platform.lookup("led", number)
                except ResourceError:
                    break
                wanted.append(("led", number))
        ports, requested = [], {}
        for name, number, *sub in wanted:
            if (name, number) not in requested:
                requested[name, number] = platform.request(name, number, dir="-")
            port = requested[name, number]
            ports.append(getattr(port, sub[0]) if sub else port)
        return ports

    def _heartbeat(self, m):
        """About 1 Hz: the top bit of a free-running counter (a plain carry chain, off the critical path)."""
        bits = max(2, round(math.log2(self.clock_mhz * 1e6)))
        counter = Signal(bits)
        m.d.sync += counter.eq(counter + 1)
        return counter[-1]

    def elaborate(self, platform):
        m = Module()
        lock = self._clock_and_reset(m, platform)
        for name, text in self._core.synthesis_files().items():
            platform.add_file(name, text)
        m.submodules.core = core = self._core
        self._uart(m, platform)
        status = core.status
        roles = {"heartbeat": self._heartbeat(m), "error": status.error, "activity": status.activity,
                 "busy": status.busy, "lock": lock}
        for role, port in zip(LED_ROLES, self._led_ports(platform)):
            m.submodules[f"led_{role}"] = buffer = io.Buffer("o", port)
            # without a PLL the lock LED shows that reset is over
            m.d.comb += buffer.o.eq(roles[role] if roles[role] is not None else ~ResetSignal("sync"))
        return m
