"""The numpy packing agrees with Amaranth's ArrayLayout bit for bit."""

import numpy as np
from amaranth import signed, unsigned
from amaranth.lib import data
from hypothesis import given, settings, strategies as st

from qfab.sim.packing import from_hex_lines, pack_beats, to_hex_lines, unpack_beats


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.booleans(), st.integers(1, 20), st.integers(1, 6), st.integers(0, 2**31))
def test_pack_matches_array_layout(bits, is_signed, n, beats, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if is_signed else (0, 1 << bits)
    values = rng.integers(lo, hi, (beats, n))
    layout = data.ArrayLayout(signed(bits) if is_signed else unsigned(bits), n)
    words = pack_beats(values, bits)
    for row, word in zip(values.tolist(), words):
        assert word == layout.const(row).as_value().value
    assert np.array_equal(unpack_beats(words, n, bits, is_signed), values)
    assert from_hex_lines(to_hex_lines(words, n * bits)) == words


def test_hex_reader_skips_addresses_and_comments():
    assert from_hex_lines("// comment\n@0\n0a\nff // x\nxx\n") == [10, 255, 0]
