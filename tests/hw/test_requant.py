# amaranth: UnusedElaboratable=no
"""Requant against ``intops.requantize``, channel by channel, under backpressure."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.requant import Requant

from .streams import stream_through


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

    return dict(lanes=lanes, channels=channels, acc_bits=acc_bits, m_bits=m_bits,
                bias=draw(ints(-(1 << acc_bits), 1 << acc_bits)),
                m0=draw(ints(0, (1 << m_bits) - 1)), shift=draw(ints(0, 40)),
                zero_point=draw(st.integers(q_lo, q_hi)), lo=lo, hi=hi, out_bits=out_bits,
                out_signed=out_signed, beats=draw(st.integers(1, 12)),
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
                                 kwargs["hi"])
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
