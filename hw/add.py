"""Residual addition of two streams, or of a stream and per-channel constants (docs/semantics.md,
section 4, "Add" and "BiasAdd")."""

from collections.abc import Sequence

from amaranth.hdl import Const, Module, Mux, Shape, ShapeLike, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_clamp, check_in_range, check_int, check_nonnegative, check_positive, check_shape
from .requant import RequantMode, const_multiply, requantize, rom

__all__ = ["Add"]


class Add(wiring.Component):
    """Elementwise ``y = clamp(zy + round_shift(Ma * (a - za) + Mb * (b - zb), n), lo, hi)``.

    ``b`` is a second stream (a residual join) or, with ``b_constants``, one constant per channel
    (a quantized bias add): element ``p`` of the stream (counted from the first, ``simd`` per beat)
    is channel ``p mod C`` of ``C = len(b_constants)`` and adds ``b_constants[p mod C]``.

    The inputs may differ in width, signedness and zero point. With a ``b`` stream a beat is taken
    from ``a`` and ``b`` together, only when both are valid (and the output register is free); so
    a residual block's skip path needs a FIFO that holds what it receives while the main path
    fills. Latency 1 cycle; throughput one beat per cycle. With ``b_constants``, each lane reads
    its channels' ``Mb * (b - zb)`` from a ROM (registered read, block RAM where synthesis can)
    addressed by the fold of the next beat; the first beat after reset waits one cycle for the
    first read (no wait when a lane's constants are all equal), then one beat per cycle, latency 1.

    Parameters
    ----------
    a_shape, b_shape : shape-like
        Element shapes of the inputs; ``b_shape`` is None with ``b_constants``.
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
        Elements per beat on all streams (with ``b_constants``: a divisor of their number).
    requant : RequantMode
        How ``Ma`` and ``Mb`` multiply: ``MULTIPLY`` (default, ``*``: DSP blocks where synthesis
        has them) or ``SHIFT_ADD`` (adder trees over their canonical signed digits, no
        multiplier); bit-exact either way, same latency. Constants are multiplied by ``Mb``
        before they are stored.
    rounding : str
        The shift's rule for exact ties: ``"half_up"`` (default, ``round_shift``) or
        ``"half_even"`` (``round_shift_even``, as onnxruntime's QLinearAdd rounds).
    b_constants : sequence of int or None
        The constant ``b`` of each channel (any integers), in place of the ``b`` stream.

    Members
    -------
    a : ``In(stream.Signature(data.ArrayLayout(a_shape, simd)))``
    b : ``In(stream.Signature(data.ArrayLayout(b_shape, simd)))`` (not with ``b_constants``)
    o : ``Out(stream.Signature(data.ArrayLayout(out_shape, simd)))``
    """
    def __init__(self, a_shape: ShapeLike, b_shape: ShapeLike | None, out_shape: ShapeLike, *, a_zero_point: int,
                 b_zero_point: int, a_multiplier: int, b_multiplier: int, shift: int, out_zero_point: int,
                 lo: int | None = None, hi: int | None = None, simd: int = 1,
                 requant: RequantMode = RequantMode.MULTIPLY, rounding: str = "half_up",
                 b_constants: Sequence[int] | None = None) -> None:
        a_shape = check_shape("Element shape of a", a_shape)
        out_shape = check_shape("Output element shape", out_shape)
        check_in_range("Zero point of a", a_zero_point, a_shape, "a's shape")
        check_positive("SIMD width", simd)
        if b_constants is None:
            b_shape = check_shape("Element shape of b", b_shape)
            check_in_range("Zero point of b", b_zero_point, b_shape, "b's shape")
        else:
            if b_shape is not None:
                raise TypeError(f"Element shape of b must be None with b_constants, not {b_shape!r}")
            check_int("Zero point of b", b_zero_point)
            b_constants = [check_int(f"Constant {i} of b", v) for i, v in enumerate(b_constants)]
            if not b_constants or len(b_constants) % simd:
                raise ValueError(f"b_constants must be a non-empty sequence whose length is a multiple of the "
                                 f"SIMD width {simd}, not {len(b_constants)} long")
        check_nonnegative("Multiplier of a", a_multiplier)
        check_nonnegative("Multiplier of b", b_multiplier)
        check_int("Shift", shift)
        if not 0 <= shift <= 62:
            raise ValueError(f"Shift must be in 0..62, not {shift!r}")
        check_in_range("Output zero point", out_zero_point, out_shape, "the output shape")
        self._lo, self._hi = check_clamp(lo, hi, out_shape)
        if rounding not in ("half_up", "half_even"):
            raise ValueError(f"Rounding must be 'half_up' or 'half_even', not {rounding!r}")
        self._a = (a_zero_point, a_multiplier)
        self._b = (b_zero_point, b_multiplier)
        self._constants = b_constants
        self._shift = shift
        self._out_zero_point = out_zero_point
        self._simd = simd
        self._rounding = rounding
        self._requant = RequantMode(requant)
        if self._requant not in (RequantMode.MULTIPLY, RequantMode.SHIFT_ADD):
            raise ValueError(f"Add multiplies by MULTIPLY or SHIFT_ADD, not {self._requant}")
        members = {"a": In(stream.Signature(data.ArrayLayout(a_shape, simd)))}
        if b_constants is None:
            members["b"] = In(stream.Signature(data.ArrayLayout(b_shape, simd)))
        members["o"] = Out(stream.Signature(data.ArrayLayout(out_shape, simd)))
        super().__init__(members)

    @property
    def simd(self):
        return self._simd

    @property
    def rounding(self):
        return self._rounding

    @property
    def channels(self):
        """Channels of ``b_constants`` (None with a ``b`` stream)."""
        return None if self._constants is None else len(self._constants)

    def elaborate(self, platform):
        m = Module()
        out_valid = Signal()
        take = Signal()
        (za, ma), (zb, mb) = self._a, self._b
        if self._constants is None:
            b_valid = self.b.valid
            b_terms = [const_multiply(self.b.payload[e] - zb, mb, self._requant) for e in range(self._simd)]
            m.d.comb += self.b.ready.eq(take)
        else:
            b_valid, b_terms = self._constant_terms(m, take)
        m.d.comb += [
            take.eq(self.a.valid & b_valid & (~out_valid | self.o.ready)),
            self.a.ready.eq(take),
            self.o.valid.eq(out_valid),
        ]
        with m.If(take):
            m.d.sync += out_valid.eq(1)
            for e in range(self._simd):
                acc = const_multiply(self.a.payload[e] - za, ma, self._requant) + b_terms[e]
                m.d.sync += self.o.payload[e].eq(requantize(acc, 1, self._shift, self._out_zero_point,
                                                            self._lo, self._hi, self._rounding))
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        return m

    def _constant_terms(self, m, take):
        """Each lane's ``Mb * (b - zb)`` for the beat in front of it, and whether it is ready: lane
        ``e`` of the beat of fold ``f`` (of ``C / simd``) is channel ``f * simd + e``; its ROM is
        read with the fold of the next beat, so the value is there when the beat is."""
        zb, mb = self._b
        simd, folds = self._simd, len(self._constants) // self._simd
        fold = Signal(range(folds), name="fold")
        last = fold == folds - 1
        with m.If(take):
            m.d.sync += fold.eq(Mux(last, 0, fold + 1))
        upcoming = Mux(take, Mux(last, 0, fold + 1), fold)
        terms = []
        for e in range(simd):
            values = [mb * (self._constants[f * simd + e] - zb) for f in range(folds)]
            shape = Shape.cast(range(min(values), max(values) + 1))
            terms.append(rom(m, values, upcoming, 1, shape, f"constant_{e}"))
        if all(isinstance(t, Const) for t in terms):
            return Const(1), terms
        primed = Signal()                       # the ROMs' first read is done
        m.d.sync += primed.eq(1)
        return primed, terms
