# amaranth: UnusedElaboratable=no
"""Requant (multiply on a multiplier, or shift and add over several cycles) against
``intops.requantize``, channel by channel, under backpressure; latency and interval as documented.
The combinational `requantize` of the pools and the residual add in every mode, for every
accumulator of a small width; AvgPool and Add without multipliers."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.add import Add
from qfab.hw.pool import AvgPool
from qfab.hw.requant import Requant, RequantMode, const_multiply, csd_digits, requantize, signed_digits

from .dataflow_models import add_model, avgpool_model, beats, codes, simulate, unbeat
from .streams import get_all, put_all, stream_through


def run_stream(dut, payloads, count, *, gap_prob=0.0, stall_prob=0.0, seed=0):
    return stream_through(dut, payloads, count, gap_prob=gap_prob, stall_prob=stall_prob, seed=seed)


def _kwargs(**overrides):
    kwargs = dict(acc_bits=16, bias=[0, 0], m0=[1, 1], shift=[0, 0], zero_point=0, lo=-128,
                  hi=127, out_bits=8, out_signed=True)
    kwargs.update(overrides)
    return kwargs


def test_init():
    dut = Requant(2, 4, **_kwargs(bias=[1, 2, 3, 4], m0=[5] * 4, shift=[3] * 4))
    assert (dut.lanes, dut.channels) == (2, 4)
    assert len(dut.i.payload.as_value()) == 32 and len(dut.o.payload.as_value()) == 16


def test_init_wrong_lanes():
    with pytest.raises(TypeError, match=r"^lanes must be a positive integer, not 0$"):
        Requant(0, 2, **_kwargs())
    with pytest.raises(ValueError, match=r"^lanes \(2\) must divide channels \(3\)$"):
        Requant(2, 3, **_kwargs(bias=[0] * 3, m0=[1] * 3, shift=[0] * 3))


def test_init_modes():
    dut = Requant(1, 2, mode=RequantMode.SHIFT_ADD, digit_bits=2, **_kwargs(m0=[5, 33], shift=[1, 3]))
    assert (dut.mode, dut.steps, dut.latency, dut.interval) == (RequantMode.SHIFT_ADD, 3, 8, 4)
    dut = Requant(1, 2, **_kwargs())
    assert (dut.mode, dut.steps, dut.latency, dut.interval) == (RequantMode.MULTIPLY, 1, 5, 1)
    assert Requant(1, 2, mode="shift_add", **_kwargs()).mode is RequantMode.SHIFT_ADD


def test_init_wrong_mode():
    with pytest.raises(ValueError, match=r"^Requant computes MULTIPLY or SHIFT_ADD, not RequantMode.SEARCH; "
                                         r"the threshold modes are qfab.hw.threshold.ThresholdRequant$"):
        Requant(2, 2, mode=RequantMode.SEARCH, **_kwargs())
    with pytest.raises(TypeError, match=r"^digit_bits must be a positive integer, not 0$"):
        Requant(2, 2, mode=RequantMode.SHIFT_ADD, digit_bits=0, **_kwargs())


def test_init_wrong_params():
    with pytest.raises(ValueError, match=r"^bias must have 2 elements, not 3$"):
        Requant(2, 2, **_kwargs(bias=[0, 0, 0]))
    with pytest.raises(ValueError, match=r"^m0 must be in 0 .. 2\*\*24 - 1, not 16777216$"):
        Requant(2, 2, **_kwargs(m0=[1, 1 << 24]))
    with pytest.raises(ValueError, match=r"^shift must be in 0 .. 62, not 63$"):
        Requant(2, 2, **_kwargs(shift=[63, 0]))
    with pytest.raises(ValueError, match=r"^clamp \[0, 300\] must lie within the output range "
                                         r"\[0, 255\]$"):
        Requant(2, 2, **_kwargs(lo=0, hi=300, out_signed=False))


@st.composite
def requant_params(draw):
    lanes = draw(st.integers(1, 3))
    folds = draw(st.integers(1, 3))
    channels = lanes * folds
    acc_bits = draw(st.integers(2, 24))
    m_bits = draw(st.sampled_from([4, 8, 16, 24]))
    out_bits = draw(st.integers(1, 8))
    out_signed = draw(st.booleans())
    q_lo, q_hi = intops.qrange(out_bits, out_signed)
    lo = draw(st.integers(q_lo, q_hi))
    hi = draw(st.integers(lo, q_hi))

    def ints(a, b):
        return st.lists(st.integers(a, b), min_size=channels, max_size=channels)

    mode = draw(st.sampled_from([RequantMode.MULTIPLY, RequantMode.SHIFT_ADD]))
    return dict(lanes=lanes, channels=channels, acc_bits=acc_bits, m_bits=m_bits, mode=mode,
                digit_bits=draw(st.integers(1, 5)),
                bias=draw(ints(-(1 << acc_bits), 1 << acc_bits)),
                m0=draw(ints(0, (1 << m_bits) - 1)), shift=draw(ints(0, 40)),
                zero_point=draw(st.integers(q_lo, q_hi)), lo=lo, hi=hi, out_bits=out_bits,
                out_signed=out_signed, beats=draw(st.integers(1, 12)),
                rounding=draw(st.sampled_from(["half_up", "half_even"])),
                split_multiply=draw(st.booleans()),
                dsp_width=draw(st.sampled_from([None, None, 7, 16])),
                reserve=draw(st.booleans()),
                gap_prob=draw(st.sampled_from([0.0, 0.3])),
                stall_prob=draw(st.sampled_from([0.0, 0.5])), seed=draw(st.integers(0, 999)))


def check_requant(lanes, channels, acc_bits, beats, gap_prob, stall_prob, seed, **kwargs):
    dut = Requant(lanes, channels, acc_bits=acc_bits, **kwargs)
    rng = np.random.default_rng(seed)
    lo_acc, hi_acc = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    acc = rng.integers(lo_acc, hi_acc + 1, (beats, lanes))
    acc[rng.random((beats, lanes)) < 0.15] = lo_acc       # the extremes, often
    acc[rng.random((beats, lanes)) < 0.15] = hi_acc
    folds = channels // lanes
    chan = (np.arange(beats)[:, None] % folds) * lanes + np.arange(lanes)[None, :]
    bias, m0, shift = (np.array(kwargs[k])[chan] for k in ("bias", "m0", "shift"))
    expected = intops.requantize(acc + bias, m0, shift, kwargs["zero_point"], kwargs["lo"],
                                 kwargs["hi"], kwargs.get("rounding", "half_up"))
    got = run_stream(dut, acc.tolist(), beats, gap_prob=gap_prob, stall_prob=stall_prob,
                     seed=seed)
    assert got == expected.tolist()


def test_sim_rounding():
    """Half rounds up (toward +inf) for both signs; shift 0 is exact."""
    acc = [[-3], [-2], [-1], [1], [2], [3], [5], [-5]]
    dut = Requant(1, 1, **_kwargs(bias=[0], m0=[1], shift=[1]))
    assert run_stream(dut, acc, len(acc)) == [[-1], [-1], [0], [1], [1], [2], [3], [-2]]
    dut = Requant(1, 1, **_kwargs(bias=[7], m0=[3], shift=[0], zero_point=-1))
    assert run_stream(dut, [[10], [-50]], 2) == [[50], [-128]]


@settings(max_examples=50, deadline=None)
@given(requant_params())
def test_sim(params):
    check_requant(**params)


@pytest.mark.parametrize("mode", [RequantMode.MULTIPLY, RequantMode.SHIFT_ADD])
@pytest.mark.parametrize("zero_point", [0, 3, -4])
def test_sim_half_even_ties(mode, zero_point):
    """Half to even where ties are dense (small M0 and shifts, one channel unshifted): every
    accumulator of a range through both lanes under gaps and stalls equals ``round_shift_even``;
    the same stream rounded half up differs (so the ties are really there)."""
    kwargs = dict(acc_bits=10, bias=[3, 0, -5, 1], m0=[1, 3, 2, 5], shift=[1, 2, 0, 3], zero_point=zero_point,
                  lo=-128, hi=127, out_bits=8, out_signed=True, mode=mode, digit_bits=2)
    accs = np.arange(-40, 40)
    beats = [[int(a), int(-a)] for a in accs]
    chan = (np.arange(len(beats))[:, None] % 2) * 2 + np.arange(2)[None, :]
    bias, m0, shift = (np.array(kwargs[k])[chan] for k in ("bias", "m0", "shift"))
    acc = np.array(beats)
    even = intops.requantize(acc + bias, m0, shift, zero_point, -128, 127, "half_even")
    up = intops.requantize(acc + bias, m0, shift, zero_point, -128, 127, "half_up")
    assert (even != up).sum() > 20
    got = run_stream(Requant(2, 4, rounding="half_even", **kwargs), beats, len(beats), gap_prob=0.3,
                     stall_prob=0.4, seed=3)
    assert got == even.tolist()
    dut = Requant(2, 4, rounding="half_even", **kwargs)
    assert first_and_spacing(dut, beats[:8]) == (dut.latency, {dut.interval})


def test_init_wrong_rounding():
    with pytest.raises(ValueError, match=r"^Rounding must be 'half_up' or 'half_even', not 'down'$"):
        Requant(2, 2, rounding="down", **_kwargs())


def first_and_spacing(dut, payloads):
    """Cycles from taking the first beat to its result, and between results, at full rate."""
    from amaranth.sim import Simulator
    times = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        cycle, sent, got = 0, 0, []
        while len(got) < len(payloads):
            if sent < len(payloads):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, payloads[sent])
            else:
                ctx.set(dut.i.valid, 0)
            _, _, taken, out = await ctx.tick().sample(dut.i.ready, dut.o.valid)
            if taken and sent < len(payloads):
                times.setdefault("first", cycle)
                sent += 1
            if out:
                got.append(cycle)
            cycle += 1
        times["outs"] = got

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    outs = times["outs"]
    return outs[0] - times["first"], {b - a for a, b in zip(outs, outs[1:])}


@pytest.mark.parametrize("mode,digit_bits,split,dsp", [(RequantMode.MULTIPLY, 1, False, None),
                                                       (RequantMode.MULTIPLY, 1, True, None),
                                                       (RequantMode.MULTIPLY, 1, False, 16),
                                                       (RequantMode.MULTIPLY, 1, True, 4),
                                                       (RequantMode.MULTIPLY, 1, False, "MULT18X18D"),
                                                       (RequantMode.SHIFT_ADD, 1, False, None),
                                                       (RequantMode.SHIFT_ADD, 3, False, None)])
@pytest.mark.parametrize("reserve", [False, True])
def test_sim_latency_and_interval(mode, digit_bits, split, dsp, reserve):
    """The documented latency and interval, measured with no gaps and no stalls (with the
    reserved queue too: the same; 20 beats, more than the queue holds)."""
    cell = dsp if isinstance(dsp, str) else None
    dut = Requant(2, 4, mode=mode, digit_bits=digit_bits, split_multiply=split, dsp_width=18 if cell else dsp,
                  dsp_cell=cell, reserve=reserve,
                  **_kwargs(bias=[1, 2, 3, 4], m0=[5, 1000, 3, 77], shift=[3, 9, 0, 6]))
    assert dut.latency == (7 if dsp else 6 if split else 5 if mode is RequantMode.MULTIPLY else dut.steps + 5)
    assert dut.queue_depth == (dut.latency + 1 if reserve and mode is RequantMode.MULTIPLY else 0)
    latency, spacing = first_and_spacing(dut, [[v, -v] for v in range(20)])
    assert (latency, spacing) == (dut.latency, {dut.interval})


@pytest.mark.parametrize("depth_cut", [1, 2])
def test_reserve_queue_one_entry_short_is_slower(depth_cut, monkeypatch):
    """The reserved queue is as deep as full rate needs and no deeper: with an entry fewer the
    results come at a slower rate (each sent beat waits for an entry), and still exact."""
    kwargs = _kwargs(bias=[1, 2, 3, 4], m0=[5, 1000, 3, 77], shift=[3, 9, 0, 6])
    dut = Requant(2, 4, dsp_width=18, dsp_cell="MULT18X18D", reserve=True, **kwargs)
    full = dut.queue_depth
    monkeypatch.setattr(Requant, "queue_depth", property(lambda self: full - depth_cut))
    payloads = [[v, -v] for v in range(20)]
    latency, spacing = first_and_spacing(dut, payloads)
    assert latency == dut.latency and max(spacing) > 1
    assert run_stream(Requant(2, 4, dsp_width=18, dsp_cell="MULT18X18D", reserve=True, **kwargs),
                      payloads, 20, stall_prob=0.3, seed=1) == \
        run_stream(Requant(2, 4, **kwargs), payloads, 20)


@pytest.mark.parametrize("bits,width", [(5, 4), (17, 16), (25, 18), (26, 18), (37, 18)])
def test_digit_words(bits, width):
    """M0's ROM words hold `signed_digits`' digits in two's complement: every slice read as a
    signed number, weighted, gives the value back, for the extremes and random values."""
    from qfab.hw.requant import digit_bias, digit_words
    n = digit_bias(bits, width)[0]
    rng = np.random.default_rng(bits)
    values = [-(1 << (bits - 1)), (1 << (bits - 1)) - 1, 0, 1, -1] + rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), 50).tolist()
    for v in values:
        word = digit_words(v, bits, width)
        assert 0 <= word < 1 << (n * width)
        digits = [(word >> (k * width)) & ((1 << width) - 1) for k in range(n)]
        digits = [d - (1 << width) if d >> (width - 1) else d for d in digits]
        assert sum(d << (k * width) for k, d in enumerate(digits)) == v


@pytest.mark.parametrize("m_bits", [4, 16, 24])
@pytest.mark.parametrize("how", [{"split_multiply": True}, {"dsp_width": 16}, {"dsp_width": 9},
                                 {"dsp_width": 18, "dsp_cell": "MULT18X18D"},
                                 {"dsp_width": 18, "dsp_cell": "MULT18X18D", "reserve": True}])
@pytest.mark.parametrize("acc_bits", [12, 17, 18, 20])
def test_split_multiply_at_the_extremes(m_bits, how, acc_bits):
    """The two half products summed, or the DSP-sized signed-digit pieces: every extreme
    accumulator times every extreme M0, exact, under gaps and stalls; accumulators of one
    18-bit digit (up to 17 bits: the ECP5's w4a4 layers) and of two."""
    lo_acc, hi_acc = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    m0 = [(1 << m_bits) - 1, 1 << (m_bits - 1), 1, 0, (1 << (m_bits // 2)) - 1, 1 << (m_bits // 2)]
    # the shift leaves the top 8 bits of the largest products: outputs across the range, so a wrong
    # piece shows (a shift of 20 had clamped most of them at m_bits 24)
    shift = acc_bits + m_bits - 8
    kwargs = dict(bias=[0] * 6, m0=m0, shift=[shift] * 6, zero_point=0, lo=-128, hi=127, out_bits=8, out_signed=True,
                  m_bits=m_bits, **how)
    beats = [[v] * 6 for v in (lo_acc, hi_acc, -1, 0, 1, lo_acc + 1, hi_acc // 3 + 7, lo_acc // 5 - 3)]
    dut = Requant(6, 6, acc_bits=acc_bits, **kwargs)
    got = run_stream(dut, beats, len(beats), gap_prob=0.3, stall_prob=0.4, seed=3)
    acc = np.array(beats)
    want = intops.requantize(acc, np.array(m0)[None, :], np.array([shift] * 6)[None, :], 0, -128, 127)
    assert got == want.tolist()
    assert len(np.unique(want)) > 8


@pytest.mark.parametrize("m_bits", [5, 16, 24])
@pytest.mark.parametrize("digit_bits", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("bias,zero_point", [(0, 0), (-(1 << 19), 127), ((1 << 19) - 1, -128)])
def test_shift_add_at_the_extremes(m_bits, digit_bits, bias, zero_point):
    """The right-shifting multiply's sum at its widest: the extreme accumulators times M0s of all
    ones (every digit its largest), one bit, none, and halves, with no offset and the extreme
    ones (bias, zero point: the multiply starts from the offset's low bits and adds its high
    part at the end), shifted so that the top of the product lands inside the 8-bit output (an
    overflow there is not hidden by the clamp)."""
    acc_bits = 20
    lo_acc, hi_acc = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    m0 = [(1 << m_bits) - 1, 1 << (m_bits - 1), 1, 0, (1 << (m_bits // 2)) - 1, ((1 << m_bits) - 1) ^ 1]
    shift = [acc_bits + m_bits - 8, acc_bits + m_bits - 8, 4, 0, acc_bits + m_bits // 2 - 8, acc_bits + m_bits - 8]
    # two folds of three lanes, the second the first reversed: the ROMs (M0 and the offset's low
    # part read ahead at the fold counter, its high part when a beat is taken) change every beat
    m0, shift = m0 + m0[::-1], shift + shift[::-1]
    biases = [bias] * 6 + [-bias // 2] * 6
    kwargs = dict(bias=biases, m0=m0, shift=shift, zero_point=zero_point, lo=-128, hi=127, out_bits=8,
                  out_signed=True, m_bits=m_bits, mode=RequantMode.SHIFT_ADD, digit_bits=digit_bits)
    values = (lo_acc, hi_acc, -1, 0, 1, lo_acc + 1, 12345, -54321, hi_acc - 1)
    beats = [[v] * 6 for v in values for _ in range(2)]
    dut = Requant(6, 12, acc_bits=acc_bits, **kwargs)
    got = run_stream(dut, beats, len(beats), gap_prob=0.3, stall_prob=0.4, seed=5)
    chan = (np.arange(len(beats))[:, None] % 2) * 6 + np.arange(6)[None, :]
    want = intops.requantize(np.array(beats) + np.array(biases)[chan], np.array(m0)[chan], np.array(shift)[chan],
                             zero_point, -128, 127)
    assert got == want.tolist()


@pytest.mark.parametrize("bits,width", [(1, 2), (5, 16), (16, 16), (17, 16), (21, 16), (25, 16), (40, 16),
                                        (20, 2), (33, 7), (12, 5)])
def test_signed_digits(bits, width):
    """Every digit fits ``width`` signed bits and the digits sum back to the value, for the
    extremes and random values (simulated)."""
    rng = np.random.default_rng(bits * 100 + width)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = [lo, hi, -1, 0, min(1, hi), lo + 1] + [int(v) for v in rng.integers(lo, hi + 1, 200)]
    m = Module()
    x = Signal(signed(bits))
    n = len(signed_digits(x, bits, width))
    digits = [Signal(signed(width), name=f"d{k}") for k in range(n)]
    wide = [Signal(signed(64), name=f"w{k}") for k in range(n)]
    m.d.comb += [d.eq(v) for d, v in zip(digits, signed_digits(x, bits, width))]
    m.d.comb += [w.eq(v) for w, v in zip(wide, signed_digits(x, bits, width))]
    sim = Simulator(m)
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(x, v)
            got.append(([ctx.get(d) for d in digits], [ctx.get(w) for w in wide]))
    sim.add_testbench(bench)
    sim.run()
    for v, (narrow, full) in zip(values, got):
        assert narrow == full, v                       # no digit needs more than `width` bits
        assert sum(d << (width * k) for k, d in enumerate(narrow)) == v


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40))
def test_csd_digits(constant):
    digits = csd_digits(constant)
    assert sum(sign << p for p, sign in digits) == constant
    positions = [p for p, _ in digits]
    assert all(b - a >= 2 for a, b in zip(positions, positions[1:]))     # no two adjacent: the fewest


def evaluate(make, acc_shape):
    """``make(acc)`` for every value of a signal of ``acc_shape``, in the simulator."""
    m = Module()
    acc = Signal(acc_shape)
    out = Signal(signed(64))
    m.d.comb += out.eq(make(acc))
    width = acc_shape.width
    values = range(-(1 << (width - 1)), 1 << (width - 1)) if acc_shape.signed else range(1 << width)
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(acc, v)
            got.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return list(values), got


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([RequantMode.MULTIPLY, RequantMode.SHIFT_ADD, RequantMode.THRESHOLDS]),
       st.integers(1, 9), st.booleans(), st.integers(0, (1 << 24) - 1), st.integers(0, 40), st.integers(1, 8),
       st.booleans(), st.sampled_from(["half_up", "half_even"]), st.data())
def test_requantize_modes(mode, acc_bits, acc_signed, m0, shift, out_bits, out_signed, rounding, data):
    """Every accumulator of the width: the combinational form equals ``intops.requantize``."""
    if data.draw(st.booleans()):              # shifts that spread the outputs over the range
        shift = max(0, min(62, m0.bit_length() + acc_bits - out_bits + data.draw(st.integers(-2, 2))))
    q_lo, q_hi = intops.qrange(out_bits, out_signed)
    lo = data.draw(st.integers(q_lo, q_hi))
    hi = data.draw(st.integers(lo, q_hi))
    zp = data.draw(st.integers(q_lo, q_hi))
    shape = signed(acc_bits) if acc_signed else unsigned(acc_bits)
    accs, got = evaluate(lambda acc: requantize(acc, m0, shift, zp, lo, hi, rounding, mode), shape)
    assert got == intops.requantize(accs, m0, shift, zp, lo, hi, rounding).tolist()


@pytest.mark.parametrize("constant", [0, 1, 2, 3, 7, 11, 0b1011011, (1 << 24) - 1, 12345678])
def test_const_multiply_shift_add(constant):
    accs, got = evaluate(lambda acc: const_multiply(acc, constant, RequantMode.SHIFT_ADD), signed(6))
    assert got == [a * constant for a in accs]


def test_const_multiply_wrong_mode():
    with pytest.raises(ValueError, match=r"^a constant multiply is MULTIPLY or SHIFT_ADD, not RequantMode.SEARCH$"):
        const_multiply(Signal(4), 3, RequantMode.SEARCH)


@pytest.mark.parametrize("mode", [RequantMode.MULTIPLY, RequantMode.SHIFT_ADD, RequantMode.THRESHOLDS])
def test_sim_avgpool_modes(mode):
    rng = np.random.default_rng(5)
    p = dict(zero_point=3, multiplier=11184811, shift=27, out_shape=unsigned(4), out_zero_point=2, lo=2, hi=15)
    dut = AvgPool(unsigned(4), window=3, channels=4, simd=2, requant=mode, **p)
    x = codes(rng, (6, 3 * 4), 4, False)
    got = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats(x.reshape(-1), 2), gap_prob=0.3, seed=1)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, 6 * 4 // 2, stall_prob=0.3, seed=2))

    simulate(dut, producer, consumer)
    want = avgpool_model(x, 4, 3, p["multiplier"], p["shift"], 2, 2, 15)
    assert unbeat(got).tolist() == want.reshape(-1).tolist()


def test_init_wrong_pool_and_add_modes():
    with pytest.raises(ValueError, match=r"^an average pool requantizes by MULTIPLY, SHIFT_ADD or THRESHOLDS, "
                                         r"not SEARCH$"):
        AvgPool(unsigned(4), window=3, channels=4, zero_point=0, multiplier=3, shift=2, out_shape=unsigned(4),
                out_zero_point=0, requant="search")
    with pytest.raises(ValueError, match=r"^Add multiplies by MULTIPLY or SHIFT_ADD, not RequantMode.THRESHOLDS$"):
        Add(signed(4), signed(4), signed(4), a_zero_point=0, b_zero_point=0, a_multiplier=3, b_multiplier=5,
            shift=2, out_zero_point=0, requant=RequantMode.THRESHOLDS)


def test_sim_add_shift_add():
    rng = np.random.default_rng(7)
    p = dict(a_zero_point=-3, b_zero_point=5, a_multiplier=13981013, b_multiplier=9786709, shift=24,
             out_zero_point=-1, lo=-8, hi=7)
    dut = Add(signed(5), unsigned(4), signed(4), simd=2, requant=RequantMode.SHIFT_ADD, **p)
    a, b = codes(rng, (24,), 5, True), codes(rng, (24,), 4, False)
    got = []

    async def put_a(ctx):
        await put_all(ctx, dut.a, beats(a, 2), gap_prob=0.3, seed=1)

    async def put_b(ctx):
        await put_all(ctx, dut.b, beats(b, 2), gap_prob=0.3, seed=2)

    async def consumer(ctx):
        got.extend(await get_all(ctx, dut.o, 12, stall_prob=0.3, seed=3))

    simulate(dut, put_a, put_b, consumer)
    want = add_model(a, b, -3, 5, p["a_multiplier"], p["b_multiplier"], 24, -1, -8, 7)
    assert unbeat(got).tolist() == want.tolist()
