# amaranth: UnusedElaboratable=no
"""Weight memories: every kind reads back its words one cycle after the address."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qfab.hw.mac import Encoding
from qfab.hw.weights import MemoryKind, WeightMemory

from .streams import payload_value, put_all


def read_all(dut, order, load=None):
    got = []
    clocked = not (dut.kind is MemoryKind.LOGIC and dut.depth == 1)   # one word: only wires

    async def step(ctx):
        if clocked:
            await ctx.tick()
        else:
            await ctx.delay(1e-6)

    async def bench(ctx):
        if load is not None:
            await put_all(ctx, dut.load, load, gap_prob=0.3)
            await ctx.tick().until(dut.loaded)
        for addr in order:
            ctx.set(dut.addr, addr)
            ctx.set(dut.en, 1)
            await step(ctx)
            ctx.set(dut.en, 0)
            ctx.set(dut.addr, (addr + 1) % dut.depth)    # held: en is low
            await step(ctx)
            got.append(payload_value(ctx.get(dut.data)))

    sim = Simulator(dut)
    sim.add_clock(1e-6, if_exists=True)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("kind", [MemoryKind.LOGIC, MemoryKind.BLOCK, MemoryKind.SPRAM])
@pytest.mark.parametrize("w_bits,enc", [(3, Encoding.SIGNED), (1, Encoding.BIPOLAR),
                                        (2, Encoding.UNSIGNED)])
@pytest.mark.parametrize("depth", [1, 5, 16, 17, 32, 40])   # 17 and up: a logic ROM in groups of 16
def test_sim(kind, w_bits, enc, depth):
    rng = np.random.default_rng(depth + w_bits)
    if enc is Encoding.BIPOLAR:
        words = 2 * rng.integers(0, 2, (depth, 2, 3)) - 1
        codes = (words + 1) // 2
    else:
        lo, hi = (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1) if enc is Encoding.SIGNED \
            else (0, (1 << w_bits) - 1)
        words = codes = rng.integers(lo, hi + 1, (depth, 2, 3))
    dut = WeightMemory(words, pe=2, simd=3, w_bits=w_bits, w_encoding=enc, kind=kind)
    assert dut.kind is kind and dut.depth == depth
    assert dut.codes == codes.tolist()
    order = [int(a) for a in rng.permutation(depth)] * 2
    load = dut.codes if kind is MemoryKind.SPRAM else None
    assert read_all(dut, order, load) == [codes[a].tolist() for a in order]


def test_auto():
    small = WeightMemory([[[1]]], pe=1, simd=1, w_bits=2, w_encoding=Encoding.SIGNED)
    big = WeightMemory([[[1] * 8] * 8] * 32, pe=8, simd=8, w_bits=2, w_encoding=Encoding.SIGNED)
    assert small.kind is MemoryKind.LOGIC and big.kind is MemoryKind.BLOCK
    assert not hasattr(small, "load")


def test_init_wrong():
    with pytest.raises(TypeError, match=r"^kind must be a MemoryKind, not 'bram'$"):
        WeightMemory([[[1]]], pe=1, simd=1, w_bits=2, w_encoding=Encoding.SIGNED, kind="bram")
    with pytest.raises(ValueError, match=r"^each word must be 1 rows of 2 weights$"):
        WeightMemory([[[1]]], pe=1, simd=2, w_bits=2, w_encoding=Encoding.SIGNED)
    with pytest.raises(ValueError, match=r"^weight 2 is outside \[-2, 1\]$"):
        WeightMemory([[[2]]], pe=1, simd=1, w_bits=2, w_encoding=Encoding.SIGNED)
    with pytest.raises(ValueError, match=r"^a bipolar weight is -1 or \+1, not 0$"):
        WeightMemory([[[0]]], pe=1, simd=1, w_bits=1, w_encoding=Encoding.BIPOLAR)
    with pytest.raises(ValueError, match=r"^words must not be empty$"):
        WeightMemory([], pe=1, simd=1, w_bits=1, w_encoding=Encoding.BIPOLAR)


def test_weight_word_is_one_wire_in_the_verilog_and_indexes_per_code():
    """A weight word of PE x SIMD codes reaches the netlist as one port, not one wire per code
    (issue 17: those were a third of a large design's Verilog), and still indexes as word[p][s]."""
    from amaranth.back import verilog
    from amaranth.hdl import signed
    from amaranth.lib import data

    from qfab.hw.weights import weight_layout

    codes = [[[(3 * d + 5 * p + s) % 16 - 8 for s in range(3)] for p in range(2)] for d in range(4)]
    mem = WeightMemory(codes, w_bits=4, w_encoding=Encoding.SIGNED, kind=MemoryKind.LOGIC, pe=2, simd=3)
    text = verilog.convert(mem, name="wm")
    assert "data[0][0]" not in text and "data[1][2]" not in text
    assert "output [23:0] data" in text
    layout = weight_layout(2, 3, 4, Encoding.SIGNED)
    assert layout == data.ArrayLayout(data.ArrayLayout(signed(4), 3), 2)
    word = layout.const([[1, -2, 3], [-4, 5, -6]])
    assert [[word[p][s] for s in range(3)] for p in range(2)] == [[1, -2, 3], [-4, 5, -6]]
