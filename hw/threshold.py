"""Requantization by thresholds (FINN's MultiThreshold): no multiplier.

``requantize(acc) = clamp(zp + round_shift((acc + bias) * M0, n), lo, hi)`` never decreases as
``acc`` grows (``M0 >= 0``), so it takes each value of ``lo .. hi`` on one interval of
accumulators: with ``t[k]`` the smallest accumulator whose output is at least ``lo + k``, the
output is ``lo`` plus the number of thresholds ``acc`` reaches. `thresholds` computes them in
integer arithmetic from the definition (docs/semantics.md, section 3), so the hardware is
bit-exact with the reference by construction; `ThresholdRequant` compares them, in parallel or by
binary search in block RAM.
"""

from collections.abc import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .requant import RequantMode, check_requant_params, rom

__all__ = ["requantize_int", "thresholds", "threshold_bits", "threshold_count", "ThresholdRequant"]


def requantize_int(acc: int, m0: int, shift: int, zero_point: int, lo: int, hi: int,
                   rounding: str = "half_up") -> int:
    """``clamp(zero_point + round_shift(acc * m0, shift), lo, hi)`` for Python integers
    (``round_shift_even`` with ``rounding="half_even"``): docs/semantics.md, section 3."""
    v = acc * m0
    if shift > 0:
        half = 1 << (shift - 1)
        if rounding == "half_even":
            v = (v + half - 1 + ((v >> shift) & 1)) >> shift
        elif rounding == "half_up":
            v = (v + half) >> shift
        else:
            raise ValueError(f"rounding must be 'half_up' or 'half_even', not {rounding!r}")
    return min(max(zero_point + v, lo), hi)


def thresholds(m0: int, shift: int, zero_point: int, lo: int, hi: int, acc_lo: int, acc_hi: int,
               bias: int = 0, rounding: str = "half_up") -> list[int]:
    """The ``hi - lo`` thresholds of ``requantize_int(acc + bias, ...)`` over ``acc_lo .. acc_hi``.

    ``t[k - 1]`` (``k = 1 .. hi - lo``) is the smallest ``acc`` in ``acc_lo .. acc_hi`` whose
    output is at least ``lo + k``, or ``acc_hi + 1`` when none is; so for every ``acc`` in the
    range the output is ``lo + sum(acc >= t for t in thresholds)``. The list is non-decreasing.
    ``m0 >= 0`` (the output never decreases with ``acc``; docs/semantics.md allows no negative
    ``M0``).
    """
    if m0 < 0:
        raise ValueError(f"m0 must be non-negative, not {m0}")
    if acc_lo > acc_hi:
        raise ValueError(f"acc_lo must not exceed acc_hi, not {acc_lo} > {acc_hi}")
    out = []
    start = acc_lo
    for level in range(lo + 1, hi + 1):
        if m0 > 0 and rounding == "half_up" and shift > 0:
            # zp + floor((a*m0 + half) / 2^n) >= level  <=>  a*m0 >= (level - zp) * 2^n - half
            need = ((level - zero_point) << shift) - (1 << (shift - 1))
            t = -((-need) // m0) - bias                  # ceil(need / m0), as an accumulator
            t = min(max(t, start), acc_hi + 1)
        else:
            # bisection on the definition: the output never decreases
            a, b = start, acc_hi + 1
            while a < b:
                mid = (a + b) // 2
                if requantize_int(mid + bias, m0, shift, zero_point, lo, hi, rounding) >= level:
                    b = mid
                else:
                    a = mid + 1
            t = a
        out.append(t)
        start = t
    return out


def threshold_bits(acc_bits: int) -> int:
    """Width of a signed threshold for ``acc_bits``-bit accumulators: one more, to hold
    ``2**(acc_bits - 1)``, a threshold no accumulator reaches."""
    return acc_bits + 1


def thermometer_count(ge, bits):
    """The count of a thermometer code (``ge[k]`` is ``count >= k``, ``2**bits`` bits) by a mux
    tree: bit ``j`` of the count is ``ge[prefix + 2**j]``, ``prefix`` the bits above it."""
    decided = []                                # bits above, most significant first
    for j in reversed(range(bits)):
        probes = Cat(*[ge[q * (2 << j) + (1 << j)] for q in range(1 << (bits - 1 - j))])
        decided.append(probes.bit_select(Cat(*reversed(decided)), 1) if decided else probes[0])
    return Cat(*reversed(decided))


def threshold_count(acc, table, acc_lo, acc_hi):
    """How many of the sorted constant thresholds ``table`` the value ``acc`` (in ``acc_lo ..
    acc_hi``) reaches, combinational: one comparison per threshold inside the range."""
    bits = max(1, len(table).bit_length())
    ge = [Const(1, 1)] + [Const(1, 1) if t <= acc_lo else Const(0, 1) if t > acc_hi else acc >= t
                          for t in table]
    ge += [Const(0, 1)] * ((1 << bits) - len(ge))
    return thermometer_count(Cat(*ge), bits)


class ThresholdRequant(wiring.Component):
    """`qfab.hw.requant.Requant`'s function and streams, computed by comparing with thresholds.

    Parameters
    ----------
    lanes, channels, acc_bits, bias, m0, shift, zero_point, lo, hi, out_bits, out_signed, m_bits
        As `qfab.hw.requant.Requant`.
    mode : RequantMode
        ``THRESHOLDS``: each lane compares its accumulator with all ``hi - lo`` thresholds of the
        beat's channel at once (constants when the lane has one channel, else a ROM word of all
        of them per fold) and turns the thermometer code into the count with a mux tree.
        ``SEARCH``: each lane keeps its channels' thresholds in a memory of ``channels / lanes *
        2**(b-1)`` words of two thresholds, ``b = bits(hi - lo)`` (block RAM), in the heap order
        of the balanced search tree (`_heap_words`), and walks down the tree one node a cycle:
        the node compared is a register and the read in the same cycle fetches both its
        children, so the loop is a 2:1 mux and the compare, with no address arithmetic.
    rounding : str
        ``"half_up"`` (the MVAU's rule) or ``"half_even"``.

    Members
    -------
    i, o : as `qfab.hw.requant.Requant`.

    Latency and throughput (`latency`, `interval`): ``THRESHOLDS`` is 3 registered stages
    (accumulator and thresholds, comparisons, count), latency 3, one beat per cycle.
    ``SEARCH`` takes a beat, reads ``b = bits(hi - lo)`` thresholds (at most ``out_bits``) in
    ``b`` cycles and registers the count: latency ``b + 1``, one beat per ``b`` cycles.
    Backpressure on ``o`` stalls the unit.
    """

    def __init__(self, lanes: int, channels: int, *, acc_bits: int, bias: Sequence[int], m0: Sequence[int],
                 shift: Sequence[int], zero_point: int, lo: int, hi: int, out_bits: int, out_signed: bool,
                 m_bits: int = 24, mode: RequantMode = RequantMode.THRESHOLDS, rounding: str = "half_up") -> None:
        bias, m0, shift, zero_point, lo, hi, out_shape = check_requant_params(
            lanes, channels, acc_bits, bias, m0, shift, zero_point, lo, hi, out_bits, out_signed, m_bits)
        mode = RequantMode(mode)
        if mode not in (RequantMode.THRESHOLDS, RequantMode.SEARCH):
            raise ValueError(f"ThresholdRequant computes THRESHOLDS or SEARCH, not {mode}")
        if rounding not in ("half_up", "half_even"):
            raise ValueError(f"rounding must be 'half_up' or 'half_even', not {rounding!r}")
        acc_lo, acc_hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
        self._table = [thresholds(m0[c], shift[c], zero_point, lo, hi, acc_lo, acc_hi, bias[c], rounding)
                       for c in range(channels)]
        self._lanes, self._channels, self._acc_bits = lanes, channels, acc_bits
        self._lo, self._hi, self._out_bits = lo, hi, out_bits
        self._mode = mode
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(acc_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, lanes))),
        })

    lanes = property(lambda self: self._lanes)
    channels = property(lambda self: self._channels)
    mode = property(lambda self: self._mode)
    table = property(lambda self: [list(t) for t in self._table],
                     doc="The thresholds of each channel (`thresholds`).")

    @property
    def latency(self):
        return 3 if self._mode is RequantMode.THRESHOLDS else self._count_bits + 1

    @property
    def interval(self):
        return 1 if self._mode is RequantMode.THRESHOLDS else self._count_bits

    @property
    def _count_bits(self):
        """Bits of the count ``0 .. hi - lo``: the steps of the binary search."""
        return max(1, (self._hi - self._lo).bit_length())

    def _padded(self, c):
        """Channel ``c``'s thresholds, padded to ``2**count_bits - 1`` with one never reached."""
        never = 1 << (self._acc_bits - 1)
        return self._table[c] + [never] * ((1 << self._count_bits) - 1 - len(self._table[c]))

    def elaborate(self, platform):
        m = Module()
        if self._mode is RequantMode.THRESHOLDS:
            self._parallel(m)
        else:
            self._search(m)
        return m

    def _out(self, count):
        return self._lo + count

    def _parallel(self, m):
        lanes, folds = self._lanes, self._channels // self._lanes
        bits = self._count_bits
        levels = (1 << bits) - 1
        t_shape = signed(threshold_bits(self._acc_bits))
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        counter = Signal(range(folds))
        with m.If(self.i.valid & en):
            m.d.sync += counter.eq(Mux(counter == folds - 1, 0, counter + 1))
        a_valid, c_valid = Signal(), Signal()
        with m.If(en):
            m.d.sync += [a_valid.eq(self.i.valid), c_valid.eq(a_valid), self.o.valid.eq(c_valid)]
        for lane in range(lanes):
            chans = [f * lanes + lane for f in range(folds)]
            acc = Signal(signed(self._acc_bits), name=f"acc_{lane}")
            ge = Signal(levels + 1, name=f"ge_{lane}")      # ge[k]: acc reaches threshold k (ge[0] = 1)
            if self._hi == self._lo:
                with m.If(en):
                    m.d.sync += self.o.payload[lane].eq(self._lo)
                continue
            words = [self._padded(c) for c in chans]
            if folds == 1:
                table = [Const(v, t_shape) for v in words[0]]
            else:
                word_layout = data.ArrayLayout(t_shape, levels)
                packed = [word_layout.const(w).as_value().value for w in words]
                word = rom(m, packed, counter, en, word_layout.as_shape(), f"thresholds_{lane}")
                table = [data.View(word_layout, word)[k] for k in range(levels)]
            with m.If(en):
                m.d.sync += acc.eq(self.i.payload[lane])
                m.d.sync += ge.eq(Cat(Const(1, 1), *[acc >= t for t in table]))
                m.d.sync += self.o.payload[lane].eq(self._out(thermometer_count(ge, bits)))

    def _heap_words(self, c):
        """Channel ``c``'s thresholds as ``2**(b-1)`` words of two, in heap order: word ``w`` holds
        the thresholds of nodes ``2w`` and ``2w + 1`` of the balanced search tree over counts ``1 ..
        2**b - 1`` (node ``n`` at depth ``d`` is count ``(2 * (n - 2**d) + 1) * 2**(b - 1 - d)``;
        word 0 holds the root as its second half). Both children of a node come in one read."""
        bits = self._count_bits
        padded = [None] + self._padded(c)             # padded[k]: threshold of count k

        def key(n):
            depth = n.bit_length() - 1
            return (2 * (n - (1 << depth)) + 1) << (bits - 1 - depth)
        words = []
        for w in range(1 << (bits - 1)):
            left = padded[key(2 * w)] if w else 0
            words.append((left, padded[key(2 * w + 1)]))
        return words

    def _search(self, m):
        """Binary search down the tree of thresholds: the node being compared is a register, and
        the read issued while it is compared fetches both of its children (one word, `_heap_words`),
        so the loop is the threshold register, a 2:1 mux, the compare and the next node's
        register: no address arithmetic between the compare and the memory."""
        lanes, folds = self._lanes, self._channels // self._lanes
        bits = self._count_bits
        t_shape = signed(threshold_bits(self._acc_bits))
        pair = data.ArrayLayout(t_shape, 2)
        counter = Signal(range(folds))
        fold = Signal(range(folds))
        busy, last, free, take = Signal(), Signal(), Signal(), Signal()
        step = Signal(range(bits))
        m.d.comb += [
            last.eq(busy & (step == bits - 1)),
            free.eq(~self.o.valid | self.o.ready),      # the output register takes a result
            self.i.ready.eq(~busy | (last & free)),
            take.eq(self.i.valid & self.i.ready),
        ]
        with m.If(take):
            m.d.sync += [counter.eq(Mux(counter == folds - 1, 0, counter + 1)), fold.eq(counter),
                         busy.eq(1), step.eq(0)]
        with m.Elif(last & free):
            m.d.sync += busy.eq(0)
        with m.If(busy & ~last):
            m.d.sync += step.eq(step + 1)
        with m.If(free):
            m.d.sync += self.o.valid.eq(last)
        for lane in range(lanes):
            chans = [f * lanes + lane for f in range(folds)]
            init = [list(w) for c in chans for w in self._heap_words(c)]
            mem = Memory(shape=pair, depth=folds << (bits - 1), init=init)
            m.submodules[f"thresholds_{lane}"] = mem
            port = mem.read_port()
            acc = Signal(signed(self._acc_bits), name=f"acc_{lane}")
            node = Signal(bits + 1, name=f"node_{lane}")     # the tree node compared this step (root: 1)
            right = Signal(name=f"right_{lane}")              # it is its parent's second child
            threshold = Signal(t_shape, name=f"threshold_{lane}")
            ge = Signal(name=f"ge_{lane}")
            nxt = Signal(bits + 1, name=f"next_{lane}")
            m.d.comb += [threshold.eq(Mux(right, port.data[1], port.data[0])), ge.eq(acc >= threshold),
                         nxt.eq(Cat(ge, node[:bits])),
                         port.en.eq(take | (busy & ~last))]      # else it holds the last step's word
            def address(word, f):
                """Word ``word`` of fold ``f``: ``f * 2**(bits - 1) + word``."""
                if folds == 1:
                    return word
                return Cat(word, f) if bits > 1 else f
            with m.If(busy & ~last):
                # the children of the node compared now, for the next step
                m.d.comb += port.addr.eq(address(node[:bits - 1], fold))
                m.d.sync += [node.eq(nxt), right.eq(ge)]
            with m.Else():
                # word 0 (the root) of the next beat's channel, read in the cycle the beat is taken
                # (``port.en``): the address is chosen by registers, not by ``take``, so the next
                # stage's ready reaches the read's enable only, not the address (through a ROM in
                # logic that was the UP5K digits CNN w4a4's slowest path, 35.8 MHz with 36 asked)
                m.d.comb += port.addr.eq(address(Const(0, max(1, bits - 1)), counter))
            with m.If(take):
                m.d.sync += [acc.eq(self.i.payload[lane]), node.eq(1), right.eq(1)]
            with m.If(last & free):
                # after the last compare the node is 2**bits + count
                m.d.sync += self.o.payload[lane].eq(self._out(nxt[:bits]))
