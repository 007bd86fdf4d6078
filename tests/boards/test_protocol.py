import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qfab.boards.host import protocol
from qfab.compiler.buildfolder import Manifest, StreamFormat


def test_frame_layout():
    frame = protocol.encode_frame(protocol.INFER, bytes([1, 2, 3]))
    assert frame[:4] == bytes([0xA5, 0x01, 3, 0]) and frame[4:7] == bytes([1, 2, 3])
    assert sum(frame[1:]) % 256 == 0
    assert protocol.encode_frame(protocol.INFO) == bytes([0xA5, 0x02, 0, 0, 0xFE])
    assert protocol.encode_frame(protocol.ERROR, bytes([protocol.BAD_CHECKSUM, protocol.INFER])) == \
        bytes([0xA5, 0xEE, 2, 0, 1, 1, (-(0xEE + 2 + 1 + 1)) & 0xFF])
    long = protocol.encode_frame(protocol.RESULT, bytes(300))
    assert long[2:4] == bytes([300 & 0xFF, 300 >> 8]) and len(long) == 305


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=600))
def test_check_byte_makes_the_frame_sum_to_zero(kind, payload):
    frame = protocol.encode_frame(kind, payload)
    assert frame[0] == protocol.START and frame[1] == kind
    assert frame[2] | frame[3] << 8 == len(payload) and frame[4:-1] == payload
    assert sum(frame[1:]) % 256 == 0
    assert frame[-1] == protocol.checksum(kind, payload)


def test_encode_frame_wrong():
    with pytest.raises(ValueError, match="frame type must be a byte, not 256"):
        protocol.encode_frame(256)
    with pytest.raises(ValueError, match="payload of 65536 bytes exceeds 65535"):
        protocol.encode_frame(protocol.INFER, bytes(65536))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=6), st.binary(max_size=40))
def test_round_trip_with_garbage_between_frames(frames, garbage):
    """Frames separated by bytes that contain no start byte decode to exactly what was sent,
    however the stream is cut into pieces."""
    garbage = bytes(b for b in garbage if b != protocol.START)
    stream = b"".join(garbage + protocol.encode_frame(k, p) for k, p in frames)
    dec = protocol.FrameDecoder()
    for k in range(0, len(stream), 7):
        dec.feed(stream[k:k + 7])
    got = [(f.type, f.payload) for f in dec.frames()]
    assert got == [(k, bytes(p)) for k, p in frames]
    assert dec.bad_frames == 0 and dec.skipped == len(garbage) * len(frames)
    assert dec.next_frame() is None


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_corrupted_frame_is_dropped_and_the_next_decodes(payload, data):
    frame = bytearray(protocol.encode_frame(protocol.RESULT, payload))
    k = data.draw(st.integers(4, len(frame) - 1))          # a payload or check byte
    frame[k] ^= data.draw(st.integers(1, 255))
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec = protocol.FrameDecoder()
    dec.feed(bytes(frame) + good)
    frames = list(dec.frames())
    assert frames[-1] == protocol.Frame(protocol.RESULT, b"ok")
    assert protocol.Frame(protocol.RESULT, bytes(payload)) not in frames
    assert dec.bad_checksums >= 1


def test_a_start_byte_in_the_garbage_costs_nothing_but_a_bad_frame():
    """Garbage ``A5 81 03 00`` claims a frame that runs into the real one; its check fails and the
    decoder resynchronizes on the real start byte inside it."""
    good = [protocol.encode_frame(protocol.RESULT, bytes([k, 2 * k])) for k in range(3)]
    dec = protocol.FrameDecoder()
    for byte in b"\x13\xA5\x81\x03\x00" + b"".join(good):
        dec.feed(bytes([byte]))
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, bytes([k, 2 * k])) for k in range(3)]
    assert dec.bad_checksums == 1 and dec.bad_lengths == 0


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
    dec.feed(bytes([0xA5, 0x81, 0xFF, 0xFF]) + protocol.encode_frame(protocol.RESULT, b"\x01"))
    assert dec.next_frame() == protocol.Frame(protocol.RESULT, b"\x01")
    assert dec.bad_lengths == 1 and dec.bad_checksums == 0
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
    info = protocol.Info(1, 64, 10, 4, False, 8, True, 0xDEADBEEF)
    assert info.encode() == bytes([1, 64, 0, 10, 0, 4, 0, 8, 1, 0xEF, 0xBE, 0xAD, 0xDE])
    assert protocol.Info.parse(info.encode()) == info
    with pytest.raises(ValueError, match="INFO payload"):
        protocol.Info.parse(b"\x01\x02")
    assert protocol.describe_error(bytes([1, 1])) == "bad checksum (in a INFER frame)"
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
    fake = bytes([protocol.START, protocol.RESULT, 40, 0])            # 40 bytes claimed
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec = protocol.FrameDecoder()
    dec.feed(bytes(frame) + fake + good)
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, b"ok")]
    assert dec.bad_checksums == 1 and dec.bad_lengths == 1
    # an unfinished frame with nothing whole after it waits for its bytes, until dropped
    dec.feed(fake + b"\x00" * 10)
    assert list(dec.frames()) == [] and dec.drop_partial() == 14 and dec.bad_lengths == 2
    dec.feed(good)
    assert list(dec.frames()) == [protocol.Frame(protocol.RESULT, b"ok")]
