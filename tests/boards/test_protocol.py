import binascii
import dataclasses
import random
import zlib

import numpy as np
import pytest
from amaranth.lib.crc.catalog import CRC32_ISO_HDLC
from hypothesis import given, settings, strategies as st

from qfab.base.errors import QfabError
from qfab.boards.host import protocol
from qfab.compiler.buildfolder import Manifest, StreamFormat

CRC32 = CRC32_ISO_HDLC(data_width=8)


def test_frame_layout():
    frame = protocol.encode_frame(protocol.INFER, bytes([1, 2, 3]), seq=7)
    assert frame[:5] == bytes([0xA5, 0x01, 7, 3, 0]) and frame[5:8] == bytes([1, 2, 3]) and len(frame) == 12
    assert frame[8:] == zlib.crc32(frame[1:8]).to_bytes(4, "little")
    # the contract's example (docs/link.md): an INFO request with sequence number 0
    assert protocol.encode_frame(protocol.INFO) == bytes.fromhex("a5 02 00 00 00 97 17 4d 8b")
    long = protocol.encode_frame(protocol.RESULT, bytes(300), seq=255)
    assert long[2:5] == bytes([255, 300 & 0xFF, 300 >> 8]) and len(long) == 309


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1000), st.integers(0, 0xFFFFFFFF))
def test_crc32_matches_the_amaranth_model_and_a_bitwise_one(data, start):
    """The codec's CRC (zlib's) against two independent implementations: the software model of the
    CRC the gateware is built from (`amaranth.lib.crc`) and the definition bit by bit."""
    assert protocol.crc32(data) == CRC32.compute(data) == _bitwise_crc32(data)
    assert protocol.crc32(data[len(data) // 2:], protocol.crc32(data[:len(data) // 2])) == CRC32.compute(data)
    assert protocol.crc32(data[:50], start) == _bitwise_crc32(data[:50], start)


def _bitwise_crc32(data, crc=0):
    """CRC-32/ISO-HDLC from its definition: reflected polynomial 0xEDB88320, init and xorout all ones."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600))
def test_crc_covers_every_byte_after_the_start(kind, seq, payload):
    frame = protocol.encode_frame(kind, payload, seq)
    assert frame[0] == protocol.START and frame[1] == kind and frame[2] == seq
    assert frame[3] | frame[4] << 8 == len(payload) and frame[5:-4] == payload
    assert int.from_bytes(frame[-4:], "little") == zlib.crc32(frame[1:-4])
    # the gateware's check: the CRC register after the whole frame holds the residue
    assert CRC32.compute(frame[1:]) ^ 0xFFFFFFFF == CRC32.residue()


def _payload(length, seed):
    return random.Random(seed).randbytes(length)


_LENGTHS = st.one_of(st.integers(0, 40), st.integers(0, protocol.MAX_PAYLOAD), st.just(protocol.MAX_PAYLOAD))


@settings(max_examples=40, deadline=None)
@given(_LENGTHS, st.integers(0, 2**32), st.data())
def test_any_one_or_two_damaged_bytes_are_detected(length, seed, data):
    """Frames up to the longest: any byte after the start changed, or any two, is never decoded
    (a length byte damaged changes the frame's end: the decoder waits for bytes that never come)."""
    frame = bytearray(protocol.encode_frame(protocol.RESULT, _payload(length, seed), 3))
    where = data.draw(st.lists(st.integers(1, len(frame) - 1), min_size=1, max_size=2, unique=True))
    for k in where:
        frame[k] ^= data.draw(st.integers(1, 255))
    dec = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD)
    dec.feed(bytes(frame))
    assert list(dec.frames()) == []
    if not {3, 4} & set(where):
        assert dec.bad_crcs >= 1


@settings(max_examples=40, deadline=None)
@given(_LENGTHS, st.integers(0, 2**32), st.data())
def test_any_swap_of_two_different_bytes_is_detected(length, seed, data):
    frame = bytearray(protocol.encode_frame(protocol.RESULT, _payload(length, seed), 3))
    i, j = data.draw(st.lists(st.integers(1, len(frame) - 1), min_size=2, max_size=2, unique=True))
    if frame[i] == frame[j]:
        frame[i] ^= 0x5A                        # make them differ (then the swap changes two bytes)
        frame[-4:] = protocol.crc32(frame[1:-4]).to_bytes(4, "little")
    frame[i], frame[j] = frame[j], frame[i]
    dec = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD)
    dec.feed(bytes(frame))
    assert list(dec.frames()) == []


def test_every_two_byte_error_in_the_longest_frame_is_detected():
    """Not a sample but all of them: two damaged bytes ``e1`` and ``e2`` (any nonzero values, a
    swap included) ``d`` bytes apart go undetected iff the CRC polynomial g divides
    ``e1(x) + x^(8d) e2(x)``, i.e. iff ``x^(8d) e2(x) mod g`` has degree below 8. Checked for every
    ``e2`` and every distance up to the longest frame; a CRC-16 (XMODEM) fails at 2 bytes."""
    def first_undetected(width, poly, distances):
        top, mask = 1 << width, (1 << width) - 1
        powers = np.zeros(distances + 1, np.uint64)         # x^(8d) mod g
        r = 1
        for d in range(distances + 1):
            powers[d] = r
            for _ in range(8):
                r = (r << 1) ^ (top | poly) if r & (top >> 1) else r << 1
        basis = [powers]                                     # x^(8d + i) mod g, i < 8
        for _ in range(7):
            a = basis[-1] << np.uint64(1)
            basis.append((a & np.uint64(mask)) ^ np.where(a & np.uint64(top), np.uint64(poly), np.uint64(0)))
        first = None
        for e2 in range(1, 256):
            acc = np.zeros_like(powers)
            for i in range(8):
                if e2 >> i & 1:
                    acc ^= basis[i]
            bad = np.flatnonzero(acc[1:] < 256)
            if bad.size and (first is None or bad[0] + 1 < first):
                first = int(bad[0]) + 1
        return first

    longest = protocol.HEADER + protocol.MAX_PAYLOAD + protocol.TRAILER
    assert first_undetected(32, 0x04C11DB7, longest) is None
    assert first_undetected(16, 0x1021, 100) == 2
    # the algebra agrees with the implementations: the pair it finds for the CRC-16 (0x89 two
    # bytes before 0xA1) passes CRC-16/XMODEM (binascii), not the frames' CRC-32
    good = bytearray(b"qfab link")
    bad = bytearray(good)
    bad[2] ^= 0x89
    bad[4] ^= 0xA1
    assert binascii.crc_hqx(bytes(bad), 0) == binascii.crc_hqx(bytes(good), 0)
    assert protocol.crc32(bad) != protocol.crc32(good)


def test_encode_frame_wrong():
    with pytest.raises(ValueError, match="frame type must be a byte, not 256"):
        protocol.encode_frame(256)
    with pytest.raises(ValueError, match="sequence number must be a byte, not 256"):
        protocol.encode_frame(protocol.INFO, seq=256)
    with pytest.raises(ValueError, match="payload of 65536 bytes exceeds 65535"):
        protocol.encode_frame(protocol.INFER, bytes(65536))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300), st.integers(0, 255)), max_size=6),
       st.binary(max_size=40))
def test_round_trip_with_garbage_between_frames(frames, garbage):
    """Frames separated by bytes that contain no start byte decode to exactly what was sent,
    however the stream is cut into pieces."""
    garbage = bytes(b for b in garbage if b != protocol.START)
    stream = b"".join(garbage + protocol.encode_frame(k, p, q) for k, p, q in frames)
    dec = protocol.FrameDecoder()
    for k in range(0, len(stream), 7):
        dec.feed(stream[k:k + 7])
    got = [(f.type, f.payload, f.seq) for f in dec.frames()]
    assert got == [(k, bytes(p), q) for k, p, q in frames]
    assert dec.bad_frames == 0 and dec.skipped == len(garbage) * len(frames)
    assert dec.next_frame() is None


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_corrupted_frame_is_dropped_and_the_next_decodes(payload, data):
    frame = bytearray(protocol.encode_frame(protocol.RESULT, payload))
    k = data.draw(st.integers(1, len(frame) - 1))          # any byte after the start
    frame[k] ^= data.draw(st.integers(1, 255))
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec = protocol.FrameDecoder()
    dec.feed(bytes(frame) + good)
    frames = list(dec.frames())
    assert frames[-1] == protocol.Frame(protocol.RESULT, b"ok")
    assert protocol.Frame(protocol.RESULT, bytes(payload)) not in frames
    assert dec.bad_frames >= 1


def test_a_start_byte_in_the_garbage_costs_nothing_but_a_bad_frame():
    """Garbage ``A5 81 00 03 00`` claims a frame that runs into the real one; its check fails and the
    decoder resynchronizes on the real start byte inside it."""
    good = [protocol.encode_frame(protocol.RESULT, bytes([k, 2 * k])) for k in range(3)]
    dec = protocol.FrameDecoder()
    for byte in b"\x13\xA5\x81\x00\x03\x00" + b"".join(good):
        dec.feed(bytes([byte]))
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, bytes([k, 2 * k])) for k in range(3)]
    assert dec.bad_crcs == 1 and dec.bad_lengths == 0


def test_a_lost_byte_costs_one_frame():
    frames = [protocol.encode_frame(protocol.RESULT, bytes([k] * 5)) for k in range(4)]
    stream = b"".join(frames)
    cut = stream[:len(frames[0]) + 6] + stream[len(frames[0]) + 7:]       # a payload byte of frame 1 lost
    dec = protocol.FrameDecoder()
    dec.feed(cut)
    assert [f.payload[0] for f in dec.frames()] == [0, 2, 3]
    assert dec.bad_frames == 1


def test_claimed_length_beyond_the_limit_resyncs():
    dec = protocol.FrameDecoder(max_payload=100)
    dec.feed(bytes([0xA5, 0x81, 0x00, 0xFF, 0xFF]) + protocol.encode_frame(protocol.RESULT, b"\x01"))
    assert dec.next_frame() == protocol.Frame(protocol.RESULT, b"\x01")
    assert dec.bad_lengths == 1 and dec.bad_crcs == 0
    with pytest.raises(ValueError, match="max_payload must be an integer from 0 to 65535, not -1"):
        protocol.FrameDecoder(max_payload=-1)


@pytest.mark.parametrize("bits,signed", [(1, False), (4, False), (8, False), (2, True), (4, True), (8, True)])
def test_pack_unpack(bits, signed):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = np.arange(lo, hi + 1)
    payload = protocol.pack_input(codes, bits, signed)
    assert len(payload) == len(codes)
    # the board sign-extends signed outputs to a byte; the host reads them back
    assert list(protocol.unpack_output(payload, bits, signed)) == list(codes)
    with pytest.raises(ValueError, match="outside the"):
        protocol.pack_input([hi + 1], bits, signed)
    with pytest.raises(ValueError, match="outside the"):
        protocol.pack_input([lo - 1], bits, signed)
    if bits < 8:                # a byte the board never sends: one beyond the range
        beyond = bytes([(lo - 1) & 0xFF]) if signed else bytes([hi + 1])
        with pytest.raises(ValueError, match=f"output byte 0x{beyond[0]:02x} is not a"):
            protocol.unpack_output(beyond, bits, signed)


def test_pack_input_bytes():
    """The contract: one byte per element, the code's two's complement byte."""
    assert protocol.pack_input([[0, 1], [7, 15]], 4, False) == bytes([0, 1, 7, 15])
    assert protocol.pack_input([-8, -1, 0, 7], 4, True) == bytes([0xF8, 0xFF, 0x00, 0x07])
    assert list(protocol.unpack_output(bytes([0xF8, 0xFF, 0x00, 0x07]), 4, True)) == [-8, -1, 0, 7]
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 8"):
        protocol.pack_input([0], 9, False)


def test_info_round_trip_and_errors():
    info = protocol.Info(2, 64, 10, 4, False, 8, True, 0xDEADBEEF)
    assert info.encode() == bytes([2, 64, 0, 10, 0, 4, 0, 8, 1, 0xEF, 0xBE, 0xAD, 0xDE])
    assert protocol.Info.parse(info.encode()) == info
    assert issubclass(protocol.LinkError, QfabError)
    with pytest.raises(protocol.LinkError, match=r"^malformed INFO reply from the board: 2 bytes, expected 13 "):
        protocol.Info.parse(b"\x02\x02")
    with pytest.raises(protocol.LinkError, match=r"^malformed INFO reply from the board: 14 bytes"):
        protocol.Info.parse(info.encode() + b"\x00")
    with pytest.raises(protocol.LinkError, match=r"^the board speaks link protocol version 1, this qfab version 2: "
                                                 r"rebuild the bitstream"):
        protocol.Info.parse(protocol.Info(1, 64, 10, 4, False, 8, True, 0).encode())
    for bad, says in ((dict(in_bits=0), "input bits 0"), (dict(out_bits=9), "output bits 9"),
                      (dict(in_signed=2), "input signedness 2"), (dict(out_elements=0), "output elements 0")):
        payload = dataclasses.replace(info, **bad).encode()
        with pytest.raises(protocol.LinkError, match=f"^malformed INFO reply from the board: {says} "):
            protocol.Info.parse(payload)
        assert "\n" not in str(pytest.raises(protocol.LinkError, protocol.Info.parse, payload).value)
    assert protocol.describe_error(bytes([1, 1])) == "bad CRC (in a INFER frame)"
    assert protocol.is_transient(bytes([protocol.TIMEOUT, 1]))
    assert protocol.is_transient(bytes([protocol.BUSY, 1]))
    assert not protocol.is_transient(bytes([protocol.BAD_LENGTH, 1]))
    assert not protocol.is_transient(bytes([protocol.UNKNOWN_TYPE, 0x33]))
    assert protocol.describe_error(bytes([9, 0x33])) == "error code 9 (in a type 0x33 frame)"


def test_design_id_depends_on_the_verilog():
    manifest = Manifest(input=StreamFormat("x", (64,), 64, 1, 8, False),
                        output=StreamFormat("y", (10,), 10, 1, 8, False), initiation_interval=64)
    a = protocol.design_id(manifest, "module a; endmodule")
    assert a == protocol.design_id(manifest, "module a; endmodule")
    assert a != protocol.design_id(manifest, "module b; endmodule")
    assert 0 <= a < 1 << 32


def test_a_data_byte_that_reads_as_a_start_does_not_hold_up_the_next_frame():
    """Hypothesis found it: a corrupted check byte leaves a payload byte 0xA5 that claims a
    frame longer than what follows, while a whole good frame follows."""
    frame = bytearray(protocol.encode_frame(protocol.RESULT, b".4h\x99\xb4\xbd"))
    frame[-1] ^= 1
    fake = bytes([protocol.START, protocol.RESULT, 0, 40, 0])         # 40 bytes claimed
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec = protocol.FrameDecoder()
    dec.feed(bytes(frame) + fake + good)
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, b"ok")]
    assert dec.bad_crcs == 1 and dec.bad_lengths == 1
    # an unfinished frame with nothing whole after it waits for its bytes, until dropped
    dec.feed(fake + b"\x00" * 10)
    assert list(dec.frames()) == [] and dec.drop_partial() == 15 and dec.bad_lengths == 2
    dec.feed(good)
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, b"ok")]


def test_a_frame_of_protocol_version_1_is_recognized():
    """A board programmed by an older qfab answers in version 1 frames (a sum check byte)."""
    v1_error = bytes([0xA5, 0xEE, 2, 0, 2, 2, (-(0xEE + 2 + 2 + 2)) & 0xFF])
    assert protocol.looks_like_v1(b"\x00" + v1_error)
    assert not protocol.looks_like_v1(v1_error[:-1])
    assert not protocol.looks_like_v1(protocol.encode_frame(protocol.ERROR, bytes([2, 2])))


# ---- corners the mutation run of the codec found untested (docs/testing.md) -----------------

def test_payloads_longer_than_a_byte_and_at_the_limit_decode():
    """Lengths use both bytes; ``max_payload`` itself is allowed (default 4096), one more is not."""
    frames = [protocol.encode_frame(protocol.RESULT, _payload(n, n), n & 0xFF) for n in (256, 300, 4096)]
    dec = protocol.FrameDecoder()
    dec.feed(b"".join(frames))
    assert [(len(f.payload), f.seq) for f in dec.frames()] == [(256, 0), (300, 44), (4096, 0)]
    dec.feed(protocol.encode_frame(protocol.RESULT, bytes(4097)))
    assert list(dec.frames()) == [] and dec.bad_lengths == 1
    empty_only = protocol.FrameDecoder(max_payload=0)
    empty_only.feed(protocol.encode_frame(protocol.INFO) + protocol.encode_frame(protocol.RESULT, b"\x01"))
    assert list(empty_only.frames()) == [protocol.Frame(protocol.INFO, b"")] and empty_only.bad_lengths == 1


def test_a_stray_start_byte_right_before_a_frame_loses_nothing():
    """A5 then a frame: the stray's claimed frame runs past the buffer while a whole frame follows
    at the next byte (dropped as a bad length), or its claimed frame is complete and fails the
    CRC (dropped as a bad CRC); the real frames decode, the next byte is never skipped."""
    def frame(seq, payload=b""):
        return protocol.encode_frame(protocol.RESULT, payload, seq)
    dec = protocol.FrameDecoder()
    dec.feed(b"\xA5" + frame(3))                      # the stray claims 3 bytes: runs past the end
    assert [f.seq for f in dec.frames()] == [3] and (dec.bad_lengths, dec.bad_crcs, dec.skipped) == (1, 0, 0)
    dec = protocol.FrameDecoder()
    dec.feed(b"\xA5" + frame(3) + frame(4))           # now its 3 bytes are there: a bad CRC
    assert [f.seq for f in dec.frames()] == [3, 4] and (dec.bad_lengths, dec.bad_crcs, dec.skipped) == (0, 1, 0)
    dec = protocol.FrameDecoder()
    dec.feed(b"\xA5" + frame(200) + frame(201)[:3])   # the first whole frame after it counts, not the last
    assert [f.seq for f in dec.frames()] == [200] and dec.bad_lengths == 1
    dec = protocol.FrameDecoder(max_payload=MAX)
    dec.feed(b"\xA5" + frame(200, _payload(300, 1)))  # the frame after it is longer than a byte says
    assert [len(f.payload) for f in dec.frames()] == [300]
    # a damaged frame after the stray is no reason to give the stray up: wait for its bytes
    damaged = bytearray(frame(200))
    damaged[-1] ^= 1
    dec = protocol.FrameDecoder()
    dec.feed(b"\xA5" + bytes(damaged))
    assert list(dec.frames()) == [] and (dec.bad_lengths, dec.bad_crcs) == (0, 0)


MAX = protocol.MAX_PAYLOAD


def test_bad_frames_are_counted_each():
    dec = protocol.FrameDecoder(max_payload=100)
    dec.feed(bytes([0xA5, 0x81, 0, 0xFF, 0xFF]))      # a header alone is enough to refuse the length
    assert dec.bad_lengths == 1 and dec.drop_partial() == 0
    dec.feed(bytes([0xA5, 0x81, 0, 0xFF, 0xFF]) * 2)
    assert dec.bad_lengths == 3
    bad = bytearray(protocol.encode_frame(protocol.RESULT, b"ab"))
    bad[5] ^= 0x40
    dec.feed(bytes(bad) * 3)
    assert dec.bad_crcs == 3 and dec.bad_frames == 6
    for wrong in (-1, MAX + 1, 1.5, None):
        with pytest.raises(ValueError, match=rf"^max_payload must be an integer from 0 to 65535, not {wrong!r}$"):
            protocol.FrameDecoder(max_payload=wrong)


def _v1(kind, payload):
    body = bytes([kind, len(payload) & 0xFF, len(payload) >> 8]) + bytes(payload)
    return b"\xA5" + body + bytes([-sum(body) & 0xFF])


@pytest.mark.parametrize("data, is_v1", [
    (_v1(protocol.ERROR, b"\x02\x02"), True),                    # at the very start
    (_v1(protocol.RESULT, b""), True),                           # the shortest: 5 bytes
    (_v1(protocol.INFO_REPLY, bytes(range(40)) * 8), True),      # a length above 255
    (_v1(protocol.ERROR, b"\x02\x02") + b"\xA5", True),          # a later start byte changes nothing
    (b"\xA5\x01\x00" + _v1(protocol.RESULT, b"\x07"), True),     # after a start byte that leads nowhere
    (_v1(protocol.INFER, b"\x02\x02"), False),                   # a host-to-board type
    (b"\x00\xA5\x82", False),                                    # cut after its type
    (b"\xA5\xEE\x02\x00\x10", False),                            # cut in its payload (the bytes sum to 0)
])
def test_version_1_frames_are_recognized_wherever_they_are(data, is_v1):
    assert protocol.looks_like_v1(data) is is_v1


def test_pack_and_unpack_name_the_first_bad_code_exactly():
    assert protocol.pack_input(np.array([-8, 7, -1], np.int8), 4, True) == bytes([0xF8, 0x07, 0xFF])
    assert protocol.pack_input(np.array([[3, 15]], np.uint8), 4, False) == bytes([3, 15])
    with pytest.raises(ValueError, match=r"^input code 16 outside the unsigned 4-bit range \[0, 15\]$"):
        protocol.pack_input([0, 15, 16], 4, False)
    with pytest.raises(ValueError, match=r"^input code -9 outside the signed 4-bit range \[-8, 7\]$"):
        protocol.pack_input([-8, 7, -9, 8], 4, True)
    with pytest.raises(ValueError, match=r"^output byte 0x10 is not a unsigned 4-bit code$"):
        protocol.unpack_output(bytes([0, 15, 16, 17]), 4, False)
    with pytest.raises(ValueError, match=r"^output byte 0xf7 is not a signed 4-bit code$"):
        protocol.unpack_output(bytes([0xF8, 0x07, 0xF7]), 4, True)
    out = protocol.unpack_output(bytes([0x80, 0x7F]), 8, True)
    assert out.tolist() == [-128, 127] and out.dtype == np.int64
    for bits in (0, 9):
        with pytest.raises(ValueError, match=rf"^bits must be an integer from 1 to 8, not {bits}$"):
            protocol.unpack_output(b"", bits, False)


def test_info_fields_at_their_limits_and_every_bad_one_named():
    for fields in ((1, 1, 1, False, 1, False), (65535, 65535, 8, True, 8, True), (3, 2, 8, True, 1, False)):
        info = protocol.Info(2, fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], 7)
        assert protocol.Info.parse(info.encode()) == info
    info = protocol.Info(2, 64, 10, 4, False, 8, True, 1)
    for bad, says in ((dict(in_elements=0), "input elements 0"), (dict(in_bits=9), "input bits 9"),
                      (dict(out_bits=0), "output bits 0"), (dict(out_signed=2), "output signedness 2"),
                      (dict(in_bits=0, out_bits=9), "input bits 0, output bits 9")):
        with pytest.raises(protocol.LinkError, match=rf"^malformed INFO reply from the board: {says} \(a bitstream"):
            protocol.Info.parse(dataclasses.replace(info, **bad).encode())


def test_design_id_covers_every_part_of_the_build():
    from qfab.compiler.buildfolder import StageInfo
    base = Manifest(input=StreamFormat("x", (64,), 64, 1, 8, False), output=StreamFormat("y", (10,), 10, 1, 8, False),
                    initiation_interval=64, stages=(StageInfo("fc", "fc", "mvau", pe=2, simd=4, style="bit_parallel",
                                                              cycles=64),))
    ids = {protocol.design_id(base, "module a; endmodule")}
    changes = [dict(input=StreamFormat("x", (64,), 64, 1, 8, True)), dict(output=StreamFormat("y", (10,), 10, 2, 8, False)),
               dict(top="other"), dict(initiation_interval=65)]
    changes += [dict(stages=(dataclasses.replace(base.stages[0], **c),))
                for c in (dict(name="fc2"), dict(kind="pool"), dict(pe=1), dict(simd=8), dict(style="bit_serial"))]
    for change in changes:
        ids.add(protocol.design_id(dataclasses.replace(base, **change), "module a; endmodule"))
    ids.add(protocol.design_id(base, "module b; endmodule"))
    assert len(ids) == len(changes) + 2


def test_clear_forgets_whole_and_partial_frames_and_says_how_many_whole():
    dec = protocol.FrameDecoder()
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec.feed(good + good + good[:6])
    assert dec.clear() == 2 and list(dec.frames()) == [] and dec.bad_frames == 0
    dec.feed(good[6:] + good)                     # the rest of the cut frame is garbage now
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, b"ok")] and dec.skipped == len(good) - 6
    assert dec.clear() == 0


def test_resync_after_a_refused_length_starts_at_the_next_byte():
    """A stray start byte whose claimed length is over the limit is dropped alone: a frame starting
    at the very next byte decodes; each stray is counted."""
    frame = protocol.encode_frame(protocol.RESULT, b"", 3)           # as the stray's length: 3 > 2
    dec = protocol.FrameDecoder(max_payload=2)
    dec.feed(b"\xA5" + frame + b"\xA5" + frame)
    assert [f.seq for f in dec.frames()] == [3, 3] and (dec.bad_lengths, dec.bad_crcs) == (2, 0)
    dec = protocol.FrameDecoder()
    for _ in range(2):                                                # its claim runs past the end
        dec.feed(b"\xA5" + frame)
    assert [f.seq for f in dec.frames()] == [3, 3] and (dec.bad_lengths, dec.bad_crcs) == (2, 0)
