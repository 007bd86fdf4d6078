# amaranth: UnusedElaboratable=no
"""MVAU against the Dense semantics (numpy, ``intops``): folding, points, types, both styles."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from qfab.compiler import intops
from qfab.hw.mac import Encoding, MacStyle
from qfab.hw.mvau import MVAU
from qfab.hw.weights import MemoryKind

from .streams import put_all, stream_through


def dense_model(x, zx, w, mult, bias, m0, shift, zy, lo, hi):
    """docs/semantics.md, Dense: x (V, K), w (P, N, K), mult (P, N)."""
    acc = bias[None, :] + np.einsum("pn,pnk,vk->vn", mult, w, x - zx)
    return intops.requantize(acc, m0, shift, zy, lo, hi)


def make_layer(rng, points, n, k, w_bits, w_enc, a_bits, a_enc, multipoint, out_bits,
               out_signed):
    if w_enc is Encoding.BIPOLAR:
        w = 2 * rng.integers(0, 2, (points, n, k)) - 1
    else:
        w_lo, w_hi = intops.qrange(w_bits, w_enc is Encoding.SIGNED)
        w = rng.integers(w_lo, w_hi + 1, (points, n, k))
        w[rng.random(w.shape) < 0.2] = 0
    a_lo, a_hi = intops.qrange(a_bits, a_enc is Encoding.SIGNED)
    mult = rng.integers(-40, 41, (points, n)) if multipoint else np.ones((points, n), int)
    q_lo, q_hi = intops.qrange(out_bits, out_signed)
    lo = int(rng.integers(q_lo, q_hi + 1))
    hi = int(rng.integers(lo, q_hi + 1))
    bound = intops.acc_bound(k, max(abs(w.min()), abs(w.max()), 1), max(-a_lo, a_hi),
                             points=points, m_max=int(np.abs(mult).max()))
    # M0 / 2**n ~ 2**out_bits / bound, so outputs spread over the range (the bound is 0 when every
    # point multiplier drawn is 0)
    m0, shift = zip(*(intops.dyadic(float(rng.uniform(0.5, 4.0)) * (1 << out_bits) / max(bound, 1),
                                    m_bits=16) for _ in range(n)))
    return dict(weights=w, point_multipliers=mult,
                bias=rng.integers(-bound // 4 - 1, bound // 4 + 1, n), m0=np.array(m0),
                shift=np.array(shift), in_zero_point=int(rng.integers(a_lo, a_hi + 1)),
                out_zero_point=int(rng.integers(q_lo, q_hi + 1)), lo=lo, hi=hi)


def run_mvau(dut, beats, count, *, gap_prob=0.0, stall_prob=0.0, seed=0, load=None):
    """``stream_through`` the MVAU; with ``reserve``, also check every cycle that the MAC array
    never offers a dot product the queue after it cannot take (it would be lost: the array's
    enable is constant)."""
    async def load_weights(ctx):
        if load is not None:
            await put_all(ctx, dut.load, load, gap_prob=gap_prob, seed=seed + 2)

    units = [u for u in (dut._copies or [dut]) if u._queue is not None]      # pixels: each copy's

    async def watch_queue(ctx):
        cycle = 0
        signals = [s for u in units for s in (u._mac.o.valid, u._queue.w_rdy)]
        async for _, _, *values in ctx.tick().sample(*signals):
            for j in range(len(units)):
                valid, room = values[2 * j], values[2 * j + 1]
                assert room or not valid, f"cycle {cycle}: a dot product offered to a full queue (unit {j})"
            cycle += 1

    return stream_through(dut, beats, count, gap_prob=gap_prob, stall_prob=stall_prob, seed=seed,
                          before=load_weights, monitor=watch_queue if units else None)


def check_mvau(pe, simd, nf, sf, points, vectors, w_bits, w_enc, a_bits, a_enc, multipoint,
               out_bits, out_signed, style, use_dsp, memory, gap_prob, stall_prob, seed, fetch_register=False,
               tree_registers=1, skid=False, reserve=False):
    rng = np.random.default_rng(seed)
    n, k = pe * nf, simd * sf
    layer = make_layer(rng, points, n, k, w_bits, w_enc, a_bits, a_enc, multipoint, out_bits,
                       out_signed)
    dut = MVAU(pe, simd, w_bits=w_bits, w_encoding=w_enc, a_bits=a_bits, a_encoding=a_enc,
               out_bits=out_bits, out_signed=out_signed, m_bits=16, style=style,
               use_dsp=use_dsp, weight_memory=memory, fetch_register=fetch_register,
               tree_registers=tree_registers, skid=skid, reserve=reserve, **layer)
    a_lo, a_hi = intops.qrange(a_bits, a_enc is Encoding.SIGNED)
    x = rng.integers(a_lo, a_hi + 1, (vectors, k))
    beats = [x[v, s * simd:(s + 1) * simd].tolist() for v in range(vectors) for s in range(sf)]
    load = dut.load_words if memory is MemoryKind.SPRAM else None
    got = run_mvau(dut, beats, vectors * nf, gap_prob=gap_prob, stall_prob=stall_prob,
                   seed=seed, load=load)
    expected = dense_model(x, layer["in_zero_point"], layer["weights"],
                           layer["point_multipliers"], layer["bias"], layer["m0"],
                           layer["shift"], layer["out_zero_point"], layer["lo"], layer["hi"])
    assert np.array(got).reshape(vectors, n).tolist() == expected.tolist()


@st.composite
def mvau_params(draw):
    style = draw(st.sampled_from(list(MacStyle)))
    w_enc = draw(st.sampled_from(list(Encoding)))
    w_bits = 1 if w_enc is Encoding.BIPOLAR else draw(st.integers(1, 8))
    a_enc = draw(st.sampled_from([Encoding.UNSIGNED, Encoding.SIGNED]))
    return dict(pe=draw(st.integers(1, 3)), simd=draw(st.integers(1, 3)),
                nf=draw(st.integers(1, 3)), sf=draw(st.integers(1, 3)),
                points=draw(st.integers(1, 3)), vectors=draw(st.integers(1, 3)),
                w_bits=w_bits, w_enc=w_enc, a_bits=draw(st.integers(1, 8)), a_enc=a_enc,
                multipoint=draw(st.booleans()), out_bits=draw(st.integers(1, 8)),
                out_signed=draw(st.booleans()), style=style,
                use_dsp=style is MacStyle.BIT_PARALLEL and draw(st.booleans()),
                memory=draw(st.sampled_from(list(MemoryKind))),
                gap_prob=draw(st.sampled_from([0.0, 0.3])),
                stall_prob=draw(st.sampled_from([0.0, 0.4])), seed=draw(st.integers(0, 999)),
                fetch_register=draw(st.booleans()), tree_registers=draw(st.integers(1, 3)),
                **draw(st.sampled_from([{}, {"skid": True}, {"reserve": True}])))


def _layer_kwargs(**overrides):
    kwargs = dict(weights=[[[1, 2, 3, 4], [0, 1, 0, 1]]], w_bits=4, w_encoding=Encoding.SIGNED,
                  a_bits=4, a_encoding=Encoding.UNSIGNED, bias=[0, 0], m0=[1, 1], shift=[0, 0],
                  out_zero_point=0, lo=0, hi=255, out_bits=8, out_signed=False)
    kwargs.update(overrides)
    return kwargs


def test_init():
    dut = MVAU(2, 2, **_layer_kwargs())
    assert (dut.pe, dut.simd, dut.points, dut.cycles_per_vector) == (2, 2, 1, 2)
    assert len(dut.i.payload.as_value()) == 8 and len(dut.o.payload.as_value()) == 16
    serial = MVAU(1, 4, style=MacStyle.BIT_SERIAL, **_layer_kwargs())
    assert serial.cycles_per_vector == 2 * 4


def test_init_wrong_folding():
    with pytest.raises(ValueError, match=r"^pe \(3\) must divide the number of outputs \(2\)$"):
        MVAU(3, 1, **_layer_kwargs())
    with pytest.raises(ValueError, match=r"^simd \(3\) must divide the number of inputs \(4\)$"):
        MVAU(1, 3, **_layer_kwargs())
    with pytest.raises(TypeError, match=r"^pe must be a positive integer, not 0$"):
        MVAU(0, 1, **_layer_kwargs())


def test_init_wrong_layer():
    with pytest.raises(ValueError, match=r"^weights must have shape \(1, 2, 4\)$"):
        MVAU(1, 1, **_layer_kwargs(weights=[[[1, 2, 3, 4], [0, 1, 0]]]))
    with pytest.raises(ValueError, match=r"^weight 9 is outside \[-8, 7\]$"):
        MVAU(1, 1, **_layer_kwargs(weights=[[[9, 2, 3, 4], [0, 1, 0, 1]]]))
    with pytest.raises(ValueError, match=r"^point_multipliers must have shape \(1, 2\)$"):
        MVAU(1, 1, **_layer_kwargs(point_multipliers=[[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"^in_zero_point 16 is outside \[0, 15\]$"):
        MVAU(1, 1, **_layer_kwargs(in_zero_point=16))
    with pytest.raises(ValueError,
                       match=r"^MVAU inputs are unsigned or signed codes, not bipolar$"):
        MVAU(1, 1, **_layer_kwargs(a_bits=1, a_encoding=Encoding.BIPOLAR))


def _vector_intervals(pe, simd, nf, sf, points, vectors=6, mvau=None, **options):
    """Cycles between the first output beats of back-to-back vectors (3-bit layer, output always
    ready), the unit's ``cycles_per_vector`` and its ``queue_depth``."""
    rng = np.random.default_rng(5)
    layer = make_layer(rng, points, pe * nf, simd * sf, 3, Encoding.SIGNED, 3,
                       Encoding.UNSIGNED, points > 1, 8, False)
    dut = (mvau or MVAU)(pe, simd, w_bits=3, w_encoding=Encoding.SIGNED, a_bits=3,
                         a_encoding=Encoding.UNSIGNED, out_bits=8, out_signed=False, m_bits=16, **options, **layer)
    x = rng.integers(0, 8, (vectors, simd * sf))
    cycles = []

    async def producer(ctx):
        await put_all(ctx, dut.i, [x[v, s * simd:(s + 1) * simd].tolist()
                                   for v in range(vectors) for s in range(sf)])

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = 0
        while len(cycles) < vectors * nf:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                cycles.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    firsts = cycles[::nf]
    return [b - a for a, b in zip(firsts, firsts[1:])], dut.cycles_per_vector, dut.queue_depth


@pytest.mark.parametrize("style", list(MacStyle))
@pytest.mark.parametrize("pe,simd,nf,sf,points", [
    (2, 3, 1, 1, 1), (2, 2, 3, 4, 1), (1, 2, 2, 3, 2), (4, 1, 1, 5, 3), (3, 2, 2, 1, 2),
])
@pytest.mark.parametrize("fetch_register", [False, True])
@pytest.mark.parametrize("queue", ["none", "skid", "reserve"])
def test_sim_rate(style, pe, simd, nf, sf, points, fetch_register, queue):
    """Back-to-back vectors: one every P * (N / PE) * (K / SIMD) cycles (times a_bits), with or
    without the second fetch register, the skid queue or the reserved queue."""
    intervals, period, _ = _vector_intervals(pe, simd, nf, sf, points, style=style, fetch_register=fetch_register,
                                          skid=queue == "skid", reserve=queue == "reserve")
    assert intervals == [period] * (len(intervals))


class _ShallowQueue(MVAU):
    """An MVAU whose reserved queue is one entry shorter than `queue_depth` says it needs."""
    @property
    def queue_depth(self):
        return max(1, super().queue_depth - 1)


@pytest.mark.parametrize("style", list(MacStyle))
@pytest.mark.parametrize("sf", [1, 2])
@pytest.mark.parametrize("fetch_register,tree_registers", [(False, 1), (True, 1), (False, 3), (True, 3)])
def test_reserve_depth_is_just_enough(style, sf, fetch_register, tree_registers):
    """The reserved queue's `queue_depth` keeps the unit at full rate, and one entry fewer does
    not (where the depth is more than one), for every round trip the options make."""
    options = dict(style=style, fetch_register=fetch_register, tree_registers=tree_registers, reserve=True)
    intervals, period, depth = _vector_intervals(2, 3, 1, sf, 1, vectors=10, **options)
    assert intervals == [period] * len(intervals)
    if depth > 1:
        slower, _, _ = _vector_intervals(2, 3, 1, sf, 1, vectors=10, mvau=_ShallowQueue, **options)
        assert max(slower) > period


@pytest.mark.parametrize("style", list(MacStyle))
@pytest.mark.parametrize("pe,simd,nf,sf,points,fetch_register", [
    (2, 3, 2, 1, 1, False), (3, 2, 2, 1, 2, True), (1, 2, 3, 2, 1, False), (2, 1, 2, 3, 3, True),
])
def test_sim_reserve_under_stalls(style, pe, simd, nf, sf, points, fetch_register):
    """With ``reserve`` the MAC array never stalls: under a consumer that stalls most cycles the
    queue after it never overflows (checked every cycle) and every output is exact."""
    check_mvau(pe, simd, nf, sf, points, 3, 4, Encoding.SIGNED, 4, Encoding.UNSIGNED, points > 1, 6,
               True, style, False, MemoryKind.AUTO, 0.2, 0.7, 11, fetch_register=fetch_register,
               reserve=True)


def test_reserve_or_skid():
    with pytest.raises(ValueError, match=r"^skid and reserve are two kinds of queue after the MAC array: "
                                         r"ask for one$"):
        MVAU(1, 1, skid=True, reserve=True, **_layer_kwargs())


def test_sim_zero_weights_fold_away():
    """A layer of zero weights gives zy + round_shift(b * M0) for every input."""
    layer = _layer_kwargs(weights=[[[0] * 4, [0] * 4]], bias=[100, -7], m0=[3, 5], shift=[2, 1],
                          out_zero_point=10, lo=0, hi=255)
    dut = MVAU(2, 4, in_zero_point=3, **layer)
    assert run_mvau(dut, [[1, 2, 3, 4], [15, 0, 15, 0]], 2) == [[85, 0], [85, 0]]


@settings(max_examples=50, deadline=None)
@given(mvau_params())
def test_sim(params):
    check_mvau(**params)


def test_init_pixels():
    dut = MVAU(2, 4, pixels=3, **_layer_kwargs())
    assert dut.pixels == 3 and dut.cycles_per_vector == 1
    assert len(dut.i.payload) == 12 and len(dut.o.payload) == 6
    with pytest.raises(ValueError, match=r"^pixels > 1 needs a fully unfolded unit \(pe = 2, simd = 4\), "
                                         r"not pe = 1, simd = 4$"):
        MVAU(1, 4, pixels=2, **_layer_kwargs())
    with pytest.raises(ValueError, match="run-time loaded SPRAM"):
        MVAU(2, 4, pixels=2, weight_memory=MemoryKind.SPRAM, **_layer_kwargs())
    with pytest.raises(TypeError, match=r"^pixels must be a positive integer, not 0$"):
        MVAU(2, 4, pixels=0, **_layer_kwargs())


@pytest.mark.parametrize("pixels,points,style,stall,reserve", [
    (2, 1, MacStyle.BIT_PARALLEL, 0.0, False), (3, 2, MacStyle.BIT_PARALLEL, 0.4, False),
    (2, 1, MacStyle.BIT_SERIAL, 0.4, False), (4, 1, MacStyle.BIT_PARALLEL, 0.4, False),
    (3, 2, MacStyle.BIT_PARALLEL, 0.7, True), (2, 1, MacStyle.BIT_SERIAL, 0.7, True)])
def test_sim_pixels(pixels, points, style, stall, reserve):
    """``pixels`` vectors per beat, every output element against the Dense semantics, under input
    gaps and output stalls (with ``reserve``, each copy's queue never offered a dot product it has
    no room for); at full rate one beat per ``cycles_per_vector`` cycles."""
    rng = np.random.default_rng(pixels * 10 + points)
    n, k, beats_n = 3, 5, 6
    layer = make_layer(rng, points, n, k, 4, Encoding.SIGNED, 4, Encoding.UNSIGNED, points > 1, 4, False)
    dut = MVAU(n, k, pixels=pixels, w_bits=4, w_encoding=Encoding.SIGNED, a_bits=4, a_encoding=Encoding.UNSIGNED,
               out_bits=4, out_signed=False, m_bits=16, style=style, reserve=reserve, **layer)
    x = rng.integers(0, 16, (beats_n * pixels, k))
    beats = [x[b * pixels:(b + 1) * pixels].reshape(-1).tolist() for b in range(beats_n)]
    got = run_mvau(dut, beats, beats_n, gap_prob=stall / 2, stall_prob=stall, seed=pixels)
    expected = dense_model(x, layer["in_zero_point"], layer["weights"], layer["point_multipliers"],
                           layer["bias"], layer["m0"], layer["shift"], layer["out_zero_point"],
                           layer["lo"], layer["hi"])
    assert np.array(got).reshape(beats_n * pixels, n).tolist() == expected.tolist()
