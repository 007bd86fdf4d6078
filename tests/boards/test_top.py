# amaranth: UnusedElaboratable=no
"""Board tops as build plans (no tools run): clock source, PLL primitive, pins of the UART,
buttons and LEDs on every board of the registry, the core's Verilog added, argument errors."""

import re

import pytest

from qfab.base.errors import QfabError
from qfab.boards.gateware.top import BoardTop, clock_mhz
from qfab.boards.registry import BOARDS, get_board

from .echo import EchoCore


class VerilogEcho(EchoCore):
    def synthesis_files(self):
        return {"extra.v": "module extra; endmodule\n"}


def _plan(board_name, freq_mhz=None, core=None):
    board = get_board(board_name)
    plan = board.new_platform().build(BoardTop(core or EchoCore(), board, freq_mhz), name="top", do_build=False)
    def text(name):
        return plan.files[name] if isinstance(plan.files[name], str) else plan.files[name].decode()
    pins = text("top.pcf") if board.family == "ice40" else text("top.lpf")
    return plan, text("top.il"), pins


def _cells(rtlil):
    return set(re.findall(r"^\s*cell \\(\w+)", rtlil, re.M))


@pytest.mark.parametrize("board, uart, extra", [
    ("icebreaker", ("6", "9"), ["set_io button_0__io 10", "set_io led_1__io 37", "set_io led_0__io 11"]),
    ("upduino_v3", ("23", "25"), ["set_io rgb_led_0__g__io 39"]),
    ("ulx3s_85f", ('"M1"', '"L4"'), ['"button_pwr_0__io" SITE "D6"', '"led_0__io" SITE "B2"']),
    ("orangecrab", ('"N17"', '"M18"'), ['"program_0__io" SITE "V17"', '"rgb_led_0__g__io" SITE "M3"']),
])
def test_pins(board, uart, extra):
    plan, rtlil, pins = _plan(board, core=VerilogEcho())
    for name, pin in zip(("rx", "tx"), uart):
        assert re.search(rf"uart_0__{name}__io\W+(SITE )?{pin}", pins), (name, pin)
    for line in extra:
        assert line in pins
    assert "extra.v" in plan.files                      # the core's Verilog goes to the tools
    assert not _cells(rtlil) & {"SB_PLL40_PAD", "SB_PLL40_CORE", "EHXPLLL"}


@pytest.mark.parametrize("board, freq, primitive, source", [
    ("icebreaker", 30, "SB_PLL40_PAD", None),           # pin 35 is the PLL's own pad
    ("upduino_v3", 30, "SB_PLL40_CORE", "SB_HFOSC"),
    ("ulx3s_85f", 50, "EHXPLLL", None),
    ("orangecrab", 60, "EHXPLLL", None),
])
def test_pll(board, freq, primitive, source):
    _, rtlil, _ = _plan(board, freq)
    cells = _cells(rtlil)
    assert primitive in cells and (source is None or source in cells)


@pytest.mark.parametrize("freq, divider", [(None, "0b10"), (12, "0b10"), (24, "0b01"), (48, "0b00")])
def test_hfosc_divides_without_pll(freq, divider):
    _, rtlil, _ = _plan("upduino_v3", freq)
    cells = _cells(rtlil)
    assert "SB_HFOSC" in cells and not cells & {"SB_PLL40_CORE", "SB_PLL40_PAD"}
    assert re.search(rf'parameter \\CLKHF_DIV "{divider}"', rtlil), divider
    assert clock_mhz("upduino_v3", freq) == (freq or 12)


def test_oscillator_without_pll():
    top = BoardTop(EchoCore(), "icebreaker", 12.0)
    assert top.pll is None and top.clock_mhz == 12.0


def test_clock():
    assert clock_mhz(BOARDS["icebreaker"]) == 12.0
    assert clock_mhz("icebreaker", 25) == 25.125               # icepll's closest
    top = BoardTop(EchoCore(), "ulx3s_85f", 50)
    assert top.clock_mhz == 50 and top.pll.params["CLKOP_DIV"] == 12


@pytest.mark.parametrize("args, message", [
    ((object(), "icebreaker"), r"the core must be a wiring.Component with rx, tx and status members"),
    ((EchoCore(), "nexys"), r"unknown board 'nexys'"),
    ((EchoCore(), "icebreaker", -3), r"freq_mhz must be a positive number of MHz or None, not -3"),
    ((EchoCore(), "icebreaker", 5), r"iCE40 PLL output must be 16-275 MHz, not 5 MHz"),
])
def test_wrong_arguments(args, message):
    with pytest.raises(QfabError, match=message):
        BoardTop(*args)
