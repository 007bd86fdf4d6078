# amaranth: UnusedElaboratable=no
"""The iCE40's multiply requantization in registered SB_MAC16 pieces (`Requant(dsp_width=16)`):
Yosys's own ``synth_ice40 -dsp`` packs every piece's operand registers and product register into
its DSP (``A_REG``, ``B_REG``, the registered output), so no path through a DSP escapes
nextpnr-ice40's timing; without ``dsp_width`` the same multiply's DSPs use none of their
registers. About 20 s of Yosys per design."""

import json
import tempfile

import pytest
from amaranth.back import rtlil

from qfab.boards.toolchain import PREPARE, run_yosys
from qfab.hw.requant import Requant

pytestmark = pytest.mark.slow


def _dsp_registers(dsp_width):
    """``(A_REG, B_REG, TOPOUTPUT_SELECT, BOTOUTPUT_SELECT)`` of each SB_MAC16 of a 21-bit by
    24-bit requantization (the digits CNN w8a8's first layer), as Yosys maps it."""
    dut = Requant(1, 8, acc_bits=21, bias=[3] * 8, m0=[(1 << 23) + 12345 * c for c in range(8)], shift=[30] * 8,
                  zero_point=0, lo=0, hi=255, out_bits=8, out_signed=False, dsp_width=dsp_width)
    with tempfile.TemporaryDirectory(prefix="qfab_dsp_") as tmp:
        with open(f"{tmp}/top.il", "w") as f:
            f.write(rtlil.convert(dut, name="top"))
        run_yosys(f"read_rtlil top.il; hierarchy -top top; {PREPARE}; synth_ice40 -dsp -top top; write_json net.json",
                  tmp, "ice40", log=None)
        with open(f"{tmp}/net.json") as f:
            net = json.load(f)
    keys = ("A_REG", "B_REG", "TOPOUTPUT_SELECT", "BOTOUTPUT_SELECT")
    return [tuple(int(cell["parameters"][k], 2) for k in keys)
            for module in net["modules"].values() for cell in module["cells"].values() if cell["type"] == "SB_MAC16"]


def test_every_dsp_piece_is_registered():
    dsps = _dsp_registers(16)
    assert len(dsps) == 4                     # 2 x 2 signed 16-bit digits
    assert all(d == (1, 1, 1, 1) for d in dsps), dsps


def test_without_pieces_the_dsps_are_unregistered():
    """What the pieces are for: Yosys's own mapping of the same multiply."""
    dsps = _dsp_registers(None)
    assert dsps and not any(d[0] or d[1] for d in dsps), dsps
