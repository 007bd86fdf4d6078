# amaranth: UnusedElaboratable=no
"""The board's link gateware in Amaranth's simulator, with a bit-level UART on the host side and
a small model accelerator on the other: a function of the input, taken and given with random
stalls, packed with `qfab.sim.packing`. (The model is a per-cycle process rather than the shared
`tests/hw/streams.py` drivers because it must outlive its inputs: the simulation stops at a fixed
time with the model still waiting.)"""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from qfab.base.errors import QfabError
from qfab.boards.gateware.core import InferenceCore, core_verilog
from qfab.boards.gateware.link import BUSY, Link
from qfab.boards.host import protocol
from qfab.compiler.buildfolder import Build, Manifest, StreamFormat
from qfab.sim.packing import pack_beats, unpack_beats

DIV = 4
BYTE = 10 * DIV                   # cycles per byte on the wire


class Format:
    """One test configuration: the accelerator's input and output formats and its function."""

    def __init__(self, in_elements, in_bits, in_signed, in_per_beat, out_bits, out_signed, out_per_beat,
                 function):
        self.in_elements, self.in_bits, self.in_signed, self.in_per_beat = in_elements, in_bits, in_signed, in_per_beat
        self.out_bits, self.out_signed, self.out_per_beat = out_bits, out_signed, out_per_beat
        self.function = function
        self.out_elements = len(function(np.zeros(in_elements, np.int64)))

    def link(self, **kw):
        args = dict(in_elements=self.in_elements, in_bits=self.in_bits, in_signed=self.in_signed,
                    in_per_beat=self.in_per_beat, out_elements=self.out_elements, out_bits=self.out_bits,
                    out_signed=self.out_signed, out_per_beat=self.out_per_beat, divisor=DIV,
                    timeout_cycles=30 * DIV, design_id=0x1234ABCD, error_hold_cycles=50)
        args.update(kw)
        return Link(**args)

    def infer(self, xs, seq=0):
        return protocol.encode_frame(protocol.INFER, protocol.pack_input(xs, self.in_bits, self.in_signed), seq)

    def result(self, xs, seq=0):
        return protocol.Frame(protocol.RESULT, protocol.pack_input(self.function(np.asarray(xs)), self.out_bits,
                                                                   self.out_signed), seq)

    def inputs(self, count, seed=0):
        lo, hi = (-(1 << (self.in_bits - 1)), 1 << (self.in_bits - 1)) if self.in_signed else (0, 1 << self.in_bits)
        rng = np.random.default_rng(seed)
        return [list(rng.integers(lo, hi, self.in_elements)) for _ in range(count)]


# u4 in, 2 a beat -> s5 out, 3 a beat (most tests use this one)
SMALL = Format(6, 4, False, 2, 5, True, 3, lambda x: x - 8)
# s8 in, the whole input in one beat (like the digits MLP) -> u3, 1 a beat, fewer outputs than inputs
WIDE = Format(4, 8, True, 4, 3, False, 1, lambda x: np.array([(x[0] + x[1]) & 7, (x[2] ^ x[3]) & 7]))
# 1-bit in, 1 a beat -> s8 out, all in one beat
BITS = Format(5, 1, False, 1, 8, True, 5, lambda x: x * 255 - 128)
# a single u8 element each way (zero-width buffer address)
ONE = Format(1, 8, False, 1, 8, False, 1, lambda x: 255 - x)
FORMATS = {"small": SMALL, "wide": WIDE, "bits": BITS, "one": ONE}


def run(fmt, link, wire, cycles=None, accelerator=True, stall=0.3, watch=None):
    """Drive ``wire`` (byte strings, or ("pause", cycles)) into rx; return the frames decoded from
    tx and the inputs the accelerator saw. ``watch(ctx)``, if given, runs alongside."""
    seen, out_bytes = [], bytearray()
    if cycles is None:
        cycles = sum(len(w) * BYTE if isinstance(w, bytes) else w[1] for w in wire) * 2 + 40 * BYTE

    async def host(ctx):
        ctx.set(link.rx, 1)
        await ctx.tick().repeat(5)
        for item in wire:
            if isinstance(item, tuple):
                await ctx.tick().repeat(item[1])
                continue
            for byte in item:
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(link.rx, bit)
                    await ctx.tick().repeat(DIV)

    async def monitor(ctx):                      # a UART receiver on tx sampling each bit's middle
        t = None
        byte = 0
        async for _, _, tx in ctx.tick().sample(link.tx):
            if t is None:
                if tx == 0:
                    t, byte = 0, 0
                continue
            t += 1
            k = (t - DIV // 2) // DIV - 1
            if (t - DIV // 2) % DIV == 0 and 0 <= k < 8:
                byte |= tx << k
            elif t == DIV // 2 + 9 * DIV:
                assert tx == 1, "stop bit"
                out_bytes.append(byte)
                t = None

    async def model(ctx):                        # takes whole inputs; gives their results, in order
        rng = random.Random(len(wire))
        beats, words = [], []
        async for _, _, i_valid, i_ready, i_payload, o_valid, o_ready in ctx.tick().sample(
                link.i.valid, link.i.ready, link.i.payload, link.o.valid, link.o.ready):
            if i_valid and i_ready:
                beats.append(i_payload)
            if len(beats) == fmt.in_elements // fmt.in_per_beat:
                xs = unpack_beats(beats, fmt.in_per_beat, fmt.in_bits, fmt.in_signed).reshape(-1)
                seen.append([int(x) for x in xs])
                words += pack_beats(fmt.function(xs).reshape(-1, fmt.out_per_beat), fmt.out_bits)
                beats = []
            if o_valid and o_ready:
                words.pop(0)
            ctx.set(link.i.ready, rng.random() >= stall)
            hold = o_valid and not o_ready                  # a beat offered stays until taken
            ctx.set(link.o.valid, bool(words) and (hold or rng.random() >= stall))
            ctx.set(link.o.payload, words[0] if words else 0)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_process(monitor)
    if accelerator:
        sim.add_process(model)
    if watch is not None:
        sim.add_process(watch)
    sim.run_until(cycles * 1e-6)
    dec = protocol.FrameDecoder()
    dec.feed(bytes(out_bytes))
    frames = list(dec.frames())
    assert dec.bad_frames == 0 and dec.skipped == 0
    return frames, seen


def error(code, kind, seq=0):
    return protocol.Frame(protocol.ERROR, bytes([code, kind]), seq)


def test_init():
    link = SMALL.link()
    assert (link.divisor, link.timeout_cycles, link.design_id) == (DIV, 30 * DIV, 0x1234ABCD)
    assert link.info() == protocol.Info(2, 6, 6, 4, False, 5, True, 0x1234ABCD)
    assert link.i.payload.shape().width == 8 and link.o.payload.shape().width == 15


def test_init_wrong():
    with pytest.raises(ValueError, match="in_bits must be at most 8"):
        SMALL.link(in_bits=9)
    with pytest.raises(ValueError, match="out_bits must be at most 8"):
        SMALL.link(out_bits=9)
    with pytest.raises(ValueError, match="elements per beat must divide"):
        SMALL.link(in_per_beat=4)
    with pytest.raises(TypeError, match="timeout_cycles must be an integer of at least 1, not 0"):
        SMALL.link(timeout_cycles=0)
    with pytest.raises(TypeError, match="timeout_cycles must be an integer of at least 41, not 40"):
        SMALL.link(timeout_cycles=10 * DIV)
    with pytest.raises(TypeError, match="divisor must be an integer of at least 4, not 3"):
        SMALL.link(divisor=3)
    with pytest.raises(ValueError, match="design_id must be a 32-bit unsigned integer"):
        SMALL.link(design_id=1 << 32)
    with pytest.raises(ValueError, match="at most 65535 elements"):
        SMALL.link(in_elements=1 << 16, in_per_beat=1)


@pytest.mark.parametrize("name", FORMATS)
def test_info(name):
    fmt = FORMATS[name]
    frames, seen = run(fmt, fmt.link(), [protocol.encode_frame(protocol.INFO, seq=0x5A)])
    assert [f.seq for f in frames] == [0x5A]
    assert [protocol.Info.parse(f.payload) for f in frames] == [
        protocol.Info(2, fmt.in_elements, fmt.out_elements, fmt.in_bits, fmt.in_signed, fmt.out_bits,
                      fmt.out_signed, 0x1234ABCD)]
    assert frames[0].type == protocol.INFO_REPLY and seen == []


@pytest.mark.parametrize("name", FORMATS)
def test_back_to_back_inferences(name):
    """Frames sent without a pause, the accelerator stalling at random: every result exact, each
    with its INFER frame's sequence number."""
    fmt = FORMATS[name]
    inputs = fmt.inputs(4, seed=len(name))
    frames, seen = run(fmt, fmt.link(), [fmt.infer(x, 250 + k) for k, x in enumerate(inputs)])
    assert seen == inputs
    assert frames == [fmt.result(x, 250 + k) for k, x in enumerate(inputs)]


def test_info_during_a_result_waits_for_its_end():
    frames, seen = run(SMALL, SMALL.link(), [SMALL.infer([1] * 6, 3), protocol.encode_frame(protocol.INFO, seq=4)],
                       stall=0.0)
    assert [(f.type, f.seq) for f in frames] == [(protocol.RESULT, 3), (protocol.INFO_REPLY, 4)]
    assert frames[0] == SMALL.result([1] * 6, 3)


@pytest.mark.parametrize("damage", ["flip", "compensate", "swap", "crc"])
def test_bad_crc_never_reaches_the_accelerator(damage):
    """One byte flipped, two bytes changed by +1 and -1 (an additive check byte would pass them),
    two different bytes swapped, a CRC byte flipped: BAD_CRC with the frame's sequence number."""
    bad = bytearray(SMALL.infer([1, 2, 3, 4, 5, 6], 9))
    if damage == "flip":
        bad[6] ^= 0x01
    elif damage == "compensate":
        bad[6] += 1
        bad[8] -= 1
    elif damage == "swap":
        bad[5], bad[9] = bad[9], bad[5]
    else:
        bad[-2] ^= 0x80
    frames, seen = run(SMALL, SMALL.link(), [b"\x00\x13", bytes(bad), SMALL.infer([6, 5, 4, 3, 2, 1], 10)])
    assert frames == [error(protocol.BAD_CRC, protocol.INFER, 9), SMALL.result([6, 5, 4, 3, 2, 1], 10)]
    assert seen == [[6, 5, 4, 3, 2, 1]]


def test_wrong_length_and_unknown_type():
    short = protocol.encode_frame(protocol.INFER, b"\x01\x02\x03", 1)
    long = protocol.encode_frame(protocol.INFER, bytes(7), 2)
    odd = protocol.encode_frame(0x33, b"\x07", 3)
    info_with_payload = protocol.encode_frame(protocol.INFO, b"\x00", 4)
    frames, seen = run(SMALL, SMALL.link(), [short, long, odd, info_with_payload, SMALL.infer([1] * 6, 5)])
    assert frames == [error(protocol.BAD_LENGTH, protocol.INFER, 1), error(protocol.BAD_LENGTH, protocol.INFER, 2),
                      error(protocol.UNKNOWN_TYPE, 0x33, 3), error(protocol.BAD_LENGTH, protocol.INFO, 4),
                      SMALL.result([1] * 6, 5)]
    assert seen == [[1] * 6]


@pytest.mark.parametrize("cut", [2, 5, 10, 13])
def test_timeout_half_way_then_recovers(cut):
    """A frame stopped after its type (the error names seq 0), after its header, in its payload,
    or in its CRC; the next frame works."""
    frame = SMALL.infer([9] * 6, 77)
    frames, seen = run(SMALL, SMALL.link(), [frame[:cut], ("pause", 60 * DIV), SMALL.infer([2] * 6, 78)])
    assert frames == [error(protocol.TIMEOUT, protocol.INFER, 0 if cut < 3 else 77), SMALL.result([2] * 6, 78)]
    assert seen == [[2] * 6]


def test_timeout_after_the_start_byte_names_type_zero():
    frames, seen = run(SMALL, SMALL.link(), [SMALL.infer([3] * 6), b"\xA5", ("pause", 60 * DIV),
                                             SMALL.infer([4] * 6)])
    assert frames == [SMALL.result([3] * 6), error(protocol.TIMEOUT, 0), SMALL.result([4] * 6)]


def test_a_pause_shorter_than_the_timeout_is_no_error():
    """The timeout counts from the end of the last byte: a pause plus a byte time under it is fine."""
    frame = SMALL.infer([7] * 6)
    frames, seen = run(SMALL, SMALL.link(), [frame[:6], ("pause", 30 * DIV - BYTE - 2 * DIV), frame[6:]])
    assert frames == [SMALL.result([7] * 6)]


def test_busy_when_the_accelerator_does_not_take_the_input():
    frames, seen = run(SMALL, SMALL.link(), [SMALL.infer([1] * 6), SMALL.infer([2] * 6, 1)], accelerator=False)
    assert frames == [error(BUSY, protocol.INFER, 1)]


def test_busy_when_too_many_results_are_owed():
    """The accelerator takes inputs but gives nothing: after PENDING accepted inputs the next is BUSY."""
    from qfab.boards.gateware.link import PENDING
    link = SMALL.link()

    async def sink(ctx):                        # takes every input beat, never gives a result
        ctx.set(link.i.ready, 1)

    wire = [x for k in range(PENDING + 1) for x in (SMALL.infer([k] * 6, k), ("pause", 20))]
    frames, seen = run(SMALL, link, wire, accelerator=False, watch=sink)
    assert frames == [error(BUSY, protocol.INFER, PENDING)]


def test_status():
    """``busy`` while a frame or its result is in flight, ``error`` for ``error_hold_cycles`` after
    an error, ``activity`` toggling with each good frame."""
    link = SMALL.link(error_hold_cycles=50)
    trace = []

    async def watch(ctx):
        async for _, _, status in ctx.tick().sample(link.status):
            trace.append((status.busy, status.error, status.activity))

    bad = bytearray(SMALL.infer([1] * 6))
    bad[-1] ^= 0xFF
    wire = [("pause", 20), SMALL.infer([1] * 6), ("pause", 40 * BYTE), bytes(bad), ("pause", 20 * BYTE),
            protocol.encode_frame(protocol.INFO), ("pause", 30 * BYTE)]
    frames, seen = run(SMALL, link, wire, watch=watch)
    assert [f.type for f in frames] == [protocol.RESULT, protocol.ERROR, protocol.INFO_REPLY]
    busy, err, activity = (np.array(column) for column in zip(*trace))
    assert not busy[:20].any() and not busy[-20 * BYTE:].any()
    assert np.count_nonzero(np.diff(busy.astype(int)) == 1) == 3          # three frames, three busy spells
    assert np.count_nonzero(np.diff(activity.astype(int)) != 0) == 2       # two good frames
    rises = np.flatnonzero(np.diff(err.astype(int)) == 1)
    assert len(rises) == 1 and 49 <= np.count_nonzero(err) <= 52


# -- the inference core around a build folder ---------------------------------------------------

def _build_folder(path, top="qfab_top"):
    manifest = Manifest(input=StreamFormat("x", (6,), 6, 2, 4, False), output=StreamFormat("y", (6,), 6, 3, 5, True),
                        initiation_interval=8, top=top)
    verilog = f"module {top}(); endmodule\n"
    Build.save(path, manifest, {"qfab_top.v": verilog, "model.qfab": b""})
    return manifest


def test_core(tmp_path):
    manifest = _build_folder(tmp_path)
    core = InferenceCore(tmp_path, clock_hz=12e6, baud=115200)
    Fragment.get(core, None)
    assert core.divisor == 104 and core.link.timeout_cycles == 64 * 10 * 104
    assert core.link.error_hold_cycles == 3_000_000                 # a quarter second
    assert core.design_id == protocol.design_id(manifest, "module qfab_top(); endmodule\n")
    assert core.link.info() == protocol.Info(2, 6, 6, 4, False, 5, True, core.design_id)
    assert core.verilog_files() == {"qfab_top.v": "module qfab_top(); endmodule\n"}
    other = InferenceCore(tmp_path, divisor=8, timeout_cycles=500)
    Fragment.get(other, None)
    assert other.link.timeout_cycles == 500 and other.link.divisor == 8
    text = core_verilog(tmp_path, divisor=8)
    assert "module qfab_core(" in text and "qfab_top accelerator (" in text
    for port in ("input clk;", "input rst;", "input rx;", "output tx;", "output [2:0] status;",
                 ".i__payload(", ".i__valid(", ".i__ready(", ".o__payload(", ".o__valid(", ".o__ready("):
        assert port in text
    assert ".observe(" not in text and "module qfab_top" not in text


def test_core_wrong(tmp_path):
    with pytest.raises(QfabError, match="not a qfab build folder"):
        InferenceCore(tmp_path, divisor=8)
    _build_folder(tmp_path)
    with pytest.raises(QfabError, match="give the UART rate as divisor=, or as clock_hz= and baud="):
        InferenceCore(tmp_path)
    with pytest.raises(QfabError, match="give the UART rate as divisor=, or as clock_hz= and baud="):
        InferenceCore(tmp_path, divisor=8, baud=115200)
    with pytest.raises(QfabError, match="baud= needs clock_hz="):
        InferenceCore(tmp_path, baud=115200)
    with pytest.raises(QfabError, match="115200 baud needs a clock of at least 0.4608 MHz"):
        InferenceCore(tmp_path, clock_hz=300e3, baud=115200)


@pytest.mark.parametrize("hold", [64, 65, 5000, 20_000])
def test_long_error_hold_counts_in_ticks_and_lasts_at_least_the_hold(hold):
    """A hold over 64 cycles counts prescaler ticks (two short carry chains instead of one
    long one): the error light stays on at least ``hold`` cycles and at most two ticks more."""
    link = SMALL.link(error_hold_cycles=hold)
    tick = 1 << max(0, (hold - 1).bit_length() - 6)
    trace = []

    async def watch(ctx):
        async for _, _, status in ctx.tick().sample(link.status):
            trace.append(status.error)

    bad = bytearray(SMALL.infer([1] * 6))
    bad[-1] ^= 0xFF
    frames, _ = run(SMALL, link, [("pause", 20), bytes(bad), ("pause", hold + 4 * tick)], watch=watch)
    assert [f.type for f in frames] == [protocol.ERROR]
    err = np.array(trace, dtype=int)
    assert np.count_nonzero(np.diff(err) == 1) == 1 and err[-1] == 0
    assert hold <= np.count_nonzero(err) <= hold + 2 * tick
