"""PLL settings and primitives for iCE40 (SB_PLL40) and ECP5 (EHXPLLL).

The searches are those of the vendor-neutral tools, so a setting here is the one ``icepll`` or
``ecppll`` prints for the same frequencies:

- iCE40, SIMPLE feedback (``icepll``): ``out = in / (DIVR + 1) * (DIVF + 1) / 2**DIVQ``; the first
  setting in (DIVR, DIVF, DIVQ) order with the smallest error wins; FILTER_RANGE follows the PFD.
- ECP5, CLKOP feedback (``ecppll``): ``out = in / CLKI_DIV * CLKFB_DIV``, ``VCO = out * CLKOP_DIV``;
  among equally close outputs the VCO nearest 600 MHz wins.

Limits are the datasheets' (iCE40 sysCLOCK PLL guide TN1251; ECP5 family data sheet, sysCLOCK PLL
timing): see `ICE40_LIMITS` and `ECP5_LIMITS`.
"""

from dataclasses import dataclass

from amaranth.hdl import Const, Instance

from qfab.base.errors import QfabError

__all__ = ["PllSetting", "ICE40_LIMITS", "ECP5_LIMITS", "ice40_pll", "ecp5_pll", "pll_for", "pll_instance"]

# MHz: (low, high) of each frequency in the loop
ICE40_LIMITS = {"input": (10, 133), "pfd": (10, 133), "vco": (533, 1066), "output": (16, 275)}
ECP5_LIMITS = {"input": (8, 400), "pfd": (3.125, 400), "vco": (400, 800), "output": (3.125, 400)}


@dataclass(frozen=True)
class PllSetting:
    """One PLL configuration.

    Members
    -------
    family : ``"ice40"`` or ``"ecp5"``
    in_mhz, out_mhz, vco_mhz, pfd_mhz : float
        Input, achieved output, VCO and phase-detector frequencies.
    params : dict
        The primitive's divider parameters: ``DIVR``, ``DIVF``, ``DIVQ``, ``FILTER_RANGE`` (iCE40);
        ``CLKI_DIV``, ``CLKFB_DIV``, ``CLKOP_DIV``, ``CLKOP_CPHASE`` (ECP5).
    """
    family: str
    in_mhz: float
    out_mhz: float
    vco_mhz: float
    pfd_mhz: float
    params: dict


def _check_range(family, what, mhz, limits, advice=""):
    low, high = limits[what]
    if not low <= mhz <= high:
        raise QfabError(f"{family} PLL {what} must be {low:g}-{high:g} MHz, not {mhz:g} MHz{advice}")


def _out_advice(limits, board_hint="the board's oscillator"):
    return (f"; for a clock below {limits['output'][0]:g} MHz run from {board_hint} (no --freq), "
            f"above {limits['output'][1]:g} MHz the fabric could not follow anyway")


def _ice40_filter_range(pfd):
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < limit:
            return value
    return 6


def ice40_pll(in_mhz, out_mhz):
    """The iCE40 SB_PLL40 setting (SIMPLE feedback) closest to ``out_mhz`` from ``in_mhz``.

    DIVR 0-15, DIVF 0-127, DIVQ 1-6, within `ICE40_LIMITS`. Raises `QfabError` when the input or
    the requested output is out of range.
    """
    _check_range("iCE40", "input", in_mhz, ICE40_LIMITS)
    _check_range("iCE40", "output", out_mhz, ICE40_LIMITS, _out_advice(ICE40_LIMITS))
    best = None
    for divr in range(16):
        pfd = in_mhz / (divr + 1)
        if not ICE40_LIMITS["pfd"][0] <= pfd <= ICE40_LIMITS["pfd"][1]:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not ICE40_LIMITS["vco"][0] <= vco <= ICE40_LIMITS["vco"][1]:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                if best is None or abs(out - out_mhz) < abs(best[0] - out_mhz):
                    best = (out, vco, pfd, divr, divf, divq)
    if best is None:        # only when no DIVR brings the PFD into range; the input check prevents it
        raise QfabError(f"no iCE40 PLL setting reaches {out_mhz:g} MHz from {in_mhz:g} MHz")
    out, vco, pfd, divr, divf, divq = best
    return PllSetting("ice40", in_mhz, out, vco, pfd, {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                                                       "FILTER_RANGE": _ice40_filter_range(pfd)})


def ecp5_pll(in_mhz, out_mhz):
    """The ECP5 EHXPLLL setting (CLKOP feedback) closest to ``out_mhz`` from ``in_mhz``.

    CLKI_DIV 1-128, CLKFB_DIV 1-80, CLKOP_DIV 1-128, within `ECP5_LIMITS`; CLKOP_CPHASE is
    ``CLKOP_DIV - 1`` (no phase shift). Raises `QfabError` when the input or the requested output
    is out of range.
    """
    _check_range("ECP5", "input", in_mhz, ECP5_LIMITS)
    _check_range("ECP5", "output", out_mhz, ECP5_LIMITS, _out_advice(ECP5_LIMITS))
    vco_low, vco_high = ECP5_LIMITS["vco"]
    best, best_key = None, None
    for refdiv in range(1, 129):
        pfd = in_mhz / refdiv
        if not ECP5_LIMITS["pfd"][0] <= pfd <= ECP5_LIMITS["pfd"][1]:
            continue
        for fbdiv in range(1, 81):
            out = pfd * fbdiv
            for opdiv in range(max(1, int(vco_low // out)), min(128, int(vco_high // out) + 1) + 1):
                vco = out * opdiv
                if not vco_low <= vco <= vco_high:
                    continue
                key = (abs(out - out_mhz), abs(vco - 600))
                if best is None or key < best_key:
                    best, best_key = (out, vco, pfd, refdiv, fbdiv, opdiv), key
    if best is None:
        raise QfabError(f"no ECP5 PLL setting reaches {out_mhz:g} MHz from {in_mhz:g} MHz")
    out, vco, pfd, refdiv, fbdiv, opdiv = best
    return PllSetting("ecp5", in_mhz, out, vco, pfd, {"CLKI_DIV": refdiv, "CLKFB_DIV": fbdiv, "CLKOP_DIV": opdiv,
                                                      "CLKOP_CPHASE": opdiv - 1})


def pll_for(family, in_mhz, out_mhz, *, tolerance=0.01):
    """The setting for ``family`` (``"ice40"`` or ``"ecp5"``).

    Raises `QfabError` when the closest achievable output is more than ``tolerance`` (relative)
    off the request; the message names the frequency to ask for instead.
    """
    if family not in ("ice40", "ecp5"):
        raise QfabError(f"no PLL support for the {family!r} family; supported: ice40, ecp5")
    setting = (ice40_pll if family == "ice40" else ecp5_pll)(in_mhz, out_mhz)
    if abs(setting.out_mhz - out_mhz) > tolerance * out_mhz:
        raise QfabError(f"the closest {family} PLL output to {out_mhz:g} MHz from {in_mhz:g} MHz is "
                        f"{setting.out_mhz:.4g} MHz ({100 * abs(setting.out_mhz / out_mhz - 1):.1f}% off); "
                        f"ask for that (--freq {setting.out_mhz:.4g})")
    return setting


def pll_instance(setting, clk_in, clk_out, lock, *, pad=False):
    """The PLL primitive for ``setting``, driving ``clk_out`` from ``clk_in``, ``lock`` high once locked.

    On iCE40 with ``pad=True``, ``clk_in`` is the PLL's own input pin (an ``IOValue`` such as
    ``platform.request(..., dir="-").io``) and the primitive is SB_PLL40_PAD: the pad that feeds a
    PLL cannot also be an ordinary input (iCEBreaker pin 35). Otherwise SB_PLL40_CORE takes a clock
    from the fabric (e.g. SB_HFOSC). ECP5 uses EHXPLLL with CLKOP as feedback.
    """
    p = setting.params
    if setting.family == "ice40":
        dividers = dict(p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                        p_DIVR=Const(p["DIVR"], 4), p_DIVF=Const(p["DIVF"], 7), p_DIVQ=Const(p["DIVQ"], 3),
                        p_FILTER_RANGE=Const(p["FILTER_RANGE"], 3),
                        i_RESETB=Const(1), i_BYPASS=Const(0), o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)
        if pad:
            return Instance("SB_PLL40_PAD", i_PACKAGEPIN=clk_in, **dividers)
        return Instance("SB_PLL40_CORE", i_REFERENCECLK=clk_in, **dividers)
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
