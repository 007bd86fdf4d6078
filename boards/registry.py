"""Supported boards: amaranth-boards platforms with the device resources the folding budgets from.

Resources are the devices' datasheet figures (block RAM in bits: iCE40 EBR 4 kbit each, ECP5
DP16KD 18 kbit each; SPRAM: UP5K 4 x 256 kbit).
"""

from dataclasses import dataclass

from qfab.base.errors import QfabError

__all__ = ["Board", "BOARDS", "get_board", "budget_for", "TOP_RESERVE"]


@dataclass(frozen=True)
class Board:
    name: str
    platform: str           # amaranth_boards module:class
    family: str             # "ice40" | "ecp5"
    device: str
    clock_mhz: float
    luts: int
    ffs: int
    bram_bits: int
    spram_bits: int
    dsps: int
    link: str               # the host link
    default_mhz: float | None = None    # the clock a bitstream runs at without --freq (None: clock_mhz)
    hfosc: bool = False                 # the clock is the iCE40's SB_HFOSC (48 MHz, divides by 2, 4, 8)


BOARDS = {b.name: b for b in [
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "iCE40UP5K-SG48", 12.0,
          5280, 5280, 30 * 4096, 4 * 262144, 8, "FTDI 2232H UART (/dev/ttyUSB1)"),
    # SB_HFOSC at 48 MHz; designs default to its 12 MHz division, since a UP5K full of accelerator
    # closes timing near 20 MHz (measured: 19-23 MHz for the digits MLP and CNN)
    Board("upduino_v3", "amaranth_boards.upduino_v3:UpduinoV3Platform", "ice40", "iCE40UP5K-SG48", 48.0,
          5280, 5280, 30 * 4096, 4 * 262144, 8, "3.3 V USB-serial adapter on header pins 23 (rx), 25 (tx)",
          default_mhz=12.0, hfosc=True),
    Board("ulx3s_85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "LFE5U-85F-6BG381C", 25.0,
          83640, 83640, 208 * 18432, 0, 156, "FT231X UART (/dev/ttyUSB0)"),
    Board("orangecrab", "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_85FPlatform", "ecp5", "LFE5U-85F-8MG285C",
          48.0, 83640, 83640, 208 * 18432, 0, 156, "3.3 V USB-serial adapter on header pins 0 (rx), 1 (tx)"),
]}


# What a board top takes besides the accelerator: the host link (UART, framing, input and output
# buffers) and the clock, reset and LED logic. The link alone, synthesized for the digits MLP and
# CNN: iCE40 556-613 LUT4, 254-500 FFs, 1 block RAM; ECP5 485-728 LUT4, 238-488 FFs. Rounded up;
# iCE40 logic cells as `qfab.compiler.estimate.logic_cells` counts them (LUTs + 0.75 FFs).
TOP_RESERVE = {"ice40": {"luts": 700, "ffs": 600, "logic_cells": 1150, "bram_blocks": 1},
               "ecp5": {"luts": 850, "ffs": 600, "bram_blocks": 0}}
BLOCK_BITS = {"ice40": 4096, "ecp5": 18432}


def budget_for(board):
    """The accelerator's `qfab.compiler.compile.Budget` on ``board`` (a `Board` or its name): the
    device's LUTs, FFs, DSPs and block RAM (and on the iCE40 its logic cells), less `TOP_RESERVE`."""
    from qfab.compiler.compile import Budget
    board = get_board(board) if isinstance(board, str) else board
    keep = TOP_RESERVE[board.family]
    return Budget(luts=board.luts - keep["luts"], ffs=board.ffs - keep["ffs"], dsps=board.dsps,
                  bram_bits=board.bram_bits - keep["bram_blocks"] * BLOCK_BITS[board.family],
                  logic_cells=board.luts - keep["logic_cells"] if "logic_cells" in keep else None,
                  family=board.family)


def get_board(name):
    board = BOARDS.get(name)
    if board is None:
        raise QfabError(f"unknown board {name!r}; supported: {', '.join(BOARDS)}")
    return board
