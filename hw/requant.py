"""Requantization: per-channel bias, ``M0`` multiply, rounding shift, zero point, clamp."""

from collections.abc import Sequence

from amaranth.hdl import Const, Module, Mux, Signal, Value, ValueLike, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfab.base import ints

__all__ = ["Requant", "requantize"]


def requantize(acc: ValueLike, multiplier: int, shift: int, zero_point: int, lo: int, hi: int,
               rounding: str = "half_up") -> Value:
    """``clamp(zero_point + round_shift(acc * multiplier, shift), lo, hi)`` with constant parameters,
    combinational: the form of `Requant` for units with one multiplier for all channels (pools,
    residual add).

    ``acc`` is an Amaranth value (signed or not); ``multiplier >= 0``, ``0 <= shift <= 62``,
    ``zero_point``, ``lo`` and ``hi`` are Python integers. The same arithmetic as `Requant` and
    ``qfab.compiler.intops.requantize`` (docs/semantics.md, section 3): add half, then shift right
    arithmetically; Amaranth widens every intermediate, so nothing overflows. ``rounding`` is
    ``"half_up"`` or ``"half_even"`` (ties to even: add ``half - 1`` plus bit ``shift`` of the
    product, then shift; ``qfab.compiler.intops.round_shift_even``).
    """
    if rounding not in ("half_up", "half_even"):
        raise ValueError(f"Rounding must be 'half_up' or 'half_even', not {rounding!r}")
    product = acc if multiplier == 1 else acc * Const(multiplier, range(multiplier + 1))
    if shift > 0 and rounding == "half_even":
        product = Value.cast(product)
        width, is_signed = len(product), product.shape().signed
        odd = product[min(shift, width - 1)] if is_signed else (product[shift] if shift < width else 0)
        product = (product + ((1 << (shift - 1)) - 1) + odd) >> shift
    elif shift > 0:
        product = (product + (1 << (shift - 1))) >> shift
    y = product + zero_point
    return Mux(y < lo, lo, Mux(y > hi, hi, y))


def _ints(name, values, count):
    try:
        values = [int(v) for v in values]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of integers, not {values!r}") from None
    if len(values) != count:
        raise ValueError(f"{name} must have {count} elements, not {len(values)}")
    return values


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

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(acc_bits), lanes)))``
    o : ``Out(stream.Signature(ArrayLayout(signed(out_bits) or unsigned(out_bits), lanes)))``

    Latency 4 cycles, throughput one beat per cycle; backpressure on ``o`` stalls the pipeline.
    The per-channel constants are ROMs with a registered read (block RAM where synthesis can).
    """

    def __init__(self, lanes: int, channels: int, *, acc_bits: int, bias: Sequence[int], m0: Sequence[int],
                 shift: Sequence[int], zero_point: int, lo: int, hi: int, out_bits: int, out_signed: bool,
                 m_bits: int = 24) -> None:
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
        self._lanes, self._channels, self._acc_bits = lanes, channels, acc_bits
        self._bias, self._m0, self._shift = bias, m0, shift
        self._zero_point, self._lo, self._hi = zero_point, lo, hi
        self._out_shape, self._m_bits = out_shape, m_bits
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(acc_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, lanes))),
        })

    lanes = property(lambda self: self._lanes)
    channels = property(lambda self: self._channels)

    def elaborate(self, platform):
        m = Module()
        lanes, folds = self._lanes, self._channels // self._lanes
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        # stage k holds the beat's fold index in fold[k]; the per-channel constants are ROMs read
        # one stage ahead (a registered read, so synthesis can put them in block RAM)
        fold = [Signal(range(folds), name=f"fold{n}") for n in range(3)]
        valid = [Signal(name=f"valid{n}") for n in range(3)]
        with m.If(en):
            m.d.sync += [valid[0].eq(self.i.valid), valid[1].eq(valid[0]), valid[2].eq(valid[1]),
                         self.o.valid.eq(valid[2]), fold[1].eq(fold[0]), fold[2].eq(fold[1])]
        counter = Signal(range(folds))
        with m.If(self.i.valid & en):
            m.d.sync += counter.eq(Mux(counter == folds - 1, 0, counter + 1))
        with m.If(en):
            m.d.sync += fold[0].eq(counter)

        acc_max = 1 << (self._acc_bits - 1)
        for lane in range(lanes):
            chans = [f * lanes + lane for f in range(folds)]
            m0 = [self._m0[c] for c in chans]
            shift = [self._shift[c] for c in chans]
            # (acc + b) * m0 + (zp << n) + half(n), then >> n
            offset = [self._bias[c] * self._m0[c] + (self._zero_point << self._shift[c])
                      + ((1 << (self._shift[c] - 1)) if self._shift[c] else 0) for c in chans]
            prod_bound = acc_max * max(m0)
            prod_shape = signed(max(2, (prod_bound).bit_length() + 2))
            sum_bound = prod_bound + max(abs(v) for v in offset)
            sum_shape = signed(max(2, sum_bound.bit_length() + 2))

            m0_sig = self._rom(m, m0, counter, en, unsigned(self._m_bits), f"m0_{lane}")
            off_sig = self._rom(m, offset, fold[0], en, sum_shape, f"offset_{lane}")
            shift_sig = self._rom(m, shift, fold[1], en, unsigned(6), f"shift_{lane}")
            acc = Signal(signed(self._acc_bits), name=f"acc_{lane}")
            prod = Signal(prod_shape, name=f"prod_{lane}")
            total = Signal(sum_shape, name=f"sum_{lane}")
            shifted = Signal(sum_shape, name=f"shifted_{lane}")
            m.d.comb += shifted.eq(total >> shift_sig)
            with m.If(en):
                m.d.sync += [
                    acc.eq(self.i.payload[lane]),
                    prod.eq(acc * m0_sig),
                    total.eq(prod + off_sig),
                    self.o.payload[lane].eq(Mux(shifted < self._lo, self._lo,
                                                Mux(shifted > self._hi, self._hi, shifted))),
                ]
        return m

    @staticmethod
    def _rom(m, values, index, en, shape, name):
        """``values[index]`` one cycle later (read when ``en``): a constant if all are equal."""
        if len(set(values)) == 1:
            return Const(values[0], shape)
        m.submodules[name] = rom = Memory(shape=shape, depth=len(values), init=values,
                                          attrs={"rom_style": "block"} if len(values) >= 16 else None)
        port = rom.read_port()
        m.d.comb += [port.addr.eq(index), port.en.eq(en)]
        return port.data
