"""Pooling: MaxPool, AvgPool and GlobalAvgPool over channels-last windows (docs/semantics.md).

MaxPool and AvgPool read the flattened windows of a `qfab.hw.window.SlidingWindow` (one window of
``K = KH * KW`` positions per output pixel, in ``(k, c)`` order); GlobalAvgPool reads the feature
map itself, which is the same order with one window of ``K = H * W`` positions. Each unit keeps
one accumulator per channel and emits the ``C`` results of a window as ``C / simd`` beats while
the window's last position streams in.
"""

from amaranth.hdl import Module, Mux, Shape, ShapeLike, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.base import ints

from ._params import check_clamp, check_in_range, check_int, check_nonnegative, check_positive, check_shape, code_range
from .requant import RequantMode, requantize

__all__ = ["MaxPool", "AvgPool", "GlobalAvgPool"]


class _WindowReduce(wiring.Component):
    """Per-channel reduction over windows of ``window`` positions, ``simd`` channels per beat.

    The accumulators form a ring of ``C / simd`` registers of ``simd`` lanes that rotates by one
    every input beat, so the head always belongs to the fold that arrives (no read multiplexer).
    """
    def __init__(self, shape: Shape, out_shape: Shape, *, window: int, channels: int, simd: int) -> None:
        check_positive("Window size", window)
        check_positive("Channel count", channels)
        check_positive("SIMD width", simd)
        if channels % simd:
            raise ValueError(f"SIMD width must divide the channel count {channels}, not {simd!r}")
        self._shape = shape
        self._out_shape = out_shape
        self._window = window
        self._channels = channels
        self._simd = simd
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(shape, simd))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, simd))),
        })

    @property
    def window(self):
        return self._window

    @property
    def channels(self):
        return self._channels

    @property
    def simd(self):
        return self._simd

    def elaborate(self, platform):
        m = Module()
        folds = self._channels // self._simd
        acc_shape = self._acc_shape()
        lanes = range(self._simd)
        ring = [[Signal(acc_shape, name=f"acc{f}_{e}") for e in lanes] for f in range(folds)]
        head = ring[0]

        fold = Signal(range(folds))
        position = Signal(range(self._window))
        first, last = position == 0, position == self._window - 1
        fire = self.i.valid & self.i.ready
        updated = []
        for e in lanes:
            x = self._lift(self.i.payload[e])
            lane = Signal(acc_shape, name=f"updated{e}")
            m.d.comb += lane.eq(Mux(first, x, self._combine(head[e], x)))
            updated.append(lane)

        out_valid = Signal()
        m.d.comb += [self.o.valid.eq(out_valid), self.i.ready.eq(~out_valid | self.o.ready)]
        with m.If(fire):
            for f in range(folds):
                for e in lanes:
                    m.d.sync += ring[f][e].eq(ring[f + 1][e] if f + 1 < folds else updated[e])
            m.d.sync += fold.eq(Mux(fold == folds - 1, 0, fold + 1))
            with m.If(fold == folds - 1):
                m.d.sync += position.eq(Mux(last, 0, position + 1))
        with m.If(fire & last):
            m.d.sync += out_valid.eq(1)
            for e in lanes:
                m.d.sync += self.o.payload[e].eq(self._finish(updated[e]))
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        return m


class MaxPool(_WindowReduce):
    """Per-channel maximum of each window, clamped to ``[lo, hi]``.

    Latency 1 cycle (the result of a fold leaves the cycle after the window's last beat of that
    fold); throughput one input beat per cycle, one output beat per ``window`` input beats.

    Parameters
    ----------
    shape : shape-like
        Element shape, in and out (MaxPool keeps the input type).
    window : int
        Positions per window, ``KH * KW``. Padding is the `SlidingWindow`'s, with the code
        minimum as its pad value.
    channels : int
        Channel count ``C``.
    simd : int
        Elements per beat, in and out; divides ``channels``.
    lo, hi : int or None
        Output clamp (default: the code range of ``shape``).

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, simd)))``
        ``window * channels / simd`` beats per output pixel, in ``(k, c)`` order.
    o : ``Out(stream.Signature(data.ArrayLayout(shape, simd)))``
        ``channels / simd`` beats per output pixel.
    """
    def __init__(self, shape: ShapeLike, *, window: int, channels: int, simd: int = 1, lo: int | None = None,
                 hi: int | None = None) -> None:
        shape = check_shape("Element shape", shape)
        self._lo, self._hi = check_clamp(lo, hi, shape)
        super().__init__(shape, shape, window=window, channels=channels, simd=simd)

    def _acc_shape(self):
        return self._shape

    def _lift(self, x):
        return x

    def _combine(self, acc, x):
        return Mux(x > acc, x, acc)

    def _finish(self, acc):
        return Mux(acc < self._lo, self._lo, Mux(acc > self._hi, self._hi, acc))


class AvgPool(_WindowReduce):
    """Per-channel average of each window: ``requantize(sum(x - zx), M0, n, zy, lo, hi)``.

    Padded positions (the `SlidingWindow` pads with ``zx``) count in the window. Latency 1 cycle
    (accumulate, multiply, round, shift and clamp in one cycle); throughput one input beat per
    cycle, one output beat per ``window`` input beats.

    Parameters
    ----------
    shape : shape-like
        Input element shape.
    window : int
        Positions per window ``K``.
    channels : int
        Channel count ``C``.
    zero_point : int
        Input zero point ``zx``.
    multiplier, shift : int
        The dyadic pair ``(M0, n)``, ``M0 / 2**n ~ s_x / (s_y * K)``; ``0 <= n <= 62``.
    out_shape : shape-like
        Output element shape.
    out_zero_point : int
        Output zero point ``zy``.
    lo, hi : int or None
        Output clamp (default: the code range of ``out_shape``).
    simd : int
        Elements per beat, in and out; divides ``channels``.
    rounding : str
        The shift's rounding rule: ``"half_up"`` (default) or ``"half_even"`` (ties to even, for
        pools imported from quantized ONNX models; docs/semantics.md).
    requant : RequantMode
        ``MULTIPLY`` (default: ``* M0``, DSP blocks where synthesis has them), ``SHIFT_ADD`` (an
        adder tree over the canonical signed digits of ``M0``, no multiplier) or ``THRESHOLDS``
        (the ``hi - lo`` constant thresholds compared at once); all bit-exact, same latency.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, simd)))``
        ``window * channels / simd`` beats per output pixel, in ``(k, c)`` order.
    o : ``Out(stream.Signature(data.ArrayLayout(out_shape, simd)))``
        ``channels / simd`` beats per output pixel.
    """
    def __init__(self, shape: ShapeLike, *, window: int, channels: int, zero_point: int, multiplier: int, shift: int,
                 out_shape: ShapeLike, out_zero_point: int, lo: int | None = None, hi: int | None = None,
                 simd: int = 1, rounding: str = "half_up", requant: RequantMode = RequantMode.MULTIPLY) -> None:
        shape = check_shape("Element shape", shape)
        out_shape = check_shape("Output element shape", out_shape)
        check_in_range("Zero point", zero_point, shape)
        check_nonnegative("Multiplier", multiplier)
        check_int("Shift", shift)
        if not 0 <= shift <= 62:
            raise ValueError(f"Shift must be in 0..62, not {shift!r}")
        check_in_range("Output zero point", out_zero_point, out_shape, "the output shape")
        self._lo, self._hi = check_clamp(lo, hi, out_shape)
        self._zero_point = zero_point
        self._multiplier = multiplier
        self._shift = shift
        self._out_zero_point = out_zero_point
        if rounding not in ("half_up", "half_even"):
            raise ValueError(f"Rounding must be 'half_up' or 'half_even', not {rounding!r}")
        self._rounding = rounding
        self._requant = RequantMode(requant)
        if self._requant is RequantMode.SEARCH:
            raise ValueError("an average pool requantizes by MULTIPLY, SHIFT_ADD or THRESHOLDS, not SEARCH")
        super().__init__(shape, out_shape, window=window, channels=channels, simd=simd)

    def _acc_shape(self):
        low, high = code_range(self._shape)
        bound = self._window * max(abs(low - self._zero_point), abs(high - self._zero_point))
        return signed(ints.acc_bits(bound))

    def _lift(self, x):
        return x - self._zero_point

    def _combine(self, acc, x):
        return acc + x

    def _finish(self, acc):
        return requantize(acc, self._multiplier, self._shift, self._out_zero_point,
                          self._lo, self._hi, self._rounding, self._requant)


class GlobalAvgPool(AvgPool):
    """Per-channel average over a whole ``(H, W, C)`` map: an `AvgPool` whose window is the map.

    Reads the feature map stream directly (``H * W * C / simd`` beats per image, channels
    innermost) and emits ``C / simd`` beats per image. Parameters as `AvgPool`, with ``height``
    and ``width`` in place of ``window``; ``M0 / 2**n ~ s_x / (s_y * H * W)``.
    """
    def __init__(self, shape: ShapeLike, *, height: int, width: int, channels: int, zero_point: int, multiplier: int,
                 shift: int, out_shape: ShapeLike, out_zero_point: int, lo: int | None = None,
                 hi: int | None = None, simd: int = 1, rounding: str = "half_up",
                 requant: RequantMode = RequantMode.MULTIPLY) -> None:
        check_positive("Height", height)
        check_positive("Width", width)
        super().__init__(shape, window=height * width, channels=channels, zero_point=zero_point,
                         multiplier=multiplier, shift=shift, out_shape=out_shape,
                         out_zero_point=out_zero_point, lo=lo, hi=hi, simd=simd, rounding=rounding,
                         requant=requant)
