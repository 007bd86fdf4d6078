# amaranth: UnusedElaboratable=no
"""PLL searches against icepll's and ecppll's answers, their limits and errors, and the primitives."""

import pytest
from amaranth.hdl import Signal

from qfab.base.errors import QfabError
from qfab.boards.gateware.pll import ECP5_LIMITS, ICE40_LIMITS, ecp5_pll, ice40_pll, pll_for, pll_instance


@pytest.mark.parametrize("fin, fout, params, achieved", [
    # what `icepll -i FIN -o FOUT` prints
    (12, 48, {"DIVR": 0, "DIVF": 63, "DIVQ": 4, "FILTER_RANGE": 1}, 48.0),
    (12, 60, {"DIVR": 0, "DIVF": 79, "DIVQ": 4, "FILTER_RANGE": 1}, 60.0),
    (12, 30, {"DIVR": 0, "DIVF": 79, "DIVQ": 5, "FILTER_RANGE": 1}, 30.0),
    (12, 25, {"DIVR": 0, "DIVF": 66, "DIVQ": 5, "FILTER_RANGE": 1}, 25.125),
    (12, 100, {"DIVR": 0, "DIVF": 66, "DIVQ": 3, "FILTER_RANGE": 1}, 100.5),
    (48, 24, {"DIVR": 0, "DIVF": 15, "DIVQ": 5, "FILTER_RANGE": 4}, 24.0),     # UPduino: SB_HFOSC in
    (100, 50, {"DIVR": 0, "DIVF": 7, "DIVQ": 4, "FILTER_RANGE": 5}, 50.0),      # first of several exact
])
def test_ice40_matches_icepll(fin, fout, params, achieved):
    s = ice40_pll(fin, fout)
    assert s.params == params and s.out_mhz == pytest.approx(achieved)
    assert s.family == "ice40" and s.pfd_mhz == fin / (params["DIVR"] + 1)


def test_ice40_settings_stay_within_the_datasheet_and_are_the_closest():
    outputs = _ice40_outputs(12)
    for tenth in range(160, 2750, 7):
        want = tenth / 10
        s = ice40_pll(12, want)
        p = s.params
        pfd = 12 / (p["DIVR"] + 1)
        vco = pfd * (p["DIVF"] + 1)
        assert ICE40_LIMITS["pfd"][0] <= pfd <= ICE40_LIMITS["pfd"][1]
        assert ICE40_LIMITS["vco"][0] <= vco <= ICE40_LIMITS["vco"][1] and vco == pytest.approx(s.vco_mhz)
        assert 0 <= p["DIVR"] <= 15 and 0 <= p["DIVF"] <= 127 and 1 <= p["DIVQ"] <= 6
        assert s.out_mhz == pytest.approx(vco / 2 ** p["DIVQ"])
        assert abs(s.out_mhz - want) == pytest.approx(min(abs(out - want) for out in outputs))


def _ice40_outputs(fin):
    """Every output an SB_PLL40 in SIMPLE feedback can make from ``fin``, by brute force."""
    return {fin / (r + 1) * (f + 1) / 2 ** q for r in range(16) for f in range(128) for q in range(1, 7)
            if 10 <= fin / (r + 1) <= 133 and 533 <= fin / (r + 1) * (f + 1) <= 1066}


@pytest.mark.parametrize("fin, fout, params, vco", [
    # what `ecppll -i FIN -o FOUT` prints (the VCO nearest 600 MHz among exact answers)
    (25, 50, {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12, "CLKOP_CPHASE": 11}, 600),
    (25, 100, {"CLKI_DIV": 1, "CLKFB_DIV": 4, "CLKOP_DIV": 6, "CLKOP_CPHASE": 5}, 600),
    (25, 125, {"CLKI_DIV": 1, "CLKFB_DIV": 5, "CLKOP_DIV": 5, "CLKOP_CPHASE": 4}, 625),
    (48, 60, {"CLKI_DIV": 4, "CLKFB_DIV": 5, "CLKOP_DIV": 10, "CLKOP_CPHASE": 9}, 600),
])
def test_ecp5_matches_ecppll(fin, fout, params, vco):
    s = ecp5_pll(fin, fout)
    assert s.params == params and s.vco_mhz == pytest.approx(vco) and s.out_mhz == pytest.approx(fout)


def test_ecp5_settings_stay_within_the_datasheet_and_are_the_closest():
    outputs = {fin: _ecp5_outputs(fin) for fin in (25, 48)}
    for fin, want in ((25, 33.3), (25, 62.5), (25, 133), (48, 100), (48, 12), (25, 5), (25, 399), (25, 47.3)):
        s = ecp5_pll(fin, want)
        p = s.params
        assert ECP5_LIMITS["vco"][0] <= s.vco_mhz <= ECP5_LIMITS["vco"][1]
        assert ECP5_LIMITS["pfd"][0] <= fin / p["CLKI_DIV"] <= ECP5_LIMITS["pfd"][1]
        # no legal setting comes closer (brute force over every divider)
        assert abs(s.out_mhz - want) == pytest.approx(min(abs(out - want) for out in outputs[fin]), abs=1e-9)
        assert s.out_mhz == pytest.approx(fin / p["CLKI_DIV"] * p["CLKFB_DIV"])
        assert s.vco_mhz == pytest.approx(s.out_mhz * p["CLKOP_DIV"])
        assert abs(s.out_mhz - want) < 0.01 * want


def _ecp5_outputs(fin):
    """Every output an EHXPLLL with CLKOP feedback can make from ``fin``, by brute force."""
    (pfd_lo, pfd_hi), (vco_lo, vco_hi) = ECP5_LIMITS["pfd"], ECP5_LIMITS["vco"]
    return {fin / r * f for r in range(1, 129) for f in range(1, 81)
            if pfd_lo <= fin / r <= pfd_hi
            and any(vco_lo <= fin / r * f * o <= vco_hi for o in range(1, 129))}


@pytest.mark.parametrize("call, message", [
    (lambda: ice40_pll(12, 5), r"iCE40 PLL output must be 16-275 MHz, not 5 MHz; for a clock below 16 MHz"),
    (lambda: ice40_pll(12, 300), r"iCE40 PLL output must be 16-275 MHz, not 300 MHz"),
    (lambda: ice40_pll(5, 48), r"iCE40 PLL input must be 10-133 MHz, not 5 MHz"),
    (lambda: ecp5_pll(25, 500), r"ECP5 PLL output must be 3.125-400 MHz, not 500 MHz"),
    (lambda: ecp5_pll(4, 50), r"ECP5 PLL input must be 8-400 MHz, not 4 MHz"),
    (lambda: pll_for("ice40", 12, 25, tolerance=0.001), r"closest ice40 PLL output to 25 MHz .* is 25.12 MHz "
                                                        r"\(0.5% off\); ask for that \(--freq 25.12\)"),
    (lambda: pll_for("gowin", 27, 50), r"no PLL support for the 'gowin' family"),
])
def test_out_of_range(call, message):
    with pytest.raises(QfabError, match=message):
        call()


def test_pll_for_within_tolerance():
    assert pll_for("ice40", 12, 25).out_mhz == 25.125           # 0.5 % off, inside the default 1 %
    assert pll_for("ecp5", 25, 50).params["CLKOP_DIV"] == 12


def test_instances():
    clk_in, clk_out, lock = Signal(), Signal(), Signal()
    core = pll_instance(ice40_pll(48, 24), clk_in, clk_out, lock)
    assert core.type == "SB_PLL40_CORE"
    assert core.parameters["DIVF"].value == 15 and core.parameters["FEEDBACK_PATH"] == "SIMPLE"
    pad = pll_instance(ice40_pll(12, 48), clk_in, clk_out, lock, pad=True)
    assert pad.type == "SB_PLL40_PAD" and "PACKAGEPIN" in pad.ports
    ecp5 = pll_instance(ecp5_pll(25, 50), clk_in, clk_out, lock)
    assert ecp5.type == "EHXPLLL"
    assert (ecp5.parameters["CLKI_DIV"], ecp5.parameters["CLKFB_DIV"], ecp5.parameters["CLKOP_DIV"]) == (1, 2, 12)
    assert ecp5.ports["CLKFB"][0] is clk_out                       # CLKOP feedback
