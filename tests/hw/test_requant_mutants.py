# amaranth: UnusedElaboratable=no
"""Requantization corners the mutation run of hw/requant.py found untested (docs/testing.md): the
combinational `requantize` of the pools and the residual add against ``intops.requantize`` in
every mode, both rounding rules, every accumulator value of small widths (half-even's parity bit
beyond the product; threshold ranges whose ends only the extreme accumulators reach); which modes
build a multiplier; `Requant` with a zero multiplier, shifts that differ across folds, the extreme
shift and unsigned outputs, long input gaps and output stalls; the argument checks."""

import itertools
from fractions import Fraction

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from qfab.compiler import intops
from qfab.hw.requant import Requant, RequantMode, const_multiply, requantize, shift_add_steps

from .streams import stream_through
from .test_requant import evaluate


def _comb(acc_shape, multiplier, shift, zero_point, lo, hi, rounding="half_up", mode=None):
    """Every value of ``acc_shape`` through `requantize`: the outputs, and what intops says."""
    values, got = evaluate(lambda acc: requantize(acc, multiplier, shift, zero_point, lo, hi, rounding, mode),
                           acc_shape)
    want = intops.requantize(np.array(values), multiplier, shift, zero_point, lo, hi, rounding=rounding)
    return got, want.tolist()


COMB_CASES = [                                 # acc_shape, multiplier, shift, zero_point, lo, hi
    (signed(7), 1, 0, 0, -128, 127),           # no multiply, no shift: only zero point and clamp
    (unsigned(4), 1, 0, 0, 0, 15),             # the identity: the top level only at the largest value
    (signed(5), 1, 0, 0, -16, 15),             # the identity, signed: each end of the range its own level
    (signed(6), 1, 1, 0, -16, 15),             # halves; the lowest level only at the smallest values
    (signed(7), 1, 1, 0, -128, 127),           # halves: ties on both signs
    (signed(7), 3, 2, 5, -20, 20),             # quarters, a zero point, both clamps bite
    (signed(8), 5461, 16, -3, -8, 7),          # a pool's divide by 12, 4-bit output
    (signed(6), 0, 4, 2, -8, 7),               # a zero multiplier gives the zero point
    (unsigned(6), 7, 3, -10, -16, 15),         # unsigned accumulator
    (unsigned(4), 3, 6, 0, 0, 255),            # a shift wider than the unsigned product
    (signed(5), 2, 5, 1, -4, 4),               # the shift reaches the product's sign bit
]


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
@pytest.mark.parametrize("acc_shape, multiplier, shift, zero_point, lo, hi, mode", [
    (*case, mode) for mode in (None, RequantMode.SHIFT_ADD, RequantMode.THRESHOLDS) for case in COMB_CASES
    if mode is not RequantMode.THRESHOLDS or case[5] - case[4] <= 64     # a comparator per level: few levels
])
def test_combinational_requantize_matches_intops(acc_shape, multiplier, shift, zero_point, lo, hi, rounding, mode):
    """Every mode (``None``: the default, a multiplier); the threshold modes over the accumulator
    range that the shape holds, whose ends these cases reach."""
    got, want = _comb(acc_shape, multiplier, shift, zero_point, lo, hi, rounding, mode)
    assert got == want
    assert len(set(want)) >= 2 or multiplier == 0          # the case can tell a wrong rule apart


@pytest.mark.parametrize("mode", [RequantMode.MULTIPLY, RequantMode.SHIFT_ADD, RequantMode.THRESHOLDS])
@pytest.mark.parametrize("acc_shape", [signed(5), unsigned(4)])
def test_half_even_when_the_shift_reaches_the_product_width(acc_shape, mode):
    """``M0 = 1``: the product is the accumulator itself, and shifts of its width minus one, its
    width and one more take the rounding's parity bit from beyond the product (the sign)."""
    width = acc_shape.width
    lo_acc = -(1 << (width - 1)) if acc_shape.signed else 0
    ties = 0
    for shift in (width - 1, width, width + 1):
        got, want = _comb(acc_shape, 1, shift, 0, -16, 15, "half_even", mode)
        assert got == want, shift
        ties += sum(Fraction(v, 1 << shift).denominator == 2 for v in range(lo_acc, lo_acc + len(want)))
    assert ties >= 3                     # exact halves, where the parity bit decides


def _cells(make, acc_shape=signed(6)):
    """The RTLIL of ``make(acc)`` (Amaranth's own back end): what synthesis will be asked to build."""
    from amaranth.back import rtlil
    m = Module()
    acc = Signal(acc_shape)
    y = Signal(signed(40))
    m.d.comb += y.eq(make(acc))
    return rtlil.convert(m, ports=[acc, y])


@pytest.mark.parametrize("mode, multiplies", [(None, True), (RequantMode.MULTIPLY, True), ("multiply", True),
                                              (RequantMode.SHIFT_ADD, False), ("thresholds", False)])
def test_each_mode_builds_what_it_says(mode, multiplies):
    """MULTIPLY (the default) asks for a multiplier (a DSP block where there is one); SHIFT_ADD and
    THRESHOLDS must not (docs/hardware.md: requantization without DSPs)."""
    text = _cells(lambda acc: requantize(acc, 5461, 14, 0, -8, 7, "half_up", mode))
    assert ("$mul" in text) == multiplies
    if mode is not None and RequantMode(mode) is not RequantMode.THRESHOLDS:
        text = _cells(lambda acc: const_multiply(acc, 5461, mode))
        assert ("$mul" in text) == multiplies


def test_const_multiply_defaults_to_a_multiplier():
    """``const_multiply(value, c)`` with no mode: the ``*`` of a multiplier, every value of 6 bits."""
    accs, got = evaluate(lambda acc: const_multiply(acc, 45), signed(6))
    assert got == [a * 45 for a in accs]
    assert "$mul" in _cells(lambda acc: const_multiply(acc, 45))


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
    # one bit of M0 a cycle unless told otherwise (the documented default)
    dut = Requant(1, 2, m0=[300, 5], mode=RequantMode.SHIFT_ADD, **kwargs)
    assert (dut.steps, dut.latency, dut.interval) == (9, 14, 10)


@pytest.mark.parametrize("change, error, message", [
    (dict(channels=0), TypeError, r"^channels must be a positive integer, not 0$"),
    (dict(acc_bits=True), TypeError, r"^acc_bits must be a positive integer, not True$"),
    (dict(out_bits=0), TypeError, r"^out_bits must be a positive integer, not 0$"),
    (dict(m_bits=-1), TypeError, r"^m_bits must be a positive integer, not -1$"),
    (dict(m0=[1, -1]), ValueError, r"^m0 must be in 0 .. 2\*\*8 - 1, not -1$"),
    (dict(m0=[256, 1]), ValueError, r"^m0 must be in 0 .. 2\*\*8 - 1, not 256$"),
    (dict(shift=[0, -1]), ValueError, r"^shift must be in 0 .. 62, not -1$"),
    (dict(m0=None), TypeError, r"^m0 must be a sequence of integers, not None$"),
    (dict(shift=None), TypeError, r"^shift must be a sequence of integers, not None$"),
    (dict(shift=[1, 2, 3]), ValueError, r"^shift must have 2 elements, not 3$"),
    (dict(bias=[1]), ValueError, r"^bias must have 2 elements, not 1$"),
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


@pytest.mark.parametrize("digit_bits", [3, 8])
def test_shift_and_add_sends_one_result_per_beat_across_long_input_gaps(digit_bits):
    """Input gaps longer than the multiply: each beat gives exactly one result, the right one, and
    nothing more comes out after the last (an idle multiplier must not start again by itself)."""
    bias, m0, shift = [3, -5], [200, 77], [9, 8]
    dut = Requant(1, 2, acc_bits=10, bias=bias, m0=m0, shift=shift, zero_point=1, lo=-128, hi=127,
                  out_bits=8, out_signed=True, m_bits=8, mode=RequantMode.SHIFT_ADD, digit_bits=digit_bits)
    assert dut.steps <= 3
    rng = np.random.default_rng(digit_bits)
    acc = rng.integers(-512, 512, 16).tolist()
    want = [row[0] for row in _expected([[a] for a in acc], 1, 2, bias, m0, shift, 1, -128, 127)]
    assert len(set(want)) > 8
    gaps = rng.integers(0, 12, len(acc)).tolist()          # idle cycles before each beat
    got, extra = [], []

    async def producer(ctx):
        for a, gap in zip(acc, gaps):
            for _ in range(gap):
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, [a])
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        while len(got) < len(acc):
            _, _, payload, valid = await ctx.tick().sample(dut.o.payload, dut.o.valid)
            if valid:
                got.append(payload[0])
        for _ in range(4 * (dut.latency + dut.interval)):
            _, _, payload, valid = await ctx.tick().sample(dut.o.payload, dut.o.valid)
            if valid:
                extra.append(payload[0])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert (got, extra) == (want, [])
