"""Every board's top through the real toolchain: the echo core (`echo.EchoCore`) on each board of
the registry, with and without the PLL, placed, routed and packed into a bitstream. Seconds each
once the yowasp tools are compiled; this checks the pins, PLL primitives and oscillators that the
build-plan tests (test_top.py) only read."""

import pytest

from qfab.boards.bitstream import build_bitstream
from qfab.boards.registry import BOARDS

from .echo import EchoCore

pytestmark = [pytest.mark.board]

PLL_CELL = {"ice40": "ICESTORM_PLL", "ecp5": "EHXPLLL"}


@pytest.mark.parametrize("board, freq", [
    ("icebreaker", None), pytest.param("icebreaker", 30, marks=pytest.mark.slow),
    pytest.param("upduino_v3", None, marks=pytest.mark.slow), ("upduino_v3", 30),
    pytest.param("ulx3s_85f", 50, marks=pytest.mark.slow),
    ("orangecrab", None),
])
def test_board_top_bitstream(tmp_path, board, freq):
    lines = []
    report = build_bitstream(tmp_path, board, freq_mhz=freq, out_dir=tmp_path, core=EchoCore(), log=lines.append)
    family = BOARDS[board].family
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 1000
    assert report.timing_met, report.format_table()
    assert report.utilization.get(PLL_CELL[family], (0, 0))[0] == (1 if freq else 0)
    assert report.requested_mhz == pytest.approx(freq or BOARDS[board].default_mhz or BOARDS[board].clock_mhz, rel=0.01)
    io = report.utilization["SB_IO" if family == "ice40" else "TRELLIS_IO"][0]
    assert io >= 3                                          # uart rx, tx and at least one LED
    assert any("routing" in line for line in lines)
    if board == "orangecrab":                               # its DFU bootloader wants the suffix
        assert report.bitstream.read_bytes()[-16:-4].endswith(b"UFD\x10")
