import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfab.boards import protocol


def test_frame_layout():
    frame = protocol.encode_frame(protocol.INFER, bytes([1, 2, 3]))
    assert frame[:4] == bytes([0xA5, 0x01, 3, 0]) and frame[4:7] == bytes([1, 2, 3])
    assert sum(frame[1:]) % 256 == 0
    assert protocol.encode_frame(protocol.INFO) == bytes([0xA5, 0x02, 0, 0, 0xFE])


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
    got = []
    while (f := dec.next_frame()) is not None:
        got.append((f.type, f.payload))
    assert got == [(k, bytes(p)) for k, p in frames]
    assert dec.bad_frames == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_corrupted_frame_is_dropped_and_the_next_decodes(payload, data):
    frame = bytearray(protocol.encode_frame(protocol.RESULT, payload))
    k = data.draw(st.integers(4, len(frame) - 1))          # a payload or check byte
    frame[k] ^= data.draw(st.integers(1, 255))
    good = protocol.encode_frame(protocol.RESULT, b"ok")
    dec = protocol.FrameDecoder()
    dec.feed(bytes(frame) + good)
    frames = []
    while (f := dec.next_frame()) is not None:
        frames.append(f)
    assert frames[-1] == protocol.Frame(protocol.RESULT, b"ok")
    assert protocol.Frame(protocol.RESULT, bytes(payload)) not in frames
    assert dec.bad_frames >= 1


def test_claimed_length_beyond_the_limit_resyncs():
    dec = protocol.FrameDecoder(max_payload=100)
    dec.feed(bytes([0xA5, 0x81, 0xFF, 0xFF]) + protocol.encode_frame(protocol.RESULT, b"\x01"))
    assert dec.next_frame() == protocol.Frame(protocol.RESULT, b"\x01")


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


def test_info_round_trip_and_errors():
    info = protocol.Info(1, 64, 10, 4, False, 8, True, 0xDEADBEEF)
    assert protocol.Info.parse(info.encode()) == info
    with pytest.raises(ValueError, match="INFO payload"):
        protocol.Info.parse(b"\x01\x02")
    assert protocol.describe_error(bytes([1, 1])) == "bad checksum (in a INFER frame)"
    assert protocol.is_transient(bytes([protocol.TIMEOUT, 1]))
    assert not protocol.is_transient(bytes([protocol.BAD_LENGTH, 1]))


def test_design_id_depends_on_the_verilog():
    manifest = {"input": {"elements": 64}, "output": {"elements": 10}, "top": "qfab_top", "stages": [],
                "initiation_interval": 64}
    a = protocol.design_id(manifest, "module a; endmodule")
    assert a == protocol.design_id(manifest, "module a; endmodule")
    assert a != protocol.design_id(manifest, "module b; endmodule")
    assert 0 <= a < 1 << 32
