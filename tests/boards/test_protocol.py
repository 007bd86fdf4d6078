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
