"""Weight storage: one word of PE x SIMD weight codes per (neuron fold, point, synapse fold)."""

import enum
from collections.abc import Sequence

from amaranth.hdl import Cat, Const, Format, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from qfab.base.limits import LOGIC_WEIGHT_LIMIT_BITS

from ._arith import Encoding, code_range, code_shape

__all__ = ["MemoryKind", "WeightMemory", "weight_layout"]

_ROM_GROUP_BITS = 4                 # a logic ROM's first level: words per group, 2**4 (a LUT4's inputs)
_ROM_GROUP = 1 << _ROM_GROUP_BITS


class MemoryKind(enum.Enum):
    """Where a `WeightMemory` keeps its words.

    ``LOGIC``: constants in LUTs, a registered ``case`` on the address (one word: plain wires,
    so a zero weight's products fold away in synthesis and cost nothing). An `MVAU` also builds
    every lane that holds one weight in all words as a constant (zero: no logic at all), so
    pruned layers get smaller at any folding (docs/hardware.md, "Sparse (pruned) weights").
    Best for small or sparse layers.
    ``BLOCK``: an initialized `amaranth.lib.memory.Memory` with one synchronous read port;
    Yosys maps it to block RAM (iCE40 ``SB_RAM40_4K``, ECP5 ``DP16KD``).
    ``SPRAM``: a single-port RAM with no initial contents, written once from the ``load`` stream
    after reset and read-only afterwards; with ``synth_ice40 -spram`` it maps to the UP5K's
    ``SB_SPRAM256KA`` (16K x 16 each, which cannot be initialized by the bitstream).
    ``AUTO``: ``LOGIC`` up to `qfab.base.limits.LOGIC_WEIGHT_LIMIT_BITS` (1024) bits, ``BLOCK``
    above.
    """
    AUTO = "auto"
    LOGIC = "logic"
    BLOCK = "block"
    SPRAM = "spram"


class WordLayout(data.ArrayLayout):
    """An `ArrayLayout` that formats as one number: a weight word of thousands of codes.

    Amaranth names every element of a signal with an aggregate layout in the netlist (one wire and
    one assignment per ``word[p][s]``, in every module the word crosses: a third of the Verilog
    of a 6,824-lane array) and shows each element in waveforms. A weight word is read as a whole,
    so this layout's `format` (the `ShapeCastable` hook for both) is the word as a hexadecimal
    number. Indexing (``word[p][s]``) and equality with a plain `ArrayLayout` are unchanged.
    """

    def format(self, value, format_spec):
        if format_spec != "":
            raise ValueError(f"format specifier {format_spec!r} is not supported for a weight word")
        return Format("{:x}", Value.cast(value))


def weight_layout(pe: int, simd: int, w_bits: int, w_encoding: Encoding) -> data.ArrayLayout:
    """``ArrayLayout(ArrayLayout(code, simd), pe)``: ``word[p][s]`` is PE ``p``, lane ``s``
    (a `WordLayout`: one wire in the netlist, not one per code)."""
    return WordLayout(data.ArrayLayout(code_shape(w_bits, w_encoding), simd), pe)


def _encode(value, encoding):
    value = int(value)
    if encoding is Encoding.BIPOLAR:
        if value not in (-1, 1):
            raise ValueError(f"a bipolar weight is -1 or +1, not {value}")
        return (value + 1) // 2
    return value


def _pack(word, bits):
    """A word of codes (``word[p][s]``) as the integer its `weight_layout` holds: code ``(p, s)``
    in bits ``(p * simd + s) * bits`` up. (``layout.const`` does the same, but slowly: for the
    thousands of words of a large layer it took most of the elaboration.)"""
    mask, value, pos = (1 << bits) - 1, 0, 0
    for row in word:
        for code in row:
            value |= (code & mask) << pos
            pos += bits
    return value


class WeightMemory(wiring.Component):
    """Read-only weight words, addressed in folding order.

    Parameters
    ----------
    words : sequence of words, each ``pe`` rows of ``simd`` integer weights
        Weight *values* (bipolar: -1 / +1), checked against the weight type.
    pe, simd, w_bits, w_encoding
        The word shape (see `weight_layout`).
    kind : MemoryKind

    Members
    -------
    addr : ``In(range(depth))``
    en : ``In(1)``
        Read enable: ``data`` shows word ``addr`` the cycle after ``en``, and holds otherwise.
    data : ``Out(weight_layout(...))``
    load : ``In(stream.Signature(weight_layout(...)))``, ``SPRAM`` only
        The words in address order, once after reset.
    loaded : ``Out(1)``, ``SPRAM`` only
        All words written; reads before this return undefined data.
    """

    def __init__(self, words: Sequence[Sequence[Sequence[int]]], *, pe: int, simd: int, w_bits: int,
                 w_encoding: Encoding, kind: MemoryKind = MemoryKind.AUTO) -> None:
        if not isinstance(kind, MemoryKind):
            raise TypeError(f"kind must be a MemoryKind, not {kind!r}")
        lo, hi = code_range(w_bits, w_encoding)
        codes = []
        for word in words:
            rows = [list(row) for row in word]
            if len(rows) != pe or any(len(row) != simd for row in rows):
                raise ValueError(f"each word must be {pe} rows of {simd} weights")
            for row in rows:
                for v in row:
                    if not lo <= int(v) <= hi:
                        raise ValueError(f"weight {int(v)} is outside [{lo}, {hi}]")
            codes.append([[_encode(v, w_encoding) for v in row] for row in rows])
        if not codes:
            raise ValueError("words must not be empty")
        self._layout = weight_layout(pe, simd, w_bits, w_encoding)
        if kind is MemoryKind.AUTO:
            kind = MemoryKind.LOGIC if len(codes) * self._layout.size <= LOGIC_WEIGHT_LIMIT_BITS else MemoryKind.BLOCK
        self._kind, self._codes = kind, codes
        members = {"addr": In(range(len(codes))), "en": In(1), "data": Out(self._layout)}
        if kind is MemoryKind.SPRAM:
            members["load"] = In(stream.Signature(self._layout))
            members["loaded"] = Out(1)
        super().__init__(members)

    kind = property(lambda self: self._kind)
    codes = property(lambda self: self._codes, doc="The words as codes, in address order.")
    depth = property(lambda self: len(self._codes))
    layout = property(lambda self: self._layout)

    def _grouped_rom(self, m, words, size):
        """A logic ROM of more than 16 words as two explicit levels: per group of 16 words, each
        bit is a 16-bit constant indexed by the address's low 4 bits (a function of 4 inputs: one
        LUT4 on the iCE40, nothing for a bit that is the same in all 16 words), then a switch on
        the high bits between the groups; an address past the last word reads 0. A single switch
        over all words left the choice of tree to ABC, which made the digits CNN's first
        convolution (72 words) 9 LUTs deep on the UP5K, its slowest path at 36 MHz asked (31 ns).
        A random 72 x 8 ROM: 92 LUTs and 6 levels (counting the address and data registers)
        against 172 and 8; a 64 x 256 one with 75 % zero weights costs more than as one switch
        (803 LUTs against 677), as deep (docs/hardware.md, "Sparse (pruned) weights"). The
        constants are indexed, not written as a ``case`` per word, so that Yosys's ``proc_rom``
        does not turn the groups back into ROM memories."""
        low = self.addr[:_ROM_GROUP_BITS]
        groups = []
        for g in range(0, len(words), _ROM_GROUP):
            part = words[g:g + _ROM_GROUP]
            columns = [sum(((word >> b) & 1) << n for n, word in enumerate(part)) for b in range(size)]
            group = Signal(size, name=f"group_{g // _ROM_GROUP}")
            m.d.comb += group.eq(Cat(Const(column, _ROM_GROUP).bit_select(low, 1) for column in columns))
            groups.append(group)
        word = Signal(size)
        with m.Switch(self.addr[_ROM_GROUP_BITS:]):
            for n, group in enumerate(groups):
                with m.Case(n):
                    m.d.comb += word.eq(group)
        with m.If(self.en):
            m.d.sync += self.data.eq(word)

    def elaborate(self, platform):
        m = Module()
        depth = len(self._codes)
        if self._kind is MemoryKind.LOGIC:
            size = self._layout.size
            words = [_pack(word, self._layout.elem_shape.elem_shape.width) for word in self._codes]
            if depth == 1:
                m.d.comb += self.data.eq(Const(words[0], size))
            elif depth <= _ROM_GROUP:
                # the enable inside each case keeps Yosys' proc_rom from turning the switch into
                # a $mem ROM: as a mux tree, ABC shrinks zero-heavy words further (a 64-word,
                # 256-bit ROM with 75% zero weights: 725 LUTs, against 913 as a $mem)
                with m.Switch(self.addr):
                    for n, word in enumerate(words):
                        with m.Case(n):
                            with m.If(self.en):
                                m.d.sync += self.data.eq(Const(word, size))
            else:
                self._grouped_rom(m, words, size)
            return m

        if self._kind is MemoryKind.BLOCK:
            words = [_pack(word, self._layout.elem_shape.elem_shape.width) for word in self._codes]
            m.submodules.mem = mem = memory.Memory(shape=unsigned(self._layout.size), depth=depth, init=words)
            rd = mem.read_port()
            m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(self.en), self.data.eq(rd.data)]
            return m

        # SPRAM: one address for both ports (single-port), written once from `load`
        m.submodules.mem = mem = memory.Memory(shape=self._layout, depth=depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=(wr,))
        count = Signal(range(depth + 1))
        port_addr = Signal(range(depth))
        m.d.comb += [
            port_addr.eq(Mux(self.loaded, self.addr, count)),
            self.loaded.eq(count == depth),
            self.load.ready.eq(~self.loaded),
            wr.addr.eq(port_addr), wr.data.eq(self.load.payload),
            wr.en.eq(self.load.valid & ~self.loaded),
            rd.addr.eq(port_addr),
            rd.en.eq(self.en),
            self.data.eq(rd.data),
        ]
        with m.If(wr.en):
            m.d.sync += count.eq(count + 1)
        return m
