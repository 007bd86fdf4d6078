"""Requantization: per-channel bias, ``M0`` multiply, rounding shift, zero point, clamp.

`Requant` multiplies on a multiplier (DSP blocks where synthesis has them) or by shift and add in
logic over several cycles; `qfab.hw.threshold.ThresholdRequant` compares with thresholds instead.
`RequantMode` names the four ways (docs/hardware.md, "Requantization options").
"""

import enum
from collections.abc import Sequence

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, ValueLike, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfab.base import ints

from .cells import DSP_CELLS, DspProduct
from .plumbing import count_room

__all__ = ["RequantMode", "Requant", "requantize", "const_multiply", "csd_digits", "shift_add_steps",
           "signed_digits", "digit_bias", "biased_digits"]


def csd_digits(constant: int) -> list[tuple[int, int]]:
    """The canonical signed digits of ``constant >= 0``: ``(position, +1 or -1)`` pairs whose
    ``sum(sign << position)`` is ``constant``, no two adjacent (the fewest nonzero digits)."""
    digits, position = [], 0
    while constant:
        if constant & 1:
            sign = 2 - (constant & 3)            # 01 -> +1, 11 -> -1 (then carry)
            digits.append((position, sign))
            constant -= sign
        constant >>= 1
        position += 1
    return digits


def const_multiply(value: ValueLike, constant: int, mode: "RequantMode | str | None" = None) -> Value:
    """``value * constant`` for a constant ``constant >= 0``: the ``*`` operator (a multiplier,
    DSP blocks where synthesis has them) with ``MULTIPLY`` (the default), or with ``SHIFT_ADD`` a
    tree of adders over the shifted copies of ``value`` named by the canonical signed digits of
    ``constant`` (`csd_digits`), so no multiplier."""
    mode = RequantMode.MULTIPLY if mode is None else RequantMode(mode)
    value = Value.cast(value)
    if constant == 1:
        return value
    if mode is RequantMode.MULTIPLY:
        return value * Const(constant, range(constant + 1))
    if mode is not RequantMode.SHIFT_ADD:
        raise ValueError(f"a constant multiply is MULTIPLY or SHIFT_ADD, not {mode}")
    terms = [(value << p) if sign > 0 else -(value << p) for p, sign in csd_digits(constant)]
    if not terms:
        return Const(0, 1)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def requantize(acc: ValueLike, multiplier: int, shift: int, zero_point: int, lo: int, hi: int,
               rounding: str = "half_up", mode: "RequantMode | str | None" = None) -> Value:
    """``clamp(zero_point + round_shift(acc * multiplier, shift), lo, hi)`` with constant parameters,
    combinational: the form of `Requant` for units with one multiplier for all channels (pools,
    residual add).

    ``acc`` is an Amaranth value (signed or not); ``multiplier >= 0``, ``0 <= shift <= 62``,
    ``zero_point``, ``lo`` and ``hi`` are Python integers. The same arithmetic as `Requant` and
    ``qfab.compiler.intops.requantize`` (docs/semantics.md, section 3): add half, then shift right
    arithmetically; Amaranth widens every intermediate, so nothing overflows. ``rounding`` is
    ``"half_up"`` or ``"half_even"`` (ties to even: add ``half - 1`` plus bit ``shift`` of the
    product, then shift; ``qfab.compiler.intops.round_shift_even``). ``mode`` (`RequantMode`):
    ``MULTIPLY`` (the default) or ``SHIFT_ADD`` multiply as `const_multiply` does;
    ``THRESHOLDS`` compares ``acc`` with the ``hi - lo`` constant thresholds of
    ``qfab.hw.threshold.thresholds`` over the range of ``acc``'s shape.
    """
    if rounding not in ("half_up", "half_even"):
        raise ValueError(f"Rounding must be 'half_up' or 'half_even', not {rounding!r}")
    mode = RequantMode.MULTIPLY if mode is None else RequantMode(mode)
    if mode is RequantMode.THRESHOLDS:
        from .threshold import threshold_count, thresholds
        acc = Value.cast(acc)
        shape = acc.shape()
        acc_lo, acc_hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else \
            (0, (1 << shape.width) - 1)
        table = thresholds(multiplier, shift, zero_point, lo, hi, acc_lo, acc_hi, rounding=rounding)
        return lo + threshold_count(acc, table, acc_lo, acc_hi)
    product = const_multiply(acc, multiplier, mode)
    if shift > 0 and rounding == "half_even":
        product = Value.cast(product)
        width, is_signed = len(product), product.shape().signed
        odd = product[min(shift, width - 1)] if is_signed else (product[shift] if shift < width else 0)
        product = (product + ((1 << (shift - 1)) - 1) + odd) >> shift
    elif shift > 0:
        product = (product + (1 << (shift - 1))) >> shift
    y = product + zero_point
    return Mux(y < lo, lo, Mux(y > hi, hi, y))


class RequantMode(enum.Enum):
    """How a requantization unit computes ``requantize(acc)`` (all bit-exact, docs/semantics.md).

    ``MULTIPLY``: ``acc * M0`` on a multiplier (DSP blocks), one beat per cycle.
    ``SHIFT_ADD``: ``acc * M0`` by shift and add in logic, a few bits of ``M0`` per cycle.
    ``THRESHOLDS``: the output is the number of per-channel thresholds ``acc`` reaches, all
    compared at once (FINN's MultiThreshold); one beat per cycle.
    ``SEARCH``: the same thresholds in block RAM, found by binary search in ``out_bits`` cycles.
    """
    MULTIPLY = "multiply"
    SHIFT_ADD = "shift_add"
    THRESHOLDS = "thresholds"
    SEARCH = "search"


def _ints(name, values, count):
    try:
        values = [int(v) for v in values]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of integers, not {values!r}") from None
    if len(values) != count:
        raise ValueError(f"{name} must have {count} elements, not {len(values)}")
    return values


def check_requant_params(lanes, channels, acc_bits, bias, m0, shift, zero_point, lo, hi, out_bits, out_signed,
                         m_bits):
    """The checked, normalized parameters of a requantization unit (shared with
    `qfab.hw.threshold.ThresholdRequant`): ``(bias, m0, shift, zero_point, lo, hi, out_shape)``."""
    for name, value in (("lanes", lanes), ("channels", channels), ("acc_bits", acc_bits),
                        ("out_bits", out_bits), ("m_bits", m_bits)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if channels % lanes:
        raise ValueError(f"lanes ({lanes}) must divide channels ({channels})")
    bias = _ints("bias", bias, channels)
    m0 = _ints("m0", m0, channels)
    shift = _ints("shift", shift, channels)
    for v in m0:
        if not 0 <= v < (1 << m_bits):
            raise ValueError(f"m0 must be in 0 .. 2**{m_bits} - 1, not {v}")
    for v in shift:
        if not 0 <= v <= 62:
            raise ValueError(f"shift must be in 0 .. 62, not {v}")
    out_shape = signed(out_bits) if out_signed else unsigned(out_bits)
    q_lo, q_hi = ints.code_range(out_bits, out_signed)
    zero_point, lo, hi = int(zero_point), int(lo), int(hi)
    if not q_lo <= lo <= hi <= q_hi:
        raise ValueError(f"clamp [{lo}, {hi}] must lie within the output range "
                         f"[{q_lo}, {q_hi}]")
    return bias, m0, shift, zero_point, lo, hi, out_shape


def digit_bias(bits, width):
    """``(n, B)`` of `signed_digits`: ``n = ceil((bits + 1) / width)`` digits, ``B`` the sum of
    every digit's ``2**(width - 1)``; ``value + B`` is in ``[0, 2**(n * width))`` for every
    signed ``bits``-bit value."""
    n = -(-(bits + 1) // width)
    return n, sum(1 << (k * width + width - 1) for k in range(n))


def biased_digits(y, n, width):
    """The `signed_digits` of ``value`` from ``y = value + B`` (`digit_bias`): ``y``'s ``k``-th
    ``width``-bit slice minus ``2**(width - 1)``, i.e. the slice with its top bit inverted, read
    as signed. Wiring only."""
    y = Cat(y[:n * width], Const(0, max(0, n * width - len(y))))
    return [Cat(y[k * width:(k + 1) * width - 1], ~y[(k + 1) * width - 1]).as_signed() for k in range(n)]


def digit_words(value, bits, width):
    """The `signed_digits` of the integer ``value`` (signed, ``bits`` bits) as one word: digit
    ``k``'s ``width``-bit two's complement in bits ``k * width`` and up. ``(value + B) ^ B``
    (`digit_bias`): each slice of ``value + B`` with its top bit inverted, as `biased_digits`
    does in LUTs."""
    bias = digit_bias(bits, width)[1]
    return (value + bias) ^ bias


def signed_digits(value, bits, width):
    """``value`` (a signed ``bits``-bit `Value`) as ``ceil((bits + 1) / width)`` signed
    ``width``-bit digits, lowest first, ``value == sum(d << (width * k))``: one adder (``value +
    B``, `digit_bias`), then `biased_digits`. No digit has a constant bit (each can be a whole
    DSP operand register)."""
    n, bias = digit_bias(bits, width)
    return biased_digits(value + bias, n, width)


def shift_add_steps(m0_bits: int, digit_bits: int) -> int:
    """Cycles of the shift-and-add multiply: ``ceil(m0_bits / digit_bits)`` (at least 1)."""
    return max(1, -(-m0_bits // digit_bits))


BLOCK_ROM_DEPTH = 16        # from this depth a ROM of more than BLOCK_ROM_MIN_BITS bits is asked for block RAM
BLOCK_ROM_MIN_BITS = 1024
LOGIC_ROM_DEPTH = 64        # M0's digits for DSP cells in LUTs up to this depth (`Requant`'s ``dsp_cell``)


def rom(m, values, index, en, shape, name, *, logic=False):
    """``values[index]`` one cycle later (read when ``en``): a constant if all are equal; a ROM
    with a registered read otherwise (asked for block RAM from 16 entries and more than 1024 bits:
    smaller ones cost fewer LUTs than a block; asked for LUTs whatever its size with ``logic``)."""
    if len(set(values)) == 1:
        return Const(values[0], shape)
    block = len(values) >= BLOCK_ROM_DEPTH and len(values) * Shape.cast(shape).width > BLOCK_ROM_MIN_BITS
    style = "logic" if logic else "block" if block else None
    m.submodules[name] = mem = Memory(shape=shape, depth=len(values), init=values,
                                      attrs={"rom_style": style} if style else None)
    port = mem.read_port()
    m.d.comb += [port.addr.eq(index), port.en.eq(en)]
    return port.data


class Requant(wiring.Component):
    """``y = clamp(zero_point + round_shift((acc + bias[c]) * m0[c], shift[c]), lo, hi)``.

    Exactly ``qfab.compiler.intops.requantize`` on ``acc + bias`` (docs/semantics.md, section 3).
    The bias and the rounding constant are folded after the multiply:
    ``((acc * m0 + bias * m0 + (zero_point << n) + half) >> n``, then the clamp.

    Parameters
    ----------
    lanes : int
        Channels per beat.
    channels : int
        Channels in total, a multiple of ``lanes``; beats cycle through the ``channels // lanes``
        folds in order (beat ``t`` lane ``l`` is channel ``(t % folds) * lanes + l``).
    acc_bits : int
        Width of the signed accumulators on ``i``.
    bias, m0, shift : sequences of ``channels`` integers
        Per-channel bias, multiplier ``0 <= m0 < 2**m_bits`` and shift ``0 <= shift <= 62``.
    zero_point, lo, hi : int
        Output zero point and clamp, ``lo <= hi`` within the output code range.
    out_bits : int
    out_signed : bool
    m_bits : int
        Width of ``m0`` (default 24).
    mode : RequantMode
        ``MULTIPLY`` (the default) or ``SHIFT_ADD``; the threshold modes are
        `qfab.hw.threshold.ThresholdRequant`.
    digit_bits : int
        ``SHIFT_ADD`` only: bits of ``M0`` added per cycle (default 1).
    rounding : str
        The shift's rule for exact ties: ``"half_up"`` (default, ``round_shift``) or
        ``"half_even"`` (``round_shift_even``: a model imported from onnxruntime's formats;
        docs/semantics.md). Half to even finds the tie in the shift stage (the ``n`` bits shifted
        out are zero after adding half) and takes one off an odd result in the clamp stage: same
        latency.
    split_multiply : bool
        ``MULTIPLY`` only: the product in two cycles, ``acc`` times the low and the high half of
        ``M0`` (each within an 18x18 multiplier for accumulators of up to 17 bits, their outputs
        registered), then their sum: one more cycle of latency. A 24-bit ``M0`` on one ``*`` is
        several DSP blocks summed in the fabric in one cycle, the ECP5 digits CNN's slowest path
        at 97 MHz once everything else was pipelined.
    dsp_width : int or None
        ``MULTIPLY`` only: the product as pieces for signed ``dsp_width x dsp_width`` multipliers
        (16: the iCE40's SB_MAC16). ``acc`` and ``M0`` are cut into signed digits of
        ``dsp_width`` bits (whole registers, no constant bits, so synthesis packs them into each
        DSP's input registers), every pair's product is registered (the DSP's output register;
        a wire marked ``keep`` holds each product's every bit, which the sum may not need), and
        the pieces' sum is the product register: two more cycles of latency. Without it Yosys
        chains a wide product's SB_MAC16s through their adders with none of their registers,
        paths nextpnr-ice40 does not time. Takes precedence over ``split_multiply``.
    dsp_cell : str or None
        With ``dsp_width=18``, ``"MULT18X18D"``: each piece is a `qfab.hw.cells.DspProduct`, the
        ECP5's DSP cell with its own input registers when elaborated for an ECP5
        platform (`qfab.hw.cells.Cells`, as `qfab compile` writes the netlist), flip-flops
        otherwise, the same cycles. Yosys's ECP5 flow packs no register into a
        MULT18X18D, so without it every piece is a fabric register, the DSP's 3.9 ns and another
        fabric register, with the routing to and from the DSP column in the same cycle (the
        digits MLP w8a8's slowest path, 83.5 MHz). M0's digits are then read from a ROM in
        LUTs (up to `LOGIC_ROM_DEPTH` folds): a block RAM's 5.6 ns clock-to-output and the
        routing to the DSP column in one cycle had limited the digits MLP w8a8 to 98.3 MHz.
    reserve : bool
        ``MULTIPLY`` only: the pipeline never stalls. Results go into a queue of `queue_depth`
        beats (`amaranth.lib.fifo.SyncFIFO`, distributed RAM on the ECP5) instead of the output
        register, and a beat is taken only while an entry is free for it (a count of free
        entries, taken with the beat and given back when ``o`` takes one; ``i.ready`` is a
        register). Without it every register of the pipeline, the DSPs' clock enables among
        them, loads on ``o.ready``: a combinational path from the next stage's width converter
        through the enable's fanout into the MAC queue before it (the digits MLP w4a4's slowest
        path on the ECP5, 92.4 MHz). Same latency and rate.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(acc_bits), lanes)))``
    o : ``Out(stream.Signature(ArrayLayout(signed(out_bits) or unsigned(out_bits), lanes)))``

    Latency and throughput (`latency`, `interval`): ``MULTIPLY`` is a pipeline of 5 registered
    stages (input and ``M0`` registers in front of the multiplier, product register, offset sum,
    shift, clamp), latency 5 cycles (6 with ``split_multiply``, 7 with ``dsp_width``), one beat per cycle. The shift is the lane's smallest shift
    (wiring) and a variable shift by the rest (a shifter as wide as the shifts differ).
    ``SHIFT_ADD`` adds ``digit_bits`` bits of ``M0`` per cycle into the product (LSB first,
    starting from the offset, no multiplier) for ``steps = ceil(bits(max M0) / digit_bits)``
    cycles, hands the product (with the offset: the offset sum is then wiring) on in one more,
    then the same 4 stages: latency ``steps + 5``, one beat per ``steps + 1`` cycles.
    Backpressure on ``o`` stalls the pipeline. The per-channel constants are ROMs with a
    registered read (block RAM where synthesis can).
    """

    def __init__(self, lanes: int, channels: int, *, acc_bits: int, bias: Sequence[int], m0: Sequence[int],
                 shift: Sequence[int], zero_point: int, lo: int, hi: int, out_bits: int, out_signed: bool,
                 m_bits: int = 24, mode: RequantMode = RequantMode.MULTIPLY, digit_bits: int = 1,
                 rounding: str = "half_up", split_multiply: bool = False, dsp_width: int | None = None,
                 dsp_cell: str | None = None, reserve: bool = False) -> None:
        if rounding not in ("half_up", "half_even"):
            raise ValueError(f"Rounding must be 'half_up' or 'half_even', not {rounding!r}")
        bias, m0, shift, zero_point, lo, hi, out_shape = check_requant_params(
            lanes, channels, acc_bits, bias, m0, shift, zero_point, lo, hi, out_bits, out_signed, m_bits)
        mode = RequantMode(mode)
        if mode not in (RequantMode.MULTIPLY, RequantMode.SHIFT_ADD):
            raise ValueError(f"Requant computes MULTIPLY or SHIFT_ADD, not {mode}; the threshold modes are "
                             f"qfab.hw.threshold.ThresholdRequant")
        if not isinstance(digit_bits, int) or isinstance(digit_bits, bool) or digit_bits < 1:
            raise TypeError(f"digit_bits must be a positive integer, not {digit_bits!r}")
        self._lanes, self._channels, self._acc_bits = lanes, channels, acc_bits
        self._bias, self._m0, self._shift = bias, m0, shift
        self._zero_point, self._lo, self._hi = zero_point, lo, hi
        self._out_shape, self._m_bits = out_shape, m_bits
        self._mode, self._digit_bits = mode, digit_bits
        self._rounding = rounding
        if dsp_width is not None and (not isinstance(dsp_width, int) or isinstance(dsp_width, bool) or dsp_width < 2):
            raise TypeError(f"dsp_width must be an integer of at least 2, not {dsp_width!r}")
        self._dsp_width = dsp_width if mode is RequantMode.MULTIPLY else None
        self._split = bool(split_multiply) and mode is RequantMode.MULTIPLY and self._dsp_width is None
        if dsp_cell is not None and dsp_cell not in DSP_CELLS:
            raise ValueError(f"dsp_cell must be one of {sorted(DSP_CELLS)} or None, not {dsp_cell!r}")
        if dsp_cell is not None and mode is RequantMode.MULTIPLY and self._dsp_width != DSP_CELLS[dsp_cell]:
            raise ValueError(f"dsp_cell {dsp_cell} takes dsp_width={DSP_CELLS[dsp_cell]}, not {self._dsp_width}")
        self._dsp_cell = dsp_cell if self._dsp_width is not None else None
        self._reserve = bool(reserve) and mode is RequantMode.MULTIPLY
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(acc_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, lanes))),
        })

    lanes = property(lambda self: self._lanes)
    channels = property(lambda self: self._channels)
    mode = property(lambda self: self._mode)
    rounding = property(lambda self: self._rounding)

    @property
    def steps(self):
        """Cycles of the multiply: 1 on a multiplier, ``ceil(bits(max M0) / digit_bits)`` by shift and add."""
        if self._mode is RequantMode.MULTIPLY:
            return 1
        return shift_add_steps(max(self._m0).bit_length(), self._digit_bits)

    @property
    def latency(self):
        """Cycles from taking a beat to offering its result, without stalls."""
        if self._mode is RequantMode.MULTIPLY:
            return 5 + self._product_stages
        return self.steps + 5

    @property
    def _product_stages(self):
        """Registers a ``MULTIPLY`` product takes beyond one: the DSP pieces' operands and
        products (``dsp_width``), or the split halves (``split_multiply``)."""
        return 2 if self._dsp_width else 1 if self._split else 0

    @property
    def queue_depth(self):
        """With ``reserve``: the entries of the output queue, the beats that can be taken and not
        yet given back at full rate: the ``latency`` cycles, and one to give an entry back. 0
        without."""
        return self.latency + 1 if self._reserve else 0

    @property
    def interval(self):
        """Cycles between beats at full rate."""
        return 1 if self._mode is RequantMode.MULTIPLY else self.steps + 1

    def elaborate(self, platform):
        m = Module()
        lanes, folds = self._lanes, self._channels // self._lanes
        en = Signal()          # the pipeline behind the multiply advances
        if self._reserve:
            # results go into a queue with an entry promised to every beat taken: no stall
            out = stream.Signature(self.o.payload.shape()).create()
            m.d.comb += en.eq(1)
        else:
            out = self.o
            m.d.comb += en.eq(~self.o.valid | self.o.ready)

        counter = Signal(range(folds))          # fold of the next beat taken
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        with m.If(take):
            m.d.sync += counter.eq(Mux(counter == folds - 1, 0, counter + 1))

        # stage P holds the product (and its fold), then S (offset sum), H (shifted), o (clamped)
        p_valid, s_valid, h_valid = Signal(), Signal(), Signal()
        p_fold = Signal(range(folds))
        with m.If(en):
            m.d.sync += [s_valid.eq(p_valid), h_valid.eq(s_valid)]
            if not self._reserve:
                m.d.sync += self.o.valid.eq(h_valid)

        acc_max = 1 << (self._acc_bits - 1)
        steps = self.steps
        # a ROM read with the fold of the beat entering a stage is ready with the stage after it
        if self._mode is RequantMode.MULTIPLY:
            # input register I (accumulator, M0 read from its ROM), then the product register
            i_valid, i_fold = Signal(), Signal(range(folds))
            with m.If(en):
                m.d.sync += [i_valid.eq(take), i_fold.eq(counter)]
            if self._reserve:
                self._reserve_queue(m, out, take, h_valid)
            else:
                m.d.comb += self.i.ready.eq(en)
            # the product's own stages (split halves; DSP operands, then pieces), then P
            q_valid, q_fold, ahead_fold = i_valid, i_fold, counter
            for k in range(self._product_stages):
                v, f = Signal(name=f"mul_valid_{k}"), Signal(range(folds), name=f"mul_fold_{k}")
                with m.If(en):
                    m.d.sync += [v.eq(q_valid), f.eq(q_fold)]
                q_valid, q_fold, ahead_fold = v, f, q_fold
            with m.If(en):
                m.d.sync += [p_valid.eq(q_valid), p_fold.eq(q_fold)]
        else:
            # the shift-and-add multiplier: busy for `steps` cycles, then holds its product until
            # the pipeline takes it (and takes the next beat in the same cycle)
            busy, done = Signal(), Signal()
            step = Signal(range(steps))
            handoff = Signal()
            # `_shift_add` reads M0 ahead, at the fold counter; the read's first result is a cycle
            # after reset
            primed = Signal()
            m.d.sync += primed.eq(1)
            m.d.comb += [handoff.eq(done & en), self.i.ready.eq((~busy | handoff) & primed)]
            mul_fold = Signal(range(folds))
            with m.If(en):
                m.d.sync += [p_valid.eq(handoff), p_fold.eq(mul_fold)]
            with m.If(handoff):
                m.d.sync += [busy.eq(0), done.eq(0)]
            with m.If(busy & ~done):
                m.d.sync += step.eq(step + 1)
                with m.If(step == steps - 1):
                    m.d.sync += [done.eq(1), step.eq(0)]
            with m.If(take):
                m.d.sync += [busy.eq(1), mul_fold.eq(counter)]

        for lane in range(lanes):
            chans = [f * lanes + lane for f in range(folds)]
            m0 = [self._m0[c] for c in chans]
            shift = [self._shift[c] for c in chans]
            # (acc + b) * m0 + (zp << n) + half(n), then >> n
            offset = [self._bias[c] * self._m0[c] + (self._zero_point << self._shift[c])
                      + ((1 << (self._shift[c] - 1)) if self._shift[c] else 0) for c in chans]
            prod_bound = acc_max * max(m0)
            prod_shape = signed(max(2, prod_bound.bit_length() + 2))
            sum_bound = prod_bound + max(abs(v) for v in offset)
            sum_shape = signed(max(2, sum_bound.bit_length() + 2))
            # the shift-and-add multiply adds the offset itself (`_shift_add`): its product is the sum
            prod = Signal(sum_shape if self._mode is RequantMode.SHIFT_ADD else prod_shape, name=f"prod_{lane}")

            if self._mode is RequantMode.MULTIPLY:
                if self._dsp_width:     # M0's signed digits in the ROM (`digit_words`): wiring only
                    n = digit_bias(self._m_bits + 1, self._dsp_width)[0]
                    m0_sig = rom(m, [digit_words(v, self._m_bits + 1, self._dsp_width) for v in m0], counter,
                                 en, unsigned(n * self._dsp_width), f"m0_{lane}",
                                 logic=self._dsp_cell is not None and folds <= LOGIC_ROM_DEPTH)
                else:
                    m0_sig = rom(m, m0, counter, en, unsigned(self._m_bits), f"m0_{lane}")
                acc = Signal(signed(self._acc_bits), name=f"acc_{lane}")
                with m.If(en):
                    m.d.sync += acc.eq(self.i.payload[lane])
                if self._dsp_width:
                    self._dsp_pieces(m, lane, acc, m0_sig, en, prod)
                elif self._split:
                    low = self._m_bits // 2
                    q_lo = Signal(signed(self._acc_bits + low + 1), name=f"q_lo_{lane}")
                    q_hi = Signal(signed(self._acc_bits + self._m_bits - low + 1), name=f"q_hi_{lane}")
                    with m.If(en):
                        m.d.sync += [q_lo.eq(acc * m0_sig[:low]), q_hi.eq(acc * m0_sig[low:]),
                                     prod.eq((q_hi << low) + q_lo)]
                else:
                    with m.If(en):
                        m.d.sync += prod.eq(acc * m0_sig)
            else:
                self._shift_add(m, lane, m0, offset, counter, take, busy, done, steps, prod, handoff)

            if self._mode is RequantMode.MULTIPLY:
                # read a stage earlier and registered: a block RAM's clock-to-output (5.6 ns on
                # the ECP5) in front of the offset sum's carry chain had been the ECP5 digits MLP
                # w8a8's slowest path (94.4 MHz)
                off_read = rom(m, offset, ahead_fold, en, sum_shape, f"offset_{lane}")
                off_sig = Signal(sum_shape, name=f"offset_reg_{lane}")
                with m.If(en):
                    m.d.sync += off_sig.eq(off_read)
                with_offset = prod + off_sig
            else:
                with_offset = prod
            # the lane's smallest shift is wiring; only the rest is a variable shifter
            least = min(shift)
            varying = [v - least for v in shift]
            shift_sig = rom(m, varying, p_fold, en, unsigned(max(1, max(varying).bit_length())), f"shift_{lane}")
            total = Signal(sum_shape, name=f"sum_{lane}")
            shifted = Signal(sum_shape, name=f"shifted_{lane}")
            minus = None
            if self._rounding == "half_even" and max(shift) > 0:
                # ``total`` is ``v + half + (zp << n)``: an exact tie leaves its low n bits zero;
                # the half-up result ``shifted - zp`` is then one too many if it is odd
                tie = Signal(name=f"tie_{lane}")
                low = [~total[j] | (j >= least + shift_sig) for j in range(min(max(shift), len(total)))]
                with m.If(en):
                    m.d.sync += tie.eq(Cat(*low).all() & (shift_sig + least != 0))
                minus = Signal(name=f"even_{lane}")
                m.d.comb += minus.eq(tie & (shifted[0] ^ (self._zero_point & 1)))
            with m.If(en):
                m.d.sync += [total.eq(with_offset), shifted.eq((total >> least) >> shift_sig)]
            clamped = self._clamp(m, shifted, minus, lane)
            if self._reserve:       # into the queue: written in the cycle the register would load
                m.d.comb += out.payload[lane].eq(clamped)
            else:
                with m.If(en):
                    m.d.sync += self.o.payload[lane].eq(clamped)
        return m

    def _reserve_queue(self, m, out, take, h_valid):
        """``reserve``: the clamped results (``out``, combinational, valid with ``h_valid``) into a
        `SyncFIFO` of `queue_depth` beats that ``o`` reads; ``i.ready`` while an entry is free for
        the beat, ``free`` counting the entries not promised to a beat taken (taken with ``take``,
        given back when ``o`` takes a beat)."""
        depth = self.queue_depth
        m.submodules.queue = queue = fifo.SyncFIFO(width=self.o.payload.shape().size, depth=depth)
        room = Signal(init=1)
        m.d.comb += [
            queue.w_en.eq(h_valid), queue.w_data.eq(out.payload),    # always room: promised
            self.o.valid.eq(queue.r_rdy), self.o.payload.eq(queue.r_data), queue.r_en.eq(self.o.ready),
            self.i.ready.eq(room),
        ]
        count_room(m, depth, take=take, give=queue.r_en & queue.r_rdy, room=room)

    def _clamp(self, m, shifted, minus, lane):
        """``clamp(shifted - minus, lo, hi)`` (``minus``: None, or the half to even correction, one
        bit), with the wide comparisons out of the carry chains.

        ``shifted`` is as wide as the sum (40 to 60 bits); comparing it with ``lo`` and ``hi``
        directly (after the tie's subtraction) made the digits MLP w8a8's slowest path on the
        UP5K: a subtraction and a comparison of 48 bits in series, about 100 carry steps. Here
        ``narrow`` bits hold every value within one of ``[lo, hi]`` with room to spare: if the bits
        above them all equal the sign, ``shifted`` is its low ``narrow`` bits and the clamp is done
        on those; otherwise it is at least ``2**(narrow - 1) > hi + 1`` (then ``hi``) or below
        ``-2**(narrow - 1) < lo - 1`` (then ``lo``), whatever the tie. The test of the high bits
        is a tree of ANDs and ORs, not a chain."""
        width = len(shifted)
        narrow = max(abs(self._lo).bit_length(), abs(self._hi).bit_length()) + 2
        if narrow >= width:
            result = shifted if minus is None else shifted - minus
            return Mux(result < self._lo, self._lo, Mux(result > self._hi, self._hi, result))
        high = shifted[narrow - 1:]
        fits = Signal(name=f"fits_{lane}")
        m.d.comb += fits.eq(high.all() | ~high.any())
        small = shifted[:narrow].as_signed()
        if minus is not None:
            small = small - minus
        small_clamped = Mux(small < self._lo, self._lo, Mux(small > self._hi, self._hi, small))
        return Mux(fits, small_clamped, Mux(shifted[-1], self._lo, self._hi))

    def _dsp_pieces(self, m, lane, acc, m0_sig, en, prod):
        """``prod = acc * m0`` in two more registers: both operands as `signed_digits` of
        ``dsp_width`` bits in registers (``m0_sig`` holds M0's digits, `digit_words`),
        every pair's product in a register (`_dsp_product`), their sum. The sum adds the products
        of equal weight, then each weight's sum above the next one's low ``dsp_width`` bits
        (wiring). (A sum in two registered steps with the cells, a row per digit of ``acc``,
        left the digits MLP w8a8 unrouted after an hour: docs/boards.md.)"""
        w = self._dsp_width
        a_digits = signed_digits(acc, self._acc_bits, w)
        b_digits = [m0_sig[k * w:(k + 1) * w].as_signed() for k in range(len(m0_sig) // w)]
        weights = [[] for _ in range(len(a_digits) + len(b_digits) - 1)]
        for i, a_value in enumerate(a_digits):
            for j, b_value in enumerate(b_digits):
                weights[i + j].append(self._dsp_product(m, a_value, b_value, en, f"{i}{j}_{lane}"))
        total = sum(weights[-1])
        for group in reversed(weights[:-1]):
            part = sum(group)
            total = Cat(part[:w], total + (part >> w)).as_signed()
        with m.If(en):
            m.d.sync += prod.eq(total)

    def _dsp_product(self, m, a_value, b_value, en, tag):
        """``a_value * b_value`` (signed ``dsp_width``-bit values) two cycles later, both operands
        and the product registered while ``en``: flip-flops (which Yosys packs into an SB_MAC16),
        or with ``dsp_cell`` a `DspProduct`."""
        w = self._dsp_width
        if self._dsp_cell is not None:
            m.submodules[f"dsp{tag}"] = unit = DspProduct(self._dsp_cell)
            m.d.comb += [unit.a.eq(a_value), unit.b.eq(b_value), unit.en.eq(en)]
            return unit.q
        a = Signal(signed(w), reset_less=True, name=f"dsp_a{tag}")
        b = Signal(signed(w), reset_less=True, name=f"dsp_b{tag}")
        q = Signal(signed(2 * w), reset_less=True, name=f"dsp_q{tag}")
        # the wire marked keep holds the product's every bit, which the sum may not need
        alive = Signal(2 * w, name=f"dsp_keep{tag}", attrs={"keep": 1})
        with m.If(en):
            m.d.sync += [a.eq(a_value), b.eq(b_value), q.eq(a * b)]
        m.d.comb += alive.eq(q)
        return q

    def _shift_add(self, m, lane, m0, offset, counter, take, busy, done, steps, prod, handoff):
        """``prod = acc * m0 + offset`` over ``steps`` cycles, ``digit_bits`` bits of ``m0`` a cycle
        from the bottom, with no multiplier: a right-shifting sequential multiply.

        ``acc * m0 + offset == (high << W) + low`` (``W = steps * k``): ``high`` starts as the
        offset's low ``W`` bits; each step adds ``acc`` times the next digit to it, moves the sum's
        low ``k`` bits into the top of ``low`` (which shifts right) and keeps the rest; the
        handoff adds the offset's high part to ``high``. The adder is as wide as the accumulator
        or ``W``, not the product (a 45-bit carry chain had been the UP5K's slowest path, 13 ns
        of carries), and no product-wide adder adds the offset after it (the MLP w8a8's next
        slowest path, from the offset ROM's block RAM). A digit adds one term per two bits, a
        copy of ``0``, ``acc``, ``2 * acc`` or ``3 * acc`` (``3 * acc`` registered when the beat
        is taken): at 2 bits a step (the iCEBreaker's MLPs) the adder has one term, not the three
        chained adders of a term per bit. ``low`` is all written by the steps."""
        k = self._digit_bits
        width = steps * k                                  # m0 padded to whole digits
        acc = Signal(signed(self._acc_bits), name=f"mul_acc_{lane}")
        digits = Signal(width, name=f"mul_m0_{lane}")      # the digits not yet added, lowest first
        with m.If(take):
            m.d.sync += acc.eq(self.i.payload[lane])
        if k >= 2:
            triple = Signal(signed(self._acc_bits + 2), name=f"mul_acc3_{lane}")
            with m.If(take):
                m.d.sync += triple.eq(const_multiply(self.i.payload[lane], 3, RequantMode.SHIFT_ADD))
        # M0 and the offset's low W bits are read ahead (at the fold counter, which moves when a
        # beat is taken, at least two cycles before the next): the beat takes them from the ROMs
        # into the registers the steps work on, so no select for the first step stands in front
        # of the adder (one did, a `first` flag's, on the UP5K digits CNN w8a8's slowest path).
        # The offset's high part is read when the beat is taken, for the handoff.
        m0_rom = rom(m, m0, counter, Const(1), unsigned(width), f"m0_{lane}")
        off_lo = [v & ((1 << width) - 1) for v in offset]
        off_hi = [v >> width for v in offset]
        hi_shape = signed(max(2, max(abs(v) for v in off_hi).bit_length() + 1))
        off_lo_rom = rom(m, off_lo, counter, Const(1), unsigned(width), f"offset_lo_{lane}")
        off_hi_rom = rom(m, off_hi, counter, take, hi_shape, f"offset_hi_{lane}")
        digit = digits[:k]
        terms = []
        for j in range(0, k, 2):
            pair = digit[j:j + 2]
            if len(pair) == 1:
                terms.append(Mux(pair[0], acc, 0) << j)
                continue
            term = Signal(signed(self._acc_bits + 2), name=f"mul_term{j}_{lane}")
            with m.Switch(pair):
                with m.Case(0):
                    m.d.comb += term.eq(0)
                with m.Case(1):
                    m.d.comb += term.eq(acc)
                with m.Case(2):
                    m.d.comb += term.eq(acc << 1)
                with m.Case(3):
                    m.d.comb += term.eq(triple)
            terms.append(term << j)
        # With A = acc_bits: -2**(A - 1) <= acc < 2**(A - 1), a digit is at most 2**k - 1 and the
        # start is in [0, 2**W): after every step high needs max(W, A) + 1 signed bits and the
        # sum max(W, A + k - 1) + 2 (both checked by a search over small widths);
        # test_shift_add_at_the_extremes fails with a bit less in high or in the sum's W term
        high = Signal(signed(max(width, self._acc_bits) + 1), name=f"mul_high_{lane}")
        low = Signal(width, name=f"mul_low_{lane}")
        total = Signal(signed(max(width, self._acc_bits + k - 1) + 2), name=f"mul_sum_{lane}")
        added = high
        for t in terms:
            added = added + t
        m.d.comb += total.eq(added)
        with m.If(take):
            m.d.sync += [digits.eq(m0_rom), high.eq(off_lo_rom)]
        with m.If(busy & ~done):
            m.d.sync += [digits.eq(digits >> k), high.eq(total >> k), low.eq(Cat(low[k:], total[:k]))]
        with m.If(handoff):
            m.d.sync += prod.eq(Cat(low, high + off_hi_rom).as_signed())
