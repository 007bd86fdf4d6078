# amaranth: UnusedElaboratable=no
"""MAC arrays against a numpy dot product: every style, width, encoding and folding."""

import numpy as np
import pytest
from amaranth.hdl import unsigned
from hypothesis import given, settings, strategies as st

from qfab.hw.mac import Encoding, MacArray, MacStyle

from .streams import stream_through


def _codes(rng, bits, encoding, shape):
    """Random codes (as stored on the wire) and the integer values they stand for."""
    if encoding is Encoding.BIPOLAR:
        codes = rng.integers(0, 2, shape)
        return codes, 2 * codes - 1
    if encoding is Encoding.SIGNED:
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape)
    else:
        codes = rng.integers(0, 1 << bits, shape)
    return codes, codes


def run_mac(dut, payloads, count, *, gap_prob=0.0, stall_prob=0.0, precision=None, seed=0):
    async def set_precision(ctx):
        if precision is not None:
            ctx.set(dut.precision, precision)

    return stream_through(dut, payloads, count, gap_prob=gap_prob, stall_prob=stall_prob, seed=seed,
                          before=set_precision)


def check_mac(pe, simd, beats, vectors, w_bits, w_enc, a_bits, a_enc, style, use_dsp,
              gap_prob, stall_prob, seed, precision=None, tree_registers=1):
    dut = MacArray(pe, simd, w_bits=w_bits, w_encoding=w_enc, a_bits=a_bits, a_encoding=a_enc,
                   beats=beats, style=style, use_dsp=use_dsp, tree_registers=tree_registers)
    rng = np.random.default_rng(seed)
    w_codes, w_vals = _codes(rng, w_bits, w_enc, (vectors, beats, pe, simd))
    a_bits_used = a_bits if precision is None else precision
    a_codes, a_vals = _codes(rng, a_bits_used, a_enc, (vectors, beats, simd))
    payloads = [{"w": w_codes[v, b].tolist(), "a": a_codes[v, b].tolist()}
                for v in range(vectors) for b in range(beats)]
    expected = np.einsum("vbps,vbs->vp", w_vals, a_vals).tolist()
    got = run_mac(dut, payloads, vectors, gap_prob=gap_prob, stall_prob=stall_prob,
                  precision=precision, seed=seed)
    assert got == expected


ENCODINGS = st.sampled_from([Encoding.UNSIGNED, Encoding.SIGNED, Encoding.BIPOLAR])


@st.composite
def mac_params(draw):
    style = draw(st.sampled_from(list(MacStyle)))
    w_enc = draw(ENCODINGS)
    w_bits = 1 if w_enc is Encoding.BIPOLAR else draw(st.integers(1, 8))
    a_choices = [Encoding.UNSIGNED, Encoding.SIGNED]
    if style is MacStyle.BIT_PARALLEL:
        a_choices.append(Encoding.BIPOLAR)
    a_enc = draw(st.sampled_from(a_choices))
    a_bits = 1 if a_enc is Encoding.BIPOLAR else draw(st.integers(1, 8))
    use_dsp = style is MacStyle.BIT_PARALLEL and draw(st.booleans())
    precision = draw(st.integers(1, a_bits)) if style is MacStyle.BIT_SERIAL else None
    return dict(pe=draw(st.integers(1, 3)), simd=draw(st.integers(1, 5)),
                beats=draw(st.integers(1, 3)), vectors=draw(st.integers(1, 4)),
                w_bits=w_bits, w_enc=w_enc, a_bits=a_bits, a_enc=a_enc, style=style,
                use_dsp=use_dsp, precision=precision, tree_registers=draw(st.integers(1, 3)),
                gap_prob=draw(st.sampled_from([0.0, 0.3])),
                stall_prob=draw(st.sampled_from([0.0, 0.4])), seed=draw(st.integers(0, 1000)))


def test_init():
    dut = MacArray(4, 8, w_bits=2, w_encoding=Encoding.SIGNED, a_bits=3,
                   a_encoding=Encoding.UNSIGNED, beats=16)
    assert (dut.pe, dut.simd, dut.beats, dut.style) == (4, 8, 16, MacStyle.BIT_PARALLEL)
    # |dot| <= 16 * 8 * 2 * 7 = 1792 -> 12 bits signed
    assert dut.acc_bits == 12
    assert len(dut.o.payload.as_value()) == 4 * 12
    assert not hasattr(dut, "precision")
    serial = MacArray(1, 1, w_bits=1, w_encoding=Encoding.BIPOLAR, a_bits=8,
                      a_encoding=Encoding.SIGNED, beats=1, style=MacStyle.BIT_SERIAL)
    assert serial.precision.shape() == unsigned(4) and serial.precision.init == 8


def test_init_wrong_pe():
    with pytest.raises(TypeError, match=r"^pe must be a positive integer, not 0$"):
        MacArray(0, 1, w_bits=1, w_encoding=Encoding.UNSIGNED, a_bits=1,
                 a_encoding=Encoding.UNSIGNED, beats=1)


def test_init_wrong_bits():
    with pytest.raises(ValueError, match=r"^w_bits must be an integer from 1 to 8, not 9$"):
        MacArray(1, 1, w_bits=9, w_encoding=Encoding.UNSIGNED, a_bits=1,
                 a_encoding=Encoding.UNSIGNED, beats=1)
    with pytest.raises(ValueError, match=r"^a bipolar w code has 1 bit, not 2$"):
        MacArray(1, 1, w_bits=2, w_encoding=Encoding.BIPOLAR, a_bits=1,
                 a_encoding=Encoding.UNSIGNED, beats=1)
    with pytest.raises(TypeError, match=r"^a_encoding must be an Encoding, not True$"):
        MacArray(1, 1, w_bits=2, w_encoding=Encoding.SIGNED, a_bits=1, a_encoding=True, beats=1)


def test_init_wrong_style():
    with pytest.raises(ValueError, match=r"^a bit-serial MAC array does not take bipolar"):
        MacArray(1, 1, w_bits=1, w_encoding=Encoding.UNSIGNED, a_bits=1,
                 a_encoding=Encoding.BIPOLAR, beats=1, style=MacStyle.BIT_SERIAL)
    with pytest.raises(ValueError, match=r"^use_dsp applies to the bit-parallel style only$"):
        MacArray(1, 1, w_bits=1, w_encoding=Encoding.UNSIGNED, a_bits=1,
                 a_encoding=Encoding.UNSIGNED, beats=1, style=MacStyle.BIT_SERIAL, use_dsp=True)
    with pytest.raises(TypeError, match=r"^style must be a MacStyle, not 'serial'$"):
        MacArray(1, 1, w_bits=1, w_encoding=Encoding.UNSIGNED, a_bits=1,
                 a_encoding=Encoding.UNSIGNED, beats=1, style="serial")


CORNERS = [
    (Encoding.BIPOLAR, 1, Encoding.BIPOLAR, 1), (Encoding.BIPOLAR, 1, Encoding.UNSIGNED, 1),
    (Encoding.SIGNED, 8, Encoding.SIGNED, 8), (Encoding.UNSIGNED, 8, Encoding.UNSIGNED, 8),
    (Encoding.SIGNED, 4, Encoding.UNSIGNED, 3), (Encoding.UNSIGNED, 1, Encoding.SIGNED, 2),
]


@pytest.mark.parametrize("style,w_enc,w_bits,a_enc,a_bits", [
    (style, *corner) for style in MacStyle for corner in CORNERS
    if not (style is MacStyle.BIT_SERIAL and corner[2] is Encoding.BIPOLAR)
])
def test_sim_corners(style, w_enc, w_bits, a_enc, a_bits):
    check_mac(2, 4, 3, 3, w_bits, w_enc, a_bits, a_enc, style, False, 0.2, 0.3, seed=7)


@pytest.mark.parametrize("style,use_dsp", [(MacStyle.BIT_PARALLEL, False), (MacStyle.BIT_PARALLEL, True),
                                           (MacStyle.BIT_SERIAL, False)])
@pytest.mark.parametrize("tree_registers", [2, 3])
def test_sim_deep_trees_under_stalls(style, use_dsp, tree_registers):
    """More register levels in the adder trees (wide SIMD on the ECP5): every dot product exact
    under random gaps and stalls, with a wide tree (SIMD 40)."""
    check_mac(2, 40, 2, 4, 4, Encoding.SIGNED, 4, Encoding.UNSIGNED, style, use_dsp, 0.3, 0.4, seed=11,
              tree_registers=tree_registers)


def test_sim_extremes():
    """Most negative codes everywhere: the accumulator width is exactly enough."""
    for style in MacStyle:
        dut = MacArray(1, 3, w_bits=8, w_encoding=Encoding.SIGNED, a_bits=8,
                       a_encoding=Encoding.SIGNED, beats=2, style=style)
        payloads = [{"w": [[-128] * 3], "a": [-128] * 3}] * 2
        assert run_mac(dut, payloads, 1) == [[6 * 128 * 128]]
        assert dut.acc_bits == 18


@settings(max_examples=50, deadline=None)
@given(mac_params())
def test_sim(params):
    check_mac(**params)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("enc", [Encoding.SIGNED, Encoding.UNSIGNED])
def test_sim_dsp_packing(bits, enc):
    """Several lanes per multiplier: exact at the corners of the code ranges too."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if enc is Encoding.SIGNED else \
        (0, (1 << bits) - 1)
    simd = 7
    dut = MacArray(1, simd, w_bits=bits, w_encoding=enc, a_bits=bits, a_encoding=enc, beats=1,
                   use_dsp=True)
    corners = [(x, y) for x in (lo, hi) for y in (lo, hi)]
    rng = np.random.default_rng(bits)
    rows = [([x] * simd, [y] * simd) for x, y in corners]
    rows += [(rng.integers(lo, hi + 1, simd).tolist(), rng.integers(lo, hi + 1, simd).tolist())
             for _ in range(6)]
    payloads = [{"w": [w], "a": a} for w, a in rows]
    expected = [[int(np.dot(w, a))] for w, a in rows]
    assert run_mac(dut, payloads, len(rows)) == expected
    assert run_mac(dut, payloads, len(rows), gap_prob=0.3, stall_prob=0.3) == expected


# ---- the bit-level helpers of hw/_arith.py on their own (mutation run, docs/testing.md) -------

def _comb_values(inputs, outputs, vectors):
    """Drive each vector onto ``inputs`` and read ``outputs`` (combinational logic only)."""
    from amaranth.hdl import Module
    from amaranth.sim import Simulator
    m = outputs[0] if isinstance(outputs[0], Module) else None
    got = []

    async def bench(ctx):
        for vector in vectors:
            for sig, v in zip(inputs, vector):
                ctx.set(sig, v)
            got.append([ctx.get(o) for o in outputs[1:]])

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("w_bits,w_enc,a_bits,a_enc", [
    (1, Encoding.BIPOLAR, 1, Encoding.BIPOLAR), (1, Encoding.UNSIGNED, 1, Encoding.SIGNED),
    (1, Encoding.SIGNED, 1, Encoding.BIPOLAR), (2, Encoding.SIGNED, 3, Encoding.UNSIGNED),
    (3, Encoding.UNSIGNED, 1, Encoding.SIGNED), (1, Encoding.BIPOLAR, 4, Encoding.SIGNED),
    (4, Encoding.SIGNED, 4, Encoding.SIGNED), (3, Encoding.SIGNED, 1, Encoding.BIPOLAR),
])
@pytest.mark.parametrize("logic_bits", [0, 4, 64])
def test_tiles_and_sum_tree_give_every_dot_product(w_bits, w_enc, a_bits, a_enc, logic_bits):
    """Three lanes, every combination of codes: the tiles plus their constant, summed by the tree
    (carry chains only, the default mix, gates only), equal the dot product."""
    import itertools

    from amaranth.hdl import Module, Signal

    from qfab.hw import _arith
    lanes = 3
    w = [Signal(_arith.code_shape(w_bits, w_enc), name=f"w{k}") for k in range(lanes)]
    a = [Signal(_arith.code_shape(a_bits, a_enc), name=f"a{k}") for k in range(lanes)]
    m = Module()
    addends, constant = _arith.tile_addends(w, w_bits, w_enc, a, a_bits, a_enc)
    total = _arith.sum_tree(m, addends, logic_bits=logic_bits)
    out = Signal(range(-1, total.top + 1))
    m.d.comb += out.eq(total.value)
    assert total.shift == 0

    def codes(bits, enc):
        lo, hi = _arith.code_range(bits, enc)
        return [0, 1] if enc is Encoding.BIPOLAR else list(range(lo, hi + 1))

    def value(code, enc):
        return 2 * code - 1 if enc is Encoding.BIPOLAR else code
    rng = np.random.default_rng(w_bits * 10 + a_bits)
    w_codes, a_codes = codes(w_bits, w_enc), codes(a_bits, a_enc)
    pairs = list(itertools.product(w_codes, a_codes))
    vectors = [[int(rng.choice(w_codes)) for _ in range(lanes)] + [int(rng.choice(a_codes)) for _ in range(lanes)]
               for _ in range(150)]
    vectors += [[p[0]] * lanes + [p[1]] * lanes for p in pairs]          # every product, in all lanes
    got = _comb_values(w + a, [m, out], vectors)
    want = [sum(value(v[k], w_enc) * value(v[lanes + k], a_enc) for k in range(lanes)) for v in vectors]
    assert [g[0] + constant for g in got] == want
    assert len(set(want)) > 3


@pytest.mark.parametrize("logic_bits", [0, 4, 64])
def test_sum_tree_of_shifted_addends(logic_bits):
    """Addends with shifts and tops that overlap, touch and leave gaps (rows packed), exhaustively."""
    import itertools

    from amaranth.hdl import Module, Signal

    from qfab.hw import _arith
    spec = [(3, 0), (1, 3), (2, 1), (3, 5), (1, 0), (2, 8)]        # (width, shift)
    sigs = [Signal(width, name=f"s{k}") for k, (width, _) in enumerate(spec)]
    addends = [_arith.BitSum(s, (1 << width) - 1, shift) for s, (width, shift) in zip(sigs, spec)]
    m = Module()
    total = _arith.sum_tree(m, addends, logic_bits=logic_bits)
    out = Signal(16)
    m.d.comb += out.eq(total.value)
    assert total.top == sum(a.top << a.shift for a in addends)
    values = [list(v) for v in itertools.product(*[range(1 << w) for w, _ in spec])][::7]
    got = _comb_values(sigs, [m, out], values)
    assert [g[0] for g in got] == [sum(v << s for v, (_, s) in zip(vec, spec)) for vec in values]
    assert _arith.sum_tree(m, []).top == 0


def test_const_select():
    from amaranth.hdl import Const, Module, Signal, signed

    from qfab.hw import _arith
    m = Module()
    index = Signal(range(4))
    same = _arith.const_select(m, [-3, -3, -3], index, signed(4), "same")
    one = _arith.const_select(m, [5], index, signed(4), "one")
    assert [(c.shape(), c.value) for c in (same, one)] == [(signed(4), -3), (signed(4), 5)]
    assert isinstance(same, Const) and isinstance(one, Const)
    sel = _arith.const_select(m, [3, -8, 7, 0], index, signed(4), "sel")
    assert [g[0] for g in _comb_values([index], [m, sel], [[0], [1], [2], [3]])] == [3, -8, 7, 0]
    assert _arith.code_shape(1, Encoding.BIPOLAR) == unsigned(1)
    assert _arith.code_range(3, Encoding.SIGNED) == (-4, 3) and _arith.code_range(3, Encoding.UNSIGNED) == (0, 7)


def test_bits_add_of_unequal_widths():
    """The gate-level adder pads the shorter operand with zeros, whichever it is (every pair)."""
    from amaranth.hdl import Cat, Module, Signal

    from qfab.hw import _arith
    for wx, wy in ((2, 4), (4, 2), (3, 3)):
        m = Module()
        x, y = Signal(wx), Signal(wy)
        total = Signal(6)
        m.d.comb += total.eq(Cat(*_arith._bits_add(m, list(x), list(y), "add")))
        vectors = [[a, b] for a in range(1 << wx) for b in range(1 << wy)]
        assert [g[0] for g in _comb_values([x, y], [m, total], vectors)] == [a + b for a, b in vectors]


def test_tile_takes_out_the_common_power_of_two_and_the_minimum():
    """A tile stores ``(f - min f) / 2**k`` for the largest such k: the narrowest look-up table."""
    from amaranth.hdl import Signal

    from qfab.hw import _arith
    a, b = Signal(), Signal()
    tile, low = _arith._tile([a, b], lambda bits: 12 * bits[0] - 4 * bits[1] + 7)     # 7, 19, 3, 15
    assert (tile.top, tile.shift, low) == (4, 2, 3)
    tile, low = _arith._tile([a], lambda bits: 5 * bits[0])
    assert (tile.top, tile.shift, low) == (5, 0, 0)
    assert _arith._tile([a, b], lambda bits: 9) == (None, 9)
