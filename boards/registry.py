"""Supported boards: one `Board` description each, an amaranth-boards platform plus what qfab adds.

The platform class gives the device, package, speed grade, family and oscillator; the description
adds the device's resources (datasheet figures: block RAM in bits, iCE40 EBR 4 kbit each, ECP5
DP16KD 18 kbit each; SPRAM: UP5K 4 x 256 kbit), the host link, the default clock, the pins the
board top uses (LEDs by role, the button, a UART on header pins where the board has none) and how
it is programmed. ``tests/boards/test_registry.py`` checks each description against its platform.
"""

import functools
from dataclasses import dataclass

from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from amaranth_boards.upduino_v3 import UpduinoV3Platform

from qfab.base.errors import QfabError

__all__ = ["Board", "BOARDS", "get_board", "budget_for", "TOP_RESERVE", "BLOCK_BITS"]

# What a board top takes besides the accelerator: the host link (UART, framing with CRC-32 and
# sequence numbers, input and output buffers) and the clock, reset and LED logic. The link of
# protocol v2 alone, synthesized for the digits MLP w4a4 (synth_ice40): 817 LUT4, 411 FFs, 1 block
# RAM (v1 was 556-613 LUT4, 254-500 FFs for the digits MLP and CNN; on the ECP5 485-728 LUT4).
# Rounded up with room for the CNN's wider buffers; iCE40 logic cells as
# `qfab.compiler.estimate.logic_cells` counts them (LUTs + 0.75 FFs): the whole board top of the
# digits CNN w8a8 synthesized per module (synth_ice40 -noflatten) took 760 LUT4 and 407 FFs in the
# link and 50 LUT4 and 37 FFs beside it, 1,143 cells; 1,200 with room (it was 1,400, a guess that
# made the estimated totals run 5 % above nextpnr's packed counts).
TOP_RESERVE = {"ice40": {"luts": 950, "ffs": 650, "logic_cells": 1200, "bram_blocks": 1},
               "ecp5": {"luts": 1100, "ffs": 650, "bram_blocks": 0}}
BLOCK_BITS = {"ice40": 4096, "ecp5": 18432}
# The share of an iCE40's logic cells a design may be estimated to fill. nextpnr packs LUTs, FFs
# and carry chains into blocks of 8 cells with shared clock, enable and reset, and must place each
# carry chain in one column: the digits CNN w8a8 packed into 5,010 of the UP5K's 5,280 cells (95 %)
# could not be placed by either placer (analytic: no legal placement; annealing: a carry chain
# that found no column); the digits MLP w8a8 at 4,684 (89 %) was, and the CNN w8a8 on its DSPs at
# 4,766 (90.3 %: estimated 3,586 + the top's 1,143 = 4,729). With the top's reserve measured, the
# estimated total is within a few percent of the packed count either way: 90 % estimated (the
# CNN w8a8 with every requantization in logic, 3,591 + 1,200 estimated, is then refused: its
# placement was still running after 6 minutes).
PLACEABLE_CELLS = 0.90
# The share of an ECP5's LUT4s a design may be estimated to fill. The timing-aware folding
# (`compile_graph(budget=...)`) weighs fill only through the clock it costs, so on the 85F it took
# the digits CNN w8a8 to II 64 at 79,235 estimated LUT4s (95 %): nextpnr-ecp5 was still routing it
# (165,000 arcs left) after 36 minutes, where the MLP designs at 48-51 % placed and routed in 13-30
# minutes. The ECP5 estimates run up to 24 % above nextpnr's counts (docs/boards.md) and FPGA
# practice keeps a device below about three quarters for routing and timing to close: 75 %.
ROUTABLE_LUTS = 0.75


@dataclass(frozen=True)
class Board:
    """One board: its amaranth-boards platform class and qfab's facts about it.

    Members
    -------
    name : str
        The registry name (``qfab ... --board NAME``).
    platform : type
        The amaranth-boards platform class; `new_platform` makes one for a build.
    luts, ffs, bram_bits, spram_bits, dsps : int
        The device's resources.
    link : str
        The host link, in words (which UART, which port).
    default_mhz : float or None
        The clock a bitstream runs at without ``--freq`` (None: the oscillator's, `clock_mhz`).
    leds : tuple
        The LEDs for `qfab.boards.gateware.top.LED_ROLES`, in order: ``(resource, number)`` or
        ``(resource, number, subsignal)``; empty: the platform's ``led`` resources in number order.
    button : tuple or None
        ``(resource, number, action)``: ``"reset"`` holds the design in reset, ``"bootloader"``
        drives the ``program`` pin (back to the DFU bootloader).
    header_uart : tuple or None
        ``(connector, rx pin, tx pin)`` for a board without a UART wired to the FPGA.
    extra_resources : str or None
        A platform attribute holding resources to add (the iCEBreaker's ``break_off_pmod``: its
        LED PMOD in PMOD2, as shipped).
    programmers : tuple of str
        Programming tools in order of preference (`qfab.boards.bitstream.find_programmer`).
    openfpgaloader_board : str
        The board's name for ``openFPGALoader -b``.
    dfu_ids : tuple or None
        ``(vendor, product)`` USB ids of the DFU suffix the platform's build script appends.

    Properties from the platform: `family`, `device`, `clock_mhz`, `hfosc`; from the family:
    `top_reserve`, `block_bits`.
    """
    name: str
    platform: type
    luts: int
    ffs: int
    bram_bits: int
    spram_bits: int
    dsps: int
    link: str
    default_mhz: float | None = None
    leds: tuple = ()
    button: tuple | None = None
    header_uart: tuple | None = None
    extra_resources: str | None = None
    programmers: tuple = ("openFPGALoader",)
    openfpgaloader_board: str = "ice40_generic"
    dfu_ids: tuple | None = None

    def new_platform(self):
        """A fresh platform object for one build (a build adds resources to it)."""
        return self.platform()

    @functools.cached_property
    def _facts(self):
        platform = self.platform()
        return platform.family.lower(), platform.default_clk_frequency / 1e6

    @property
    def family(self):
        """``"ice40"`` or ``"ecp5"``."""
        return self._facts[0]

    @property
    def device(self):
        """The part number: ``iCE40UP5K-SG48``, ``LFE5U-85F-6BG381C``."""
        p = self.platform
        if self.family == "ice40":
            return f"{p.device}-{p.package}"
        return f"{p.device}-{p.speed}{p.package}{p.grade}"

    @property
    def clock_mhz(self):
        """The oscillator's frequency (SB_HFOSC: 48 MHz)."""
        return self._facts[1]

    @property
    def hfosc(self):
        """Whether the clock is the iCE40's SB_HFOSC (48 MHz, divides by 2, 4, 8)."""
        return self.platform.default_clk == "SB_HFOSC"

    @property
    def top_reserve(self):
        """What the board top takes besides the accelerator (`TOP_RESERVE` of the family)."""
        return TOP_RESERVE[self.family]

    @property
    def block_bits(self):
        """Bits of one block RAM."""
        return BLOCK_BITS[self.family]


_UP5K = dict(luts=5280, ffs=5280, bram_bits=30 * 4096, spram_bits=4 * 262144, dsps=8)
_ECP5_85F = dict(luts=83640, ffs=83640, bram_bits=208 * 18432, spram_bits=0, dsps=156)

BOARDS = {b.name: b for b in [
    Board("icebreaker", ICEBreakerPlatform, **_UP5K, link="FTDI 2232H UART (/dev/ttyUSB1)",
          # green and red on the board, then three green LEDs of the snap-off PMOD2 board
          leds=(("led", 1), ("led", 0), ("led", 3), ("led", 4), ("led", 5)),
          button=("button", 0, "reset"), extra_resources="break_off_pmod",
          programmers=("iceprog", "openFPGALoader")),
    # SB_HFOSC at 48 MHz; designs default to its 12 MHz division, since a UP5K full of accelerator
    # closes timing near 20 MHz (measured: 19-23 MHz for the digits MLP and CNN)
    Board("upduino_v3", UpduinoV3Platform, **_UP5K,
          link="3.3 V USB-serial adapter on header pins 23 (rx), 25 (tx)", default_mhz=12.0,
          leds=(("rgb_led", 0, "g"), ("rgb_led", 0, "r"), ("rgb_led", 0, "b")),
          header_uart=(("j", 0), "7", "8"),      # header J0 pins 7, 8 = FPGA pins 23, 25
          programmers=("iceprog", "openFPGALoader")),
    Board("ulx3s_85f", ULX3S_85F_Platform, **_ECP5_85F, link="FT231X UART (/dev/ttyUSB0)",
          leds=tuple(("led", n) for n in range(5)), button=("button_pwr", 0, "reset"),
          openfpgaloader_board="ulx3s"),
    Board("orangecrab", OrangeCrabR0_2_85FPlatform, **_ECP5_85F,
          link="3.3 V USB-serial adapter on header pins 0 (rx), 1 (tx)",
          leds=(("rgb_led", 0, "g"), ("rgb_led", 0, "r"), ("rgb_led", 0, "b")),
          button=("button", 0, "bootloader"),
          header_uart=(("io", 0), "0", "1"),     # Feather pins 0 (RX) and 1 (TX): FPGA N17, M18
          programmers=("dfu-util", "openFPGALoader"), openfpgaloader_board="orangeCrab",
          dfu_ids=(0x1209, 0x5AF0)),
]}


def budget_for(board):
    """The accelerator's `qfab.compiler.compile.Budget` on ``board`` (a `Board` or its name): the
    device's LUTs (on the ECP5 `ROUTABLE_LUTS` of them), FFs, DSPs and block RAM (and on the iCE40
    its logic cells, `PLACEABLE_CELLS` of them), less `TOP_RESERVE`."""
    from qfab.compiler.compile import Budget
    board = get_board(board) if isinstance(board, str) else board
    keep = board.top_reserve
    luts = int(board.luts * ROUTABLE_LUTS) if board.family == "ecp5" else board.luts
    return Budget(luts=luts - keep["luts"], ffs=board.ffs - keep["ffs"], dsps=board.dsps,
                  bram_bits=board.bram_bits - keep["bram_blocks"] * board.block_bits,
                  logic_cells=int(board.luts * PLACEABLE_CELLS) - keep["logic_cells"] if "logic_cells" in keep else None,
                  family=board.family)


def get_board(name):
    board = BOARDS.get(name)
    if board is None:
        raise QfabError(f"unknown board {name!r}; supported: {', '.join(BOARDS)}")
    return board
