# amaranth: UnusedElaboratable=no
"""The MAC array's pipeline: the documented latency, measured, in every style (the adder trees
are cut by a register level so that they are not a design's longest path, issue 11)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qfab.hw._arith import BitSum, sum_tree
from qfab.hw.mac import Encoding, MacArray, MacStyle


def _first_output_delay(dut, beats, precision=None):
    """Cycles from the last transfer of the first dot product (its last plane, bit-serially) to
    ``o.valid``, with ``o.ready`` high and no gaps."""
    rng = np.random.default_rng(0)
    events = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        if precision is not None:
            ctx.set(dut.precision, precision)
        cycle, sent = 0, 0
        ctx.set(dut.i.valid, 1)
        while "out" not in events:
            ctx.set(dut.i.payload, {"w": rng.integers(0, 2, (dut.pe, dut.simd)).tolist(),
                                    "a": rng.integers(0, 2, dut.simd).tolist()})
            last = False
            if ctx.get(dut.i.ready) and ctx.get(dut.i.valid):
                sent += 1
                if sent == beats:
                    events["last_in"] = cycle
                    last = True
            if ctx.get(dut.o.valid):
                events["out"] = cycle
            await ctx.tick()                    # the transfer happens at this edge
            if last:
                ctx.set(dut.i.valid, 0)
            cycle += 1
            assert cycle < 200

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return events["out"] - events["last_in"]


@pytest.mark.parametrize("tree_registers", [1, 2, 3])
@pytest.mark.parametrize("style,use_dsp,beats,simd", [
    (MacStyle.BIT_PARALLEL, False, 3, 16), (MacStyle.BIT_PARALLEL, False, 1, 1),
    (MacStyle.BIT_PARALLEL, True, 2, 8), (MacStyle.BIT_SERIAL, False, 2, 16)])
def test_measured_latency_is_the_documented_one(style, use_dsp, beats, simd, tree_registers):
    dut = MacArray(2, simd, w_bits=2, w_encoding=Encoding.SIGNED, a_bits=2, a_encoding=Encoding.UNSIGNED,
                   beats=beats, style=style, use_dsp=use_dsp, tree_registers=tree_registers)
    assert dut.latency == (2 if style is MacStyle.BIT_PARALLEL else 3) + tree_registers
    assert _first_output_delay(dut, beats) == dut.latency


def test_tree_registers_must_be_positive():
    with pytest.raises(TypeError, match="^tree_registers must be a positive integer, not 0$"):
        MacArray(1, 4, w_bits=2, w_encoding=Encoding.SIGNED, a_bits=2, a_encoding=Encoding.UNSIGNED,
                 beats=1, tree_registers=0)


@pytest.mark.parametrize("registers", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 33, 300])
def test_pipelined_sum_tree_puts_every_addend_registers_cycles_behind(n, registers):
    """Each addend changes at a different cycle; the registered tree's output at cycle t is the
    sum of the addends' values at t - registers (no addend crosses fewer or more registers)."""
    from amaranth.hdl import Module, Signal
    m = Module()
    en = Signal(init=1)
    inputs = [Signal(3, name=f"x{k}") for k in range(n)]
    tree = sum_tree(m, [BitSum(x, 7) for x in inputs], pipeline=en, registers=registers)
    out = Signal(tree.width)
    m.d.comb += out.eq(tree.value)
    rng = np.random.default_rng(n)
    values = rng.integers(0, 8, (12, n))

    async def bench(ctx):
        for t in range(12):
            for x, v in zip(inputs, values[t]):
                ctx.set(x, int(v))
            await ctx.tick()
            if t + 1 >= registers:
                assert ctx.get(out) == int(values[t + 1 - registers].sum())

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
