"""Reading the tools' own reports: nextpnr's JSON, Yosys's statistics, an over-full device."""

import pathlib

import pytest

from qfab.boards import bitstream
from qfab.boards.pll import ecp5_pll, ice40_pll, pll_for
from qfab.compiler.errors import QfabError

DATA = pathlib.Path(__file__).parent / "data"


def test_nextpnr_report():
    util, fmax, path = bitstream.parse_report((DATA / "nextpnr_ice40_report.json").read_text(), "ice40", 12)
    assert util["ICESTORM_LC"] == (2981, 5280) and util["ICESTORM_DSP"] == (6, 8)
    assert fmax == pytest.approx(18.407, abs=1e-3)          # the design clock, not the packer's constant net
    assert len(path) == 2 and all(path)                      # from and to cells of the slowest clock


def test_yosys_statistics():
    stats = bitstream.parse_yosys_stats((DATA / "yosys_ice40_stat.log").read_text(), "ice40")
    assert stats == {"luts": 2140, "ffs": 1157, "carry": 633, "bram": 24, "dsps": 6, "spram": 0}


def test_overfull_device_is_named():
    over = bitstream._overuse((DATA / "nextpnr_ice40_overfull.log").read_text())
    assert over == [("ICESTORM_LC", 7272, 5280)]


def test_report_table_and_timing_verdict():
    util, fmax, path = bitstream.parse_report((DATA / "nextpnr_ice40_report.json").read_text(), "ice40", 12)
    report = bitstream.Report("icebreaker", "ice40", util, {}, fmax, 24.0, None, 115200, {"tools": 35.0}, path)
    assert not report.timing_met
    text = report.format_table({"luts": 2488, "ffs": 563, "dsps": 0, "bram_bits": 25856})
    assert "logic cells" in text and "2981" in text and "2488" in text and "MISSED" in text


def test_ice40_pll_matches_icepll():
    s = ice40_pll(12, 48)
    assert s.params == {"DIVR": 0, "DIVF": 63, "DIVQ": 4, "FILTER_RANGE": 1} and s.out_mhz == 48
    for want in (16, 25, 30, 36, 60, 100):
        s = ice40_pll(12, want)
        p = s.params
        pfd = 12 / (p["DIVR"] + 1)
        assert 10 <= pfd <= 133 and 533 <= pfd * (p["DIVF"] + 1) <= 1066 and 1 <= p["DIVQ"] <= 6
        assert abs(s.out_mhz - want) <= 0.75               # icepll's grid at 12 MHz in


def test_ecp5_pll_limits():
    for fin, want in ((25, 50), (25, 62.5), (48, 100), (25, 133)):
        s = ecp5_pll(fin, want)
        assert 400 <= s.vco_mhz <= 800 and abs(s.out_mhz - want) < 0.5
        assert s.out_mhz == pytest.approx(fin / s.params["CLKI_DIV"] * s.params["CLKFB_DIV"])


def test_pll_errors():
    with pytest.raises(QfabError, match="iCE40 PLL output must be 16-275 MHz"):
        ice40_pll(12, 5)
    with pytest.raises(QfabError, match="ECP5 PLL output must be 3.125-400 MHz"):
        pll_for("ecp5", 25, 500)
    assert pll_for("ice40", 12, 48).out_mhz == 48
