# amaranth: UnusedElaboratable=no
"""The board's link gateware in Amaranth's simulator, with a bit-level UART on the host side and
a small model accelerator (``y = x - 8`` per element, repacked) on the other."""

import pytest
from amaranth.sim import Simulator

from qfab.boards import protocol
from qfab.boards.link import BUSY, Link

DIV = 4
IN, OUT = 6, 6


def make_link(**kw):
    args = dict(in_elements=IN, in_bits=4, in_signed=False, in_per_beat=2, out_elements=OUT, out_bits=5,
                out_signed=True, out_per_beat=3, divisor=DIV, timeout_cycles=30 * DIV, design_id=0x1234ABCD,
                error_hold_cycles=50)
    args.update(kw)
    return Link(**args)


def run(link, wire, cycles=6000, accelerator=True):
    """Drive ``wire`` (a list of byte strings, or ("pause", cycles)) into rx; return the frames
    decoded from tx and the inputs the accelerator saw."""
    seen, out_bytes = [], bytearray()

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

    async def monitor(ctx):                      # a per-cycle UART receiver on tx
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

    async def model(ctx):                        # the accelerator: y = x - 8, 2 in per beat, 3 out per beat
        xs, words = [], []
        ctx.set(link.i.ready, 1)
        async for _, _, i_valid, i_payload, o_ready in ctx.tick().sample(link.i.valid, link.i.payload,
                                                                          link.o.ready):
            if words and o_ready:
                words.pop(0)
            if i_valid:
                xs += [(i_payload >> (4 * k)) & 0xF for k in range(2)]
            if len(xs) == IN:
                seen.append(xs)
                ys = [x - 8 for x in xs]
                for k in range(0, OUT, 3):
                    words.append(sum((y & 0x1F) << (5 * j) for j, y in enumerate(ys[k:k + 3])))
                xs = []
            ctx.set(link.o.valid, bool(words))
            ctx.set(link.o.payload, words[0] if words else 0)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_process(monitor)
    if accelerator:
        sim.add_process(model)
    sim.run_until(cycles * 1e-6)
    dec = protocol.FrameDecoder()
    dec.feed(bytes(out_bytes))
    frames = []
    while (f := dec.next_frame()) is not None:
        frames.append(f)
    assert dec.bad_frames == 0 and dec.skipped == 0
    return frames, seen


def infer(xs):
    return protocol.encode_frame(protocol.INFER, protocol.pack_input(xs, 4, False))


def result(xs):
    return protocol.Frame(protocol.RESULT, bytes((x - 8) & 0xFF for x in xs))


def error(code, kind):
    return protocol.Frame(protocol.ERROR, bytes([code, kind]))


def test_init_wrong():
    with pytest.raises(ValueError, match="in_bits must be at most 8"):
        make_link(in_bits=9)
    with pytest.raises(ValueError, match="elements per beat must divide"):
        make_link(in_per_beat=4)
    with pytest.raises(TypeError, match="timeout_cycles must be an integer"):
        make_link(timeout_cycles=0)


def test_info():
    frames, seen = run(make_link(), [protocol.encode_frame(protocol.INFO)], cycles=1500)
    assert frames == [protocol.Frame(protocol.INFO_REPLY, protocol.Info(1, IN, OUT, 4, False, 5, True,
                                                                        0x1234ABCD).encode())]
    assert seen == []


def test_back_to_back_inferences():
    inputs = [[0, 1, 2, 3, 4, 5], [15, 14, 8, 7, 0, 9], [3] * 6]
    frames, seen = run(make_link(), [infer(x) for x in inputs], cycles=4000)
    assert seen == inputs
    assert frames == [result(x) for x in inputs]


def test_bad_checksum_never_reaches_the_accelerator():
    bad = bytearray(infer([1, 2, 3, 4, 5, 6]))
    bad[6] ^= 0x01
    frames, seen = run(make_link(), [b"\x00\x13", bytes(bad), infer([6, 5, 4, 3, 2, 1])], cycles=4000)
    assert frames == [error(protocol.BAD_CHECKSUM, protocol.INFER), result([6, 5, 4, 3, 2, 1])]
    assert seen == [[6, 5, 4, 3, 2, 1]]


def test_wrong_length_and_unknown_type():
    short = protocol.encode_frame(protocol.INFER, b"\x01\x02\x03")
    odd = protocol.encode_frame(0x33, b"\x07")
    info_with_payload = protocol.encode_frame(protocol.INFO, b"\x00")
    frames, seen = run(make_link(), [short, odd, info_with_payload, infer([1] * 6)], cycles=5000)
    assert frames == [error(protocol.BAD_LENGTH, protocol.INFER), error(protocol.UNKNOWN_TYPE, 0x33),
                      error(protocol.BAD_LENGTH, protocol.INFO), result([1] * 6)]
    assert seen == [[1] * 6]


def test_timeout_half_way_then_recovers():
    cut = infer([9] * 6)[:5]
    frames, seen = run(make_link(), [cut, ("pause", 60 * DIV), infer([2] * 6)], cycles=5000)
    assert frames == [error(protocol.TIMEOUT, protocol.INFER), result([2] * 6)]
    assert seen == [[2] * 6]


def test_busy_when_the_accelerator_does_not_take_the_input():
    frames, seen = run(make_link(), [infer([1] * 6), infer([2] * 6)], cycles=3000, accelerator=False)
    assert frames == [error(BUSY, protocol.INFER)]
