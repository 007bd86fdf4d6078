"""The host driver against scripted transports: deadlines, sequence numbers, stale and damaged
answers, retries, permanent errors, protocol version and design checks."""

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.boards.host import Device, LinkError, Transport, protocol
from qfab.compiler.buildfolder import Manifest, StreamFormat

INFO = protocol.Info(protocol.VERSION, 4, 2, 4, False, 8, True, 0x1234)


class Scripted(Transport):
    """Answers each written frame with the next scripted reply: bytes, None for silence, or a
    function of the request (`protocol.Frame`) giving bytes. ``later`` bytes arrive only after
    ``delay`` seconds of waiting."""
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.pending = b""
        self.written = []
        self.now = 0.0
        self.late = []                  # (time, bytes)

    def write(self, data):
        self.written.append(bytes(data))
        dec = protocol.FrameDecoder()
        dec.feed(data)
        request = dec.next_frame()
        reply = self.replies.pop(0) if self.replies else None
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, tuple):    # ("late", seconds, bytes)
            self.late.append((self.now + reply[1], reply[2]))
        else:
            self.pending += reply or b""

    def read(self, size, timeout):
        due = [x for x in self.late if x[0] <= self.now]
        for x in due:
            self.late.remove(x)
            self.pending += x[1]
        if not self.pending:
            self.now += timeout          # time passes only while waiting
            return b""
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    def clock(self):
        return self.now

    def seqs(self):
        return [w[2] for w in self.written]


def answer(kind, payload, times=1):
    """A reply with the request's sequence number (``times`` copies: a repeated frame)."""
    return lambda request: protocol.encode_frame(kind, payload, request.seq) * times


def info_reply(info=INFO):
    return answer(protocol.INFO_REPLY, info.encode())


def result(*values, times=1):
    return answer(protocol.RESULT, bytes(v & 0xFF for v in values), times)


def test_infer_packs_and_unpacks():
    t = Scripted([info_reply(), result(-1, 5)])
    out = Device(t).infer(np.array([[1, 2], [3, 15]]))
    assert list(out) == [-1, 5]
    assert t.written[1] == protocol.encode_frame(protocol.INFER, bytes([1, 2, 3, 15]), seq=1)
    assert t.seqs() == [0, 1]


def test_silence_is_asked_again_then_raises_not_a_hang():
    t = Scripted([None, None])
    with pytest.raises(LinkError, match=r"^no answer from the board on scripted within 0.5 s \(waiting for INFO "
                                        r"reply, 2 attempts\); is the bitstream loaded"):
        Device(t, timeout=0.5, retries=1).info()
    # it waited exactly one timeout per attempt (retries + 1 attempts), each with its own sequence number
    assert t.now == pytest.approx(2 * 0.5) and t.seqs() == [0, 1]


def test_a_missing_answer_is_asked_again():
    t = Scripted([info_reply(), None, result(3, 4)])
    dev = Device(t, timeout=0.5)
    assert list(dev.infer([0, 0, 0, 0])) == [3, 4]
    assert dev.stats.retries == 1 and dev.stats.timeouts == 1 and t.seqs() == [0, 1, 2]


def test_a_repeated_answer_never_shifts_the_next():
    """A RESULT received twice: the copy is dropped (flushed, or its sequence number is old)."""
    t = Scripted([info_reply(), result(1, 1, times=2), result(2, 2), result(3, 3)])
    dev = Device(t)
    assert dev.run(np.zeros((3, 4), int)).tolist() == [[1, 1], [2, 2], [3, 3]]
    assert dev.stats.stale_frames == 1 and dev.stats.retries == 0


def test_a_late_answer_after_a_timeout_is_not_taken_for_the_next():
    """Input 0's RESULT arrives after the driver gave up on it; the Device is used again for input
    1, whose answer must be its own."""
    late = lambda request: ("late", 0.7, protocol.encode_frame(protocol.RESULT, bytes([9, 9]), request.seq))  # noqa: E731
    t = Scripted([info_reply(), late, result(1, 2)])
    dev = Device(t, timeout=0.5, retries=0)
    dev.info()
    with pytest.raises(LinkError, match="no answer"):
        dev.infer([0, 0, 0, 0])
    t.now += 0.5                              # the late answer is on the wire now
    assert list(dev.infer([1, 1, 1, 1])) == [1, 2]
    assert dev.stats.stale_frames == 1


def test_an_answer_with_another_sequence_number_is_dropped():
    stale = lambda request: protocol.encode_frame(protocol.RESULT, b"\x07\x07", (request.seq - 1) & 0xFF)  # noqa: E731
    t = Scripted([info_reply(), lambda r: stale(r) + result(5, 6)(r)])
    dev = Device(t)
    assert list(dev.infer([0, 0, 0, 0])) == [5, 6] and dev.stats.stale_frames == 1


@pytest.mark.parametrize("damage", ["compensate", "swap", "flip"])
def test_a_damaged_answer_is_asked_again(damage):
    """Two bytes changed by +1 and -1, two bytes swapped, one flipped: the CRC drops the frame and
    the driver asks again at once (no timeout)."""
    def damaged(request):
        frame = bytearray(protocol.encode_frame(protocol.RESULT, bytes([1, 2]), request.seq))
        if damage == "compensate":
            frame[5] += 1
            frame[6] -= 1
        elif damage == "swap":
            frame[5], frame[6] = frame[6], frame[5]
        else:
            frame[6] ^= 0x10
        return bytes(frame)
    t = Scripted([info_reply(), damaged, result(1, 2)])
    dev = Device(t, timeout=0.5)
    assert list(dev.infer([0, 0, 0, 0])) == [1, 2]
    assert dev.stats.retries == 1 and dev.stats.bad_frames == 1 and t.now < 0.5


def test_transient_errors_are_retried_then_give_up():
    err = answer(protocol.ERROR, bytes([protocol.BAD_CRC, protocol.INFO]))
    t = Scripted([err, err, info_reply()])
    dev = Device(t, retries=3)
    assert dev.info() == INFO and dev.stats.retries == 2
    t = Scripted([err] * 5)
    with pytest.raises(LinkError, match=r"^no good INFO reply from the board on scripted in 3 attempts: bad CRC"):
        Device(t, retries=2).info()
    assert len(t.written) == 3


def test_run_names_the_input_that_failed():
    t = Scripted([info_reply(), result(1, 1), None, None])
    with pytest.raises(LinkError, match=r"^input 1: no answer from the board"):
        Device(t, timeout=0.1, retries=1).run(np.zeros((3, 4), int))


def test_permanent_error_is_not_retried():
    t = Scripted([answer(protocol.ERROR, bytes([protocol.BAD_LENGTH, protocol.INFER]))])
    with pytest.raises(LinkError, match=r"wrong length \(in a INFER frame\)"):
        Device(t, retries=3)._request(protocol.INFER, b"\x00", protocol.RESULT)
    assert len(t.written) == 1


def test_another_protocol_version_is_refused():
    old = protocol.Info(1, 4, 2, 4, False, 8, True, 0x1234)
    with pytest.raises(LinkError, match="^the board speaks link protocol version 1, this qfab version 2: rebuild"):
        Device(Scripted([info_reply(old)])).info()
    # a board with the version-1 gateware answers a version-2 frame with a version-1 ERROR frame
    v1_error = bytes([0xA5, 0xEE, 2, 0, 1, 2, (-(0xEE + 2 + 1 + 2)) & 0xFF])
    with pytest.raises(LinkError, match="^the board on scripted speaks link protocol version 1, this qfab version 2"):
        Device(Scripted([v1_error]), timeout=0.2).info()


@pytest.mark.parametrize("payload", [INFO.encode()[:-1], INFO.encode() + b"\x00",
                                     INFO.encode()[:5] + b"\x09" + INFO.encode()[6:]])
def test_a_malformed_info_reply_is_a_one_line_error(payload):
    with pytest.raises(QfabError, match="^malformed INFO reply from the board") as e:
        Device(Scripted([answer(protocol.INFO_REPLY, payload)])).info()
    assert "\n" not in str(e.value)


def test_wrong_design_and_wrong_input_size():
    manifest = Manifest(input=StreamFormat("x", (4,), 4, 1, 8, False),
                        output=StreamFormat("y", (2,), 2, 1, 8, False), initiation_interval=1)
    t = Scripted([info_reply()])
    with pytest.raises(LinkError, match="program the board with this build's bitstream"):
        Device(t).check(manifest, "module qfab_top; endmodule")
    dev = Device(Scripted([info_reply()]))
    with pytest.raises(LinkError, match="input has 3 elements, the board's design takes 4"):
        dev.infer([1, 2, 3])


def test_result_of_the_wrong_size():
    t = Scripted([info_reply(), result(1, 2, 3)])
    with pytest.raises(LinkError, match="sent 3 output bytes, the design has 2"):
        Device(t).infer([0, 0, 0, 0])


def test_device_arguments():
    with pytest.raises(LinkError, match="retries must be a whole number of at least 0, not -1"):
        Device(Scripted([]), retries=-1)
    with pytest.raises(LinkError, match="the link timeout must be positive, not 0"):
        Device(Scripted([]), timeout=0)
