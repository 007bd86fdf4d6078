"""Bit-level arithmetic for the MAC arrays: number encodings, LUT-sized tiles and adder trees.

Private to `qfab.hw`. Everything here builds plain logic (no ``*``), so that no synthesis flow
maps a small product onto a DSP block: a dot product is split into *tiles* (functions of at most
four input bits, one LUT4 per output bit) whose non-negative values are summed by an adder tree.
Narrow sums are written as gates (so ABC packs them into LUTs together with the tiles); wide sums
use ``+`` (so they map onto carry chains).
"""

import enum
import heapq
import itertools
from collections.abc import Sequence

from amaranth.hdl import Cat, Const, Module, Shape, ShapeLike, Signal, Value, signed, unsigned

from qfab.base import ints

__all__ = ["Encoding", "code_range", "code_shape", "acc_width", "const_select", "BitSum",
           "tile_addends", "sum_tree"]


class Encoding(enum.Enum):
    """How an integer code is stored in ``bits`` bits.

    ``UNSIGNED`` is ``0 .. 2**bits - 1``; ``SIGNED`` is two's complement; ``BIPOLAR`` is one bit
    standing for -1 (0) or +1 (1), as in docs/semantics.md, section 1.
    """
    UNSIGNED = "unsigned"
    SIGNED = "signed"
    BIPOLAR = "bipolar"


def code_range(bits: int, encoding: Encoding) -> tuple[int, int]:
    """Smallest and largest value of a code (`qfab.base.ints.code_range`)."""
    return ints.code_range(bits, encoding is Encoding.SIGNED, encoding is Encoding.BIPOLAR)


def code_shape(bits: int, encoding: Encoding) -> Shape:
    """The Amaranth shape that carries a code (a bipolar code is one unsigned bit)."""
    if encoding is Encoding.BIPOLAR:
        return unsigned(1)
    return signed(bits) if encoding is Encoding.SIGNED else unsigned(bits)


acc_width = ints.acc_bits    # signed width holding every integer in ``[-bound, bound]``


def const_select(m: Module, values: Sequence[int], index: Value, shape: ShapeLike, name: str) -> Value:
    """``values[index]`` as a value: a constant when all are equal, else a small mux."""
    if len(set(values)) == 1:
        return Const(values[0], shape)
    sig = Signal(shape, name=name)
    with m.Switch(index):
        for n, v in enumerate(values):
            with m.Case(n):
                m.d.comb += sig.eq(v)
    return sig


def _bit_terms(value, bits, encoding):
    """``value`` as ``offset + sum(coefficient * bit)``: a list of (bit, coefficient), offset."""
    if encoding is Encoding.BIPOLAR:
        return [(value[0], 2)], -1
    terms = [(value[i], 1 << i) for i in range(bits)]
    if encoding is Encoding.SIGNED:
        terms[-1] = (value[bits - 1], -(1 << (bits - 1)))
    return terms, 0


class BitSum:
    """A non-negative integer ``value << shift`` that is at most ``top << shift``."""
    def __init__(self, value: Value, top: int, shift: int = 0) -> None:
        self.value = value
        self.top = int(top)
        self.shift = int(shift)

    @property
    def width(self) -> int:
        return max(1, self.top.bit_length())


def _tile(inputs, fn):
    """Look-up table of a function of up to four bits: returns (BitSum, constant) such that
    ``fn(inputs) == (bitsum.value << bitsum.shift) + constant``."""
    table = [fn([(idx >> n) & 1 for n in range(len(inputs))]) for idx in range(1 << len(inputs))]
    low = min(table)
    table = [v - low for v in table]
    shift = 0
    while any(table) and all(v % (2 << shift) == 0 for v in table):
        shift += 1
    table = [v >> shift for v in table]
    top = max(table)
    if top == 0:
        return None, low
    width = top.bit_length()
    packed = sum(v << (width * idx) for idx, v in enumerate(table))
    value = Const(packed, width << len(inputs)).word_select(Cat(*inputs), width)
    return BitSum(value, top, shift), low


def tile_addends(w_lanes: Sequence[Value], w_bits: int, w_encoding: Encoding, a_lanes: Sequence[Value],
                 a_bits: int, a_encoding: Encoding) -> tuple[list[BitSum], int]:
    """Split ``sum(w * a)`` over lanes into LUT-sized tiles.

    Returns (list of `BitSum`, constant). Each lane's product is written as a sum of partial
    products ``coefficient * w_i * a_j`` (two's complement MSBs get negative coefficients, bipolar
    codes an offset); 2x2 blocks of the (i, j) grid become one tile each. One-bit by one-bit lanes
    pair up so that one tile covers two lanes (XNOR/AND and the first adder level in one LUT4).
    """
    addends, constant = [], 0

    def add_tile(inputs, fn):
        nonlocal constant
        bitsum, low = _tile(inputs, fn)
        constant += low
        if bitsum is not None:
            addends.append(bitsum)

    if w_bits == 1 and a_bits == 1:
        def bit_value(bit, encoding):
            if encoding is Encoding.BIPOLAR:
                return 2 * bit - 1
            return -bit if encoding is Encoding.SIGNED else bit

        def lane_product(wv, av):
            return bit_value(wv, w_encoding) * bit_value(av, a_encoding)
        lanes = list(zip(w_lanes, a_lanes))
        for pair in itertools.zip_longest(lanes[0::2], lanes[1::2]):  # 2 lanes, 4 inputs
            pair = [lane for lane in pair if lane is not None]
            inputs = [bit for w, a in pair for bit in (w[0], a[0])]
            add_tile(inputs, lambda b, n=len(pair): sum(lane_product(b[2 * k], b[2 * k + 1])
                                                        for k in range(n)))
        return addends, constant

    for w, a in zip(w_lanes, a_lanes):
        w_terms, w_off = _bit_terms(w, w_bits, w_encoding)
        a_terms, a_off = _bit_terms(a, a_bits, a_encoding)
        constant += w_off * a_off
        # tile sizes: 2x2 blocks, or 1x3 / 3x1 strips when one side has a single bit
        ti = 1 if len(w_terms) == 1 else 2
        tj = 1 if len(a_terms) == 1 else 2
        if ti == 1 and tj == 2:
            tj = 3
        if tj == 1 and ti == 2:
            ti = 3
        for i0 in range(0, len(w_terms), ti):
            for j0 in range(0, len(a_terms), tj):
                wt, at = w_terms[i0:i0 + ti], a_terms[j0:j0 + tj]
                # offset terms (w_off * a, a_off * w) ride along with the first row / column
                a_lin = at if (w_off and i0 == 0) else []
                w_lin = wt if (a_off and j0 == 0) else []
                inputs = [bit for bit, _ in wt] + [bit for bit, _ in at]

                def fn(b, wt=wt, at=at, a_lin=a_lin, w_lin=w_lin):
                    wb, ab = b[:len(wt)], b[len(wt):]
                    total = sum(cw * cb * x * y for (_, cw), x in zip(wt, wb)
                                for (_, cb), y in zip(at, ab))
                    total += w_off * sum(c * y for (_, c), y in zip(a_lin, ab))
                    total += a_off * sum(c * x for (_, c), x in zip(w_lin, wb))
                    return total
                add_tile(inputs, fn)
    return addends, constant


# a full adder's sum and carry as 3-input look-ups (bit n of the constant is the output for
# inputs Cat(x, y, carry) = n): one Amaranth operator each instead of five gates
_FA_SUM = Const(0b10010110, 8)
_FA_CARRY = Const(0b11101000, 8)


def _bits_add(m, x, y, name):
    """Ripple-carry addition written as look-ups (for narrow sums that ABC should pack into LUTs).

    Each carry is a signal of its own: written as one expression, every carry would repeat the
    expressions of all carries below it, and Amaranth, which copies an expression per use when
    it prepares a design, would build (and Yosys read) a tree exponential in the width. Each sum
    and carry bit is one 3-input look-up (`Value.bit_select` of a constant truth table): the same
    functions as XOR/AND/OR gates after synthesis, with a fifth of the netlist cells.
    """
    width = max(len(x), len(y))
    x = list(x) + [Const(0, 1)] * (width - len(x))
    y = list(y) + [Const(0, 1)] * (width - len(y))
    out, carry = [], None
    for n, (xb, yb) in enumerate(zip(x, y)):
        if carry is None:
            out.append(xb ^ yb)
            nxt = xb & yb
        else:
            bits = Cat(xb, yb, carry)
            out.append(_FA_SUM.bit_select(bits, 1))
            nxt = _FA_CARRY.bit_select(bits, 1)
        carry = Signal(name=f"{name}_c{n}")
        m.d.comb += carry.eq(nxt)
    out.append(carry)
    return out


def pack_rows(addends: Sequence[BitSum]) -> list[BitSum]:
    """Concatenate addends whose bit ranges do not overlap into rows (interval colouring)."""
    rows = []
    for a in sorted(addends, key=lambda a: (a.shift, -a.width)):
        for row in rows:
            if row[-1].shift + row[-1].width <= a.shift:
                row.append(a)
                break
        else:
            rows.append([a])
    packed = []
    for row in rows:
        if len(row) == 1:
            packed.append(row[0])
            continue
        base, parts, top = row[0].shift, [], 0
        for a in row:
            gap = a.shift - (base + len(Cat(*parts)))
            if gap:
                parts.append(Const(0, gap))
            parts.append(a.value[:a.width])
            top += a.top << (a.shift - base)
        packed.append(BitSum(Cat(*parts), top, base))
    return packed


def _named(m, addend, name):
    """``addend`` with its value in a signal of its own (a tile's look-up is read by several gates
    of the tree; as a signal it reaches Amaranth, and the Verilog, once)."""
    if isinstance(addend.value, Signal):
        return addend
    sig = Signal(addend.width, name=name)
    m.d.comb += sig.eq(addend.value)
    return BitSum(sig, addend.top, addend.shift)


def sum_tree(m: Module, addends: Sequence[BitSum], *, logic_bits: int = 4, name: str = "sum",
             pipeline: Value | None = None, registers: int = 1) -> BitSum:
    """Sum of `BitSum` addends as one `BitSum` (shift 0).

    Addends that do not overlap are first concatenated into rows (free); then the two rows
    with the smallest largest values are added, repeatedly. Sums of at most ``logic_bits`` bits
    are built from gates, wider ones with ``+`` (carry chains).

    ``pipeline``: an enable; the tree is then cut by one register level (loaded when the enable is
    high) half way in: the addends are summed in ``2**(levels - levels // 2)`` groups of
    neighbours (``levels``: the depth of a balanced tree over them), each group's sum is
    registered, and the group sums are summed. Every addend crosses exactly one register (the
    result is one cycle later than without ``pipeline``). The register was a third of the way in
    while a block RAM's read (5.6 ns clock-to-output on the ECP5) fed the first part directly; the
    MVAU's ``fetch_register`` now gives that read its own cycle, and half way is the shorter
    longest path (ECP5 digits CNN 90.2 -> 110.5 MHz with both; UP5K unchanged, 36.5 MHz). On the
    iCE40 the registers share logic cells with the adders that feed them.

    ``registers`` (with ``pipeline``): register levels, each addend crossing every one (the result
    ``registers`` cycles later). The first cut leaves ``levels // (registers + 1)`` levels below it,
    the group sums are summed with the remaining ``registers - 1`` cuts, so that the segments are
    about equally deep: one register half way, two at a third and two thirds, and so on. A tree
    too deep for one cycle between registers (the ECP5 at 100 MHz takes about four carry chains
    with their routing) takes more.
    """
    if not addends:
        return BitSum(Const(0, 1), 0)
    if pipeline is not None and registers < 0:
        raise ValueError(f"registers must be 0 or more, not {registers}")
    if pipeline is not None and registers > 0:
        n = len(addends)
        levels = max(1, (n - 1).bit_length())
        groups = 1 << (levels - levels // (registers + 1))      # the first cut
        size = -(-n // groups)
        parts = []
        for k in range(0, n, size):
            part = sum_tree(m, addends[k:k + size], logic_bits=logic_bits, name=f"{name}_g{k // size}")
            reg = Signal(part.width, name=f"{name}_r{k // size}")
            with m.If(pipeline):
                m.d.sync += reg.eq(part.value)
            parts.append(BitSum(reg, part.top))
        return sum_tree(m, parts, logic_bits=logic_bits, name=f"{name}_s", pipeline=pipeline,
                        registers=registers - 1)
    counter = itertools.count()
    addends = [_named(m, a, f"{name}_t{next(counter)}") for a in addends]
    addends = pack_rows(addends)
    heap = [(a.top << a.shift, next(counter), a) for a in addends]
    heapq.heapify(heap)
    while len(heap) > 1:
        _, _, x = heapq.heappop(heap)
        _, _, y = heapq.heappop(heap)
        base = min(x.shift, y.shift)
        xs, ys = x.shift - base, y.shift - base
        top = (x.top << xs) + (y.top << ys)
        width = top.bit_length()
        if width <= logic_bits:
            xv = [Const(0, 1)] * xs + [x.value[n] for n in range(x.width)]
            yv = [Const(0, 1)] * ys + [y.value[n] for n in range(y.width)]
            value = Cat(*_bits_add(m, xv, yv, f"{name}_{next(counter)}"))[:width]
        else:
            value = ((x.value << xs) + (y.value << ys))[:width]
        # `keep` stops Yosys' alumacc from merging the tree back into one $macc cell (which it
        # would lower to a Wallace tree of LUT full adders instead of carry chains)
        node = Signal(width, name=f"{name}_{next(counter)}",
                      attrs={} if width <= logic_bits else {"keep": 1})
        m.d.comb += node.eq(value)
        heapq.heappush(heap, (top << base, next(counter), BitSum(node, top, base)))
    result = heap[0][2]
    if result.shift:
        result = BitSum(result.value << result.shift, result.top << result.shift)
    return result
