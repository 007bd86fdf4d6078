"""The host driver against scripted transports: deadlines, error frames, design checks."""

import numpy as np
import pytest

from qfab.boards.host import Device, LinkError, Transport, protocol
from qfab.compiler.buildfolder import Manifest, StreamFormat

INFO = protocol.Info(1, 4, 2, 4, False, 8, True, 0x1234)


class Scripted(Transport):
    """Answers each written frame with the next scripted reply (bytes, or None for silence)."""
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.pending = b""
        self.written = []
        self.now = 0.0

    def write(self, data):
        self.written.append(bytes(data))
        reply = self.replies.pop(0) if self.replies else None
        self.pending += reply or b""

    def read(self, size, timeout):
        if not self.pending:
            self.now += timeout          # time passes only while waiting
            return b""
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    def clock(self):
        return self.now


def info_frame(info=INFO):
    return protocol.encode_frame(protocol.INFO_REPLY, info.encode())


def test_infer_packs_and_unpacks():
    t = Scripted([info_frame(), protocol.encode_frame(protocol.RESULT, bytes([0xFF, 0x05]))])
    out = Device(t).infer(np.array([[1, 2], [3, 15]]))
    assert list(out) == [-1, 5]
    assert t.written[1] == protocol.encode_frame(protocol.INFER, bytes([1, 2, 3, 15]))


def test_silence_raises_after_the_timeout_not_a_hang():
    t = Scripted([None])
    with pytest.raises(LinkError, match=r"no answer from the board on scripted within 0.5 s \(waiting for INFO"):
        Device(t, timeout=0.5).info()
    assert 0.5 <= t.now < 0.6


def test_transient_errors_are_retried_then_give_up():
    err = protocol.encode_frame(protocol.ERROR, bytes([protocol.BAD_CHECKSUM, protocol.INFO]))
    t = Scripted([err, err, info_frame()])
    dev = Device(t, retries=3)
    assert dev.info() == INFO and dev.stats.retries == 2
    t = Scripted([err] * 5)
    with pytest.raises(LinkError, match="bad checksum"):
        Device(t, retries=2).info()
    assert len(t.written) == 3


def test_permanent_error_is_not_retried():
    t = Scripted([protocol.encode_frame(protocol.ERROR, bytes([protocol.BAD_LENGTH, protocol.INFER]))])
    with pytest.raises(LinkError, match=r"wrong length \(in a INFER frame\)"):
        Device(t, retries=3)._request(protocol.INFER, b"\x00", protocol.RESULT)
    assert len(t.written) == 1


def test_wrong_design_and_wrong_input_size():
    manifest = Manifest(input=StreamFormat("x", (4,), 4, 1, 8, False),
                        output=StreamFormat("y", (2,), 2, 1, 8, False), initiation_interval=1)
    t = Scripted([info_frame()])
    with pytest.raises(LinkError, match="program the board with this build's bitstream"):
        Device(t).check(manifest, "module qfab_top; endmodule")
    dev = Device(Scripted([info_frame()]))
    with pytest.raises(LinkError, match="input has 3 elements, the board's design takes 4"):
        dev.infer([1, 2, 3])


def test_result_of_the_wrong_size():
    t = Scripted([info_frame(), protocol.encode_frame(protocol.RESULT, bytes([1, 2, 3]))])
    with pytest.raises(LinkError, match="sent 3 output bytes, the design has 2"):
        Device(t).infer([0, 0, 0, 0])
