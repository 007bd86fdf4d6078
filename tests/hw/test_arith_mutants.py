# amaranth: UnusedElaboratable=no
"""The bit-level helpers of hw/_arith.py on their own, where the mutation run (bench/mutation.py,
docs/testing.md) found the MAC-array tests blind: each against the definition of the number
encodings (docs/semantics.md, section 1) or plain integer sums, never against the helpers."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, unsigned

from qfab.hw import _arith
from qfab.hw._arith import Encoding


def _codes(bits, encoding):
    """Every code of the type as stored, with the integer it stands for (from the definition)."""
    if encoding is Encoding.BIPOLAR:
        return [(0, -1), (1, 1)]
    if encoding is Encoding.SIGNED:
        return [(c & ((1 << bits) - 1), c) for c in range(-(1 << (bits - 1)), 1 << (bits - 1))]
    return [(c, c) for c in range(1 << bits)]


@pytest.mark.parametrize("bits, encoding", [(1, Encoding.BIPOLAR), (1, Encoding.UNSIGNED), (1, Encoding.SIGNED),
                                            (3, Encoding.SIGNED), (4, Encoding.UNSIGNED), (5, Encoding.SIGNED)])
def test_bit_terms_are_the_encoding(bits, encoding):
    """``offset + sum(coefficient * bit)`` is the value of every code: the two's-complement weight
    of the top bit, the bipolar ``2b - 1``."""
    value = Signal(_arith.code_shape(bits, encoding))
    terms, offset = _arith._bit_terms(value, bits, encoding)
    assert len(terms) == (1 if encoding is Encoding.BIPOLAR else bits)
    for raw, want in _codes(bits, encoding):
        got = offset + sum(c * ((raw >> n) & 1) for n, (_, c) in enumerate(terms))
        assert got == want
    assert all(isinstance(bit, type(value[0])) for bit, _ in terms)


def test_code_range_and_shape_follow_the_definition():
    for bits in (1, 2, 5, 8):
        assert _arith.code_range(bits, Encoding.SIGNED) == (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        assert _arith.code_range(bits, Encoding.UNSIGNED) == (0, (1 << bits) - 1)
        assert _arith.code_shape(bits, Encoding.SIGNED).signed and _arith.code_shape(bits, Encoding.SIGNED).width == bits
        assert not _arith.code_shape(bits, Encoding.UNSIGNED).signed
    assert _arith.code_range(1, Encoding.BIPOLAR) == (-1, 1)
    assert _arith.code_shape(1, Encoding.BIPOLAR) == unsigned(1)


def _evaluate(m, inputs, output, vectors):
    """Drive each vector onto ``inputs``, read ``output`` (combinational logic, Amaranth's simulator)."""
    from amaranth.sim import Simulator
    got = []

    async def bench(ctx):
        for vector in vectors:
            for sig, v in zip(inputs, vector):
                ctx.set(sig, v)
            got.append(ctx.get(output))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def _sum_of(spec, logic_bits, vectors):
    """``sum_tree`` of addends ``(width, shift)`` (each its full range): the tree's sum for each
    vector, the plain sum of ``value << shift``, and the result's `BitSum`."""
    m = Module()
    sigs = [Signal(width, name=f"s{k}") for k, (width, _) in enumerate(spec)]
    total = _arith.sum_tree(m, [_arith.BitSum(s, (1 << w) - 1, sh) for s, (w, sh) in zip(sigs, spec)],
                            logic_bits=logic_bits)
    out = Signal(24)
    m.d.comb += out.eq(total.value)
    want = [sum(v << sh for v, (_, sh) in zip(vec, spec)) for vec in vectors]
    return _evaluate(m, sigs, out, vectors), want, total


def test_the_sum_of_no_addends_is_zero():
    m = Module()
    total = _arith.sum_tree(m, [])
    out = Signal(4, init=5)
    m.d.comb += out.eq(total.value)
    assert (total.top, total.shift) == (0, 0)
    assert _evaluate(m, [], out, [[]]) == [0]


@pytest.mark.parametrize("logic_bits", [0, 64])
def test_rows_with_wide_gaps_and_rows_that_start_above_bit_zero(logic_bits):
    """Addends whose ranges leave gaps of several bits (the row pads them with zeros) and a sum
    whose every addend is shifted (rows based above bit 0): the sum of ``value << shift``."""
    spec = [(2, 3), (2, 8), (1, 13), (3, 4), (2, 9)]          # (width, shift); none at bit 0
    rng = np.random.default_rng(5)
    vectors = [[(1 << w) - 1 for w, _ in spec], [0] * len(spec)]
    vectors += [[int(rng.integers(0, 1 << w)) for w, _ in spec] for _ in range(60)]
    got, want, total = _sum_of(spec, logic_bits, vectors)
    assert got == want
    assert total.top == sum(((1 << w) - 1) << sh for w, sh in spec) and total.shift == 0


def test_pack_rows_packs_ranges_that_do_not_overlap():
    """Bit ranges ``[shift, shift + width)``: ranges that only touch, or leave a gap, share a row
    (an interval colouring: as many rows as the most ranges over one bit); the row's largest value
    is the sum of its members' relative to its lowest bit."""
    a, b, c, d = Signal(3), Signal(2), Signal(2), Signal(1)
    rows = _arith.pack_rows([_arith.BitSum(a, 7, 2), _arith.BitSum(b, 3, 5), _arith.BitSum(c, 2, 9),
                             _arith.BitSum(d, 1, 3)])
    assert len(rows) == 2                          # bit 3 is in a's and d's ranges; nothing else overlaps
    assert sorted((r.shift, r.top) for r in rows) == [(2, 7 + (3 << 3) + (2 << 7)), (3, 1)]
    m = Module()
    out = Signal(16)
    row = next(r for r in rows if r.shift == 2)
    m.d.comb += out.eq(row.value)
    vectors = [[x, y, z] for x in range(8) for y in range(4) for z in range(4)]
    assert _evaluate(m, [a, b, c], out, vectors) == [x + (y << 3) + (z << 7) for x, y, z in vectors]


def _netlist(tops, **kwargs):
    """The RTLIL (Amaranth's back end) of a sum of full-range addends at bit 0, and the result."""
    from amaranth.back import rtlil
    m = Module()
    sigs = [Signal(t.bit_length()) for t in tops]
    total = _arith.sum_tree(m, [_arith.BitSum(s, t) for s, t in zip(sigs, tops)], **kwargs)
    out = Signal(16)
    m.d.comb += out.eq(total.value)
    return rtlil.convert(m, ports=[*sigs, out]), total


@pytest.mark.parametrize("tops, kwargs, carry_chain", [
    ([7, 7], {}, False),                      # a 4-bit sum: gates by default (logic_bits=4)
    ([15, 15], {}, True),                     # a 5-bit sum: ``+``, a carry chain
    ([3, 3], dict(logic_bits=3), False),      # exactly logic_bits wide: still gates
    ([3, 3], dict(logic_bits=2), True),
])
def test_narrow_sums_are_gates_and_wide_ones_carry_chains_kept_apart(tops, kwargs, carry_chain):
    """As documented: a sum of at most ``logic_bits`` bits is built from gates (no ``$add`` cell for
    Yosys), a wider one with ``+``, and its node carries ``keep`` so that Yosys does not merge the
    tree back into one multiply-accumulate cell."""
    text, total = _netlist(tops, **kwargs)
    assert ("$add" in text) == carry_chain
    assert dict(total.value.attrs) == ({"keep": 1} if carry_chain else {})


@pytest.mark.parametrize("w_bits, w_enc, a_bits, a_enc, tiles", [
    (4, Encoding.UNSIGNED, 4, Encoding.UNSIGNED, 4),     # 2x2 blocks of the 4x4 grid of bit products
    (5, Encoding.SIGNED, 4, Encoding.UNSIGNED, 6),       # 3 x 2 blocks (the last row one bit high)
    (2, Encoding.SIGNED, 3, Encoding.SIGNED, 2),
    (3, Encoding.UNSIGNED, 2, Encoding.SIGNED, 2),
    (2, Encoding.SIGNED, 1, Encoding.UNSIGNED, 1),       # one a bit: 3x1 strips
    (5, Encoding.UNSIGNED, 1, Encoding.SIGNED, 2),
    (1, Encoding.UNSIGNED, 5, Encoding.SIGNED, 2),       # one w bit: 1x3 strips
    (1, Encoding.BIPOLAR, 4, Encoding.SIGNED, 2),        # the bipolar offset rides along
])
def test_tiles_are_luts_of_at_most_four_bits(w_bits, w_enc, a_bits, a_enc, tiles):
    """One lane's product as tiles (the design: one LUT4 per output bit; 2x2 blocks of the bit
    grid, 1x3 / 3x1 strips when one side has one bit): found by simulation over every pair of
    codes, each tile depends on at most four of the lane's bits, there are as many tiles as
    blocks, and the tiles plus the constant are the product of the encoded values."""
    from amaranth.hdl import Cat
    w = Signal(_arith.code_shape(w_bits, w_enc), name="w")
    a = Signal(_arith.code_shape(a_bits, a_enc), name="a")
    addends, constant = _arith.tile_addends([w], w_bits, w_enc, [a], a_bits, a_enc)
    assert len(addends) == tiles
    m = Module()
    outs = []
    for k, t in enumerate(addends):
        out = Signal(16, name=f"tile{k}")
        m.d.comb += out.eq(t.value << t.shift)
        outs.append(out)
    every = Signal(len(outs) * 16)
    m.d.comb += every.eq(Cat(*outs))
    w_codes, a_codes = _codes(w_bits, w_enc), _codes(a_bits, a_enc)
    vectors = [(wr, ar) for wr, _ in w_codes for ar, _ in a_codes]
    got = _evaluate(m, [w, a], every, [[_signed(wr, w_bits, w_enc), _signed(ar, a_bits, a_enc)]
                                       for wr, ar in vectors])
    per_tile = [[(g >> (16 * k)) & 0xFFFF for g in got] for k in range(tiles)]
    values = dict(zip(vectors, range(len(vectors))))
    n_bits = w_bits + a_bits
    found = sorted(sorted({bit for bit in range(n_bits) for (wr, ar), i in values.items()
                           if column[i] != column[values[_flip(wr, ar, bit, w_bits)]]})
                   for column in per_tile)
    assert found == _blocks(w_bits, a_bits)
    products = [wv * av for _, wv in w_codes for _, av in a_codes]
    assert [constant + sum(col[i] for col in per_tile) for i in range(len(vectors))] == products


def _blocks(w_bits, a_bits):
    """The lane bits (w's first, then a's) each tile should read, from the documented tiling:
    2x2 blocks of the bit grid, 1x3 / 3x1 strips when one side has a single bit."""
    ti, tj = (1 if w_bits == 1 else 2), (1 if a_bits == 1 else 2)
    ti, tj = (3 if (ti, tj) == (2, 1) else ti), (3 if (ti, tj) == (1, 2) else tj)
    return sorted(sorted([*range(i, min(i + ti, w_bits)), *range(w_bits + j, w_bits + min(j + tj, a_bits))])
                  for i in range(0, w_bits, ti) for j in range(0, a_bits, tj))


def _signed(raw, bits, encoding):
    """A code as stored (``raw``, unsigned bits) as the value to drive onto its signal."""
    if encoding is Encoding.SIGNED and raw >> (bits - 1):
        return raw - (1 << bits)
    return raw


def _flip(w_raw, a_raw, bit, w_bits):
    """The pair of stored codes with lane bit ``bit`` flipped (w's bits first, then a's)."""
    if bit < w_bits:
        return w_raw ^ (1 << bit), a_raw
    return w_raw, a_raw ^ (1 << (bit - w_bits))


@pytest.mark.parametrize("count", [2, 9, 16])
@pytest.mark.parametrize("logic_bits", [0, 64])
def test_a_pipelined_sum_is_one_cycle_later_and_keeps_logic_bits(count, logic_bits):
    """``pipeline=enable``: every addend crosses one register loaded while the enable is high, so
    the sum of the inputs appears one cycle later and holds while the enable is low; the groups'
    sums and the sum of the groups are built as ``logic_bits`` says (64: gates only, no ``$add``)."""
    from amaranth.back import rtlil
    from amaranth.sim import Simulator
    m = Module()
    enable = Signal()
    sigs = [Signal(4, name=f"s{k}") for k in range(count)]
    total = _arith.sum_tree(m, [_arith.BitSum(s, 15) for s in sigs], logic_bits=logic_bits, pipeline=enable)
    out = Signal(16)
    m.d.comb += out.eq(total.value)
    assert total.top == 15 * count
    text = rtlil.convert(m, ports=[enable, *sigs, out])
    assert ("$add" in text) == (logic_bits == 0)
    rng = np.random.default_rng(count)
    vectors = rng.integers(0, 16, (12, count)).tolist()
    enables = [1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1]
    got = []

    async def bench(ctx):
        for vector, en in zip(vectors, enables):
            for s, v in zip(sigs, vector):
                ctx.set(s, v)
            ctx.set(enable, en)
            await ctx.tick()
            got.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want, held = [], 0
    for vector, en in zip(vectors, enables):
        held = sum(vector) if en else held           # what the registers hold after the clock edge
        want.append(held)
    assert got == want
    assert len(set(want)) > 5
