# amaranth: UnusedElaboratable=no
"""Requantization corners the mutation run of hw/requant.py found untested (docs/testing.md): the
combinational `requantize` of the pools and the residual add against ``intops.requantize``, both
rounding rules, every accumulator value of small widths; `Requant` with a zero multiplier, shifts
that differ across folds, the extreme shift and unsigned outputs; the argument checks."""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from qfab.compiler import intops
from qfab.hw.requant import Requant, RequantMode, requantize, shift_add_steps

from .streams import stream_through


def _comb(acc_shape, multiplier, shift, zero_point, lo, hi, rounding="half_up"):
    """Every value of ``acc_shape`` through `requantize`: the outputs, and what intops says."""
    m = Module()
    acc = Signal(acc_shape)
    y = Signal(signed(24))
    m.d.comb += y.eq(requantize(acc, multiplier, shift, zero_point, lo, hi, rounding))
    values = list(range(acc_shape.signed and -(1 << (acc_shape.width - 1)) or 0,
                        (1 << (acc_shape.width - (1 if acc_shape.signed else 0)))))
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(acc, v)
            got.append(ctx.get(y))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    want = intops.requantize(np.array(values), multiplier, shift, zero_point, lo, hi, rounding=rounding)
    return got, want.tolist()


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
@pytest.mark.parametrize("acc_shape, multiplier, shift, zero_point, lo, hi", [
    (signed(7), 1, 0, 0, -128, 127),           # no multiply, no shift: only zero point and clamp
    (signed(7), 1, 1, 0, -128, 127),           # halves: ties on both signs
    (signed(7), 3, 2, 5, -20, 20),             # quarters, a zero point, both clamps bite
    (signed(8), 5461, 16, -3, -8, 7),          # a pool's divide by 12, 4-bit output
    (signed(6), 0, 4, 2, -8, 7),               # a zero multiplier gives the zero point
    (unsigned(6), 7, 3, -10, -16, 15),         # unsigned accumulator
    (unsigned(4), 3, 6, 0, 0, 255),            # a shift wider than the unsigned product
    (signed(5), 2, 5, 1, -4, 4),               # the shift reaches the product's sign bit
])
def test_combinational_requantize_matches_intops(acc_shape, multiplier, shift, zero_point, lo, hi, rounding):
    got, want = _comb(acc_shape, multiplier, shift, zero_point, lo, hi, rounding)
    assert got == want
    assert len(set(want)) >= 2 or multiplier == 0          # the case can tell a wrong rule apart


def test_combinational_requantize_rejects_unknown_rounding():
    with pytest.raises(ValueError, match=r"^Rounding must be 'half_up' or 'half_even', not 'down'$"):
        requantize(Signal(signed(4)), 1, 1, 0, -8, 7, "down")


def _run(dut, acc, beats):
    return stream_through(dut, acc, beats, gap_prob=0.2, stall_prob=0.3, seed=3)


def _expected(acc, lanes, folds, bias, m0, shift, zero_point, lo, hi):
    acc = np.array(acc)
    chan = (np.arange(len(acc))[:, None] % folds) * lanes + np.arange(lanes)[None, :]
    b, m, n = (np.array(v)[chan] for v in (bias, m0, shift))
    return intops.requantize(acc + b, m, n, zero_point, lo, hi).tolist()


@pytest.mark.parametrize("mode, digit_bits", [(RequantMode.MULTIPLY, 1), (RequantMode.SHIFT_ADD, 1),
                                              (RequantMode.SHIFT_ADD, 4)])
def test_shifts_that_differ_across_folds_and_channels(mode, digit_bits):
    """2 lanes x 3 folds: each lane's shifts differ over its folds (the variable shifter), one
    channel has M0 = 0, one the largest M0; every accumulator extreme."""
    lanes, folds, acc_bits = 2, 3, 10
    bias = [5, -7, 0, 300, -512, 1]
    m0 = [1000, 0, (1 << 16) - 1, 3, 77, 1 << 15]
    shift = [4, 9, 20, 0, 11, 17]
    zero_point, lo, hi = -2, -100, 90
    dut = Requant(lanes, lanes * folds, acc_bits=acc_bits, bias=bias, m0=m0, shift=shift, zero_point=zero_point,
                  lo=lo, hi=hi, out_bits=8, out_signed=True, m_bits=16, mode=mode, digit_bits=digit_bits)
    edge = [-(1 << (acc_bits - 1)), -1, 0, 1, (1 << (acc_bits - 1)) - 1]
    rng = np.random.default_rng(1)
    acc = [list(p) for p in itertools.product(edge, edge)] * 3
    acc += rng.integers(-(1 << (acc_bits - 1)), 1 << (acc_bits - 1), (24, lanes)).tolist()
    acc = acc[:len(acc) // folds * folds]
    want = _expected(acc, lanes, folds, bias, m0, shift, zero_point, lo, hi)
    assert len({v for row in want for v in row}) > 10
    assert _run(dut, acc, len(acc)) == want


@pytest.mark.parametrize("mode", [RequantMode.MULTIPLY, RequantMode.SHIFT_ADD])
def test_unsigned_output_and_the_extreme_shift(mode):
    """Shift 62 with the largest M0 of 24 bits and a 40-bit accumulator: the product and the
    offsets are as wide as the arithmetic allows; an unsigned 8-bit output with its own clamp."""
    bias = [0, -(1 << 30)]
    m0 = [(1 << 24) - 1, (1 << 23) + 1]
    shift = [62, 40]
    dut = Requant(1, 2, acc_bits=40, bias=bias, m0=m0, shift=shift, zero_point=100, lo=3, hi=250,
                  out_bits=8, out_signed=False, mode=mode, digit_bits=3)
    acc = [[a] for a in (-(1 << 39), (1 << 39) - 1, 0, 1 << 38, -(1 << 38), 123456789, -987654321, 1 << 20)]
    want = _expected(acc, 1, 2, bias, m0, shift, 100, 3, 250)
    assert len({row[0] for row in want}) >= 4
    assert _run(dut, acc, len(acc)) == want


def test_steps_latency_and_interval_follow_m0_and_digits():
    """``ceil(bits(max M0) / digit_bits)`` cycles, at least one."""
    assert [shift_add_steps(b, d) for b, d in ((24, 1), (24, 5), (25, 5), (1, 4), (0, 3), (8, 8), (9, 8))] == \
        [24, 5, 5, 1, 1, 1, 2]
    kwargs = dict(acc_bits=8, bias=[0, 0], shift=[0, 0], zero_point=0, lo=-128, hi=127, out_bits=8, out_signed=True)
    dut = Requant(1, 2, m0=[300, 5], mode=RequantMode.SHIFT_ADD, digit_bits=2, **kwargs)
    assert (dut.steps, dut.latency, dut.interval) == (5, 10, 6)              # 300 has 9 bits
    assert Requant(1, 2, m0=[0, 0], mode="shift_add", **kwargs).steps == 1    # M0 = 0: one step
    assert (dut.lanes, dut.channels, dut.mode) == (1, 2, RequantMode.SHIFT_ADD)


@pytest.mark.parametrize("change, error, message", [
    (dict(channels=0), TypeError, r"^channels must be a positive integer, not 0$"),
    (dict(acc_bits=True), TypeError, r"^acc_bits must be a positive integer, not True$"),
    (dict(out_bits=0), TypeError, r"^out_bits must be a positive integer, not 0$"),
    (dict(m_bits=-1), TypeError, r"^m_bits must be a positive integer, not -1$"),
    (dict(m0=[1, -1]), ValueError, r"^m0 must be in 0 .. 2\*\*8 - 1, not -1$"),
    (dict(m0=[256, 1]), ValueError, r"^m0 must be in 0 .. 2\*\*8 - 1, not 256$"),
    (dict(shift=[0, -1]), ValueError, r"^shift must be in 0 .. 62, not -1$"),
    (dict(m0=None), TypeError, r"^m0 must be a sequence of integers, not None$"),
    (dict(lo=5, hi=4), ValueError, r"^clamp \[5, 4\] must lie within the output range \[-8, 7\]$"),
    (dict(lo=-9), ValueError, r"^clamp \[-9, 7\] must lie within the output range \[-8, 7\]$"),
    (dict(digit_bits=True, mode=RequantMode.SHIFT_ADD), TypeError, r"^digit_bits must be a positive integer"),
])
def test_argument_errors(change, error, message):
    kwargs = dict(lanes=1, channels=2, acc_bits=8, bias=[0, 0], m0=[1, 1], shift=[0, 0], zero_point=0, lo=-8,
                  hi=7, out_bits=4, out_signed=True, m_bits=8)
    kwargs.update(change)
    lanes, channels = kwargs.pop("lanes"), kwargs.pop("channels")
    with pytest.raises(error, match=message):
        Requant(lanes, channels, **kwargs)


def test_the_edges_of_the_argument_ranges_are_accepted():
    kwargs = dict(acc_bits=1, bias=[0], zero_point=0, out_bits=1, out_signed=False, m_bits=1)
    dut = Requant(1, 1, m0=[1], shift=[62], lo=0, hi=1, **kwargs)
    assert dut.channels == 1
    Requant(1, 1, m0=[0], shift=[0], lo=1, hi=1, **kwargs)


@pytest.mark.parametrize("digit_bits", [1, 8])
def test_shift_and_add_holds_its_product_through_long_output_stalls(digit_bits):
    """The multiplier finishes while the output is stalled and must keep its product until the
    pipeline takes it (few steps and long stalls make that the common case)."""
    lanes, folds = 1, 2
    bias, m0, shift = [3, -5], [200, 77], [9, 8]
    dut = Requant(lanes, folds, acc_bits=10, bias=bias, m0=m0, shift=shift, zero_point=1, lo=-128, hi=127,
                  out_bits=8, out_signed=True, m_bits=8, mode=RequantMode.SHIFT_ADD, digit_bits=digit_bits)
    acc = np.random.default_rng(digit_bits).integers(-512, 512, (40, 1)).tolist()
    want = _expected(acc, lanes, folds, bias, m0, shift, 1, -128, 127)
    assert len({row[0] for row in want}) > 10
    assert stream_through(dut, acc, len(acc), gap_prob=0.0, stall_prob=0.8, seed=digit_bits) == want


@pytest.mark.parametrize("depth, width, block", [(16, 65, True), (16, 64, False), (15, 128, False), (64, 24, True),
                                                  (2, 8, False)])
def test_per_channel_roms_ask_for_block_ram_from_16_entries_and_1024_bits(depth, width, block):
    """The synthesis hint of the per-channel constants (``rom_style``), and the ROM's registered read."""
    from qfab.hw.requant import rom
    m = Module()
    index, en = Signal(range(depth)), Signal()
    values = [(7 * k + 3) % (1 << min(width, 16)) for k in range(depth)]
    data = rom(m, values, index, en, unsigned(width), "table")
    assert m.submodules["table"].attrs == ({"rom_style": "block"} if block else {})
    got = []

    async def bench(ctx):
        ctx.set(en, 1)
        for k in (depth - 1, 0, 1):
            ctx.set(index, k)
            await ctx.tick()
            got.append(ctx.get(data))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [values[depth - 1], values[0], values[1]]


def test_equal_constants_need_no_rom():
    from amaranth.hdl import Const

    from qfab.hw.requant import rom
    m = Module()
    same = rom(m, [-3, -3, -3], Signal(range(3)), Signal(), signed(6), "same")
    assert isinstance(same, Const) and same.shape() == signed(6) and same.value == -3
