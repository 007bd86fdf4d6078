"""Precision-scalable MAC arrays: PE output lanes by SIMD input lanes, bit-parallel or bit-serial.

A `MacArray` takes one beat of ``pe x simd`` weights and ``simd`` activations per transfer and
emits, every ``beats`` transfers, the ``pe`` exact dot products of the last ``beats`` transfers.

When the weights are constants known at build time (``weights=``, every word ``w`` will carry),
each lane is built for the weights it can see: a lane of zeros has no product and no adder-tree
input at all, a lane with one weight multiplies by a constant (tiles of activation bits only), a
lane with at most four weights reads one or two bits of ``w`` and looks up the product, and the
rest multiply ``w`` at run time (`qfab.hw._const_tiles`; docs/hardware.md, "Sparse (pruned)
weights").
"""

import enum
from collections.abc import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, ResetSignal, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.base import ints

from ._arith import Encoding, code_range, code_shape, sum_tree, tile_addends
from ._const_tiles import FewValues, const_addends, few_addends, few_values
from .weights import weight_layout

__all__ = ["MacStyle", "Encoding", "MacArray"]


def _clear_or_load(m, reg, load, clear, value):
    """``reg <= clear ? init : value`` when ``load``; ``reg <= init`` on reset.

    Written so that synthesis folds ``clear`` and the domain reset into the flip-flops' own
    synchronous set/reset (gated by their clock enable), costing no LUT per bit.
    """
    rst = ResetSignal()
    with m.If(load | rst):
        m.d.sync += reg.eq(Mux(clear | rst, reg.init, value))


def _dsp_packing(w_range, a_range, max_width=18):
    """Lanes per multiplier ``k`` and field width ``S`` for `MacArray._dsp_dot`: the largest
    ``k`` whose packed operands fit ``max_width`` signed bits (an ECP5 ``MULT18X18D``)."""
    (w_lo, w_hi), (a_lo, a_hi) = w_range, a_range
    corners = [x * y for x in (w_lo, w_hi) for y in (a_lo, a_hi)]
    p_lo, p_hi = min(corners), max(corners)
    best = (1, 0)
    for k in range(2, 9):
        field = 1
        while True:
            low = (k - 1) * field
            l_lo = sum((t + 1) * p_lo << (t * field) for t in range(k - 1))
            l_hi = sum((t + 1) * p_hi << (t * field) for t in range(k - 1))
            if (-(1 << (field - 1)) <= k * p_lo and k * p_hi < (1 << (field - 1))
                    and -(1 << (low - 1)) <= l_lo and l_hi < (1 << (low - 1))):
                break
            field += 1
        w_abs = sum(max(-w_lo, w_hi) << (i * field) for i in range(k))
        a_abs = sum(max(-a_lo, a_hi) << (i * field) for i in range(k))
        if max(w_abs, a_abs).bit_length() + 1 > max_width:
            break
        best = (k, field)
    return best


class MacStyle(enum.Enum):
    """How a `MacArray` multiplies.

    ``BIT_PARALLEL``: a whole dot-product slice per cycle; each PE sums its SIMD products in one
    tree of LUT-sized tiles (no ``*``, so no DSP block), or with ``use_dsp`` in plain multipliers.
    ``BIT_SERIAL``: one activation bit-plane per cycle (AND / conditional add of the weights,
    shift-accumulate, the sign plane subtracted); ``precision`` cycles per beat, chosen at run time.
    """
    BIT_PARALLEL = "bit_parallel"
    BIT_SERIAL = "bit_serial"


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


def _check_weights(weights, pe, simd, shape):
    try:
        words = [[[int(v) for v in row] for row in word] for word in weights]
    except TypeError:
        words = None
    if not words or any(len(word) != pe or any(len(row) != simd for row in word)
                        for word in words):
        raise ValueError(f"weights must be a non-empty list of words of {pe} rows of {simd} codes")
    lo, hi = ints.code_range(shape.width, shape.signed)
    for word in words:
        for row in word:
            for v in row:
                if not lo <= v <= hi:
                    raise ValueError(f"weight code {v} is outside [{lo}, {hi}]")
    return words


def _check_bits(name, bits, encoding, enc_name):
    if not isinstance(encoding, Encoding):
        raise TypeError(f"{enc_name} must be an Encoding, not {encoding!r}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"{name} must be an integer from 1 to 8, not {bits!r}")
    if encoding is Encoding.BIPOLAR and bits != 1:
        raise ValueError(f"a bipolar {name[0]} code has 1 bit, not {bits}")


class MacArray(wiring.Component):
    """PE x SIMD multiply-accumulate array.

    Parameters
    ----------
    pe : int
        Output lanes (dot products computed at once).
    simd : int
        Input lanes (products per PE per cycle, bit-parallel).
    w_bits, w_encoding : int, Encoding
        Weight code width (1 to 8) and encoding (bipolar: 1 bit, ``1 -> +1``, ``0 -> -1``).
    a_bits, a_encoding : int, Encoding
        Activation code width and encoding; the largest precision for ``BIT_SERIAL``, which
        does not take bipolar activations.
    beats : int
        Transfers per dot product (the synapse fold); the dot product length is ``beats * simd``.
    style : MacStyle
    use_dsp : bool
        Bit-parallel only: write products as ``*`` so synthesis may use DSP blocks; ``k`` lanes
        share one multiplier when their packed operands fit 18 bits (``w0*a0 + w1*a1`` is the
        middle field of ``(w0 << S | w1) * (a1 << S | a0)``): 3 lanes per multiplier at 2x2
        bits, 2 at 4x4, 1 at 8x8. Lanes with a constant weight never use a multiplier.
    weights : ``[depth][pe][simd]`` weight codes, optional
        Every word ``i.payload.w`` will carry (codes as on the wire: bipolar ``0`` / ``1``),
        when the weights are constants (`qfab.hw.mvau.MVAU` passes its ``LOGIC`` weight words).
        A lane ``(p, s)`` whose code is the same in every word ignores ``w[p][s]`` and uses
        that constant: zero leaves the lane out, anything else is a multiplication by a
        constant. A lane with two to four codes (and weights of 3 bits or more) reads only
        the one or two bits of ``w[p][s]`` that tell its codes apart. The others multiply ``w``
        as usual. Words outside this list give wrong results; latency and throughput do not
        change.
    tree_registers : int
        Register levels inside each adder tree (and after the multipliers with ``use_dsp``), 1 or
        more: each adds a cycle of latency. One cuts the tree half way; a wide SIMD tree on a fast
        part takes more (`qfab.hw._arith.sum_tree`).

    Members
    -------
    i : ``In(stream.Signature(i_layout))``
        ``i_layout = StructLayout({"w": ArrayLayout(ArrayLayout(w, simd), pe),
        "a": ArrayLayout(a, simd)})``: ``w[p][s]`` is the weight of PE ``p``, lane ``s``; codes
        are ``signed(bits)``, ``unsigned(bits)``, or ``unsigned(1)`` for bipolar.
    o : ``Out(stream.Signature(ArrayLayout(signed(acc_bits), pe)))``
        Exact dot products; ``acc_bits`` from the worst case (docs/semantics.md, section 5).
    precision : ``In(range(1, a_bits + 1))``, ``BIT_SERIAL`` only
        Activation bits used for the next beat (the low ``precision`` bits of each code; for a
        signed encoding bit ``precision - 1`` is the sign).

    Latency and throughput (`latency`): a bit-parallel array takes one transfer per cycle and
    presents a dot product ``2 + tree_registers`` cycles after its last transfer (3 by default); a
    bit-serial one takes ``precision`` cycles per transfer (``i.ready`` on the last plane) and
    presents it ``3 + tree_registers`` cycles after its last plane. ``tree_registers`` of those
    cycles are register levels inside each adder tree (and after the multipliers with
    ``use_dsp``), so that the tree is not the design's longest path.
    Backpressure on ``o`` stalls the whole pipeline (``i.ready`` falls while ``o`` is full).
    """

    def __init__(self, pe: int, simd: int, *, w_bits: int, w_encoding: Encoding, a_bits: int,
                 a_encoding: Encoding, beats: int, style: MacStyle = MacStyle.BIT_PARALLEL, use_dsp: bool = False,
                 weights: Sequence[Sequence[Sequence[int]]] | None = None, tree_registers: int = 1) -> None:
        _check_positive("pe", pe)
        _check_positive("tree_registers", tree_registers)
        _check_positive("simd", simd)
        _check_positive("beats", beats)
        _check_bits("w_bits", w_bits, w_encoding, "w_encoding")
        _check_bits("a_bits", a_bits, a_encoding, "a_encoding")
        if not isinstance(style, MacStyle):
            raise TypeError(f"style must be a MacStyle, not {style!r}")
        if style is MacStyle.BIT_SERIAL and a_encoding is Encoding.BIPOLAR:
            raise ValueError("a bit-serial MAC array does not take bipolar activations")
        if use_dsp and style is MacStyle.BIT_SERIAL:
            raise ValueError("use_dsp applies to the bit-parallel style only")
        if weights is not None:
            weights = _check_weights(weights, pe, simd, code_shape(w_bits, w_encoding))
        self._pe, self._simd, self._beats = pe, simd, beats
        self._weights = weights
        self._w_bits, self._w_encoding = w_bits, w_encoding
        self._a_bits, self._a_encoding = a_bits, a_encoding
        self._style, self._use_dsp = style, bool(use_dsp)
        self._tree_registers = tree_registers
        w_lo, w_hi = code_range(w_bits, w_encoding)
        a_lo, a_hi = code_range(a_bits, a_encoding)
        self._w_max, self._a_max = max(-w_lo, w_hi), max(-a_lo, a_hi)
        self._acc_bits = ints.acc_bits(beats * simd * self._w_max * self._a_max)
        self._i_layout = data.StructLayout({
            "w": weight_layout(pe, simd, w_bits, w_encoding),
            "a": data.ArrayLayout(code_shape(a_bits, a_encoding), simd),
        })
        self._o_layout = data.ArrayLayout(signed(self._acc_bits), pe)
        members = {"i": In(stream.Signature(self._i_layout)),
                   "o": Out(stream.Signature(self._o_layout))}
        if style is MacStyle.BIT_SERIAL:
            members["precision"] = In(range(1, a_bits + 1), init=a_bits)
        super().__init__(members)

    pe = property(lambda self: self._pe)
    simd = property(lambda self: self._simd)
    beats = property(lambda self: self._beats)
    style = property(lambda self: self._style)
    acc_bits = property(lambda self: self._acc_bits)
    weights = property(lambda self: self._weights, doc="The constant weight codes, or ``None``.")
    i_layout = property(lambda self: self._i_layout)
    tree_registers = property(lambda self: self._tree_registers)
    latency = property(lambda self: self._tree_registers + (2 if self._style is MacStyle.BIT_PARALLEL else 3),
                       doc="Cycles from the last transfer (bit-serially: plane) to the dot product on ``o``.")
    o_layout = property(lambda self: self._o_layout)

    def elaborate(self, platform):
        m = Module()
        en = Signal()                       # the whole pipeline advances
        m.d.comb += en.eq(~self.o.valid | self.o.ready)

        beat = Signal(range(self._beats))
        beat_last = Signal()
        m.d.comb += beat_last.eq(beat == self._beats - 1)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += beat.eq(Mux(beat_last, 0, beat + 1))

        if self._style is MacStyle.BIT_PARALLEL:
            self._elaborate_parallel(m, en, beat_last)
        else:
            self._elaborate_serial(m, en, beat_last)
        return m

    def _lane(self, field, index):
        """Lane ``index`` of payload field ``field`` as a slice of the payload signal itself.

        Indexing a `data.View` builds a new chain of slices each time (``payload.w[p][s]`` is a
        slice of a slice of the whole payload), and Amaranth's netlist builder walks every link:
        a lane read per PE would cost the payload's full width each time, quadratic in the
        array's size (docs/lowering.md, "Compile time"). One flat slice per lane costs its width.
        """
        field_ = self._i_layout[field]
        shape = field_.shape.elem_shape if field == "a" else field_.shape.elem_shape.elem_shape
        start = field_.offset + index * shape.width
        value = Value.cast(self.i.payload)[start:start + shape.width]
        return value.as_signed() if shape.signed else value

    def _activations(self):
        return [self._lane("a", s) for s in range(self._simd)]

    def _weight_lanes(self, pe):
        """PE ``pe``'s weight per lane: the code from ``i``; with ``weights=``, the weight
        *value* (an ``int``) of a lane that has the same code in every word, or `FewValues` for
        a lane with at most four."""
        if self._weights is None:
            return [self._lane("w", pe * self._simd + s) for s in range(self._simd)]
        lanes = []
        for s in range(self._simd):
            codes = [word[pe][s] for word in self._weights]
            code = self._lane("w", pe * self._simd + s)
            if len(set(codes)) == 1:
                lanes.append(2 * codes[0] - 1 if self._w_encoding is Encoding.BIPOLAR
                             else codes[0])
            else:
                lanes.append(few_values(code, codes, self._w_bits, self._w_encoding) or code)
        return lanes

    def _addends(self, w, a, a_bits, a_encoding):
        """Tiles of ``sum(w * a)``: lanes with an ``int`` weight as constant multiplications
        (zeros left out), `FewValues` lanes as look-ups, the others as run-time products."""
        def lanes_of(kind):
            return ([x for x in w if isinstance(x, kind)],
                    [y for x, y in zip(w, a) if isinstance(x, kind)])
        run_w, run_a = lanes_of(Value)
        addends, constant = tile_addends(run_w, self._w_bits, self._w_encoding, run_a, a_bits,
                                         a_encoding)
        for build, kind in ((const_addends, int), (few_addends, FewValues)):
            lanes, acts = lanes_of(kind)
            if lanes:
                more, more_constant = build(lanes, acts, a_bits, a_encoding)
                addends, constant = addends + more, constant + more_constant
        return addends, constant

    def _value(self, code, encoding):
        if encoding is Encoding.BIPOLAR:
            return Mux(code[0], 1, -1)
        return code

    def _dsp_dot(self, w, a):
        """``sum(w * a)`` over lanes with ``*``, ``k`` lanes per multiplier when they fit.

        ``(sum_i w_i << (k-1-i)*S) * (sum_i a_i << i*S)`` has ``sum_i w_i * a_i`` as its field at
        ``(k-1)*S``; adding half of that field's weight and shifting leaves it in the low ``S``
        bits (the lower fields are too small to carry into it).
        """
        w = [self._value(x, self._w_encoding) for x in w]
        a = [self._value(x, self._a_encoding) for x in a]
        if not w:
            return Const(0, 1)
        k, field = _dsp_packing(code_range(self._w_bits, self._w_encoding),
                                code_range(self._a_bits, self._a_encoding))
        terms = []
        lanes = list(zip(w, a))
        while lanes:
            group, lanes = lanes[:k], lanes[k:]
            if len(group) == 1:
                (w0, a0), = group
                terms.append(w0 * a0)
                continue
            n = len(group)
            packed_w = sum(wi << ((n - 1 - i) * field) for i, (wi, _) in enumerate(group))
            packed_a = sum(ai << (i * field) for i, (_, ai) in enumerate(group))
            low = (n - 1) * field
            product = packed_w * packed_a
            terms.append(((product + (1 << (low - 1))) >> low)[:field].as_signed())
        while len(terms) > 1:
            terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                     for k in range(0, len(terms), 2)]
        return terms[0]

    def _delay(self, m, en, *values):
        """``values`` through the ``tree_registers - 1`` register levels of the adder trees before
        their last one (loaded when ``en`` is high)."""
        for k in range(self._tree_registers - 1):
            regs = [Signal.like(v, name=f"tree_d{k}_{n}") for n, v in enumerate(values)]
            with m.If(en):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
            values = regs
        return values

    def _elaborate_parallel(self, m, en, beat_last):
        m.d.comb += self.i.ready.eq(en)
        s0_valid, s0_last = Signal(), Signal()      # the adder trees' (last) inner register
        s1_valid, s1_last = Signal(), Signal()
        valid, last = self._delay(m, en, self.i.valid, beat_last)
        with m.If(en):
            m.d.sync += [s0_valid.eq(valid), s0_last.eq(last),
                         s1_valid.eq(s0_valid), s1_last.eq(s0_last)]
            m.d.sync += self.o.valid.eq(s1_valid & s1_last)
        for pe in range(self._pe):
            w, a = self._weight_lanes(pe), self._activations()
            if self._use_dsp:
                # run-time (and ROM) weights on multipliers; constant ones as LUT tiles
                w = [x.code if isinstance(x, FewValues) else x for x in w]
                run = [(x, y) for x, y in zip(w, a) if not isinstance(x, int)]
                products = self._dsp_dot([x for x, _ in run], [y for _, y in run])
                dot = Signal(signed(self._acc_bits), name=f"s0_dot_{pe}")   # the multipliers' outputs
                with m.If(en):
                    m.d.sync += dot.eq(products)
                dot, = self._delay(m, en, dot)      # as late as the trees' sums
                fixed, constant = self._addends([x for x in w if isinstance(x, int)],
                                                [y for x, y in zip(w, a) if isinstance(x, int)],
                                                self._a_bits, self._a_encoding)
                if fixed:
                    dot = dot + sum_tree(m, fixed, name=f"pe{pe}_const", pipeline=en,
                                              registers=self._tree_registers).value
                s1_sum = Signal(signed(self._acc_bits), name=f"s1_sum_{pe}")
            else:
                addends, constant = self._addends(w, a, self._a_bits, self._a_encoding)
                tree = sum_tree(m, addends, name=f"pe{pe}", pipeline=en, registers=self._tree_registers)
                dot = tree.value
                s1_sum = Signal(unsigned(min(tree.width, self._acc_bits)), name=f"s1_sum_{pe}")
            acc_init = (constant * self._beats) % (1 << self._acc_bits)
            acc = Signal(self._acc_bits, name=f"acc_{pe}", init=acc_init, reset_less=True)
            acc_next = Signal(self._acc_bits, name=f"acc_next_{pe}")
            m.d.comb += acc_next.eq(acc + s1_sum)
            _clear_or_load(m, acc, en & s1_valid, s1_last, acc_next)
            with m.If(en):
                m.d.sync += s1_sum.eq(dot)
                with m.If(s1_valid & s1_last):
                    m.d.sync += self.o.payload[pe].eq(acc_next)

    def _elaborate_serial(self, m, en, beat_last):
        simd = self._simd
        signed_a = self._a_encoding is Encoding.SIGNED
        step = Signal(range(self._a_bits))
        plane = Signal(range(self._a_bits))
        plane_last = Signal()
        m.d.comb += [
            plane.eq(self.precision - 1 - step),
            plane_last.eq(step == self.precision - 1),
            self.i.ready.eq(en & plane_last),
        ]
        with m.If(en & self.i.valid):
            m.d.sync += step.eq(Mux(plane_last, 0, step + 1))
        planes = [Signal(name=f"plane_{s}") for s in range(simd)]
        for s in range(simd):
            code = self._lane("a", s).as_unsigned()
            m.d.comb += planes[s].eq(code.bit_select(plane, 1))

        s0_valid, s0_plane_last, s0_last = Signal(), Signal(), Signal()   # the trees' inner register
        s1_valid, s1_plane_last, s1_last = Signal(), Signal(), Signal()
        s2_valid, s2_last = Signal(), Signal()
        valid, first_plane_last, first_last = self._delay(m, en, self.i.valid, plane_last, plane_last & beat_last)
        with m.If(en):
            m.d.sync += [
                s0_valid.eq(valid),
                s0_plane_last.eq(first_plane_last),
                s0_last.eq(first_last),
                s1_valid.eq(s0_valid),
                s1_plane_last.eq(s0_plane_last),
                s1_last.eq(s0_last),
                s2_valid.eq(s1_valid & s1_plane_last),
                s2_last.eq(s1_last),
                self.o.valid.eq(s2_valid & s2_last),
            ]
        ps_bound = simd * self._w_max
        neg = Signal()                      # the sign plane (MSB of a signed code) subtracts
        m.d.comb += neg.eq(signed_a & (step == 0))
        s0_neg, s1_neg = Signal(), Signal()
        neg_in, = self._delay(m, en, neg)
        with m.If(en):
            m.d.sync += [s0_neg.eq(neg_in), s1_neg.eq(s0_neg)]
        for pe in range(self._pe):
            addends, constant = self._addends(self._weight_lanes(pe), planes, 1,
                                              Encoding.UNSIGNED)
            tree = sum_tree(m, addends, name=f"pe{pe}", pipeline=en, registers=self._tree_registers)     # plane sum - constant
            width = tree.width
            # Horner over the planes, MSB first: partial = 2 * partial + tree (or, on the sign
            # plane, + ~tree + 1 = 2**width - tree). Starting each transfer from `start`, the
            # constants of all planes add up to `constant` at any precision p:
            #   unsigned: 2**p * start - (2**p - 1) * constant            with start = constant
            #   signed:   2**p * start + 2**(p-1) * 2**width + constant   with start = -2**(width-1)
            start = -(1 << (width - 1)) if signed_a else constant
            partial_bits = ints.acc_bits(ps_bound * (1 << self._a_bits) + abs(constant))
            s1_ps = Signal(width, name=f"s1_ps_{pe}")
            partial = Signal(partial_bits, name=f"partial_{pe}", reset_less=True,
                             init=start % (1 << partial_bits))
            partial_next = Signal(partial_bits, name=f"partial_next_{pe}")
            s2_partial = Signal(signed(partial_bits), name=f"s2_partial_{pe}")
            acc = Signal(self._acc_bits, name=f"acc_{pe}", reset_less=True,
                         init=(-constant * self._beats) % (1 << self._acc_bits))
            acc_next = Signal(self._acc_bits, name=f"acc_next_{pe}")
            m.d.comb += [
                partial_next.eq(Cat(s1_neg, partial) + s1_ps),     # (partial << 1) + neg is free
                acc_next.eq(acc + s2_partial),
            ]
            _clear_or_load(m, partial, en & s1_valid, s1_plane_last, partial_next)
            _clear_or_load(m, acc, en & s2_valid, s2_last, acc_next)
            with m.If(en):
                m.d.sync += s1_ps.eq(tree.value ^ s0_neg.replicate(width))
                with m.If(s1_valid & s1_plane_last):
                    m.d.sync += s2_partial.eq(partial_next)
                with m.If(s2_valid & s2_last):
                    m.d.sync += self.o.payload[pe].eq(acc_next)
