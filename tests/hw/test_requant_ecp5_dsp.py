# amaranth: UnusedElaboratable=no
"""The ECP5's multiply requantization in MULT18X18D pieces with the DSPs' own registers
(`Requant(dsp_width=18, dsp_cell="MULT18X18D")`, each piece a `qfab.hw.cells.DspProduct`).

Yosys's ECP5 flow packs no register into a MULT18X18D, so the piece instantiates the cell itself,
with its input registers (the product's register is in the fabric), when elaborated for a platform
(a board build, or the netlist the compiler writes for the ECP5).
Checks of that instance:

- in Verilator, under `qfab.hw.cells.simulation_models` (the cell's multiply and its input and
  output registers, written from Lattice's ECP5 sysDSP usage guide, TN1267), the requantization
  is bit-exact against `qfab.compiler.intops` under random gaps and stalls: the instance's wiring
  (digit bits to ``A``/``B``, ``P`` to the product, the enable, signedness) is right;
- Yosys keeps the instance's input registers on and its clock and enable connected, and the
  operand flip-flops are gone from the fabric.

Without a platform (every Amaranth simulation) the same registers are flip-flops.
"""

import json
import tempfile

import numpy as np
import pytest
from amaranth.back import rtlil, verilog

from qfab.boards.toolchain import PREPARE, run_yosys
from qfab.compiler import intops
from qfab.hw.cells import Cells, simulation_models
from qfab.hw.requant import Requant
from qfab.sim.packing import pack_beats, unpack_beats
from qfab.sim.verilator import run_stream


def _requant(acc_bits, m0, **overrides):
    channels = len(m0)
    kwargs = dict(bias=[(-1) ** c * 37 * c for c in range(channels)], m0=m0,
                  shift=[acc_bits + 15 + c % 3 for c in range(channels)], zero_point=3, lo=-128, hi=127,
                  out_bits=8, out_signed=True, dsp_width=18, dsp_cell="MULT18X18D")
    kwargs.update(overrides)
    return kwargs


def test_dsp_cell_checks():
    kwargs = _requant(20, [1, 2])
    with pytest.raises(ValueError, match="dsp_cell must be one of"):
        Requant(1, 2, acc_bits=20, **dict(kwargs, dsp_cell="DSP48E1"))
    with pytest.raises(ValueError, match="takes dsp_width=18"):
        Requant(1, 2, acc_bits=20, **dict(kwargs, dsp_width=16))
    with pytest.raises(ValueError, match="takes dsp_width=18, not None"):
        Requant(1, 2, acc_bits=20, **dict(kwargs, dsp_width=None))
    # the cell only for an ECP5: another family's platform gets flip-flops
    dut = Requant(2, 4, acc_bits=22, **_requant(22, [(1 << 23) + 5, 7, 99999, 1 << 20]))
    assert "MULT18X18D" not in verilog.convert(dut, name="top", platform=Cells("ice40"))


def test_no_instance_without_a_platform():
    """A simulation's or a plain conversion's Verilog has no primitive in it."""
    dut = Requant(2, 4, acc_bits=22, **_requant(22, [(1 << 23) + 5, 7, 99999, 1 << 20]))
    assert "MULT18X18D" not in verilog.convert(dut, name="top")
    dut = Requant(2, 4, acc_bits=22, **_requant(22, [(1 << 23) + 5, 7, 99999, 1 << 20]))
    text = verilog.convert(dut, name="top", platform=Cells("ecp5"))
    assert text.count("MULT18X18D ") == 2 * 2 * 2
    assert "module MULT18X18D" in simulation_models(text) and simulation_models(verilog.convert(
        Requant(2, 4, acc_bits=22, **_requant(22, [5, 7, 9, 11], dsp_cell=None)), name="top")) == ""


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("acc_bits,lanes,stall", [(22, 2, 0.0), (30, 1, 0.3)])
def test_instance_bit_exact_in_verilator(acc_bits, lanes, stall):
    """Every output of the instance path (under the cell's model) equals `intops.requantize`."""
    channels = 4 * lanes
    rng = np.random.default_rng(acc_bits)
    m0 = [int(v) for v in rng.integers(1 << 22, 1 << 24, channels)]
    m0[0], m0[-1] = (1 << 24) - 1, 1 << 23
    kwargs = _requant(acc_bits, m0, m_bits=24)
    dut = Requant(lanes, channels, acc_bits=acc_bits, **kwargs)
    text = verilog.convert(dut, name="qfab_top", platform=Cells("ecp5"))
    assert text.count("MULT18X18D ") == lanes * 2 * 2
    lo_acc, hi_acc = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    beats = 600
    acc = rng.integers(lo_acc, hi_acc + 1, (beats, lanes))
    acc[rng.random((beats, lanes)) < 0.1] = lo_acc
    acc[rng.random((beats, lanes)) < 0.1] = hi_acc
    res = run_stream(text + simulation_models(text), acc_bits * lanes, 8 * lanes, pack_beats(acc, acc_bits), beats,
                     stall=stall, seed=5, log=lambda m: None)
    got = unpack_beats(res.outputs, lanes, 8, True)
    folds = channels // lanes
    chan = (np.arange(beats)[:, None] % folds) * lanes + np.arange(lanes)[None, :]
    bias, m0a, shift = (np.array(kwargs[k])[chan] for k in ("bias", "m0", "shift"))
    want = intops.requantize(acc + bias, m0a, shift, kwargs["zero_point"], kwargs["lo"], kwargs["hi"])
    assert res.out_count == beats
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 20            # the outputs span the range, not one clamped value


def _cells(dsp_cell):
    """The MULT18X18D cells (parameters, connections) and the flip-flop count of a 21-bit by
    24-bit requantization synthesized by ``synth_ecp5`` for a platform."""
    dut = Requant(1, 8, acc_bits=21, **_requant(21, [(1 << 23) + 12345 * c for c in range(8)], dsp_cell=dsp_cell))
    with tempfile.TemporaryDirectory(prefix="qfab_dsp_") as tmp:
        with open(f"{tmp}/top.il", "w") as f:
            f.write(rtlil.convert(dut, name="top", platform=Cells("ecp5")))
        run_yosys(f"read_rtlil top.il; hierarchy -top top; {PREPARE}; synth_ecp5 -top top; write_json net.json",
                  tmp, "ecp5", log=None)
        with open(f"{tmp}/net.json") as f:
            net = json.load(f)
    cells = [c for module in net["modules"].values() for c in module["cells"].values()]
    clock = net["modules"]["top"]["ports"]["clk"]["bits"]
    dsps = [c for c in cells if c["type"] == "MULT18X18D"]
    return dsps, sum(c["type"] == "TRELLIS_FF" for c in cells), clock


@pytest.mark.slow
def test_yosys_keeps_the_cell_registers():
    dsps, ffs, clock = _cells("MULT18X18D")
    assert len(dsps) == 4                      # 2 x 2 signed 18-bit digits
    for d in dsps:
        for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK"):
            assert d["parameters"][reg] == "CLK0", (reg, d["parameters"])
        assert d["parameters"]["REG_OUTPUT_CLK"] == "NONE"             # the product: a fabric register
        assert d["connections"]["CLK0"] == clock
        assert d["connections"]["CE0"] not in (["0"], ["1"])           # the pipeline's enable
    plain, plain_ffs, _ = _cells(None)
    assert len(plain) == 4 and all(d["parameters"].get("REG_OUTPUT_CLK", "NONE") == "NONE" for d in plain)
    # the operands' flip-flops moved into the DSPs: two digits of each operand (the pairs' equal
    # operand registers were one each in the fabric); the products' stay in the fabric
    assert plain_ffs - ffs >= 2 * 18 + 2 * 18
