"""The board side of the host link (docs/link.md): UART, frame parser, input buffer, result framer.

An INFER frame's payload goes into an input buffer (block RAM) and is streamed to the accelerator
only once its CRC-32 is good, so a damaged frame never reaches it. Results are framed as they
leave the accelerator, each with the sequence number of its INFER frame and a CRC-32. Errors (bad CRC, wrong length, unknown type, a frame stopped
half-way, an INFER frame arriving while the previous input is still in the buffer) are answered
with an ERROR frame; bytes between frames are skipped, so the link resynchronizes on the next
start byte.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc.catalog import CRC32_ISO_HDLC
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfab.boards.host import protocol
from qfab.hw.uart import UARTReceiver, UARTTransmitter

__all__ = ["Link", "Status", "BUSY"]

BUSY = protocol.BUSY    # error code 5: an INFER frame arrived before the previous input left the buffer

Status = data.StructLayout({"busy": 1, "error": 1, "activity": 1})

PENDING = 4     # INFER frames accepted whose RESULT is not sent yet, at most (more: BUSY)
CRC32 = CRC32_ISO_HDLC(data_width=8)    # the frames' CRC, byte by byte (`protocol.crc32` in software)


def _positive(name, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TypeError(f"{name} must be an integer of at least {low}, not {value!r}")



_COUNTER_BITS = 6       # the longest free-running counter in the link: one short carry chain


def _tick_every(m, bits, name):
    """A one-cycle pulse every ``2**bits`` cycles (constant 1 for ``bits == 0``), from a cascade
    of counters of at most `_COUNTER_BITS` bits, each advanced by the registered wrap of the one
    before: no carry chain or comparison wider than `_COUNTER_BITS` bits."""
    tick = Const(1, 1)
    stage = 0
    while bits > 0:
        n = min(_COUNTER_BITS, bits)
        count = Signal(n, name=f"{name}_count{stage}")
        wrap = Signal(name=f"{name}{stage}")
        m.d.sync += wrap.eq(tick & (count == (1 << n) - 1))
        with m.If(tick):
            m.d.sync += count.eq(count + 1)
        tick, bits, stage = wrap, bits - n, stage + 1
    return tick

class Link(wiring.Component):
    """Host link over a UART: INFER frames in -> accelerator input stream; its output -> RESULT frames.

    Parameters
    ----------
    in_elements, in_bits, in_signed, in_per_beat : the accelerator's input (elements per
        inference, bits per element, signedness, elements per stream beat).
    out_elements, out_bits, out_signed, out_per_beat : the same for its output.
    divisor : int
        Clock cycles per UART bit.
    timeout_cycles : int
        Cycles from the last byte received (the middle of its stop bit) after which an
        unfinished frame is dropped with a TIMEOUT error; more than one byte time
        (``10 * divisor``), so a pause between two bytes may last ``timeout_cycles - 10 * divisor``.
    design_id : int
        32 bits reported in the INFO reply.
    error_hold_cycles : int
        How long ``status.error`` stays high after an error (for an LED).

    Members
    -------
    rx : ``In(1, init=1)``, tx : ``Out(1, init=1)``
        The UART pins.
    i : ``Out(stream.Signature(in_per_beat * in_bits))``
        To the accelerator: element ``k`` of a beat in bits ``[k * in_bits, (k + 1) * in_bits)``.
    o : ``In(stream.Signature(out_per_beat * out_bits))``
        From the accelerator, packed the same way.
    status : ``Out(Status)``
        ``busy`` (from a start byte to the end of the answer: while a frame arrives, an input is
        in the accelerator and its RESULT not sent, or an answer is being sent), ``error`` (high
        for ``error_hold_cycles`` after an error; a hold of over 64 cycles is counted in ticks
        of ``2**k`` cycles and may last up to two ticks longer), ``activity`` (toggles with every good frame).

    Timing: the input goes to ``i`` three cycles after the INFER frame's last CRC byte arrives, one
    beat per ``in_per_beat + 1`` cycles at most. The RESULT header starts as soon as ``o`` is
    valid; ``o`` is then taken one beat per ``out_per_beat`` byte times (``10 * divisor`` cycles
    each). Answers go out in the order their cause happened, except that an ERROR or INFO reply
    raised during a RESULT waits for its end; one ERROR can wait (a later one replaces it). Each
    answer carries the sequence number of the frame it answers (an ERROR: of the offending frame,
    0 if it stopped before its sequence number); at most ``PENDING`` results may be owed.

    Raises
    ------
    TypeError
        If a count is not a positive integer, or ``timeout_cycles`` is not above one byte time.
    ValueError
        If the element formats do not fit the protocol.
    """

    def __init__(self, *, in_elements, in_bits, in_signed, in_per_beat, out_elements, out_bits, out_signed,
                 out_per_beat, divisor, timeout_cycles, design_id=0, error_hold_cycles=1 << 20):
        for name, value in (("in_elements", in_elements), ("in_per_beat", in_per_beat),
                            ("out_elements", out_elements), ("out_per_beat", out_per_beat),
                            ("timeout_cycles", timeout_cycles), ("error_hold_cycles", error_hold_cycles)):
            _positive(name, value)
        _positive("divisor", divisor, 4)
        _positive("timeout_cycles", timeout_cycles, 10 * divisor + 1)
        for name, value in (("in_bits", in_bits), ("out_bits", out_bits)):
            _positive(name, value)
            if value > 8:
                raise ValueError(f"{name} must be at most 8 (one byte per element), not {value}")
        if in_elements % in_per_beat or out_elements % out_per_beat:
            raise ValueError(f"elements per beat must divide the elements: input {in_elements}/{in_per_beat}, "
                             f"output {out_elements}/{out_per_beat}")
        if max(in_elements, out_elements) > 0xFFFF:
            raise ValueError("at most 65535 elements per frame")
        if not isinstance(design_id, int) or not 0 <= design_id < 1 << 32:
            raise ValueError(f"design_id must be a 32-bit unsigned integer, not {design_id!r}")
        self._in = (in_elements, in_bits, bool(in_signed), in_per_beat)
        self._out = (out_elements, out_bits, bool(out_signed), out_per_beat)
        self._divisor, self._timeout, self._id, self._hold = divisor, timeout_cycles, design_id, error_hold_cycles
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "i": Out(stream.Signature(in_per_beat * in_bits)),
            "o": In(stream.Signature(out_per_beat * out_bits)),
            "status": Out(Status),
        })

    divisor = property(lambda self: self._divisor)
    timeout_cycles = property(lambda self: self._timeout)
    design_id = property(lambda self: self._id)
    error_hold_cycles = property(lambda self: self._hold)

    def info(self):
        """The INFO reply this link sends."""
        ne, nb, ns, _ = self._in
        oe, ob, os, _ = self._out
        return protocol.Info(protocol.VERSION, ne, oe, nb, ns, ob, os, self._id)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTReceiver(self._divisor)
        m.submodules.uart_tx = utx = UARTTransmitter(self._divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        in_elements, in_bits, _, in_per_beat = self._in

        # -- input buffer and the streamer that empties it into the accelerator ----------------
        m.submodules.buffer = mem = Memory(shape=unsigned(in_bits), depth=in_elements, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        loaded = Signal()               # the buffer holds a checked input not yet streamed out
        addr = Signal(range(in_elements))
        lane = Signal(range(in_per_beat))
        beat = Signal(in_per_beat * in_bits)
        beat_full = Signal()
        advance = loaded & ~beat_full
        m.d.comb += [rd.addr.eq(Mux(advance, Mux(addr == in_elements - 1, 0, addr + 1), addr)),
                     self.i.payload.eq(beat), self.i.valid.eq(beat_full)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += beat_full.eq(0)
        with m.If(advance):
            # shifted in at the top lane: after ``in_per_beat`` elements the first is in lane 0.
            # Written to the lane ``lane`` selects, the buffer's read fanned out through that
            # decode to every lane: the FINN suite's TFC and SFC on the ECP5 (784 inputs, a block
            # RAM's clock-to-output first) missed 100 MHz there (94.6 and 96.6 MHz)
            m.d.sync += [beat.eq(Cat(beat[in_bits:], rd.data) if in_per_beat > 1 else rd.data),
                         addr.eq(Mux(addr == in_elements - 1, 0, addr + 1)),
                         lane.eq(Mux(lane == in_per_beat - 1, 0, lane + 1))]
            with m.If(lane == in_per_beat - 1):
                m.d.sync += beat_full.eq(1)
            with m.If(addr == in_elements - 1):
                m.d.sync += loaded.eq(0)

        # -- frame parser ---------------------------------------------------------------------
        # every byte after the start byte goes through the CRC; after the frame's last CRC byte
        # the register holds the residue if the frame is whole
        m.submodules.rx_crc = rx_crc = CRC32.create()
        # the sequence numbers of accepted INFER frames whose RESULT has not been sent
        m.submodules.seqs = seqs = SyncFIFOBuffered(width=8, depth=PENDING)
        kind = Signal(8)
        # the type's and the length's low byte's compares, registered as their bytes arrive: the
        # LEN1 decision compared a 16-bit length and the type with the byte just received, the
        # slowest path of a UP5K design once the accelerator's were cut
        is_infer, is_info, low_ok, low_zero = Signal(), Signal(), Signal(), Signal()
        seq = Signal(8)
        length = Signal(16)
        # the last byte's count of a skipped frame, registered: one cycle behind `length`, which
        # is written a byte time (10 * divisor cycles) before the first byte it counts
        skip_last = Signal(17)
        m.d.sync += skip_last.eq(length + (protocol.TRAILER - 1))
        count = Signal(16)
        idle = Signal(range(self._timeout + 1))
        error_pending, error_code, error_type, error_seq = Signal(), Signal(8), Signal(8), Signal(8)
        info_pending, info_seq = Signal(), Signal(8)
        activity = Signal()
        # the received byte and its compares with constants, registered a cycle after the
        # receiver's: the compares were in series with the parser's decisions (the UP5K digits
        # MLP w8a8's slowest path, seven LUT levels from the receiver's byte to the parser's
        # state, 33.2 MHz with 36 asked); a byte comes every 10 * divisor cycles
        byte, got = Signal(8), Signal()
        is_start, is_infer_byte, is_info_byte = Signal(), Signal(), Signal()
        low_ok_byte, high_ok_byte, is_zero = Signal(), Signal(), Signal()
        rx = urx.o.payload
        m.d.comb += [urx.o.ready.eq(1), rx_crc.data.eq(byte)]
        m.d.sync += [
            got.eq(urx.o.valid), byte.eq(rx),
            is_start.eq(rx == protocol.START), is_infer_byte.eq(rx == protocol.INFER),
            is_info_byte.eq(rx == protocol.INFO), low_ok_byte.eq(rx == (in_elements & 0xFF)),
            high_ok_byte.eq(rx == in_elements >> 8), is_zero.eq(rx == 0),
        ]

        raised = Signal()               # an error is raised this cycle (it wins over the framer's clear)

        def error(code):
            m.d.comb += raised.eq(1)
            m.d.sync += [error_pending.eq(1), error_code.eq(code), error_type.eq(kind), error_seq.eq(seq)]

        # the CRC's 32-bit residue compare, registered: in series with the parser's state and the
        # sequence FIFO's write it was the slowest path of the UP5K digits MLP w8a8 (35.4 MHz)
        crc_ok = Signal()
        m.d.sync += crc_ok.eq(rx_crc.match_detected)
        timed_out = Signal()
        with m.FSM() as parser:
            with m.State("IDLE"):
                with m.If(got & is_start):
                    m.d.comb += rx_crc.start.eq(1)
                    m.d.sync += [kind.eq(0), seq.eq(0)]     # a TIMEOUT before them names type and seq 0
                    m.next = "TYPE"
            with m.State("TYPE"):
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [kind.eq(byte), is_infer.eq(is_infer_byte), is_info.eq(is_info_byte)]
                    m.next = "SEQ"
            with m.State("SEQ"):
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += seq.eq(byte)
                    m.next = "LEN0"
            with m.State("LEN0"):
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [length[:8].eq(byte), low_ok.eq(low_ok_byte), low_zero.eq(is_zero)]
                    m.next = "LEN1"
            with m.State("LEN1"):
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += [length[8:].eq(byte), count.eq(0)]
                    with m.If(is_infer):
                        with m.If(~low_ok | ~high_ok_byte):
                            error(protocol.BAD_LENGTH)
                            m.next = "SKIP"
                        with m.Elif(loaded | ~seqs.w_rdy):
                            error(BUSY)
                            m.next = "SKIP"
                        with m.Else():
                            m.next = "PAYLOAD"
                    with m.Elif(is_info):
                        with m.If(~low_zero | ~is_zero):
                            error(protocol.BAD_LENGTH)
                            m.next = "SKIP"
                        with m.Else():
                            m.next = "CRC"
                    with m.Else():
                        error(protocol.UNKNOWN_TYPE)
                        m.next = "SKIP"
            with m.State("PAYLOAD"):
                with m.If(timed_out):
                    m.next = "IDLE"
                m.d.comb += [wr.addr.eq(count), wr.data.eq(byte), wr.en.eq(got)]
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    # PAYLOAD follows only a length equal to in_elements: a constant compare
                    # (``count == length - 1`` was the slowest path of a UP5K design)
                    with m.If(count == in_elements - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == protocol.TRAILER - 1):
                        m.next = "RESIDUE"
            with m.State("RESIDUE"):        # the CRC register has taken the frame's last byte
                m.next = "VERDICT"
            with m.State("VERDICT"):        # its residue compared, a cycle ago
                with m.If(crc_ok):
                    m.d.sync += activity.eq(~activity)
                    with m.If(is_infer):
                        m.d.sync += [loaded.eq(1), addr.eq(0), lane.eq(0)]
                        m.d.comb += [seqs.w_en.eq(1), seqs.w_data.eq(seq)]
                    with m.Else():
                        m.d.sync += [info_pending.eq(1), info_seq.eq(seq)]
                with m.Else():
                    error(protocol.BAD_CRC)
                m.next = "IDLE"
            with m.State("SKIP"):           # the rest of a rejected frame: its payload and CRC
                with m.If(timed_out):
                    m.next = "IDLE"
                with m.If(got):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == skip_last):
                        m.next = "IDLE"
        # silence inside a frame drops it (a rejected frame's tail is dropped without a word)
        with m.If(parser.ongoing("IDLE") | parser.ongoing("RESIDUE") | parser.ongoing("VERDICT") | got):
            m.d.sync += idle.eq(0)
        with m.Elif(idle == self._timeout):
            m.d.sync += idle.eq(0)
            with m.If(~parser.ongoing("SKIP")):
                error(protocol.TIMEOUT)
            m.d.comb += timed_out.eq(1)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)

        # -- framer: ERROR and INFO replies, RESULT frames from the accelerator ----------------
        # every frame: start byte, then type, seq, length (2), body through the CRC, then the CRC
        out_elements, out_bits, out_signed, out_per_beat = self._out
        info_body = self.info().encode()
        info_rom = Signal(data.ArrayLayout(8, len(info_body)), init=list(info_body))
        m.submodules.tx_crc = tx_crc = CRC32.create()
        sent = Signal(range(max(len(info_body), protocol.HEADER) + 1))
        send_kind, send_seq, send_len = Signal(8), Signal(8), Signal(16)
        send_code, send_type = Signal(8), Signal(8)        # the error being sent (a new one may be pending)
        obeat = Signal(out_per_beat * out_bits)
        olane = Signal(range(out_per_beat))
        obeat_full = Signal()
        out_count = Signal(range(out_elements + 1))
        element = obeat.word_select(olane, out_bits)
        element8 = Signal(8)
        m.d.comb += element8.eq(element.as_signed() if out_signed else element)
        header = Signal(data.ArrayLayout(8, protocol.HEADER))
        m.d.comb += header.eq(Cat(Const(protocol.START, 8), send_kind, send_seq, send_len))
        tx_byte = Signal(8)
        m.d.comb += utx.i.payload.eq(tx_byte)
        # the CRC takes each byte a cycle after the transmitter does, from registers: the byte
        # select behind the framer's state was in series with the CRC update (the slowest path of a
        # full UP5K design); CRC_WAIT gives the register the body's last byte before it is sent
        crc_start, crc_valid = Signal(), Signal()
        m.d.sync += [tx_crc.data.eq(tx_byte), tx_crc.start.eq(crc_start), tx_crc.valid.eq(crc_valid)]
        took = Signal()                 # the transmitter takes a byte this cycle
        m.d.comb += took.eq(utx.i.valid & utx.i.ready)

        with m.FSM() as framer:
            with m.State("IDLE"):
                m.d.sync += sent.eq(0)
                with m.If(error_pending):
                    m.d.sync += [send_code.eq(error_code), send_type.eq(error_type), send_seq.eq(error_seq),
                                 send_kind.eq(protocol.ERROR), send_len.eq(2), error_pending.eq(raised)]
                    m.next = "HEADER"
                with m.Elif(info_pending):
                    m.d.sync += [info_pending.eq(0), send_kind.eq(protocol.INFO_REPLY), send_seq.eq(info_seq),
                                 send_len.eq(len(info_body))]
                    m.next = "HEADER"
                with m.Elif(self.o.valid):
                    m.d.comb += seqs.r_en.eq(1)
                    m.d.sync += [send_kind.eq(protocol.RESULT), send_seq.eq(seqs.r_data),
                                 send_len.eq(out_elements), out_count.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [utx.i.valid.eq(1), tx_byte.eq(header[sent]), crc_start.eq(sent == 0),
                             crc_valid.eq(took & (sent != 0))]
                with m.If(took):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == protocol.HEADER - 1):
                        m.d.sync += sent.eq(0)
                        with m.If(send_kind == protocol.ERROR):
                            m.next = "ERROR"
                        with m.Elif(send_kind == protocol.INFO_REPLY):
                            m.next = "INFO"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("ERROR"):
                m.d.comb += [utx.i.valid.eq(1), tx_byte.eq(Mux(sent == 0, send_code, send_type)),
                             crc_valid.eq(took)]
                with m.If(took):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == 1):
                        m.d.sync += sent.eq(0)
                        m.next = "CRC_WAIT"
            with m.State("INFO"):
                m.d.comb += [utx.i.valid.eq(1), tx_byte.eq(info_rom[sent]), crc_valid.eq(took)]
                with m.If(took):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == len(info_body) - 1):
                        m.d.sync += sent.eq(0)
                        m.next = "CRC_WAIT"
            with m.State("PAYLOAD"):
                with m.If(~obeat_full):
                    m.d.comb += self.o.ready.eq(1)
                    with m.If(self.o.valid):
                        m.d.sync += [obeat.eq(self.o.payload), obeat_full.eq(1), olane.eq(0)]
                with m.Else():
                    m.d.comb += [utx.i.valid.eq(1), tx_byte.eq(element8), crc_valid.eq(took)]
                    with m.If(took):
                        m.d.sync += [out_count.eq(out_count + 1), olane.eq(olane + 1)]
                        with m.If(olane == out_per_beat - 1):
                            m.d.sync += obeat_full.eq(0)
                        with m.If(out_count == out_elements - 1):
                            m.next = "CRC_WAIT"
            with m.State("CRC_WAIT"):       # the CRC register takes the body's last byte
                m.next = "CRC"
            with m.State("CRC"):            # the CRC of the bytes after the start, little-endian
                m.d.comb += [utx.i.valid.eq(1), tx_byte.eq(tx_crc.crc.word_select(sent[:2], 8))]
                with m.If(took):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == protocol.TRAILER - 1):
                        m.next = "IDLE"

        # -- status ---------------------------------------------------------------------------
        # the error LED's timer counts up from 2**bits - ticks to 2**bits: its top bit says "done",
        # so the loop is one carry chain enabled by one bit (a 22-bit "!= 0" was the slowest path
        # of a whole board design on the UP5K). A long hold counts ticks of 2**shift cycles from a
        # cascade of 6-bit counters with registered carries (`_tick_every`): on the UP5K even a
        # 12-bit counter's carry chain, split by the placer, was the slowest path of a design.
        full_bits = max(1, (self._hold - 1).bit_length())
        shift = max(0, full_bits - _COUNTER_BITS)
        tick = _tick_every(m, shift, "hold_tick")
        # the hold rounded up to whole ticks, and one more: the first tick may come at once
        ticks = -(-self._hold // (1 << shift)) + (1 if shift else 0)
        bits = max(1, (ticks - 1).bit_length())
        hold = Signal(bits + 1, init=1 << bits)
        with m.If(error_pending):
            m.d.sync += hold.eq((1 << bits) - ticks)
        with m.Elif(~hold[bits] & tick):
            m.d.sync += hold.eq(hold + 1)
        m.d.comb += [self.status.error.eq(~hold[bits]), self.status.activity.eq(activity),
                     self.status.busy.eq(~parser.ongoing("IDLE") | (seqs.w_level != 0) | error_pending | info_pending |
                                        ~framer.ongoing("IDLE"))]
        return m
