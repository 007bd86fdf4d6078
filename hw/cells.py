"""Vendor cells that components instantiate themselves, and their simulation models.

Yosys's ECP5 flow maps a ``*`` onto MULT18X18D cells but packs none of the registers around it
into them, so a registered product is a fabric register, the DSP and another fabric register in
one cycle, with the routing to and from the DSP column (the digits MLP w8a8's slowest path at
100 MHz asked, 83.5 MHz). `DspProduct` is a product with the cell's own input registers and
the product's register in the fabric next to what it feeds: written out in flip-flops when
elaborated without a platform (every Amaranth simulation), and as the cell itself when
elaborated for one: a board build, or the netlist
`qfab.compiler` writes for a target family (`Cells`), which is then both what the board
synthesizes and what the simulators run, with `simulation_models` standing in for the cell.

The models are written here from Lattice's ECP5 sysDSP usage guide (TN1267): Lattice's own
simulation library is not available to an open flow. What a simulation with them shows is the
wiring of the cell (operands, signedness, enables, registers), given its documented behaviour.
"""

import re

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP_CELLS", "DspProduct", "Cells", "simulation_models"]

DSP_CELLS = {"MULT18X18D": 18}     # the DSP cells `DspProduct` can be, and their operand width


class Cells:
    """A platform for elaborating a netlist with the vendor cells of ``family`` instantiated
    (`DspProduct` as a MULT18X18D on the ECP5). Nothing else in `qfab.hw` looks at it."""

    def __init__(self, family: str) -> None:
        self.family = family


class DspProduct(wiring.Component):
    """``q = a * b`` two cycles later: ``a`` and ``b`` (signed) registered while ``en``, then their
    product registered while ``en``: the DSP cell ``cell`` (a key of `DSP_CELLS`) with its input
    registers on (``REG_INPUTA_CLK``, ``REG_INPUTB_CLK`` = ``CLK0``, clock enable ``CE0``) and the
    product registered in the fabric, instantiated when elaborated for an ECP5 platform
    (``platform.family``, as `Cells` and Amaranth's Lattice platforms have it), flip-flops and
    ``*`` otherwise (the same cycles).

    The product's register is not the cell's output register (``REG_OUTPUT_CLK``): with it,
    the slowest paths of the digits MLP and CNN w8a8 on the ULX3S were that register, 3-5 ns of
    routing out of the DSP column and the sum of the pieces in one cycle (88.4 and 94.4 MHz);
    a fabric register leaves that routing in the multiply's cycle, which the input registers
    shorten (docs/boards.md).

    Members
    -------
    a, b : ``In(signed(width))``
    en : ``In(1)``
    q : ``Out(signed(2 * width))``
    """

    def __init__(self, cell: str) -> None:
        if cell not in DSP_CELLS:
            raise ValueError(f"dsp_cell must be one of {sorted(DSP_CELLS)}, not {cell!r}")
        self._cell = cell
        w = DSP_CELLS[cell]
        super().__init__({"a": In(signed(w)), "b": In(signed(w)), "en": In(1), "q": Out(signed(2 * w))})

    cell = property(lambda self: self._cell)

    def elaborate(self, platform):
        m = Module()
        w = DSP_CELLS[self._cell]
        if getattr(platform, "family", None) == "ecp5":
            regs = {f"p_REG_{r}_{p}": v for r in ("INPUTA", "INPUTB")
                    for p, v in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
            p = Signal(signed(2 * w), name="p")
            q = Signal(signed(2 * w), reset_less=True, name="q_reg")
            m.submodules.cell = Instance(
                "MULT18X18D", **regs, p_REG_OUTPUT_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
                p_REG_INPUTC_CLK="NONE", p_GSR="DISABLED", p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
                p_CAS_MATCH_REG="FALSE",
                i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=Const(0),
                i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
                **{f"i_A{k}": self.a[k] for k in range(w)}, **{f"i_B{k}": self.b[k] for k in range(w)},
                **{f"i_C{k}": Const(0) for k in range(w)}, **{f"o_P{k}": p[k] for k in range(2 * w)})
            with m.If(self.en):
                m.d.sync += q.eq(p)
            m.d.comb += self.q.eq(q)
            return m
        a = Signal(signed(w), reset_less=True, name="a_reg")
        b = Signal(signed(w), reset_less=True, name="b_reg")
        q = Signal(signed(2 * w), reset_less=True, name="q_reg")
        with m.If(self.en):
            m.d.sync += [a.eq(self.a), b.eq(self.b), q.eq(a * b)]
        m.d.comb += self.q.eq(q)
        return m


def _mult18x18d_model():
    """Verilog of MULT18X18D's multiply with its A, B and output registers (no cascade, no C, no
    pipeline register), for simulators."""
    def bits(p, n):
        return ", ".join(f"{p}{k}" for k in range(n))

    def cat(p, n):
        return "{" + ", ".join(f"{p}{k}" for k in reversed(range(n))) + "}"

    params = ["REG_INPUTA_CLK", "REG_INPUTA_CE", "REG_INPUTA_RST", "REG_INPUTB_CLK", "REG_INPUTB_CE",
              "REG_INPUTB_RST", "REG_INPUTC_CLK", "REG_PIPELINE_CLK", "REG_OUTPUT_CLK", "REG_OUTPUT_CE",
              "REG_OUTPUT_RST", "GSR", "RESETMODE", "SOURCEB_MODE", "MULT_BYPASS", "CAS_MATCH_REG"]
    decls = "".join(f'  parameter {p} = "NONE";\n' for p in params)
    return f"""
`ifndef SYNTHESIS
// qfab's simulation model of the ECP5 MULT18X18D (from Lattice TN1267): P = A * B, signed when
// SIGNEDA / SIGNEDB; an input or output register is on when its REG_*_CLK is not "NONE",
// clocked by CLK0, loaded while CE0, cleared by RST0. No cascade, C input or pipeline register.
module MULT18X18D(input {bits("A", 18)}, input {bits("B", 18)}, input {bits("C", 18)},
                  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0, output {bits("P", 36)});
{decls}  wire [17:0] a_in = {cat("A", 18)};
  wire [17:0] b_in = {cat("B", 18)};
  reg [17:0] a_reg = 0, b_reg = 0;
  reg [35:0] p_reg = 0;
  wire [17:0] a = REG_INPUTA_CLK == "NONE" ? a_in : a_reg;
  wire [17:0] b = REG_INPUTB_CLK == "NONE" ? b_in : b_reg;
  wire signed [36:0] a_x = SIGNEDA ? {{{{19{{a[17]}}}}, a}} : {{19'b0, a}};
  wire signed [36:0] b_x = SIGNEDB ? {{{{19{{b[17]}}}}, b}} : {{19'b0, b}};
  wire signed [73:0] full = a_x * b_x;
  assign {cat("P", 36)} = REG_OUTPUT_CLK == "NONE" ? full[35:0] : p_reg;
  always @(posedge CLK0) begin
    if (RST0) begin a_reg <= 0; b_reg <= 0; p_reg <= 0; end
    else if (CE0) begin a_reg <= a_in; b_reg <= b_in; p_reg <= full[35:0]; end
  end
endmodule
`endif
"""


_MODELS = {"MULT18X18D": _mult18x18d_model}


def simulation_models(verilog: str) -> str:
    """Verilog models of the `DSP_CELLS` that ``verilog`` instantiates ("" when none), to be
    compiled with it by a simulator. Each is inside ```ifndef SYNTHESIS``: Yosys (which defines
    it) reading the Verilog keeps its own cell, not a model in flip-flops."""
    return "".join(_MODELS[cell]() for cell in DSP_CELLS if re.search(rf"^\s*{cell}\b", verilog, re.M))
