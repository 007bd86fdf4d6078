# amaranth: UnusedElaboratable=no
"""VVAU against the depthwise Conv2d semantics (numpy, ``intops``): folds, types, both MAC styles,
weight memories, random input gaps and output stalls; and behind a real `SlidingWindow`."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.mac import Encoding, MacStyle
from qfab.hw.vvau import VVAU
from qfab.hw.weights import MemoryKind
from qfab.hw.window import SlidingWindow

from .dataflow_models import element_shape, simulate, windows_model
from .streams import get_all, put_all, stream_through


def depthwise_model(x, zx, w, bias, m0, shift, zy, lo, hi):
    """docs/semantics.md, Conv2d with groups = C, on windows: x (V, K, C), w (C, K)."""
    acc = bias[None, :] + np.einsum("ck,vkc->vc", w, x - zx)
    return intops.requantize(acc, m0, shift, zy, lo, hi)


def make_layer(rng, c, k, w_bits, w_enc, a_bits, a_enc, out_bits, out_signed):
    if w_enc is Encoding.BIPOLAR:
        w = 2 * rng.integers(0, 2, (c, k)) - 1
    else:
        w_lo, w_hi = intops.qrange(w_bits, w_enc is Encoding.SIGNED)
        w = rng.integers(w_lo, w_hi + 1, (c, k))
        w[rng.random(w.shape) < 0.2] = 0
    a_lo, a_hi = intops.qrange(a_bits, a_enc is Encoding.SIGNED)
    q_lo, q_hi = intops.qrange(out_bits, out_signed)
    lo = int(rng.integers(q_lo, q_hi + 1))
    hi = int(rng.integers(lo, q_hi + 1))
    bound = intops.acc_bound(k, max(abs(int(w.min())), abs(int(w.max())), 1), max(-a_lo, a_hi))
    m0, shift = zip(*(intops.dyadic(float(rng.uniform(0.5, 4.0)) * (1 << out_bits) / bound, m_bits=16)
                      for _ in range(c)))
    return dict(weights=w, bias=rng.integers(-bound // 4 - 1, bound // 4 + 1, c), m0=np.array(m0),
                shift=np.array(shift), in_zero_point=int(rng.integers(a_lo, a_hi + 1)),
                out_zero_point=int(rng.integers(q_lo, q_hi + 1)), lo=lo, hi=hi)


def window_beats(x, pe):
    """Windows ``(V, K, C)`` as the sliding window sends them: (k, channel fold) beats of ``pe``."""
    v, k, c = x.shape
    return [x[n, p, f * pe:(f + 1) * pe].tolist() for n in range(v) for p in range(k) for f in range(c // pe)]


def check_vvau(pe, simd, cf, kf, windows, w_bits, w_enc, a_bits, a_enc, out_bits, out_signed, style,
               use_dsp, memory, gap_prob, stall_prob, seed, multiply=None):
    rng = np.random.default_rng(seed)
    c, k = pe * cf, simd * kf
    layer = make_layer(rng, c, k, w_bits, w_enc, a_bits, a_enc, out_bits, out_signed)
    dut = VVAU(pe, simd, w_bits=w_bits, w_encoding=w_enc, a_bits=a_bits, a_encoding=a_enc, out_bits=out_bits,
               out_signed=out_signed, m_bits=16, style=style, use_dsp=use_dsp, weight_memory=memory,
               **(multiply or {}), **layer)
    a_lo, a_hi = intops.qrange(a_bits, a_enc is Encoding.SIGNED)
    x = rng.integers(a_lo, a_hi + 1, (windows, k, c))

    async def load(ctx):
        if memory is MemoryKind.SPRAM:
            await put_all(ctx, dut.load, dut.load_words, gap_prob=gap_prob, seed=seed + 2)

    got = stream_through(dut, window_beats(x, pe), windows * cf, gap_prob=gap_prob, stall_prob=stall_prob,
                         seed=seed, before=load)
    expected = depthwise_model(x, layer["in_zero_point"], layer["weights"], layer["bias"], layer["m0"],
                               layer["shift"], layer["out_zero_point"], layer["lo"], layer["hi"])
    assert np.array(got).reshape(windows, c).tolist() == expected.tolist()


@st.composite
def vvau_params(draw):
    style = draw(st.sampled_from(list(MacStyle)))
    w_enc = draw(st.sampled_from(list(Encoding)))
    w_bits = 1 if w_enc is Encoding.BIPOLAR else draw(st.integers(1, 8))
    return dict(pe=draw(st.integers(1, 3)), simd=draw(st.integers(1, 3)), cf=draw(st.integers(1, 3)),
                kf=draw(st.integers(1, 3)), windows=draw(st.integers(1, 3)), w_bits=w_bits, w_enc=w_enc,
                a_bits=draw(st.integers(1, 8)), a_enc=draw(st.sampled_from([Encoding.UNSIGNED, Encoding.SIGNED])),
                out_bits=draw(st.integers(1, 8)), out_signed=draw(st.booleans()), style=style,
                use_dsp=style is MacStyle.BIT_PARALLEL and draw(st.booleans()),
                memory=draw(st.sampled_from(list(MemoryKind))), gap_prob=draw(st.sampled_from([0.0, 0.3])),
                stall_prob=draw(st.sampled_from([0.0, 0.4])), seed=draw(st.integers(0, 999)),
                multiply=draw(st.sampled_from([None, {"split_multiply": True}, {"dsp_width": 16}, {"dsp_width": 8}])))


def _layer_kwargs(**overrides):
    kwargs = dict(weights=[[1, 2, 3, 4], [0, 1, 0, 1]], w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4,
                  a_encoding=Encoding.UNSIGNED, bias=[0, 0], m0=[1, 1], shift=[0, 0], out_zero_point=0, lo=0,
                  hi=255, out_bits=8, out_signed=False)
    kwargs.update(overrides)
    return kwargs


def test_init():
    dut = VVAU(2, 2, **_layer_kwargs())
    assert (dut.pe, dut.simd, dut.channels, dut.positions) == (2, 2, 2, 4)
    assert dut.cycles_per_window == 4                       # the input: 4 positions x 1 channel fold
    assert len(dut.i.payload.as_value()) == 8 and len(dut.o.payload.as_value()) == 16
    serial = VVAU(1, 4, style=MacStyle.BIT_SERIAL, **_layer_kwargs())
    assert serial.cycles_per_window == 2 * 1 * 4            # 2 channel folds x 1 position fold x 4 bits


def test_init_wrong_folding():
    with pytest.raises(ValueError, match=r"^pe \(3\) must divide the number of channels \(2\)$"):
        VVAU(3, 1, **_layer_kwargs())
    with pytest.raises(ValueError, match=r"^simd \(3\) must divide the number of window positions \(4\)$"):
        VVAU(1, 3, **_layer_kwargs())
    with pytest.raises(TypeError, match=r"^simd must be a positive integer, not 0$"):
        VVAU(1, 0, **_layer_kwargs())


def test_init_wrong_layer():
    with pytest.raises(ValueError, match=r"^weights must have shape \(2, 4\)$"):
        VVAU(1, 1, **_layer_kwargs(weights=[[1, 2, 3, 4], [0, 1, 0]]))
    with pytest.raises(ValueError, match=r"^weight 9 is outside \[-8, 7\]$"):
        VVAU(1, 1, **_layer_kwargs(weights=[[9, 2, 3, 4], [0, 1, 0, 1]]))
    with pytest.raises(ValueError, match=r"^bias must have shape \(2,\)$"):
        VVAU(1, 1, **_layer_kwargs(bias=[1, 2, 3]))
    with pytest.raises(ValueError, match=r"^in_zero_point 16 is outside \[0, 15\]$"):
        VVAU(1, 1, **_layer_kwargs(in_zero_point=16))
    with pytest.raises(ValueError, match=r"^VVAU inputs are unsigned or signed codes, not <Encoding.BIPOLAR"):
        VVAU(1, 1, **_layer_kwargs(a_bits=1, a_encoding=Encoding.BIPOLAR))


@pytest.mark.parametrize("style", list(MacStyle))
@pytest.mark.parametrize("pe,simd,cf,kf", [(1, 1, 1, 9), (2, 1, 3, 4), (3, 3, 2, 3), (1, 2, 4, 2), (4, 9, 1, 1)])
def test_sim_rate(style, pe, simd, cf, kf):
    """Back-to-back windows: one every max(K * C / PE, (C / PE) * (K / SIMD) * b) cycles."""
    rng = np.random.default_rng(5)
    c, k = pe * cf, simd * kf
    layer = make_layer(rng, c, k, 3, Encoding.SIGNED, 3, Encoding.UNSIGNED, 8, False)
    dut = VVAU(pe, simd, w_bits=3, w_encoding=Encoding.SIGNED, a_bits=3, a_encoding=Encoding.UNSIGNED,
               out_bits=8, out_signed=False, m_bits=16, style=style, **layer)
    windows = 6
    x = rng.integers(0, 8, (windows, k, c))
    cycles = []

    async def producer(ctx):
        await put_all(ctx, dut.i, window_beats(x, pe))

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = 0
        while len(cycles) < windows * cf:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                cycles.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    firsts = cycles[::cf]
    intervals = [b - a for a, b in zip(firsts, firsts[1:])]
    assert intervals == [dut.cycles_per_window] * (windows - 1)


@settings(max_examples=40, deadline=None)
@given(vvau_params())
def test_sim(params):
    check_vvau(**params)


@settings(max_examples=12, deadline=None)
@given(pe_div=st.integers(1, 3), simd=st.integers(1, 3), seed=st.integers(0, 999),
       style=st.sampled_from(list(MacStyle)), stall_prob=st.sampled_from([0.0, 0.4]))
def test_sim_behind_window(pe_div, simd, seed, style, stall_prob):
    """A `SlidingWindow` (padding with the zero point) feeding a VVAU is a depthwise convolution:
    every output element of a whole feature map, under input gaps and output stalls."""
    rng = np.random.default_rng(seed)
    c = 6
    pe = [1, 2, 6][pe_div - 1]
    kh, kw = [(3, 3), (3, 1), (1, 3)][seed % 3] if simd != 2 else (2, 3)
    h, w = int(rng.integers(kh, 6)), int(rng.integers(kw, 6))
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = tuple(int(rng.integers(0, d)) for d in (kh, kw, kh, kw))
    k = kh * kw
    simd = simd if k % simd == 0 else 1
    layer = make_layer(rng, c, k, 4, Encoding.SIGNED, 4, Encoding.UNSIGNED, 4, False)
    a_shape = element_shape(4, False)
    x = rng.integers(0, 16, (2, h, w, c))

    top = Module()
    top.submodules.window = window = SlidingWindow(a_shape, height=h, width=w, channels=c, kernel=(kh, kw),
                                                   stride=stride, padding=padding,
                                                   pad_value=layer["in_zero_point"], simd=pe)
    top.submodules.vvau = vvau = VVAU(pe, simd, w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4,
                                      a_encoding=Encoding.UNSIGNED, out_bits=4, out_signed=False, m_bits=16,
                                      style=style, **layer)
    wiring.connect(top, window.o, vvau.i)
    ho, wo = window.output_size
    got = []

    async def producer(ctx):
        await put_all(ctx, window.i, [x[n, y, xx, f * pe:(f + 1) * pe].tolist() for n in range(2)
                                      for y in range(h) for xx in range(w) for f in range(c // pe)],
                      gap_prob=0.2, seed=seed)

    async def consumer(ctx):
        got.extend(await get_all(ctx, vvau.o, 2 * ho * wo * c // pe, stall_prob=stall_prob, seed=seed + 1))

    simulate(top, producer, consumer)
    win = np.stack([windows_model(x[n], (kh, kw), stride, padding, layer["in_zero_point"]) for n in range(2)])
    win = win.reshape(2 * ho * wo, k, c)
    expected = depthwise_model(win, layer["in_zero_point"], layer["weights"], layer["bias"], layer["m0"],
                               layer["shift"], layer["out_zero_point"], layer["lo"], layer["hi"])
    assert np.array(got).reshape(2 * ho * wo, c).tolist() == expected.tolist()
