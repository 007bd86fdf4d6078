"""Tiles of products whose weights are known when the hardware is built (private to `qfab.hw`).

`qfab.hw.mac.MacArray` with ``weights=`` sorts its lanes by what their weight does over all
weight words: a lane with one weight is a constant multiplication (`const_addends`; zero: no
tile at all), a lane with at most four weights is a look-up on one or two bits of its code
(`few_values`, `few_addends`), and the rest multiply at run time (`qfab.hw._arith.tile_addends`).
Each returns LUT-sized tiles as `qfab.hw._arith.BitSum` addends for `qfab.hw._arith.sum_tree`,
and a constant, like `tile_addends`.
"""

import itertools

from ._arith import Encoding, _bit_terms, _tile

__all__ = ["const_addends", "FewValues", "few_values", "few_addends"]


def const_addends(values, a_lanes, a_bits, a_encoding):
    """``sum(w * a)`` over lanes whose weights are the integers ``values``, as LUT-sized tiles.

    Returns (list of `BitSum`, constant) like `tile_addends`. A zero weight adds nothing: no
    tile, no adder-tree input. The other lanes' activation bits, scaled by their weights, go into
    tiles of up to four bits: whole lanes when a code has at most four bits (two 2-bit lanes, or
    four 1-bit lanes, per tile), four-bit slices of a lane otherwise. A 4-bit lane is then one
    tile, one LUT4 per bit of ``w * a``, against four 2x2 tiles and their adders for a run-time
    weight.
    """
    groups, current, constant = [], [], 0
    for w, a in zip(values, a_lanes):
        if w == 0:
            continue
        terms, offset = _bit_terms(a, a_bits, a_encoding)
        constant += w * offset
        terms = [(bit, w * c) for bit, c in terms]
        if current and len(current) + len(terms) > 4:
            groups.append(current)
            current = []
        while len(terms) > 4:
            groups.append(terms[:4])
            terms = terms[4:]
        current += terms
    if current:
        groups.append(current)
    addends = []
    for group in groups:
        bitsum, low = _tile([bit for bit, _ in group],
                            lambda b, g=group: sum(c * x for (_, c), x in zip(g, b)))
        constant += low
        if bitsum is not None:
            addends.append(bitsum)
    return addends, constant


class FewValues:
    """A lane whose weight takes at most four values over all words: ``bits`` (one or two bits
    of its code) tell them apart, ``table`` maps their values to the weight."""
    def __init__(self, code, bits, table):
        self.code, self.bits, self.table = code, bits, table


def few_values(code, codes, w_bits, encoding):
    """`FewValues` of a lane whose code (a value) takes the integers ``codes``, or ``None``
    when no one or two code bits tell them apart, or no fewer bits than the code has (a 1-bit
    or 2-bit weight is as cheap as a run-time product)."""
    codes = sorted(set(codes))
    for d in (1, 2):
        if d >= w_bits:
            break
        if len(codes) > 1 << d:
            continue
        for picked in itertools.combinations(range(w_bits), d):
            keys = [tuple((c >> b) & 1 for b in picked) for c in codes]
            if len(set(keys)) == len(codes):
                table = {k: 2 * c - 1 if encoding is Encoding.BIPOLAR else c
                         for k, c in zip(keys, codes)}
                return FewValues(code, [code[b] for b in picked], table)
    return None


def few_addends(lanes, a_lanes, a_bits, a_encoding):
    """``sum(w * a)`` over `FewValues` lanes: each tile takes the lane's one or two telling
    bits and the activation bits that fit beside them (three or two), and looks up the weight
    times their part of ``a``. A 4-bit lane with at most four weights (zero among them) is two
    tiles, against four 2x2 tiles of a run-time 4-bit weight; its other code bits go unused."""
    addends, constant = [], 0
    for lane, a in zip(lanes, a_lanes):
        terms, offset = _bit_terms(a, a_bits, a_encoding)
        d, chunk = len(lane.bits), 4 - len(lane.bits)
        for start in range(0, len(terms), chunk):
            part = terms[start:start + chunk]

            def fn(b, part=part, first=start == 0, lane=lane, d=d, offset=offset):
                v = lane.table.get(tuple(b[:d]), 0)
                return v * (sum(c * x for (_, c), x in zip(part, b[d:])) + offset * first)
            bitsum, low = _tile(lane.bits + [bit for bit, _ in part], fn)
            constant += low
            if bitsum is not None:
                addends.append(bitsum)
    return addends, constant
