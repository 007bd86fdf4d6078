"""PLL settings for iCE40 (SB_PLL40_CORE) and ECP5 (EHXPLLL): the closest achievable output to a
requested frequency within the datasheet limits (the searches of icepll and ecppll), and the
primitive instances.
"""

from dataclasses import dataclass

from amaranth.hdl import Const, Instance

from qfab.compiler.errors import QfabError

__all__ = ["PllSetting", "ice40_pll", "ecp5_pll", "pll_for", "pll_instance"]


@dataclass(frozen=True)
class PllSetting:
    family: str
    in_mhz: float
    out_mhz: float
    vco_mhz: float
    params: dict            # the primitive's divider parameters


def _ice40_filter(pfd):
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < limit:
            return value
    return 6


def ice40_pll(in_mhz, out_mhz):
    """SB_PLL40 in SIMPLE feedback: out = in / (DIVR + 1) * (DIVF + 1) / 2**DIVQ.

    Limits (iCE40 sysCLOCK PLL guide): input 10-133 MHz, PFD 10-133 MHz, VCO 533-1066 MHz,
    output 16-275 MHz; DIVR 0-15, DIVF 0-127, DIVQ 1-6.
    """
    if not 10 <= in_mhz <= 133:
        raise QfabError(f"iCE40 PLL input must be 10-133 MHz, not {in_mhz:g} MHz")
    if not 16 <= out_mhz <= 275:
        raise QfabError(f"iCE40 PLL output must be 16-275 MHz, not {out_mhz:g} MHz")
    best = None
    for divr in range(16):
        pfd = in_mhz / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                if best is None or abs(out - out_mhz) < abs(best.out_mhz - out_mhz):
                    best = PllSetting("ice40", in_mhz, out, vco, {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                                                                 "FILTER_RANGE": _ice40_filter(pfd)})
    if best is None:
        raise QfabError(f"no iCE40 PLL setting reaches {out_mhz:g} MHz from {in_mhz:g} MHz")
    return best


def ecp5_pll(in_mhz, out_mhz):
    """EHXPLLL with CLKOP feedback: out = in / CLKI_DIV * CLKFB_DIV, VCO = out * CLKOP_DIV.

    Limits (ECP5 sysCLOCK guide): input 8-400 MHz, PFD 3.125-400 MHz, VCO 400-800 MHz, output
    3.125-400 MHz; CLKI_DIV 1-128, CLKFB_DIV 1-80, CLKOP_DIV 1-128.
    """
    if not 8 <= in_mhz <= 400:
        raise QfabError(f"ECP5 PLL input must be 8-400 MHz, not {in_mhz:g} MHz")
    if not 3.125 <= out_mhz <= 400:
        raise QfabError(f"ECP5 PLL output must be 3.125-400 MHz, not {out_mhz:g} MHz")
    best = None
    for refdiv in range(1, 129):
        pfd = in_mhz / refdiv
        if pfd < 3.125:
            break
        for fbdiv in range(1, 81):
            out = pfd * fbdiv
            if out > 400:
                break
            for opdiv in range(1, 129):
                vco = out * opdiv
                if vco > 800:
                    break
                if vco < 400:
                    continue
                if best is None or abs(out - out_mhz) < abs(best.out_mhz - out_mhz) - 1e-9:
                    best = PllSetting("ecp5", in_mhz, out, vco, {"CLKI_DIV": refdiv, "CLKFB_DIV": fbdiv,
                                                                "CLKOP_DIV": opdiv, "CLKOP_CPHASE": opdiv - 1})
                break
    if best is None:
        raise QfabError(f"no ECP5 PLL setting reaches {out_mhz:g} MHz from {in_mhz:g} MHz")
    return best


def pll_for(family, in_mhz, out_mhz):
    """The setting for ``family``; an error when the closest output is more than 1 % off."""
    setting = (ice40_pll if family == "ice40" else ecp5_pll)(in_mhz, out_mhz)
    if abs(setting.out_mhz - out_mhz) > 0.01 * out_mhz:
        raise QfabError(f"the closest {family} PLL output to {out_mhz:g} MHz from {in_mhz:g} MHz is "
                        f"{setting.out_mhz:.3f} MHz; ask for that (--freq {setting.out_mhz:.3f})")
    return setting


def pll_instance(setting, clk_in, clk_out, lock):
    """The PLL primitive driving ``clk_out`` from ``clk_in``, with ``lock`` high once locked."""
    p = setting.params
    if setting.family == "ice40":
        return Instance("SB_PLL40_CORE",
                        p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                        p_DIVR=Const(p["DIVR"], 4), p_DIVF=Const(p["DIVF"], 7), p_DIVQ=Const(p["DIVQ"], 3),
                        p_FILTER_RANGE=Const(p["FILTER_RANGE"], 3),
                        i_REFERENCECLK=clk_in, i_RESETB=Const(1), i_BYPASS=Const(0),
                        o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)
    return Instance("EHXPLLL",
                    a_FREQUENCY_PIN_CLKI=f"{setting.in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{setting.out_mhz:g}",
                    a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                    a_MFG_GMCREF_SEL="2",
                    p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                    p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                    p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                    p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
                    p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                    p_CLKFB_DIV=p["CLKFB_DIV"],
                    i_CLKI=clk_in, i_CLKFB=clk_out, i_RST=Const(0), i_STDBY=Const(0),
                    i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
                    i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
                    o_CLKOP=clk_out, o_LOCK=lock)
