# amaranth: UnusedElaboratable=no
# (the sub-components built in VVAU.__init__ are used exactly when the VVAU is)
"""Vector-vector-activation unit: a folded depthwise convolution (docs/semantics.md, section 4,
Conv2d with ``groups = C``), FINN's VVAU."""

from collections.abc import Sequence

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ._arith import Encoding, code_range, code_shape
from .mac import MacArray, MacStyle
from .requant import Requant
from .weights import MemoryKind, WeightMemory

__all__ = ["VVAU"]


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


def _rows(name, values, rows, cols=None):
    """``values`` as a list of ``rows`` lists of ``cols`` integers (``cols=None``: integers)."""
    try:
        values = list(values)
        if cols is None:
            out = [int(v) for v in values]
        else:
            out = [[int(v) for v in row] for row in values]
    except (TypeError, ValueError):
        out = None
    if out is None or len(out) != rows or (cols is not None and any(len(r) != cols for r in out)):
        shape = (rows,) if cols is None else (rows, cols)
        raise ValueError(f"{name} must have shape {shape}")
    return out


class VVAU(wiring.Component):
    """Folded vector-vector-activation unit (FINN's VVAU): one dot product per channel over its
    own ``K = KH * KW`` window positions, for a depthwise convolution behind a
    `qfab.hw.window.SlidingWindow`.

    Computes, per window of ``K x C`` codes ``x[k][c]``, ``C`` output codes
    ``y[c] = requantize(b[c] + sum_k w[c][k] * (x[k][c] - zx), M0[c], n[c], zy, lo, hi)``. The zero
    point is folded into the bias (``b[c] - zx * sum_k w[c][k]``), so the MAC lanes see raw codes
    (padded positions carry ``zx`` and so add nothing).

    Folding: ``pe`` channels per input and output beat (dividing ``C``), and ``simd`` window
    positions per MAC beat (dividing ``K``). Each PE lane is a one-row `MacArray` of ``simd``
    lanes (its own activations: unlike an MVAU, channels share no input); weights are a
    `WeightMemory` of ``pe x simd`` words, one per (channel fold, position fold); requantization is
    a `Requant` of ``pe`` lanes.

    Parameters
    ----------
    pe, simd : int
        Channels per beat (dividing ``C``), window positions per MAC beat (dividing ``K``).
    weights : ``[C][K]`` integers
        Weight values of the weight type (bipolar: -1 / +1), position ``k = ky * KW + kx``.
    w_bits, w_encoding : int, Encoding
    a_bits, a_encoding : int, Encoding
        Input code type (``UNSIGNED`` or ``SIGNED``).
    bias, m0, shift : ``[C]`` integers
    in_zero_point, out_zero_point, lo, hi : int
    out_bits, out_signed
        Output code type.
    m_bits : int
        Width of ``M0`` (default 24).
    style : MacStyle
    use_dsp : bool
    weight_memory : MemoryKind
        As for the `MVAU`: ``LOGIC`` weights are constants of the MAC lanes (zero lanes vanish).
    rounding : str
        The requantization's rule for exact ties, as for the `MVAU`.
    split_multiply, dsp_width, dsp_cell
        The requantization's multiply in two halves, or in ``dsp_width``-bit DSP pieces with their
        operands and products registered (in ``dsp_cell`` primitives in a bitstream build), as for the
        `MVAU` (`Requant`'s; one or two more cycles).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed/unsigned(a_bits), pe)))``
        A window as ``K * C / pe`` beats in the sliding window's order ``(k, channel fold)``: beat
        ``k * (C / pe) + f`` carries channels ``f * pe .. f * pe + pe - 1`` of position ``k``
        (a `SlidingWindow` with ``simd = pe``).
    o : ``Out(stream.Signature(ArrayLayout(signed/unsigned(out_bits), pe)))``
        ``C / pe`` beats per window, channel ``c = beat * pe + lane``.
    load, loaded : only with ``weight_memory=MemoryKind.SPRAM``; see `WeightMemory`.

    Input beats go into a double-buffered window store (two banks of one window each, split
    into ``simd`` memories by ``k mod simd`` so that a MAC beat reads ``simd`` positions at once),
    one beat per cycle whenever a bank is free; the MAC lanes then walk (channel fold, position
    fold) over the full bank. Throughput: one window per ``max(K * C / pe, (C / pe) * (K / simd)
    * b)`` cycles, back to back (``b = a_bits`` bit-serially, else 1): the first term is the
    input, so ``simd > 1`` pays off bit-serially or behind a wider producer. Latency: computing
    starts once a window's last beat is in; an output beat leaves 4 cycles plus the `Requant`'s
    latency after the issue of its last MAC beat, as in the `MVAU` (bit-serial adds ``a_bits``).
    """

    def __init__(self, pe: int, simd: int, *, weights: Sequence[Sequence[int]], w_bits: int, w_encoding: Encoding,
                 a_bits: int, a_encoding: Encoding, bias: Sequence[int], m0: Sequence[int], shift: Sequence[int],
                 out_zero_point: int, lo: int, hi: int, out_bits: int, out_signed: bool, in_zero_point: int = 0,
                 m_bits: int = 24, style: MacStyle = MacStyle.BIT_PARALLEL, use_dsp: bool = False,
                 weight_memory: MemoryKind = MemoryKind.AUTO, rounding: str = "half_up",
                 split_multiply: bool = False, dsp_width: int | None = None,
                 dsp_cell: str | None = None) -> None:
        _check_positive("pe", pe)
        _check_positive("simd", simd)
        if not isinstance(a_encoding, Encoding) or a_encoding is Encoding.BIPOLAR:
            raise ValueError(f"VVAU inputs are unsigned or signed codes, not {a_encoding!r}")
        try:
            channels, positions = len(weights), len(weights[0])
        except (TypeError, IndexError):
            raise ValueError("weights must have shape (C, K)") from None
        weights = _rows("weights", weights, channels, positions)
        if channels % pe:
            raise ValueError(f"pe ({pe}) must divide the number of channels ({channels})")
        if positions % simd:
            raise ValueError(f"simd ({simd}) must divide the number of window positions ({positions})")
        bias = _rows("bias", bias, channels)
        a_lo, a_hi = code_range(a_bits, a_encoding)
        in_zero_point = int(in_zero_point)
        if not a_lo <= in_zero_point <= a_hi:
            raise ValueError(f"in_zero_point {in_zero_point} is outside [{a_lo}, {a_hi}]")

        self._pe, self._simd = pe, simd
        self._c, self._k = channels, positions
        self._a_shape = code_shape(a_bits, a_encoding)
        self._style = style
        cf, kf = channels // pe, positions // simd
        # one weight word per (channel fold, position fold), in that order: word[p][j] is the
        # weight of channel f * pe + p at position s * simd + j
        words = [[[weights[f * pe + p][s * simd + j] for j in range(simd)] for p in range(pe)]
                 for f in range(cf) for s in range(kf)]
        self._wmem = WeightMemory(words, pe=pe, simd=simd, w_bits=w_bits, w_encoding=w_encoding,
                                  kind=weight_memory)
        const = self._wmem.kind is MemoryKind.LOGIC
        self._macs = [MacArray(1, simd, w_bits=w_bits, w_encoding=w_encoding, a_bits=a_bits,
                               a_encoding=a_encoding, beats=kf, style=style, use_dsp=use_dsp,
                               weights=[[word[p]] for word in self._wmem.codes] if const else None)
                      for p in range(pe)]
        folded_bias = [bias[c] - in_zero_point * sum(weights[c]) for c in range(channels)]
        self._requant = Requant(pe, channels, acc_bits=self._macs[0].acc_bits, bias=folded_bias, m0=m0,
                                shift=shift, zero_point=out_zero_point, lo=lo, hi=hi,
                                out_bits=out_bits, out_signed=out_signed, m_bits=m_bits, rounding=rounding,
                                split_multiply=split_multiply, dsp_width=dsp_width, dsp_cell=dsp_cell)
        members = {
            "i": In(stream.Signature(data.ArrayLayout(self._a_shape, pe))),
            "o": Out(stream.Signature(data.ArrayLayout(
                signed(out_bits) if out_signed else unsigned(out_bits), pe))),
        }
        if self._wmem.kind is MemoryKind.SPRAM:
            members["load"] = In(stream.Signature(self._wmem.layout))
            members["loaded"] = Out(1)
        super().__init__(members)

    pe = property(lambda self: self._pe)
    simd = property(lambda self: self._simd)
    channels = property(lambda self: self._c)
    positions = property(lambda self: self._k, doc="Window positions ``K = KH * KW``.")
    load_words = property(lambda self: self._wmem.codes,
                          doc="Weight words as codes in address order (what ``load`` takes).")

    @property
    def cycles_per_window(self):
        """``max(K * C / pe, (C / pe) * (K / simd) * b)``: input beats or MAC beats (``b``:
        ``a_bits`` bit-serially, else 1), whichever is more."""
        serial = self._a_shape.width if self._style is MacStyle.BIT_SERIAL else 1
        cf = self._c // self._pe
        return max(self._k * cf, cf * (self._k // self._simd) * serial)

    def elaborate(self, platform):
        m = Module()
        pe, simd = self._pe, self._simd
        cf, kf = self._c // pe, self._k // simd
        words = cf * kf                         # per bank and memory: one window's share
        m.submodules.weights = wmem = self._wmem
        m.submodules.requant = rq = self._requant
        for p, mac in enumerate(self._macs):
            m.submodules[f"mac{p}"] = mac
        ready = Signal()
        if wmem.kind is MemoryKind.SPRAM:
            wiring.connect(m, wiring.flipped(self.load), wmem.load)
            m.d.comb += [self.loaded.eq(wmem.loaded), ready.eq(wmem.loaded)]
        else:
            m.d.comb += ready.eq(1)

        # input: beat (k, f) goes to memory k % simd, address bank * words + (k // simd) * cf + f
        layout = data.ArrayLayout(self._a_shape, pe)
        mems = [memory.Memory(shape=layout, depth=2 * words, init=[]) for _ in range(simd)]
        for j, mem in enumerate(mems):
            m.submodules[f"window{j}"] = mem
        writes = [mem.write_port() for mem in mems]
        reads = [mem.read_port() for mem in mems]
        full = Signal(2)
        wbank = Signal()
        wf = Signal(range(cf))
        wj = Signal(range(simd))
        wbase = Signal(range(words))            # (k // simd) * cf
        take = Signal()
        m.d.comb += [self.i.ready.eq(~full.bit_select(wbank, 1)), take.eq(self.i.valid & self.i.ready)]
        for j, wr in enumerate(writes):
            m.d.comb += [wr.addr.eq(wbank * words + wbase + wf), wr.data.eq(self.i.payload),
                         wr.en.eq(take & (wj == j))]
        set_full, clear_full = Signal(2), Signal(2)
        last_f, last_j, last_base = wf == cf - 1, wj == simd - 1, wbase == (kf - 1) * cf
        with m.If(take):
            m.d.sync += wf.eq(Mux(last_f, 0, wf + 1))
            with m.If(last_f):
                m.d.sync += wj.eq(Mux(last_j, 0, wj + 1))
                with m.If(last_j):
                    m.d.sync += wbase.eq(Mux(last_base, 0, wbase + cf))
                    with m.If(last_base):
                        m.d.sync += wbank.eq(~wbank)
                        m.d.comb += set_full.eq(Mux(wbank, 0b10, 0b01))

        # issue: walk (channel fold, position fold) over the full bank
        fold = Signal(range(cf))
        syn = Signal(range(kf))
        offset = Signal(range(words))           # syn * cf + fold
        addr = Signal(range(words))             # fold * kf + syn: the weight word
        rbank = Signal()
        issue_valid, advance, fire = Signal(), Signal(), Signal()
        f_valid = Signal()
        mac0 = self._macs[0]
        m.d.comb += [
            issue_valid.eq(ready & full.bit_select(rbank, 1)),
            advance.eq(~f_valid | mac0.i.ready),
            fire.eq(issue_valid & advance),
            wmem.addr.eq(addr), wmem.en.eq(advance),
        ]
        for rd in reads:
            m.d.comb += [rd.addr.eq(rbank * words + offset), rd.en.eq(advance)]
        with m.If(fire):
            m.d.sync += [
                syn.eq(Mux(syn == kf - 1, 0, syn + 1)),
                offset.eq(Mux(syn == kf - 1, Mux(fold == cf - 1, 0, fold + 1), offset + cf)),
                addr.eq(Mux(addr == words - 1, 0, addr + 1)),
            ]
            with m.If(syn == kf - 1):
                m.d.sync += fold.eq(Mux(fold == cf - 1, 0, fold + 1))
                with m.If(fold == cf - 1):
                    m.d.sync += rbank.eq(~rbank)
                    m.d.comb += clear_full.eq(Mux(rbank, 0b10, 0b01))
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        with m.If(advance):
            m.d.sync += f_valid.eq(issue_valid)

        # fetch: lane p of every MAC array meets its weights and its own channel's positions
        for p, mac in enumerate(self._macs):
            m.d.comb += [mac.i.valid.eq(f_valid), mac.i.payload.w[0].eq(wmem.data[p]),
                         mac.o.ready.eq(rq.i.ready), rq.i.payload[p].eq(mac.o.payload[0])]
            m.d.comb += [mac.i.payload.a[j].eq(reads[j].data[p]) for j in range(simd)]
            if self._style is MacStyle.BIT_SERIAL:
                m.d.comb += mac.precision.eq(self._a_shape.width)
        # the arrays run in lockstep (same valid, same ready): the first one's valid speaks for all
        m.d.comb += rq.i.valid.eq(mac0.o.valid)
        wiring.connect(m, rq.o, wiring.flipped(self.o))
        return m
