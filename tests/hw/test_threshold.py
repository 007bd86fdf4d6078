# amaranth: UnusedElaboratable=no
"""Requantization by thresholds: the thresholds against ``intops.requantize`` (hypothesis), the
parallel and binary-search engines in the simulator under random gaps and stalls, and the MVAU
with every requantization mode against the Dense semantics."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.mac import Encoding, MacStyle
from qfab.hw.mvau import MVAU
from qfab.hw.requant import RequantMode
from qfab.hw.threshold import ThresholdRequant, requantize_int, thresholds

from .streams import stream_through
from .test_mvau import dense_model, make_layer, run_mvau
from .test_requant import first_and_spacing


@st.composite
def requant_case(draw, max_out_bits=8):
    """A requantization as the IR allows it: ``0 <= M0 < 2**m_bits``, ``0 <= n <= 62``, a zero
    point and a clamp within the output type, any bias, accumulators of ``acc_bits``."""
    m_bits = draw(st.sampled_from([4, 8, 16, 24]))
    out_bits = draw(st.integers(1, max_out_bits))
    out_signed = draw(st.booleans())
    q_lo, q_hi = intops.qrange(out_bits, out_signed)
    lo = draw(st.integers(q_lo, q_hi))
    hi = draw(st.integers(lo, q_hi))
    acc_bits = draw(st.integers(2, 24))
    m0 = draw(st.one_of(st.just(0), st.integers(0, (1 << m_bits) - 1)))
    # shifts near log2(M0 * 2**acc_bits / 2**out_bits) spread the outputs over the range
    centre = max(0, m0.bit_length() + acc_bits - out_bits)
    shift = draw(st.one_of(st.integers(0, 62), st.integers(max(0, centre - 4), min(62, centre + 4))))
    return dict(m0=m0, shift=shift, zero_point=draw(st.integers(q_lo, q_hi)), lo=lo, hi=hi,
                bias=draw(st.integers(-(1 << acc_bits), 1 << acc_bits)), acc_bits=acc_bits,
                out_bits=out_bits, out_signed=out_signed, m_bits=m_bits,
                rounding=draw(st.sampled_from(["half_up", "half_even"])))


def _reference(acc, case):
    return intops.requantize(np.asarray(acc, np.int64) + case["bias"], case["m0"], case["shift"],
                             case["zero_point"], case["lo"], case["hi"], case["rounding"])


@settings(max_examples=300, deadline=None)
@given(requant_case(), st.integers(0, 2**32))
def test_requantize_int(case, seed):
    acc = np.random.default_rng(seed).integers(-(1 << (case["acc_bits"] - 1)), 1 << (case["acc_bits"] - 1), 50)
    got = [requantize_int(int(a) + case["bias"], case["m0"], case["shift"], case["zero_point"], case["lo"],
                          case["hi"], case["rounding"]) for a in acc]
    assert got == _reference(acc, case).tolist()


@settings(max_examples=300, deadline=None)
@given(requant_case(), st.integers(0, 2**32))
def test_thresholds(case, seed):
    """``lo + #{t <= acc}`` is ``intops.requantize`` at every threshold, one below it, the ends of
    the accumulator range and random accumulators; so each threshold is the smallest accumulator
    of its level."""
    acc_lo, acc_hi = -(1 << (case["acc_bits"] - 1)), (1 << (case["acc_bits"] - 1)) - 1
    table = thresholds(case["m0"], case["shift"], case["zero_point"], case["lo"], case["hi"], acc_lo, acc_hi,
                       case["bias"], case["rounding"])
    assert len(table) == case["hi"] - case["lo"]
    assert table == sorted(table) and all(acc_lo <= t <= acc_hi + 1 for t in table)
    rng = np.random.default_rng(seed)
    probes = {acc_lo, acc_hi, *rng.integers(acc_lo, acc_hi + 1, 50).tolist()}
    probes |= {v for t in table for v in (t - 1, t) if acc_lo <= v <= acc_hi}
    probes = sorted(probes)
    got = [case["lo"] + sum(a >= t for t in table) for a in probes]
    assert got == _reference(probes, case).tolist()


def test_thresholds_examples():
    # y = clamp(round(acc / 4)) on 0..3: levels 1, 2, 3 from acc 2, 6, 10 (half rounds up)
    assert thresholds(1, 2, 0, 0, 3, -8, 20) == [2, 6, 10]
    assert thresholds(1, 2, 0, 0, 3, -8, 20, rounding="half_even") == [3, 6, 11]
    assert thresholds(1, 2, 0, 0, 3, -8, 7) == [2, 6, 8]              # level 3 never reached
    assert thresholds(0, 5, 2, 0, 3, -8, 7) == [-8, -8, 8]            # M0 = 0: always zp
    assert thresholds(3, 1, 0, 0, 3, -8, 7, bias=-1) == [2, 2, 3]    # round(3 * (acc - 1) / 2)
    with pytest.raises(ValueError, match=r"^m0 must be non-negative, not -1$"):
        thresholds(-1, 0, 0, 0, 3, -8, 7)


def _kwargs(**overrides):
    kwargs = dict(acc_bits=10, bias=[0, 0], m0=[1, 3], shift=[2, 4], zero_point=0, lo=-8, hi=7, out_bits=4,
                  out_signed=True)
    kwargs.update(overrides)
    return kwargs


def test_init():
    dut = ThresholdRequant(1, 2, **_kwargs())
    assert (dut.lanes, dut.channels, dut.mode, dut.latency, dut.interval) == (1, 2, RequantMode.THRESHOLDS, 3, 1)
    # each channel's table counts right for every accumulator of 10 bits (intops, not `thresholds`)
    accs = np.arange(-512, 512)
    for c, (m0, shift) in enumerate([(1, 2), (3, 4)]):
        table = np.array(dut.table[c])
        assert len(table) == 15
        want = intops.requantize(accs, m0, shift, 0, -8, 7)
        assert (-8 + (accs[:, None] >= table[None, :]).sum(axis=1)).tolist() == want.tolist()
        assert set(want.tolist()) == set(range(-8, 8))          # every level reached: each threshold matters
    dut = ThresholdRequant(2, 2, mode="search", **_kwargs())
    assert (dut.mode, dut.latency, dut.interval) == (RequantMode.SEARCH, 5, 4)
    assert len(dut.i.payload.as_value()) == 20 and len(dut.o.payload.as_value()) == 8


def test_init_wrong():
    with pytest.raises(ValueError, match=r"^ThresholdRequant computes THRESHOLDS or SEARCH, not "
                                         r"RequantMode.MULTIPLY$"):
        ThresholdRequant(1, 2, mode=RequantMode.MULTIPLY, **_kwargs())
    with pytest.raises(ValueError, match=r"^rounding must be 'half_up' or 'half_even', not 'up'$"):
        ThresholdRequant(1, 2, rounding="up", **_kwargs())
    with pytest.raises(ValueError, match=r"^lanes \(2\) must divide channels \(3\)$"):
        ThresholdRequant(2, 3, **_kwargs(bias=[0] * 3, m0=[1] * 3, shift=[0] * 3))
    with pytest.raises(ValueError, match=r"^m0 must be in 0 .. 2\*\*24 - 1, not -1$"):
        ThresholdRequant(1, 2, **_kwargs(m0=[1, -1]))


@st.composite
def engine_params(draw):
    mode = draw(st.sampled_from([RequantMode.THRESHOLDS, RequantMode.SEARCH]))
    lanes, folds = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    channels = lanes * folds
    cases = [draw(requant_case(max_out_bits=5 if mode is RequantMode.THRESHOLDS else 8)) for _ in range(channels)]
    first = cases[0]                                  # per-tensor: type, clamp, zero point, rounding
    return dict(mode=mode, lanes=lanes, channels=channels, acc_bits=first["acc_bits"],
                bias=[c["bias"] for c in cases], m0=[min(c["m0"], (1 << first["m_bits"]) - 1) for c in cases],
                shift=[c["shift"] for c in cases], zero_point=first["zero_point"], lo=first["lo"], hi=first["hi"],
                out_bits=first["out_bits"], out_signed=first["out_signed"], m_bits=first["m_bits"],
                rounding=first["rounding"], beats=draw(st.integers(1, 10)),
                gap_prob=draw(st.sampled_from([0.0, 0.3])), stall_prob=draw(st.sampled_from([0.0, 0.5])),
                seed=draw(st.integers(0, 999)))


@settings(max_examples=60, deadline=None)
@given(engine_params())
def test_sim(params):
    p = dict(params)
    beats, gap_prob, stall_prob, seed = (p.pop(k) for k in ("beats", "gap_prob", "stall_prob", "seed"))
    lanes, channels = p.pop("lanes"), p.pop("channels")
    dut = ThresholdRequant(lanes, channels, **p)
    rng = np.random.default_rng(seed)
    acc_lo, acc_hi = -(1 << (p["acc_bits"] - 1)), (1 << (p["acc_bits"] - 1)) - 1
    acc = rng.integers(acc_lo, acc_hi + 1, (beats, lanes))
    acc[rng.random(acc.shape) < 0.15] = acc_lo
    acc[rng.random(acc.shape) < 0.15] = acc_hi
    # accumulators on the thresholds, where an off-by-one shows
    table = dut.table
    folds = channels // lanes
    chan = (np.arange(beats)[:, None] % folds) * lanes + np.arange(lanes)[None, :]
    for (b, lane), c in np.ndenumerate(chan):
        if table[c] and rng.random() < 0.5:
            acc[b, lane] = min(max(table[c][rng.integers(len(table[c]))] - rng.integers(2), acc_lo), acc_hi)
    bias, m0, shift = (np.array(p[k])[chan] for k in ("bias", "m0", "shift"))
    expected = intops.requantize(acc + bias, m0, shift, p["zero_point"], p["lo"], p["hi"], p["rounding"])
    got = stream_through(dut, acc.tolist(), beats, gap_prob=gap_prob, stall_prob=stall_prob, seed=seed)
    assert got == expected.tolist()


@pytest.mark.parametrize("mode", [RequantMode.THRESHOLDS, RequantMode.SEARCH])
def test_sim_latency_and_interval(mode):
    dut = ThresholdRequant(2, 4, mode=mode, **_kwargs(bias=[1, 2, 3, 4], m0=[5, 1000, 3, 77], shift=[3, 9, 0, 6]))
    latency, spacing = first_and_spacing(dut, [[v, -v] for v in range(8)])
    assert (latency, spacing) == (dut.latency, {dut.interval})


MODES = [(RequantMode.MULTIPLY, 1), (RequantMode.SHIFT_ADD, 1), (RequantMode.SHIFT_ADD, 3),
         (RequantMode.THRESHOLDS, 1), (RequantMode.SEARCH, 1)]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(MODES), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4),
       st.integers(1, 2), st.integers(1, 6), st.booleans(), st.booleans(), st.sampled_from(list(MacStyle)),
       st.sampled_from([0.0, 0.4]), st.integers(0, 999), st.sampled_from(["none", "skid", "reserve"]))
def test_sim_mvau(mode, pe, simd, nf, sf, points, out_bits, out_signed, multipoint, style, stall_prob, seed, queue):
    """The MVAU with each requantization mode computes Dense exactly, under gaps and stalls
    (multi-cycle modes slow the unit down when its fold leaves too few cycles, never wrong), with
    the skid queue before the requantization, the reserved queue after a MAC array that never
    stalls, or neither."""
    mode, digit_bits = mode
    rng = np.random.default_rng(seed)
    n, k = pe * nf, simd * sf
    layer = make_layer(rng, points, n, k, 4, Encoding.SIGNED, 4, Encoding.UNSIGNED, multipoint, out_bits, out_signed)
    dut = MVAU(pe, simd, w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4, a_encoding=Encoding.UNSIGNED,
               out_bits=out_bits, out_signed=out_signed, m_bits=16, style=style, requant=mode,
               requant_digit_bits=digit_bits, skid=queue == "skid",
               reserve=queue == "reserve", **layer)
    assert dut.latency >= 2 + dut.requant_interval
    vectors = 2
    x = rng.integers(0, 16, (vectors, k))
    beats = [x[v, s * simd:(s + 1) * simd].tolist() for v in range(vectors) for s in range(sf)]
    got = run_mvau(dut, beats, vectors * nf, gap_prob=0.3 if stall_prob else 0.0, stall_prob=stall_prob, seed=seed)
    expected = dense_model(x, layer["in_zero_point"], layer["weights"], layer["point_multipliers"], layer["bias"],
                           layer["m0"], layer["shift"], layer["out_zero_point"], layer["lo"], layer["hi"])
    assert np.array(got).reshape(vectors, n).tolist() == expected.tolist()


@pytest.mark.parametrize("out_bits", [1, 2, 3, 4])
def test_search_every_accumulator(out_bits):
    """The tree search (both children of a node in one word, heap order) over every accumulator
    of an 8-bit width, two folds of two lanes, zero point and clamp inside the range, equals
    ``intops.requantize`` under stalls: every leaf and every threshold of every channel reached."""
    lo, hi = 0, (1 << out_bits) - 1
    kwargs = dict(acc_bits=8, bias=[0, 3, -2, 1], m0=[5, 7, 3, 11], shift=[4, 5, 3, 6], zero_point=1 % (hi + 1),
                  lo=lo, hi=hi, out_bits=out_bits, out_signed=False)
    dut = ThresholdRequant(2, 4, mode=RequantMode.SEARCH, **kwargs)
    accs = np.arange(-128, 128)
    beats = [[int(a), int(-a - 1)] for a in accs]
    chan = (np.arange(len(beats))[:, None] % 2) * 2 + np.arange(2)[None, :]
    bias, m0, shift = (np.array(kwargs[k])[chan] for k in ("bias", "m0", "shift"))
    expected = intops.requantize(np.array(beats) + bias, m0, shift, kwargs["zero_point"], lo, hi)
    assert len(np.unique(expected)) == hi - lo + 1                 # every output code occurs
    got = stream_through(dut, beats, len(beats), gap_prob=0.2, stall_prob=0.3, seed=out_bits)
    assert got == expected.tolist()
