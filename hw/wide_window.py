"""Wide sliding window: whole windows, several output pixels per beat (FINN's MMV).

`SlidingWindow` emits a window as ``KH * KW * C / simd`` beats, so a first layer with few input
channels costs at least ``KH * KW`` cycles per output pixel. `WideWindow` emits ``pixels`` whole
windows per beat (docs/semantics.md, section 4: the ``KH x KW x C`` window of the padded input,
flattened in ``(ky, kx, c)`` order), and takes ``in_pixels`` input pixels per beat.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, ShapeLike, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ._params import check_in_range, check_padding, check_pair, check_positive, check_shape

__all__ = ["WideWindow"]


def _add_mod(value, step, modulus):
    """``(value + step) % modulus`` for ``0 <= value < modulus`` and a constant ``step``."""
    step %= modulus
    total = value + step
    return Mux(total >= modulus, total - modulus, total)


def _queue_moves(left, words, push_sizes, beats, pops, needs, capacity):
    """The column queue's reachable moves, found by exploring its states ``(columns, word, beat)``
    with a push allowed whenever it fits (the line buffer always ready): ``(lands, keeps)``, where
    ``lands[p]`` holds the pushed columns ``k`` that can land on position ``p`` and ``keeps[p]`` the
    pops after which position ``p`` keeps a shifted column. The queue's muxes need no others."""
    lands = [set() for _ in range(capacity)]
    keeps = [set() for _ in range(capacity)]
    start = (left, 0, 0)
    seen, todo = {start}, [start]
    while todo:
        occ, word, beat = todo.pop()
        last = beat == beats - 1
        for pop in ((0, pops[last]) if occ >= needs[last] else (0,)):
            tail, push = occ - pop, push_sizes[word == words - 1]
            for p in range(tail if pop else 0):
                keeps[p].add(pop)
            moves = [(tail, word)]
            if tail + push <= capacity:
                for k in range(push):
                    lands[tail + k].add(k)
                moves.append((tail + push, (word + 1) % words))
            for state in ((o, w, (beat + 1) % beats if pop else beat) for o, w in moves):
                if state not in seen:
                    seen.add(state)
                    todo.append(state)
    return lands, keeps


class WideWindow(wiring.Component):
    """Sliding window over an ``(H, W, C)`` channels-last stream, ``pixels`` whole windows per beat.

    The input arrives as ``H * W / in_pixels`` beats of ``in_pixels`` pixels (raster order, each
    pixel's ``C`` channels consecutive). Each image (one after the other, without gaps) becomes
    ``HO * WO / pixels`` beats; a beat holds ``pixels`` consecutive output pixels of one output
    row, output pixel ``m``'s window in elements ``[m * K, (m + 1) * K)``, ``K = KH * KW * C``,
    flattened in ``(ky, kx, c)`` order. Positions outside the input (padding) carry
    ``pad_value``. ``HO = (H + top + bottom - KH) // SH + 1``, likewise ``WO``.

    Storage: a line buffer (`amaranth.lib.memory.Memory`, ``buffer_elements``) of
    ``R = max(KH + SH, 2 * KH + SH - 1 - top - bottom)`` rows of ``W / in_pixels`` words of
    ``in_pixels * C`` elements, one write port and ``KH`` read ports (block RAM holds it ``KH``
    times); the extra rows let an image's first rows arrive while the last output row of the
    image before is still read. Registers (``register_elements``): a word register of
    ``KH * in_pixels * C`` elements and a queue of ``queue_columns`` columns of ``KH * C``.

    An output row reads its ``KH`` rows together, a word per cycle (memory read register, then
    the word register, where rows outside the input become pads), and pushes the words into the
    queue as columns of the padded row; the left and right pads are pushed, as constants, with a
    row's last word. The output beat is the queue's first ``S = (pixels - 1) * SW + KW`` columns,
    wired straight from the registers to ``o.payload``. A beat pops ``pixels * SW`` columns, a
    row's last beat the rest of the row, ``E = W + left + right - (WO - pixels) * SW``;
    ``queue_columns = max(pixels * SW, E) + max(in_pixels + left + right, S, pixels * SW) - 1``
    holds a row's last beat and the next row's first. A queue position's next value is a shift
    (by ``pixels * SW`` or ``E``), a column of the word register or the pad value; only the
    columns a search of the queue's states finds reachable get a mux input, so the mux is at most
    ``in_pixels + 3`` wide whatever ``W``. ``o.ready`` reaches the registers through muxes
    between comparisons of the queue's fill with constants; ``o.valid`` is a register and
    ``i.ready`` a comparison of two registers. Cost: about 1.5 to 2 LUT4s per queue bit and some
    200 for the control (Yosys ``synth_ice40``, 8-bit elements: 8x8x1 with a 3x3 kernel, padding
    1, a pixel in and out: 290 LUT4s, 220 FFs, 3 EBRs; 28x28x1, 4 pixels in and out: 660 LUT4s,
    500 FFs, 6 EBRs; alone, 43 to 47 MHz on the UP5K and 145 MHz on the ECP5).

    Throughput: one input beat per cycle while a row slot is free, one word per cycle while the
    rows an output row needs are written and the queue has room, one output beat per cycle while
    the queue holds the beat's columns. Without stalls, ``N`` back-to-back images take at most
    ``N * max(H * W / in_pixels, HO * max(W / in_pixels, WO / pixels))`` cycles plus
    ``max(min(KH, H) * W / in_pixels, WO / pixels) + latency`` when each padding is smaller
    than the kernel (the steady state is exactly the first term per image; ``HO * W /
    in_pixels`` exceeds ``H * W / in_pixels`` only if the padding makes ``HO > H``). Larger
    paddings can add a cycle or two per image.

    Latency: if the input beat that completes the ``min(KH - top, H)`` rows the first output
    beat needs is taken in cycle ``t``, that beat is valid from cycle ``t + latency``:
    ``latency = 3 + k``, 1 cycle for the row count, 2 through the memory and the word register,
    1 into the queue, where ``k`` is the number of words the beat's columns span, the least
    with ``left + k * in_pixels (+ right if k = W / in_pixels) >= max(S, pixels * SW)``
    (``>= E`` if ``pixels = WO``).

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
    pixels : int
        Output pixels per beat; divides ``WO``.
    in_pixels : int
        Input pixels per beat; divides ``W``.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, in_pixels * C)))``
    o : ``Out(stream.Signature(data.ArrayLayout(shape, pixels * KH * KW * C)))``

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the kernel does not fit the padded input, ``pad_value`` does not fit ``shape``,
        ``in_pixels`` does not divide ``W`` or ``pixels`` does not divide ``WO``.
    """
    def __init__(self, shape: ShapeLike, *, height: int, width: int, channels: int, kernel: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int, int, int] = 0,
                 pad_value: int = 0, pixels: int = 1, in_pixels: int = 1) -> None:
        shape = check_shape("Element shape", shape)
        check_positive("Height", height)
        check_positive("Width", width)
        check_positive("Channel count", channels)
        kernel = check_pair("Kernel", kernel)
        stride = check_pair("Stride", stride)
        padding = check_padding("Padding", padding)
        check_positive("Output pixels per beat", pixels)
        check_positive("Input pixels per beat", in_pixels)
        top, left, bottom, right = padding
        if kernel[0] > height + top + bottom or kernel[1] > width + left + right:
            raise ValueError(f"Kernel {kernel!r} must fit the padded input "
                             f"({height + top + bottom}, {width + left + right})")
        check_in_range("Pad value", pad_value, shape)
        if width % in_pixels:
            raise ValueError(f"Input pixels per beat must divide the width {width}, not {in_pixels!r}")
        out_width = (width + left + right - kernel[1]) // stride[1] + 1
        if out_width % pixels:
            raise ValueError(f"Output pixels per beat must divide the output width {out_width}, "
                             f"not {pixels!r}")
        self._shape = shape
        self._size = (height, width, channels)
        self._kernel = kernel
        self._stride = stride
        self._padding = padding
        self._pad_value = pad_value
        self._pixels = pixels
        self._in_pixels = in_pixels
        # queue geometry, in columns of the padded input row
        self._span = (pixels - 1) * stride[1] + kernel[1]                    # columns a beat shows
        self._step = pixels * stride[1]                                     # a beat pops
        self._row_step = width + left + right - (out_width - pixels) * stride[1]   # a row's last beat pops
        self._push = in_pixels + right + left                               # most columns a word pushes
        self._capacity = max(self._step, self._row_step) + max(self._push, self._span, self._step) - 1
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(shape, in_pixels * channels))),
            "o": Out(stream.Signature(data.ArrayLayout(shape, pixels * self.window_size))),
        })

    @property
    def shape(self):
        return self._shape

    @property
    def pixels(self):
        return self._pixels

    @property
    def in_pixels(self):
        return self._in_pixels

    @property
    def output_size(self):
        """``(HO, WO)``."""
        (h, w, _), (kh, kw), (sh, sw) = self._size, self._kernel, self._stride
        top, left, bottom, right = self._padding
        return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1

    @property
    def window_size(self):
        """Elements per window, ``K = KH * KW * C``."""
        return self._kernel[0] * self._kernel[1] * self._size[2]

    @property
    def buffer_rows(self):
        """Rows of the line buffer, ``R = max(KH + SH, 2 * KH + SH - 1 - top - bottom)``."""
        (kh, _), (sh, _), (top, _, bottom, _) = self._kernel, self._stride, self._padding
        return max(kh + sh, 2 * kh + sh - 1 - top - bottom)

    @property
    def queue_columns(self):
        """Columns of the register queue, ``KH * C`` elements each (see the class)."""
        return self._capacity

    @property
    def buffer_elements(self):
        """Elements in the line buffer (`Memory`), ``R * W * C``."""
        h, w, c = self._size
        return self.buffer_rows * w * c

    @property
    def register_elements(self):
        """Elements in registers: the queue and the word register, ``(queue_columns + in_pixels) * KH * C``."""
        return (self._capacity + self._in_pixels) * self._kernel[0] * self._size[2]

    @property
    def latency(self):
        """Cycles from the input beat completing the first output beat's rows to that beat's
        ``o.valid`` (see the class)."""
        (_, left, _, right), p, words = self._padding, self._in_pixels, self._size[1] // self._in_pixels
        need = self._row_step if self.output_size[1] == self._pixels else max(self._span, self._step)
        return 3 + next(k for k in range(1, words + 1) if left + k * p + (right if k == words else 0) >= need)

    def elaborate(self, platform):
        m = Module()
        h, w, c = self._size
        kh, kw = self._kernel
        sh, sw = self._stride
        top, left, _, right = self._padding
        ho, wo = self.output_size
        p_in, rows, cap = self._in_pixels, self.buffer_rows, self._capacity
        words = w // p_in                       # memory words (input beats) per row
        depth = rows * words
        bits = self._shape.width
        col_bits = kh * c * bits                # a queue column: KH pixels of C elements
        span, step, row_step = self._span, self._step, self._row_step
        beats = wo // self._pixels              # output beats per row
        word = data.ArrayLayout(self._shape, p_in * c)
        pad_word = word.const([self._pad_value] * (p_in * c)).as_value()
        pad_col = data.ArrayLayout(self._shape, kh * c).const([self._pad_value] * (kh * c)).as_value()
        m.submodules.lines = lines = Memory(shape=word, depth=depth, init=[])
        wr = lines.write_port()
        rds = [lines.read_port() for _ in range(kh)]

        # --- writer: row r goes to slot r % R once the reader is done with row r - R ----------
        # rows written, counted from row 0 of the image the reader is in
        written = Signal(range(-h, h + rows + 1))
        write_limit = Signal(range(rows, h + rows + 1), init=rows)   # first row the reader needs + R
        waddr = Signal(range(depth))
        wcol = Signal(range(words))
        row_done = Signal()
        image_done = Signal()
        m.d.comb += [
            self.i.ready.eq(written < write_limit),
            wr.addr.eq(waddr),
            wr.data.eq(self.i.payload),
            wr.en.eq(self.i.valid & self.i.ready),
            row_done.eq(wr.en & (wcol == words - 1)),
        ]
        with m.If(wr.en):
            m.d.sync += [
                waddr.eq(Mux(waddr == depth - 1, 0, waddr + 1)),
                wcol.eq(Mux(row_done, 0, wcol + 1)),
            ]
        m.d.sync += written.eq(Mux(image_done, Mux(row_done, written + 1 - h, written - h),
                                   Mux(row_done, written + 1, written)))

        # --- reader: output row oy reads its KH rows together, a word per cycle -----------------
        # per output row (tables indexed by oy): the rows it needs written, the writer's limit
        # (its first row + R) and which of its rows lie outside the input
        tops = [o * sh - top for o in range(ho)]
        needs = [min(max(t + kh, 0), h) for t in tops]
        limits = [min(max(t, 0), h) + rows for t in tops]
        outside = [sum(1 << ky for ky in range(kh) if not 0 <= t + ky < h) for t in tops]
        oy = Signal(range(ho))
        wi = Signal(range(words))
        rows_needed = Signal(range(h + 1), init=needs[0])
        row_pads = Signal(kh, init=outside[0])
        bases = [Signal(range(depth), init=((ky - top) % rows) * words, name=f"base{ky}")
                 for ky in range(kh)]          # address of the output row's row ky
        mem_valid, mem_last, mem_pads, mem_free, issue = Signal(), Signal(), Signal(kh), Signal(), Signal()
        last_word, last_oy = wi == words - 1, oy == ho - 1
        m.d.comb += [
            issue.eq((written >= rows_needed) & mem_free),
            image_done.eq(issue & last_word & last_oy),
        ]
        for base, rd in zip(bases, rds):
            m.d.comb += [rd.addr.eq(base + wi), rd.en.eq(issue)]

        def next_row(table):
            return Array(table[1:] + table[:1])[oy]

        mem_move = Signal()
        with m.If(issue):
            m.d.sync += [mem_valid.eq(1), mem_last.eq(last_word), mem_pads.eq(row_pads),
                         wi.eq(Mux(last_word, 0, wi + 1))]
            with m.If(last_word):
                image_rows = h - (ho - 1) * sh  # from the last output row's top to the next image's
                m.d.sync += [
                    oy.eq(Mux(last_oy, 0, oy + 1)),
                    rows_needed.eq(next_row(needs)),
                    write_limit.eq(next_row(limits)),
                    row_pads.eq(next_row(outside)),
                ]
                m.d.sync += [base.eq(Mux(last_oy, _add_mod(base, image_rows * words, depth),
                                         _add_mod(base, sh * words, depth))) for base in bases]
        with m.Elif(mem_move):
            m.d.sync += mem_valid.eq(0)

        # --- word register: the words read, rows outside the input replaced by pads ------------
        word_valid, word_last, word_free, push = Signal(), Signal(), Signal(), Signal()
        word_reg = [Signal(p_in * c * bits, name=f"word{ky}") for ky in range(kh)]
        with m.If(mem_move):
            m.d.sync += [word_valid.eq(1), word_last.eq(mem_last)]
            m.d.sync += [word_reg[ky].eq(Mux(mem_pads[ky], pad_word, rds[ky].data.as_value())) for ky in range(kh)]
        with m.Elif(push):
            m.d.sync += word_valid.eq(0)

        # --- column queue: the beat shows columns 0..span-1; a word lands behind the last one ---
        # What o.ready takes part in is a choice between comparisons of the register occ with
        # constants: o.ready -> fire -> push -> issue is a few LUTs deep, without adders.
        occ = Signal(range(cap + 1), init=left)   # columns held; the first row's left pads
        last_beat = Signal(init=beats == 1)
        beat = Signal(range(beats))
        need = max(span, step)                  # columns a beat needs (row_step at a row's last)
        out_valid = Signal(init=left >= (row_step if beats == 1 else need))
        fire = Signal()
        pushed = p_in + right + left            # a row's last word: + its right, the next row's left

        def at_least(k):
            return Const(1) if k <= 0 else Const(0) if k > cap else occ >= k

        def by_beat(f):
            """``f(pop, need now, need after the beat)`` for the current beat."""
            last = f(row_step, row_step, row_step if beats == 1 else need)
            if beats == 1:
                return last
            return Mux(last_beat, last, Mux(beat == beats - 2, f(step, need, row_step), f(step, need, need)))

        def by_word(f):
            """``f(columns pushed)`` for the word in the word register."""
            return Mux(word_last, f(pushed), f(p_in))

        fits_kept = by_word(lambda n: ~at_least(cap - n + 1))
        fits_popped = by_beat(lambda pop, now, after: by_word(lambda n: ~at_least(cap - n + pop + 1)))
        valid_popped = by_beat(lambda pop, now, after: at_least(after + pop))
        valid_both = by_beat(lambda pop, now, after: by_word(lambda n: at_least(after + pop - n)))
        valid_grown = by_beat(lambda pop, now, after: by_word(lambda n: at_least(now - n)))
        count = Mux(word_last, pushed, p_in)
        pop = Mux(last_beat, row_step, step)
        m.d.comb += [
            fire.eq(out_valid & self.o.ready),
            push.eq(word_valid & Mux(fire, fits_popped, fits_kept)),
            word_free.eq(~word_valid | push),
            mem_move.eq(mem_valid & word_free),
            mem_free.eq(~mem_valid | mem_move),
        ]
        with m.If(fire):
            m.d.sync += [beat.eq(Mux(last_beat, 0, beat + 1)),
                         last_beat.eq(1 if beats == 1 else ~last_beat & (beat == beats - 2))]
        m.d.sync += [
            occ.eq(Mux(fire, Mux(push, occ - pop + count, occ - pop), Mux(push, occ + count, occ))),
            out_valid.eq(Mux(fire, Mux(push, valid_both, valid_popped), Mux(push, valid_grown, out_valid))),
        ]
        at = [occ == v for v in range(cap + 1)]

        def lands_at(t):
            """A push lands at position ``t``: ``occ`` minus this cycle's pop is ``t``."""
            def at_(v):
                return at[v] if v <= cap else Const(0)
            return Mux(fire, Mux(last_beat, at_(t + row_step), at_(t + step)), at_(t))

        cols = [Signal(col_bits, init=pad_col.value, name=f"col{p}") for p in range(cap)]
        lane_cols = [Cat(word_reg[ky][k * c * bits:(k + 1) * c * bits] for ky in range(kh)) for k in range(p_in)]

        def col(q):
            return cols[q] if q < cap else pad_col

        lands, keeps = _queue_moves(left, words, (p_in, p_in + right + left), beats, (step, row_step),
                                    (max(span, step), row_step), cap)
        for p in range(cap):
            # a position loads on a pop (shifted by step, or row_step at a row's last beat) or when a
            # pushed column lands on it: word column k, or a pad column after a row's last word
            data_lanes = sorted(k for k in lands[p] if k < p_in)
            hits = [lands_at(p - k) for k in data_lanes]
            pad_hit = word_last & Cat(lands_at(p - k) for k in lands[p] if k >= p_in).any()
            if len(keeps[p]) == 2:
                value = Mux(last_beat, col(p + row_step), col(p + step))
            else:
                value = col(p + min(keeps[p], default=cap))
            for k, hit in zip(data_lanes, hits):
                value = Mux(hit, lane_cols[k], value)
            with m.If(fire | pad_hit | Cat(*hits).any()):
                m.d.sync += cols[p].eq(Mux(pad_hit, pad_col, value))

        elements = [cols[q * sw + kx][ky * c * bits:(ky + 1) * c * bits]
                    for q in range(self._pixels) for ky in range(kh) for kx in range(kw)]
        m.d.comb += [self.o.valid.eq(out_valid), self.o.payload.eq(Cat(*elements))]
        return m
