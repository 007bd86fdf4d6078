"""Residual addition of two streams (docs/semantics.md, section 4, "Add")."""

from amaranth.hdl import Module, ShapeLike, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_clamp, check_in_range, check_int, check_nonnegative, check_positive, check_shape
from .requant import RequantMode, const_multiply, requantize

__all__ = ["Add"]


class Add(wiring.Component):
    """Elementwise ``y = clamp(zy + round_shift(Ma * (a - za) + Mb * (b - zb), n), lo, hi)``.

    The two inputs may differ in width, signedness and zero point. A beat is taken from ``a`` and
    ``b`` together, only when both are valid (and the output register is free); so a residual
    block's skip path needs a FIFO that holds what it receives while the main path fills.
    Latency 1 cycle; throughput one beat per cycle.

    Parameters
    ----------
    a_shape, b_shape : shape-like
        Element shapes of the inputs.
    out_shape : shape-like
        Element shape of the output.
    a_zero_point, b_zero_point : int
        ``za`` and ``zb``.
    a_multiplier, b_multiplier : int
        ``Ma`` and ``Mb`` (non-negative), ``Ma / 2**n ~ s_a / s_y``, ``Mb / 2**n ~ s_b / s_y``.
    shift : int
        ``n``, from 0 to 62.
    out_zero_point : int
        ``zy``.
    lo, hi : int or None
        Output clamp (default: the code range of ``out_shape``).
    simd : int
        Elements per beat on all three streams.
    requant : RequantMode
        How ``Ma`` and ``Mb`` multiply: ``MULTIPLY`` (default, ``*``: DSP blocks where synthesis
        has them) or ``SHIFT_ADD`` (adder trees over their canonical signed digits, no
        multiplier); bit-exact either way, same latency.

    Members
    -------
    a : ``In(stream.Signature(data.ArrayLayout(a_shape, simd)))``
    b : ``In(stream.Signature(data.ArrayLayout(b_shape, simd)))``
    o : ``Out(stream.Signature(data.ArrayLayout(out_shape, simd)))``
    """
    def __init__(self, a_shape: ShapeLike, b_shape: ShapeLike, out_shape: ShapeLike, *, a_zero_point: int,
                 b_zero_point: int, a_multiplier: int, b_multiplier: int, shift: int, out_zero_point: int,
                 lo: int | None = None, hi: int | None = None, simd: int = 1,
                 requant: RequantMode = RequantMode.MULTIPLY) -> None:
        a_shape = check_shape("Element shape of a", a_shape)
        b_shape = check_shape("Element shape of b", b_shape)
        out_shape = check_shape("Output element shape", out_shape)
        check_in_range("Zero point of a", a_zero_point, a_shape, "a's shape")
        check_in_range("Zero point of b", b_zero_point, b_shape, "b's shape")
        check_nonnegative("Multiplier of a", a_multiplier)
        check_nonnegative("Multiplier of b", b_multiplier)
        check_int("Shift", shift)
        if not 0 <= shift <= 62:
            raise ValueError(f"Shift must be in 0..62, not {shift!r}")
        check_in_range("Output zero point", out_zero_point, out_shape, "the output shape")
        self._lo, self._hi = check_clamp(lo, hi, out_shape)
        check_positive("SIMD width", simd)
        self._a = (a_zero_point, a_multiplier)
        self._b = (b_zero_point, b_multiplier)
        self._shift = shift
        self._out_zero_point = out_zero_point
        self._simd = simd
        self._requant = RequantMode(requant)
        if self._requant not in (RequantMode.MULTIPLY, RequantMode.SHIFT_ADD):
            raise ValueError(f"Add multiplies by MULTIPLY or SHIFT_ADD, not {self._requant}")
        super().__init__({
            "a": In(stream.Signature(data.ArrayLayout(a_shape, simd))),
            "b": In(stream.Signature(data.ArrayLayout(b_shape, simd))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, simd))),
        })

    @property
    def simd(self):
        return self._simd

    def elaborate(self, platform):
        m = Module()
        out_valid = Signal()
        take = Signal()
        m.d.comb += [
            take.eq(self.a.valid & self.b.valid & (~out_valid | self.o.ready)),
            self.a.ready.eq(take),
            self.b.ready.eq(take),
            self.o.valid.eq(out_valid),
        ]
        (za, ma), (zb, mb) = self._a, self._b
        with m.If(take):
            m.d.sync += out_valid.eq(1)
            for e in range(self._simd):
                acc = (const_multiply(self.a.payload[e] - za, ma, self._requant) +
                       const_multiply(self.b.payload[e] - zb, mb, self._requant))
                m.d.sync += self.o.payload[e].eq(requantize(acc, 1, self._shift,
                                                            self._out_zero_point,
                                                            self._lo, self._hi))
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        return m
