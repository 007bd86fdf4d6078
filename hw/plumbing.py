"""Stream plumbing: a FIFO stage with a fill level, a width converter and a fork.

Every stream carries a `data.ArrayLayout` of ``n`` elements of one integer shape per beat, the
first element of the beat being the earliest in stream order (docs/semantics.md, section 2).
"""

import math

from amaranth.hdl import Cat, Const, Module, Mux, ShapeLike, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_positive, check_shape

__all__ = ["StreamFIFO", "WidthConverter", "Fork", "count_room"]


class StreamFIFO(wiring.Component):
    """First in, first out queue between two streams, on `amaranth.lib.fifo.SyncFIFOBuffered`.

    A beat wider than ``slice_bits`` goes through several `SyncFIFOBuffered` side by side (slices
    of at most ``slice_bits`` bits each, every one written and read in the same cycles, so all hold
    the same beats in lock step) plus a control queue whose ``w_rdy``, ``r_rdy`` and ``level`` the
    streams see (one bit wide, the bit unused: Yosys's Verilog backend fails on a memory of no
    width; synthesis removes the unread memory). Why: the output register of a `SyncFIFOBuffered`
    loads when its inner queue has a beat and the register is empty or being read, and ``r_rdy``'s
    next value depends on that same load enable, a loop from ``r_rdy`` back to itself. In one queue
    of hundreds of bits that enable is a net of hundreds of sinks (the output register's clock
    enables) and ``r_rdy`` also drives the consumer's logic, so the placer spreads the loop out
    (the digits CNN w8a8 on the ECP5: 12.4 ns, 11.2 ns of it routing, in the 576-bit FIFO before
    its second convolution). Sliced, each loop drives a bounded number of sinks, and the one the
    producer and consumer see drives no data. Yosys merges only cells with identical inputs, and
    each queue's control registers feed back into themselves, so the copies stay apart. By
    default only queues of up to `SLICE_MAX_DEPTH` beats are sliced: their storage is distributed
    RAM or flip-flops, with the output register in the fabric; a deeper queue is block RAM, whose
    output register is inside each block, and slices not a multiple of the block's width would
    take more blocks.

    Parameters
    ----------
    shape : shape-like
        Element shape (``signed(bits)`` or ``unsigned(bits)``).
    n : int
        Elements per beat.
    depth : int
        Capacity in beats. `SyncFIFOBuffered` keeps one beat in its output register and the rest
        in an inner queue that cannot take a beat in the cycle it gives one up when full, so
        depths 1 and 2 pass one beat every other cycle under steady flow; depth 3 and more pass
        one beat per cycle.
    slice_bits : int
        Widest slice in bits; a beat of at most this many bits goes through a single
        `SyncFIFOBuffered`. Default: `SLICE_BITS` at depths up to `SLICE_MAX_DEPTH`, no slicing
        deeper. Slicing changes no cycle of the streams' behaviour.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, n)))``
    o : ``Out(stream.Signature(data.ArrayLayout(shape, n)))``
        A beat written in cycle ``t`` is valid on ``o`` in cycle ``t + 2`` at the earliest
        (``t + 1`` at depth 1, where `SyncFIFOBuffered` is a single register).
    level : ``Out(range(depth + 1))``
        Beats held; the queue is full when ``level == depth`` and empty when ``level == 0``.

    Raises
    ------
    TypeError
        If an argument has the wrong type or is out of range.
    """
    SLICE_BITS = 64
    SLICE_MAX_DEPTH = 16

    def __init__(self, shape: ShapeLike, n: int, depth: int, *, slice_bits: int | None = None) -> None:
        shape = check_shape("Element shape", shape)
        check_positive("Elements per beat", n)
        check_positive("FIFO depth", depth)
        if slice_bits is None:
            slice_bits = self.SLICE_BITS if depth <= self.SLICE_MAX_DEPTH else None
        if slice_bits is not None:
            check_positive("Slice width", slice_bits)
        else:
            slice_bits = max(1, data.ArrayLayout(shape, n).size)
        self._layout = data.ArrayLayout(shape, n)
        self._depth = depth
        count = -(-self._layout.size // slice_bits)
        base, extra = divmod(self._layout.size, count)
        self._slices = [base + (k < extra) for k in range(count)]
        super().__init__({
            "i": In(stream.Signature(self._layout)),
            "o": Out(stream.Signature(self._layout)),
            "level": Out(range(depth + 1)),
        })

    @property
    def layout(self):
        return self._layout

    @property
    def depth(self):
        return self._depth

    @property
    def slices(self):
        """Widths in bits of the data slices, lowest bits first (one entry: a single queue)."""
        return list(self._slices)

    def _make_queues(self):
        """The queue whose ``w_rdy``, ``r_rdy`` and ``level`` the streams see, then the data slices
        lowest bits first (none when a single queue carries the beat)."""
        if len(self._slices) == 1:
            return [fifo.SyncFIFOBuffered(width=self._layout.size, depth=self._depth)]
        # a control queue of one unused bit: Yosys's Verilog backend fails on a memory of no width
        return [fifo.SyncFIFOBuffered(width=width, depth=self._depth)
                for width in [1] + self._slices]

    def elaborate(self, platform):
        m = Module()
        w_data, r_data = self.i.payload.as_value(), self.o.payload.as_value()
        queues = self._make_queues()
        control = queues[0]
        if len(queues) == 1:
            m.submodules.queue = control
        else:
            m.submodules.control = control
            for k, queue in enumerate(queues[1:]):
                m.submodules[f"slice{k}"] = queue
        low = 0
        for queue in queues[len(queues) > 1:]:
            m.d.comb += [queue.w_data.eq(w_data[low:low + queue.width]),
                         r_data[low:low + queue.width].eq(queue.r_data)]
            low += queue.width
        for queue in queues:
            m.d.comb += [queue.w_en.eq(self.i.valid), queue.r_en.eq(self.o.ready)]
        m.d.comb += [
            self.i.ready.eq(control.w_rdy), self.o.valid.eq(control.r_rdy),
            self.level.eq(control.level),
        ]
        return m


class WidthConverter(wiring.Component):
    """Regroups a stream of ``n_in`` elements per beat into ``n_out`` elements per beat.

    Any pair of widths works; elements keep their order. Internally the elements move in chunks
    of ``gcd(n_in, n_out)`` through a buffer of ``n_in + n_out + min(n_in, n_out) - gcd``
    elements, large enough that ``i.ready`` depends only on registers (no combinational path from
    ``o.ready`` to ``i.ready``) and yet neither side ever waits for the buffer.

    Latency is one cycle (an input beat that completes an output beat is on ``o`` the next
    cycle). Throughput without backpressure is the slower side's rate: one input beat per cycle
    when ``n_in <= n_out``, one output beat per cycle when ``n_in >= n_out``.

    Parameters
    ----------
    shape : shape-like
        Element shape.
    n_in, n_out : int
        Elements per input and output beat. The stream length must be a multiple of ``n_out``
        for the last elements to leave.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, n_in)))``
    o : ``Out(stream.Signature(data.ArrayLayout(shape, n_out)))``
    """
    def __init__(self, shape: ShapeLike, n_in: int, n_out: int) -> None:
        shape = check_shape("Element shape", shape)
        check_positive("Input elements per beat", n_in)
        check_positive("Output elements per beat", n_out)
        self._shape = shape
        self._n_in = n_in
        self._n_out = n_out
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(shape, n_in))),
            "o": Out(stream.Signature(data.ArrayLayout(shape, n_out))),
        })

    @property
    def n_in(self):
        return self._n_in

    @property
    def n_out(self):
        return self._n_out

    @property
    def capacity(self):
        """Buffer size in elements."""
        g = math.gcd(self._n_in, self._n_out)
        return self._n_in + self._n_out + min(self._n_in, self._n_out) - g

    def elaborate(self, platform):
        m = Module()
        g = math.gcd(self._n_in, self._n_out)
        a, b = self._n_in // g, self._n_out // g        # chunks per input / output beat
        cap = self.capacity // g
        chunk_bits = g * self._shape.width

        buf = [Signal(chunk_bits, name=f"buf{j}") for j in range(cap)]
        count = Signal(range(cap + 1))
        base = Signal(range(cap + 1))
        i_bits, o_bits = self.i.payload.as_value(), self.o.payload.as_value()

        out_fire = self.o.valid & self.o.ready
        in_fire = self.i.valid & self.i.ready
        m.d.comb += [
            self.o.valid.eq(count >= b),
            o_bits.eq(Cat(*buf[:b])),
            self.i.ready.eq(count <= cap - a),
            base.eq(count - Mux(out_fire, b, 0)),
        ]
        for j in range(cap):
            shifted = buf[j + b] if j + b < cap else Const(0, chunk_bits)
            with m.If(out_fire):
                m.d.sync += buf[j].eq(shifted)
            for k in range(a):
                if 0 <= j - k <= cap - a:
                    with m.If(in_fire & (base == j - k)):
                        m.d.sync += buf[j].eq(i_bits[k * chunk_bits:(k + 1) * chunk_bits])
        m.d.sync += count.eq(base + Mux(in_fire, a, 0))
        return m


class Fork(wiring.Component):
    """Copies one stream to ``count`` streams, each with its own backpressure.

    An input beat is offered on every output at once; each output takes it when its consumer is
    ready, and the input beat is accepted once every output has taken it. A consumer that is
    ready therefore never waits for another one within a beat, and no beat is lost or repeated
    however the consumers stall. Combinational (zero latency); one beat per cycle when every
    consumer is ready. Note that a fork whose branches join again (a residual block) needs
    enough buffering on the shorter branch to hold the beats the longer one keeps before it
    produces: otherwise the join and the fork wait for each other.

    Parameters
    ----------
    shape : shape-like
        Element shape.
    n : int
        Elements per beat.
    count : int
        Number of outputs (at least 2).

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(shape, n)))``
    o : ``Out(stream.Signature(data.ArrayLayout(shape, n))).array(count)``
    """
    def __init__(self, shape: ShapeLike, n: int, count: int = 2) -> None:
        shape = check_shape("Element shape", shape)
        check_positive("Elements per beat", n)
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            raise TypeError(f"Output count must be an integer of at least 2, not {count!r}")
        self._layout = data.ArrayLayout(shape, n)
        self._count = count
        super().__init__({
            "i": In(stream.Signature(self._layout)),
            "o": Out(stream.Signature(self._layout)).array(count),
        })

    @property
    def count(self):
        return self._count

    def elaborate(self, platform):
        m = Module()
        done = Signal(self._count)          # outputs that already took the current beat
        taken = Cat(*[done[k] | self.o[k].ready for k in range(self._count)])
        m.d.comb += self.i.ready.eq(taken.all())
        for k, port in enumerate(self.o):
            m.d.comb += [
                port.payload.eq(self.i.payload),
                port.valid.eq(self.i.valid & ~done[k]),
            ]
        with m.If(self.i.valid):
            with m.If(self.i.ready):
                m.d.sync += done.eq(0)
            with m.Else():
                m.d.sync += done.eq(taken)
        return m


def count_room(m, depth, take, give, room):
    """Drive ``room`` (a register, ``Signal(init=1)``) to say an entry of a queue of ``depth`` is
    free for a beat not yet promised one: a count of free entries falls by ``take`` (a beat is
    promised an entry) and rises by ``give`` (the queue's reader took a beat), and ``room`` is the
    next count's ``!= 0``, so that a promise never waits on a combinational path to the reader.
    """
    free = Signal(range(depth + 1), init=depth)
    free_next = Signal.like(free)
    m.d.comb += free_next.eq(free - take + give)
    m.d.sync += [free.eq(free_next), room.eq(free_next != 0)]
