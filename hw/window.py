"""Sliding window unit: turns a channels-last feature map stream into a stream of flattened windows.

Conv2d, MaxPool and AvgPool read their input through this unit (docs/semantics.md, section 4):
for each output pixel, in row-major order, it emits the ``KH x KW x C`` window of the padded
input, flattened in ``(ky, kx, c)`` order.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, ShapeLike, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ._params import check_in_range, check_padding, check_pair, check_positive, check_shape

__all__ = ["SlidingWindow"]


def _add_mod(value, step, modulus):
    """``(value + step) % modulus`` for ``0 <= value < modulus`` and a constant ``step``."""
    step %= modulus
    total = value + step
    return Mux(total >= modulus, total - modulus, total)


# Output rows up to which the window reads a value per output row from a table (`_row_value`):
# a 6-bit index makes each bit a function of 6 inputs, a few LUT4s; past it, arithmetic.
TABLE_ROWS = 64


def _row_value(values, shape, index, arithmetic):
    """``values[index]``: a constant per output row (``index``), each of ``shape``. Up to
    `TABLE_ROWS` rows read from a table in LUTs (the clamps and adds that computed
    ``limit_after``, in series, had been the UP5K digits CNN w8a8's slowest path once
    ``have_rows`` was a register); past it ``arithmetic()``, the same values computed from the
    row's registers, whose logic does not grow with the rows."""
    shape = Shape.cast(shape)
    if len(values) == 1:
        return Const(values[0], shape)
    if len(values) > TABLE_ROWS:
        return arithmetic()
    word = Cat(*(Const(v, shape) for v in values)).word_select(index, shape.width)
    return word.as_signed() if shape.signed else word


class SlidingWindow(wiring.Component):
    """Line-buffered sliding window generator over an ``(H, W, C)`` channels-last stream.

    The input arrives as ``H * W * C / simd`` beats of ``simd`` channels; each image (one after
    the other, without gaps) becomes ``HO * WO`` windows of ``KH * KW * C / simd`` beats, in the
    order of the flattened window ``(ky, kx, c)``. Positions outside the input (padding) carry
    ``pad_value``: the input zero point for Conv2d and AvgPool, the code minimum for MaxPool.
    ``HO = (H + top + bottom - KH) // SH + 1``, likewise ``WO``.

    Storage: a circular line buffer (`amaranth.lib.memory.Memory`, one write port, one read port)
    of ``R = min(KH + SH, H)`` rows of ``W * C`` elements. ``KH`` rows hold a window row; the
    ``SH`` extra rows let the next rows arrive while the current output row is being emitted.

    Throughput: one output beat per cycle whenever the input rows the current output row needs
    are buffered; one input beat per cycle whenever a row is free. The unit therefore sustains
    ``max(HO*WO*KH*KW, H*W) * C / simd`` cycles per image in steady state, up to a short fill
    at image boundaries (the first rows of an image can only be written once the last rows of
    the previous image have been read out). Latency: a window's first beat leaves 2 cycles after
    the input beat that completes the rows it needs.

    Parameters
    ----------
    shape : shape-like
        Element shape, ``signed(bits)`` or ``unsigned(bits)``.
    height, width, channels : int
        Input map shape ``(H, W, C)``.
    kernel : int or (int, int)
        Window ``(KH, KW)``; at most the padded input size.
    stride : int or (int, int)
        ``(SH, SW)``.
    padding : int or (int, int, int, int)
        ``(top, left, bottom, right)``.
    pad_value : int
        Code of the padded positions (representable in ``shape``).
    simd : int
        Elements per beat, in and out; divides ``channels``.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, simd)))``
    o : ``Out(stream.Signature(data.ArrayLayout(shape, simd)))``

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``simd`` does not divide ``channels``, the kernel does not fit the padded input, or
        ``pad_value`` does not fit ``shape``.
    """
    def __init__(self, shape: ShapeLike, *, height: int, width: int, channels: int, kernel: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int, int, int] = 0,
                 pad_value: int = 0, simd: int = 1) -> None:
        shape = check_shape("Element shape", shape)
        check_positive("Height", height)
        check_positive("Width", width)
        check_positive("Channel count", channels)
        kernel = check_pair("Kernel", kernel)
        stride = check_pair("Stride", stride)
        padding = check_padding("Padding", padding)
        check_positive("SIMD width", simd)
        if channels % simd:
            raise ValueError(f"SIMD width must divide the channel count {channels}, not {simd!r}")
        top, left, bottom, right = padding
        if kernel[0] > height + top + bottom or kernel[1] > width + left + right:
            raise ValueError(f"Kernel {kernel!r} must fit the padded input "
                             f"({height + top + bottom}, {width + left + right})")
        check_in_range("Pad value", pad_value, shape)
        self._shape = shape
        self._size = (height, width, channels)
        self._kernel = kernel
        self._stride = stride
        self._padding = padding
        self._pad_value = pad_value
        self._simd = simd
        layout = data.ArrayLayout(shape, simd)
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    @property
    def shape(self):
        return self._shape

    @property
    def simd(self):
        return self._simd

    @property
    def output_size(self):
        """``(HO, WO)``."""
        (h, w, _), (kh, kw), (sh, sw) = self._size, self._kernel, self._stride
        top, left, bottom, right = self._padding
        return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1

    @property
    def buffer_rows(self):
        """Rows of the line buffer, ``min(KH + SH, H)``."""
        return min(self._kernel[0] + self._stride[0], self._size[0])

    @property
    def window_beats(self):
        """Output beats per window, ``KH * KW * C / simd``."""
        return self._kernel[0] * self._kernel[1] * self._size[2] // self._simd

    def elaborate(self, platform):
        m = Module()
        h, w, c = self._size
        kh, kw = self._kernel
        sh, sw = self._stride
        top, left, _, _ = self._padding
        ho, wo = self.output_size
        folds = c // self._simd                 # beats per pixel
        row_words = w * folds
        rows = self.buffer_rows
        layout = data.ArrayLayout(self._shape, self._simd)

        m.submodules.lines = lines = Memory(shape=layout, depth=rows * row_words, init=[])
        wr = lines.write_port()
        rd = lines.read_port(domain="sync")

        # rows written, counted from row 0 of the image the reader is in (< 2 * H)
        written = Signal(range(2 * h + 1))
        # reader position: output row oy, its first input row win_top = oy * SH - top (a register
        # stepped with oy, as is the number of rows the row needs: the reader's go/wait decision is
        # one compare of two registers, not the arithmetic that derives them)
        oy = Signal(range(ho))
        win_top = Signal(range(-top, max(ho - 1, 0) * sh - top + 1), init=-top)
        image_done = Signal()

        def rows_needed(row):
            """Input rows output row ``row`` needs (the last output row waits for the whole image)."""
            return h if row == ho - 1 else min(row * sh - top + kh, h)
        need_range = range(min(0, *(rows_needed(r) for r in range(ho))), h + 1)
        need = Signal(need_range, init=rows_needed(0))
        # ``need_after``: the value ``need`` takes at the end of output row ``oy``, so that
        # ``have_rows`` (``written >= need``) is a register computed a cycle ahead, as ``room`` is
        # below: the compare into the reader's counter enables had been the UP5K digits CNN w4a4's
        # slowest path (``need`` through a carry chain and five LUTs to ``oy``'s enable, 35.4 MHz)
        need_after = Signal(need_range, init=rows_needed(1 % ho))
        have_rows = Signal(init=0 >= rows_needed(0))

        # --- writer: row r may overwrite row r - R once no output row still needs it ---------
        # ``limit``: the rows that may be written, the first row still needed plus R; a register
        # stepped with ``win_top`` (the clamp, add and compare in series had been the ECP5 digits
        # CNN w8a8's slowest path, from ``written`` through the ready into the input FIFO,
        # 78.7 MHz). ``limit_after`` is the value it takes at the end of output row ``oy``, so
        # that the input's ready, ``written < limit`` one cycle ahead, is a register too: its
        # compare into the input FIFO's read logic had been the ECP5 digits CNN w4a4's slowest
        # path (102.1 MHz). Its next value is one of six compares of registers with constants
        # added, chosen by whether a row is written, the image is done and the output row ends.
        def limit_for(row):
            """``limit`` during output row ``row``: its first input row, clamped, plus R."""
            return min(max(row * sh - top, 0), h) + rows

        def clamp_rows(top_row):
            """``min(max(top_row, 0), h)`` of a value in the hardware."""
            return Mux(top_row < 0, 0, Mux(top_row > h, h, top_row))

        limit = Signal(range(h + rows + 1), init=limit_for(0))
        limit_after = Signal(range(h + rows + 1), init=limit_for(1 % ho))
        room = Signal(init=1)                   # written < limit
        self._ready_terms = (written, limit)    # for a test of that invariant
        self._have_terms = (have_rows, written, need)   # and of have_rows == (written >= need)
        waddr = Signal(range(rows * row_words))
        wcol = Signal(range(row_words))
        row_done = Signal()
        m.d.comb += [
            self.i.ready.eq(room),
            wr.addr.eq(waddr),
            wr.data.eq(self.i.payload),
            wr.en.eq(self.i.valid & self.i.ready),
            row_done.eq(wr.en & (wcol == row_words - 1)),
        ]
        with m.If(wr.en):
            m.d.sync += [
                waddr.eq(Mux(waddr == rows * row_words - 1, 0, waddr + 1)),
                wcol.eq(Mux(row_done, 0, wcol + 1)),
            ]
        m.d.sync += written.eq(written + row_done - Mux(image_done, h, 0))
        row_end = Signal()                      # output row oy is done this cycle
        with m.If(row_end):
            # ``written`` drops by H when the image is done (an unsigned compare: L + H, not w - H)
            m.d.sync += room.eq(Mux(image_done, Mux(row_done, written + 1 < limit_after + h, written < limit_after + h),
                                    Mux(row_done, written + 1 < limit_after, written < limit_after)))
        with m.Else():
            m.d.sync += room.eq(Mux(row_done, written + 1 < limit, written < limit))
        # ``have_rows`` a cycle ahead: ``written`` next against ``need`` next (``need_after`` at a
        # row end, less H at the image's end: an unsigned compare again, N + H)
        with m.If(row_end):
            m.d.sync += have_rows.eq(
                Mux(image_done, Mux(row_done, written + 1 >= need_after + h, written >= need_after + h),
                    Mux(row_done, written + 1 >= need_after, written >= need_after)))
        with m.Else():
            m.d.sync += have_rows.eq(Mux(row_done, written + 1 >= need, written >= need))

        # --- reader: (oy, ox, ky, kx, fold) loops, one memory read per cycle -------------------
        ox = Signal(range(wo))
        ky = Signal(range(kh))
        kx = Signal(range(kw))
        fold = Signal(range(folds))
        ix_base = Signal(range(-left, max(wo - 1, 0) * sw - left + 1), init=-left)  # ox*SW - left
        img_slot = Signal(range(rows))          # line buffer row holding row 0 of the image
        top_slot = Signal(range(rows), init=(-top) % rows)                  # holds row win_top
        ky_slot = Signal(range(rows), init=(-top) % rows)                   # holds win_top + ky
        iy = win_top + ky
        ix = ix_base + kx
        is_pad = (iy < 0) | (iy >= h) | (ix < 0) | (ix >= w)

        out_valid = Signal()
        out_pad = Signal()
        advance = Signal()
        m.d.comb += [
            advance.eq(have_rows & (~out_valid | self.o.ready)),
            rd.en.eq(advance),
            rd.addr.eq(ky_slot * row_words + ix * folds + fold),
            self.o.valid.eq(out_valid),
        ]
        with m.If(out_pad):
            m.d.comb += self.o.payload.eq(layout.const([self._pad_value] * self._simd))
        with m.Else():
            m.d.comb += self.o.payload.eq(rd.data)

        with m.If(advance):
            m.d.sync += [out_valid.eq(1), out_pad.eq(is_pad)]
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)

        last_fold, last_kx = fold == folds - 1, kx == kw - 1
        last_ky, last_ox, last_oy = ky == kh - 1, ox == wo - 1, oy == ho - 1
        m.d.comb += [
            row_end.eq(advance & last_fold & last_kx & last_ky & last_ox),
            image_done.eq(row_end & last_oy),
        ]
        with m.If(advance):
            m.d.sync += fold.eq(Mux(last_fold, 0, fold + 1))
            with m.If(last_fold):
                m.d.sync += kx.eq(Mux(last_kx, 0, kx + 1))
                with m.If(last_kx):
                    m.d.sync += [
                        ky.eq(Mux(last_ky, 0, ky + 1)),
                        ky_slot.eq(_add_mod(ky_slot, 1, rows)),
                    ]
                    with m.If(last_ky):              # window done
                        m.d.sync += [
                            ky_slot.eq(top_slot),
                            ox.eq(Mux(last_ox, 0, ox + 1)),
                            ix_base.eq(Mux(last_ox, -left, ix_base + sw)),
                        ]
                        with m.If(last_ox):          # output row done
                            next_top = win_top + sh
                            m.d.sync += [
                                oy.eq(Mux(last_oy, 0, oy + 1)),
                                win_top.eq(Mux(last_oy, -top, next_top)),
                                # the next ``*_after``: the value for output row oy + 2 (rows wrap
                                # at the image's end), from a table by oy
                                limit.eq(limit_after),
                                limit_after.eq(_row_value(
                                    [limit_for((r + 2) % ho) for r in range(ho)], limit_after.shape(), oy,
                                    lambda: Mux(last_oy, limit_for(1), Mux(oy == ho - 2, limit_for(0),
                                                                           clamp_rows(next_top + sh) + rows)))),
                                need.eq(need_after),
                                need_after.eq(_row_value(
                                    [rows_needed((r + 2) % ho) for r in range(ho)], need_after.shape(), oy,
                                    lambda: Mux(last_oy, rows_needed(1), Mux(
                                        oy == ho - 2, rows_needed(0), Mux(
                                            oy == ho - 3, h, Mux(next_top + sh + kh > h, h, next_top + sh + kh)))))),
                            ]
                            with m.If(last_oy):      # image done
                                next_img = _add_mod(img_slot, h, rows)
                                m.d.sync += [
                                    img_slot.eq(next_img),
                                    top_slot.eq(_add_mod(next_img, -top, rows)),
                                    ky_slot.eq(_add_mod(next_img, -top, rows)),
                                ]
                            with m.Else():
                                m.d.sync += [
                                    top_slot.eq(_add_mod(top_slot, sh, rows)),
                                    ky_slot.eq(_add_mod(top_slot, sh, rows)),
                                ]
        return m
