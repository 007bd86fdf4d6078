# amaranth: UnusedElaboratable=no
# (the sub-components built in MVAU.__init__ are used exactly when the MVAU is; an unused MVAU
# is reported where it is created)
"""Matrix-vector-activation unit: a folded Dense layer (docs/semantics.md, section 4, Dense)."""

from collections.abc import Sequence

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.base import ints

from ._arith import Encoding, code_range, code_shape, const_select
from .mac import MacArray, MacStyle
from .plumbing import count_room
from .requant import Requant, RequantMode
from .threshold import ThresholdRequant
from .weights import MemoryKind, WeightMemory

__all__ = ["MVAU"]


class _PointSum(wiring.Component):
    """``sum_p m[p][c] * dot_p[c]``: the multipoint combination, PE channels per beat.

    Beats arrive in (neuron fold, point) order; one output beat per ``points`` input beats.
    Latency 2 cycles.
    """

    def __init__(self, pe: int, folds: int, multipliers: Sequence[Sequence[int]], in_bits: int,
                 out_bits: int) -> None:
        self._pe, self._folds, self._mult = pe, folds, multipliers
        self._in_bits, self._out_bits = in_bits, out_bits
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(in_bits), pe))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_bits), pe))),
        })

    def elaborate(self, platform):
        m = Module()
        points = len(self._mult)
        steps = points * self._folds                # index = fold * points + point
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        step = Signal(range(steps))
        point = Signal(range(points))
        s1_valid, s1_last = Signal(), Signal()
        with m.If(self.i.valid & en):
            m.d.sync += [step.eq(Mux(step == steps - 1, 0, step + 1)),
                         point.eq(Mux(point == points - 1, 0, point + 1))]
        with m.If(en):
            m.d.sync += [s1_valid.eq(self.i.valid), s1_last.eq(point == points - 1),
                         self.o.valid.eq(s1_valid & s1_last)]
        m_max = max(abs(v) for row in self._mult for v in row)
        for lane in range(self._pe):
            values = [self._mult[p][f * self._pe + lane]
                      for f in range(self._folds) for p in range(points)]
            mult = const_select(m, values, step, signed(max(2, m_max.bit_length() + 1)),
                                f"mult_{lane}")
            prod = Signal(signed(self._out_bits), name=f"prod_{lane}")
            total = Signal(signed(self._out_bits), name=f"total_{lane}")
            total_next = Signal(signed(self._out_bits), name=f"total_next_{lane}")
            m.d.comb += total_next.eq(total + prod)
            with m.If(en):
                m.d.sync += prod.eq(self.i.payload[lane] * mult)
                with m.If(s1_valid):
                    m.d.sync += total.eq(Mux(s1_last, 0, total_next))
                    with m.If(s1_last):
                        m.d.sync += self.o.payload[lane].eq(total_next)
        return m


def _nested(name, values, shape):
    """Nested integer lists of a given shape (numpy arrays work too)."""
    def walk(v, dims):
        if not dims:
            return int(v)
        v = list(v)
        if len(v) != dims[0]:
            raise ValueError(f"{name} must have shape {tuple(shape)}")
        return [walk(x, dims[1:]) for x in v]
    try:
        return walk(values, list(shape))
    except TypeError:
        raise ValueError(f"{name} must have shape {tuple(shape)}") from None


def _count(counter, last, n):
    """The statements that step ``counter`` through ``0 .. n - 1`` and wrap, with ``last`` (a
    register, ``init=n == 1``) kept equal to ``counter == n - 1`` from the counter's next value."""
    return [counter.eq(Mux(last, 0, counter + 1)), last.eq(Mux(last, n == 1, counter == n - 2))]


class MVAU(wiring.Component):
    """Folded matrix-vector-activation unit (FINN's MVAU): MAC array, weight memory, requant.

    Computes, per input vector ``x`` of ``K`` codes, ``N`` output codes
    ``y[c] = requantize(b[c] + sum_p m[p][c] * sum_k w[p][c][k] * (x[k] - zx), M0[c], n[c], zy,
    lo, hi)``. The zero point is folded into the bias (``b[c] - zx * sum_p m[p][c] *
    sum_k w[p][c][k]``), so the MAC array sees raw codes.

    Parameters
    ----------
    pe, simd : int
        Output channels per output beat (dividing ``N``), input codes per input beat (dividing
        ``K``).
    weights : ``[P][N][K]`` integers
        Weight values of the weight type (bipolar: -1 / +1).
    w_bits, w_encoding : int, Encoding
    a_bits, a_encoding : int, Encoding
        Input code type (``UNSIGNED`` or ``SIGNED``).
    bias, m0, shift : ``[N]`` integers
    point_multipliers : ``[P][N]`` integers, optional
        Integer multiplier of each point (default all 1).
    in_zero_point, out_zero_point, lo, hi : int
    out_bits, out_signed
        Output code type.
    m_bits : int
        Width of ``M0`` (default 24).
    style : MacStyle
    use_dsp : bool
    requant : RequantMode
        How the outputs are requantized (docs/hardware.md, "Requantization options"): ``MULTIPLY``
        (the default: ``acc * M0`` on a multiplier, DSP blocks where synthesis has them),
        ``SHIFT_ADD`` (the multiply by shift and add in logic, ``requant_digit_bits`` bits of
        ``M0`` per cycle), ``THRESHOLDS`` (``hi - lo`` per-channel thresholds compared at once) or
        ``SEARCH`` (the thresholds in block RAM, binary search in ``out_bits`` cycles). All are
        bit-exact; the multi-cycle ones take one beat per `requant_interval` cycles, so they keep
        the unit's rate when every output beat has that many cycles (``P * K / simd``, times
        ``a_bits`` bit-serially).
    requant_digit_bits : int
        Bits of ``M0`` per cycle with ``SHIFT_ADD`` (default 1).
    rounding : str
        The requantization's rule for exact ties: ``"half_up"`` (default) or ``"half_even"``
        (docs/semantics.md); any mode, same latency.
    weight_memory : MemoryKind
        With ``LOGIC`` (``AUTO`` picks it for up to 1024 weight bits) the weights are constants
        (`MacArray` ``weights=``): a lane (PE row, SIMD column) whose weight is zero at every
        fold step has no product and no adder input, a lane with one weight at every step
        (every lane at ``pe = N``, ``simd = K``) multiplies by a constant, one with at most
        four weights over the steps looks its product up from one or two bits of the word read
        from a ROM of the fold step, and the others multiply that word; zeros also make the ROM
        smaller. So pruned weights make the unit smaller (docs/hardware.md, "Sparse (pruned)
        weights"); ``BLOCK`` and ``SPRAM`` weights are run-time data and cost the same whatever
        their values.
    pixels : int
        Vectors per beat (FINN's MMV; default 1). With ``pixels > 1`` the unit must be fully
        unfolded (``pe = N``, ``simd = K``, weights not in SPRAM) and is ``pixels`` copies of it
        in lockstep: an input beat carries ``pixels`` whole vectors, an output beat their
        ``pixels * N`` outputs, vector after vector. Each copy has its own constant weights (at full
        unfolding every lane multiplies by its own constant anyway, so sharing would save nothing
        but the ROM of a multipoint unit). Same latency and interval as one copy.
    fetch_register : bool
        Register the weight word and the activations once more before the `MacArray` (one more
        cycle of latency and ``pe * simd * w_bits + simd * a_bits`` flip-flops): a block RAM's
        clock-to-output (5.6 ns on the ECP5) is then not in series with the adder trees.
    tree_registers : int
        Register levels in the `MacArray`'s adder trees (default 1), each a cycle of latency: a
        wide SIMD tree on the ECP5 takes more (`qfab.hw._arith.sum_tree`).
    skid : bool
        A two-beat queue (`amaranth.lib.fifo.SyncFIFO`, its ready a function of its level
        register) between the dot products and the requantization: one more cycle of latency and
        ``2 * pe`` accumulators of flip-flops (or distributed RAM); one beat (``pe`` accumulators,
        no mux) before a requantization that takes a beat at most every other cycle (``SHIFT_ADD``,
        ``SEARCH``), at the same rate. Without it, the MAC array's
        stall enable (which loads every register of its adder trees) and the issue logic (bank
        select, vector store) hang on the requantization's ready, and through it on ``o.ready``:
        a combinational path from the next stage's FIFO or the requantization's step counter,
        through the enable's large fanout, that limited both families' clocks.
    reserve : bool
        The MAC array never stalls (FINN's RTL MVU works so): a queue after it (instead of the
        skid) as deep as the dot products that can be on their way (`queue_depth`), and a dot
        product's last beat issues only when the queue has room reserved for it (a count of free
        entries, taken at the issue and given back when the requantization takes a beat). The
        MAC array's enable, which loads every register of its adder trees, is then a constant, and
        the stall chain from ``o.ready`` ends at the queue and the count: what limited the ECP5's
        MLP w4a4 at II 8 to 92.2 MHz (five LUT levels, 7.9 ns of routing into the enable's
        fanout). Same latency as ``skid``, same rate; ``queue_depth * pe`` accumulators of
        distributed RAM (flip-flops on a part without it). A ``MULTIPLY`` requantization never
        stalls either (`Requant`'s ``reserve``: its results in a queue of its own,
        ``requant_queue_depth`` beats of ``pe`` outputs), so that ``o.ready`` reaches no further
        than that queue and its count.
    split_multiply : bool
        ``MULTIPLY`` requantization: the product in two cycles (`Requant`'s ``split_multiply``),
        one more cycle of latency.
    dsp_width : int or None
        ``MULTIPLY`` requantization: the product in pieces for ``dsp_width``-bit DSPs with their
        operands and products registered (`Requant`'s ``dsp_width``), two more cycles of latency.
    dsp_cell : str or None
        With ``dsp_width``: the DSP primitive the pieces instantiate in a bitstream build
        (`Requant`'s ``dsp_cell``, ``"MULT18X18D"`` on the ECP5), same cycles.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed/unsigned(a_bits), simd * pixels)))``
        ``K / simd`` beats per vector, element ``k = beat * simd + lane`` (of vector ``j`` in a
        beat of ``pixels``: lane ``j * simd + k``).
    o : ``Out(stream.Signature(ArrayLayout(signed/unsigned(out_bits), pe * pixels)))``
        ``N / pe`` beats per vector, channel ``c = beat * pe + lane`` (vector ``j``: ``j * pe + c``).
    load, loaded : only with ``weight_memory=MemoryKind.SPRAM``; see `WeightMemory`.

    Throughput: one input vector per ``P * (N / pe) * (K / simd)`` cycles (times ``a_bits`` for
    ``BIT_SERIAL``), back to back. Input beats go into a double-buffered vector store (two banks
    of ``K / simd`` beats) at one beat per cycle whenever a bank is free; every fold and point
    reads the complete vector from its bank, so a producer may spread a vector's beats over its
    whole interval without slowing this stage.
    Latency: computing starts once a vector's last beat is in; an output beat leaves `latency`
    cycles after the issue of its last MAC beat: 4 (a fetch register, 5 with ``fetch_register``, and the `MacArray`'s 3,
    ``2 + tree_registers``), 1 more with ``skid`` or ``reserve``, plus
    the requantization's latency (with ``MULTIPLY`` 5, so 9; ``SHIFT_ADD`` ``ceil(bits(max M0) / requant_digit_bits) + 5``;
    ``THRESHOLDS`` 3; ``SEARCH`` the bits of ``hi - lo``, plus 1), 2 more with point multipliers other than
    a single 1; bit-serial adds ``a_bits``.
    """

    def __init__(self, pe: int, simd: int, *, weights: Sequence[Sequence[Sequence[int]]], w_bits: int, w_encoding: Encoding,
                 a_bits: int, a_encoding: Encoding, bias: Sequence[int], m0: Sequence[int], shift: Sequence[int],
                 out_zero_point: int, lo: int, hi: int, out_bits: int, out_signed: bool, in_zero_point: int = 0,
                 point_multipliers: Sequence[Sequence[int]] | None = None, m_bits: int = 24,
                 style: MacStyle = MacStyle.BIT_PARALLEL, use_dsp: bool = False,
                 weight_memory: MemoryKind = MemoryKind.AUTO, requant: RequantMode = RequantMode.MULTIPLY,
                 requant_digit_bits: int = 1, rounding: str = "half_up", pixels: int = 1,
                 fetch_register: bool = False, tree_registers: int = 1, skid: bool = False,
                 reserve: bool = False, split_multiply: bool = False, dsp_width: int | None = None,
                 dsp_cell: str | None = None) -> None:
        copy_args = {k: v for k, v in locals().items() if k not in ("self", "pixels", "__class__")}
        for name, value in (("pe", pe), ("simd", simd), ("pixels", pixels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if a_encoding is Encoding.BIPOLAR:
            raise ValueError("MVAU inputs are unsigned or signed codes, not bipolar")
        try:
            points, n_out, k_in = len(weights), len(weights[0]), len(weights[0][0])
        except (TypeError, IndexError):
            raise ValueError("weights must have shape (P, N, K)") from None
        weights = _nested("weights", weights, (points, n_out, k_in))
        if n_out % pe:
            raise ValueError(f"pe ({pe}) must divide the number of outputs ({n_out})")
        if k_in % simd:
            raise ValueError(f"simd ({simd}) must divide the number of inputs ({k_in})")
        if point_multipliers is None:
            point_multipliers = [[1] * n_out for _ in range(points)]
        mult = _nested("point_multipliers", point_multipliers, (points, n_out))
        bias = _nested("bias", bias, (n_out,))
        a_lo, a_hi = code_range(a_bits, a_encoding)
        in_zero_point = int(in_zero_point)
        if not a_lo <= in_zero_point <= a_hi:
            raise ValueError(f"in_zero_point {in_zero_point} is outside [{a_lo}, {a_hi}]")

        self._pe, self._simd, self._points = pe, simd, points
        self._n, self._k = n_out, k_in
        self._a_shape = code_shape(a_bits, a_encoding)
        self._style = style
        nf, sf = n_out // pe, k_in // simd
        # one weight word per (neuron fold, point, synapse fold), in that order
        words = [[[weights[p][f * pe + r][s * simd + c] for c in range(simd)] for r in range(pe)]
                 for f in range(nf) for p in range(points) for s in range(sf)]
        self._wmem = WeightMemory(words, pe=pe, simd=simd, w_bits=w_bits, w_encoding=w_encoding,
                                  kind=weight_memory)
        # LOGIC weights are constants: lanes constant over all words become constants of the array
        const = self._wmem.kind is MemoryKind.LOGIC
        self._mac = MacArray(pe, simd, w_bits=w_bits, w_encoding=w_encoding, a_bits=a_bits,
                             a_encoding=a_encoding, beats=sf, style=style, use_dsp=use_dsp,
                             weights=self._wmem.codes if const else None, tree_registers=tree_registers)
        self._combine = not (points == 1 and all(v == 1 for v in mult[0]))
        dot_bits = self._mac.acc_bits
        if self._combine:
            m_max = max(abs(v) for row in mult for v in row)
            w_lo, w_hi = code_range(w_bits, w_encoding)
            bound = points * m_max * k_in * max(-w_lo, w_hi) * max(-a_lo, a_hi)
            dot_bits = ints.acc_bits(bound)
            self._point_sum = _PointSum(pe, nf, mult, self._mac.acc_bits, dot_bits)
        folded_bias = [bias[c] - in_zero_point * sum(mult[p][c] * sum(weights[p][c])
                                                     for p in range(points))
                       for c in range(n_out)]
        requant = RequantMode(requant)
        rq_params = dict(acc_bits=dot_bits, bias=folded_bias, m0=m0, shift=shift, zero_point=out_zero_point,
                         lo=lo, hi=hi, out_bits=out_bits, out_signed=out_signed, m_bits=m_bits, mode=requant,
                         rounding=rounding)
        if requant in (RequantMode.THRESHOLDS, RequantMode.SEARCH):
            self._requant = ThresholdRequant(pe, n_out, **rq_params)
        else:
            self._requant = Requant(pe, n_out, digit_bits=requant_digit_bits, split_multiply=split_multiply,
                                    dsp_width=dsp_width, dsp_cell=dsp_cell, reserve=reserve, **rq_params)
        members = {
            "i": In(stream.Signature(data.ArrayLayout(self._a_shape, simd))),
            "o": Out(stream.Signature(data.ArrayLayout(
                signed(out_bits) if out_signed else unsigned(out_bits), pe))),
        }
        if self._wmem.kind is MemoryKind.SPRAM:
            members["load"] = In(stream.Signature(self._wmem.layout))
            members["loaded"] = Out(1)
        self._copies = []
        if pixels > 1:
            if pe != n_out or simd != k_in:
                raise ValueError(f"pixels > 1 needs a fully unfolded unit (pe = {n_out}, simd = {k_in}), "
                                 f"not pe = {pe}, simd = {simd}")
            if "load" in members:
                raise ValueError("pixels > 1 needs constant or ROM weights, not run-time loaded SPRAM weights")
            self._copies = [MVAU(**copy_args) for _ in range(pixels)]
            out_shape = signed(out_bits) if out_signed else unsigned(out_bits)
            members["i"] = In(stream.Signature(data.ArrayLayout(self._a_shape, simd * pixels)))
            members["o"] = Out(stream.Signature(data.ArrayLayout(out_shape, pe * pixels)))
        self._pixels = pixels
        self._fetch_register = bool(fetch_register)
        self._skid = bool(skid)
        self._reserve = bool(reserve)
        if self._skid and self._reserve:
            raise ValueError("skid and reserve are two kinds of queue after the MAC array: ask for one")
        self._queue = (fifo.SyncFIFO(width=self._mac.o.payload.shape().size, depth=self.queue_depth)
                       if self._reserve and not self._copies else None)
        super().__init__(members)

    pe = property(lambda self: self._pe)
    simd = property(lambda self: self._simd)
    pixels = property(lambda self: self._pixels)
    points = property(lambda self: self._points)
    load_words = property(lambda self: self._wmem.codes,
                          doc="Weight words as codes in address order (what ``load`` takes).")
    @property
    def cycles_per_vector(self):
        """``P * (N / pe) * (K / simd)``, times ``a_bits`` bit-serially."""
        serial = self._a_shape.width if self._style is MacStyle.BIT_SERIAL else 1
        return self._points * (self._n // self._pe) * (self._k // self._simd) * serial

    @property
    def queue_depth(self):
        """With ``reserve``: the entries of the queue after the MAC array, the dot products that can
        be between their last beat's issue and the requantization's taking them at full rate, one
        every ``K / simd`` beats (times ``a_bits`` bit-serially): the issue's cycle, the fetch
        register(s), the `MacArray`'s latency (bit-serially after the beat's last of ``a_bits``
        planes), a cycle in the queue, and one to give the entry back. 0 without."""
        if not self._reserve:
            return 0
        serial = self._a_shape.width if self._style is MacStyle.BIT_SERIAL else 0
        fetch = 2 if self._fetch_register else 1
        round_trip = fetch + self._mac.latency + 2 + max(serial - 1, 0)
        period = (self._k // self._simd) * max(serial, 1)
        return -(-round_trip // period)

    @property
    def requant_queue_depth(self):
        """Entries of the requantization's own queue (`Requant.queue_depth`; 0 without
        ``reserve`` or for the threshold modes; `qfab.compiler.ops.matrix.requant_queue_depth`
        says the same from the plan)."""
        return getattr(self._requant, "queue_depth", 0)

    @property
    def requant_interval(self):
        """Cycles the requantization takes per output beat at full rate (1 for ``MULTIPLY`` and
        ``THRESHOLDS``)."""
        return self._requant.interval

    @property
    def latency(self):
        """Cycles from the issue of an output beat's last MAC beat to the beat on ``o``."""
        serial = self._a_shape.width if self._style is MacStyle.BIT_SERIAL else 0
        # the fetch register, then the MacArray's 3 cycles after its last transfer (bit-serially 4
        # after the last of ``a_bits`` planes, the first of which issues with the beat)
        mac = self._mac.latency - (1 if serial else 0)
        fetch = 2 if self._fetch_register else 1
        skid = 1 if self._skid or self._reserve else 0
        return fetch + mac + (2 if self._combine else 0) + skid + self._requant.latency + serial

    def _elaborate_pixels(self):
        """``pixels`` copies in lockstep: one input beat of ``pixels`` vectors goes to all at once,
        and their output beats leave together as one."""
        m = Module()
        ready, valid = Signal(), Signal()
        for j, unit in enumerate(self._copies):
            m.submodules[f"pixel{j}"] = unit
        copies = self._copies
        m.d.comb += [
            ready.eq(Cat(u.i.ready for u in copies).all()),
            valid.eq(Cat(u.o.valid for u in copies).all()),
            self.i.ready.eq(ready),
            self.o.valid.eq(valid),
        ]
        for j, unit in enumerate(copies):
            m.d.comb += [unit.i.valid.eq(self.i.valid & ready), unit.o.ready.eq(self.o.ready & valid)]
            m.d.comb += [unit.i.payload[s].eq(self.i.payload[j * self._simd + s]) for s in range(self._simd)]
            m.d.comb += [self.o.payload[j * self._pe + n].eq(unit.o.payload[n]) for n in range(self._pe)]
        return m

    def elaborate(self, platform):
        if self._copies:
            return self._elaborate_pixels()
        m = Module()
        m.submodules.weights = wmem = self._wmem
        m.submodules.mac = mac = self._mac
        m.submodules.requant = rq = self._requant
        sf = self._k // self._simd
        passes = self._points * (self._n // self._pe)
        ready = Signal()
        if wmem.kind is MemoryKind.SPRAM:
            wiring.connect(m, wiring.flipped(self.load), wmem.load)
            m.d.comb += [self.loaded.eq(wmem.loaded), ready.eq(wmem.loaded)]
        else:
            m.d.comb += ready.eq(1)

        # input: a double-buffered vector store. Beats are written into the free bank as they come
        # (one per cycle) while the MAC array works on the other bank, so a producer that spreads
        # its output over a whole initiation interval does not slow this stage down.
        m.submodules.buffer = buf = memory.Memory(
            shape=data.ArrayLayout(self._a_shape, self._simd), depth=2 * sf, init=[])
        wr, rd = buf.write_port(), buf.read_port()
        full = Signal(2)
        wbank, wsyn = Signal(), Signal(range(sf))
        rbank = Signal()
        m.d.comb += [
            self.i.ready.eq(~full.bit_select(wbank, 1)),
            wr.addr.eq(wbank * sf + wsyn), wr.data.eq(self.i.payload),
            wr.en.eq(self.i.valid & self.i.ready),
        ]
        # each counter's "at its last value" is a register, set from the counter's next value: the
        # stall chain (the next stage's ready, through the requantization and the MAC array's
        # enable) then meets one gate here, not the counters' comparisons (the UP5K digits MLP
        # w4a4's slowest path ended in the bank select, nine LUT levels)
        set_full, clear_full = Signal(2), Signal(2)
        wlast = Signal(init=sf == 1)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += _count(wsyn, wlast, sf)
            with m.If(wlast):
                m.d.sync += wbank.eq(~wbank)
                m.d.comb += set_full.eq(Mux(wbank, 0b10, 0b01))

        # issue: walk (pass, synapse fold) over the full bank
        syn = Signal(range(sf))
        pas = Signal(range(passes))
        addr = Signal(range(passes * sf))
        syn_last, pas_last = Signal(init=sf == 1), Signal(init=passes == 1)
        issue_valid, advance, fire = Signal(), Signal(), Signal()
        f_valid = Signal()
        # with ``reserve`` a dot product's last beat waits for a free entry of the queue after the
        # MAC array (``room``, a register), so that nothing after the issue ever stalls
        room = Signal(init=1)
        if self._reserve:
            m.d.comb += issue_valid.eq(ready & full.bit_select(rbank, 1) & (room | ~syn_last))
        else:
            m.d.comb += issue_valid.eq(ready & full.bit_select(rbank, 1))
        m.d.comb += [
            fire.eq(issue_valid & advance),
            wmem.addr.eq(addr), wmem.en.eq(advance),
            rd.addr.eq(rbank * sf + syn), rd.en.eq(advance),
        ]
        with m.If(fire):
            m.d.sync += [*_count(syn, syn_last, sf), addr.eq(Mux(syn_last & pas_last, 0, addr + 1))]
            with m.If(syn_last):
                m.d.sync += _count(pas, pas_last, passes)
                with m.If(pas_last):
                    m.d.sync += rbank.eq(~rbank)
                    m.d.comb += clear_full.eq(Mux(rbank, 0b10, 0b01))
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        with m.If(advance):
            m.d.sync += f_valid.eq(issue_valid)

        # fetch: weights and activations meet at the MAC array's input (with ``fetch_register``
        # through one more register: a block RAM's slow clock-to-output then has a cycle of its own)
        if self._fetch_register:
            r_valid = Signal()
            r_w = Signal.like(mac.i.payload.w)
            r_a = Signal.like(mac.i.payload.a)
            load = ~r_valid | mac.i.ready
            m.d.comb += advance.eq(~f_valid | load)
            with m.If(load):
                m.d.sync += [r_valid.eq(f_valid), r_w.eq(wmem.data), r_a.eq(rd.data)]
            m.d.comb += [mac.i.valid.eq(r_valid), mac.i.payload.w.eq(r_w), mac.i.payload.a.eq(r_a)]
        else:
            m.d.comb += [advance.eq(~f_valid | mac.i.ready),
                         mac.i.valid.eq(f_valid), mac.i.payload.w.eq(wmem.data), mac.i.payload.a.eq(rd.data)]
        if self._style is MacStyle.BIT_SERIAL:
            m.d.comb += mac.precision.eq(self._a_shape.width)

        # dot products -> (reserved queue) -> (point sum) -> requant -> o
        source = mac.o
        if self._reserve:
            depth = self.queue_depth
            m.submodules.queue = queue = self._queue
            # an entry for every dot product on its way: taken at its last beat's issue
            count_room(m, depth, take=fire & syn_last, give=queue.r_en & queue.r_rdy, room=room)
            m.d.comb += [queue.w_data.eq(mac.o.payload), queue.w_en.eq(mac.o.valid),
                         mac.o.ready.eq(1)]       # always room: the MAC array's enable is constant
            source = stream.Signature(mac.o.payload.shape()).create()
            m.d.comb += [source.valid.eq(queue.r_rdy), queue.r_en.eq(source.ready),
                         source.payload.eq(queue.r_data)]
        if self._combine:
            m.submodules.point_sum = ps = self._point_sum
            m.d.comb += [ps.i.valid.eq(source.valid), source.ready.eq(ps.i.ready)]
            m.d.comb += [ps.i.payload[n].eq(source.payload[n]) for n in range(self._pe)]
            source = ps.o
        if self._skid:
            # a requantization taking a beat at most every other cycle never needs a second entry
            depth = 2 if self._requant.interval == 1 else 1
            m.submodules.skid = skid = fifo.SyncFIFO(width=source.payload.shape().size, depth=depth)
            m.d.comb += [skid.w_data.eq(source.payload), skid.w_en.eq(source.valid),
                         source.ready.eq(skid.w_rdy),
                         rq.i.valid.eq(skid.r_rdy), skid.r_en.eq(rq.i.ready)]
            queued = source.payload.shape()(skid.r_data)
            m.d.comb += [rq.i.payload[n].eq(queued[n]) for n in range(self._pe)]
        else:
            m.d.comb += [rq.i.valid.eq(source.valid), source.ready.eq(rq.i.ready)]
            m.d.comb += [rq.i.payload[n].eq(source.payload[n]) for n in range(self._pe)]
        wiring.connect(m, rq.o, wiring.flipped(self.o))
        return m
