"""The board descriptions against their amaranth-boards platforms: device, family, clock, the
resources the board top requests, the DFU ids of the build script, the device's resources."""

import pytest
from amaranth.build import ResourceError

from qfab.base.errors import QfabError
from qfab.boards.gateware.top import LED_ROLES
from qfab.boards.registry import BOARDS, Board, get_board

# datasheet figures per device: LUT4s, flip-flops, block RAM bits, SPRAM bits, DSPs
DEVICES = {"iCE40UP5K": (5280, 5280, 30 * 4096, 4 * 262144, 8),
           "LFE5U-85F": (83640, 83640, 208 * 18432, 0, 156)}


@pytest.mark.parametrize("name, device, family, clock_mhz, hfosc", [
    ("icebreaker", "iCE40UP5K-SG48", "ice40", 12.0, False),
    ("upduino_v3", "iCE40UP5K-SG48", "ice40", 48.0, True),
    ("ulx3s_85f", "LFE5U-85F-6BG381C", "ecp5", 25.0, False),
    ("orangecrab", "LFE5U-85F-8MG285C", "ecp5", 48.0, False),
])
def test_facts_come_from_the_platform(name, device, family, clock_mhz, hfosc):
    board = get_board(name)
    assert (board.device, board.family, board.clock_mhz, board.hfosc) == (device, family, clock_mhz, hfosc)
    assert board.device.startswith(board.platform.device)


@pytest.mark.parametrize("board", BOARDS.values(), ids=list(BOARDS))
def test_description_agrees_with_the_platform(board):
    assert isinstance(board, Board) and board.name in BOARDS
    assert (board.luts, board.ffs, board.bram_bits, board.spram_bits, board.dsps) == DEVICES[board.platform.device]
    platform = board.new_platform()
    if board.extra_resources:
        platform.add_resources(getattr(platform, board.extra_resources))
    assert len(board.leds) <= len(LED_ROLES)
    for name, number, *sub in board.leds + ((board.button[:2],) if board.button else ()):
        resource = platform.lookup(name, number)
        assert not sub or sub[0] in [s.name for s in resource.ios], (name, number, sub)
    if board.button and board.button[2] == "bootloader":
        platform.lookup("program", 0)
    if board.header_uart:
        conn, rx, tx = board.header_uart
        assert conn in platform.connectors
        with pytest.raises(ResourceError):
            platform.lookup("uart", 0)
    else:
        platform.lookup("uart", 0)
    script = "".join(board.platform().command_templates)
    if board.dfu_ids:
        assert "-v %04x -p %04x" % board.dfu_ids in script
    else:
        assert "dfu-suffix" not in script
    assert board.programmers and board.openfpgaloader_board
    assert board.default_mhz is None or board.default_mhz < board.clock_mhz


def test_new_platform_is_fresh():
    board = get_board("icebreaker")
    assert board.new_platform() is not board.new_platform()


def test_unknown_board():
    with pytest.raises(QfabError, match=r"unknown board 'nexys'; supported: icebreaker, upduino_v3"):
        get_board("nexys")
