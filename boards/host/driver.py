"""The host side of the board link: a driver that runs inferences on a board over its UART.

The driver speaks the framed protocol of docs/link.md (`qfab.boards.host.protocol`) through a
*transport*: anything with ``write(data)`` and ``read(size, timeout)``. `SerialTransport` is a real
port (pyserial); `qfab.boards.link_sim` gives the same driver a transport into a Verilator
simulation of the board's gateware, so the code that talks to the board is the code that is tested.

Each answer provably belongs to its request: every request carries a fresh sequence number that
the board echoes, frames that arrived before the request are flushed, a frame whose sequence
number is not one of this request's is dropped, and every frame is checked by a CRC-32. A bad or
missing answer (a frame dropped for its CRC, silence until the timeout, an error the board
reports as transient) makes the driver ask again, up to ``retries`` times; then `LinkError` says
what happened. Every wait has a deadline: the driver never hangs.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from . import protocol
from .protocol import LinkError

__all__ = ["LinkError", "Transport", "SerialTransport", "Device", "LinkStats"]


class Transport:
    """The byte pipe under the driver. ``read`` returns up to ``size`` bytes, ``b""`` on timeout."""

    name = "transport"

    def write(self, data):
        raise NotImplementedError

    def read(self, size, timeout):
        raise NotImplementedError

    def close(self):
        pass

    def clock(self):
        """Seconds on the transport's clock (wall time; simulated time in a simulation)."""
        return time.monotonic()


class SerialTransport(Transport):
    """A serial port (pyserial), e.g. ``/dev/ttyUSB1`` for the iCEBreaker's second FTDI channel."""

    def __init__(self, port, baud):
        try:
            import serial
        except ImportError:
            raise LinkError("pyserial is not installed: pip install pyserial") from None
        self.name = port
        try:
            self._port = serial.Serial(port, baud, timeout=0.1, write_timeout=5.0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise LinkError(f"cannot open serial port {port} at {baud} baud: {e}") from None
        self._port.reset_input_buffer()

    def write(self, data):
        import serial
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"writing to {self.name} failed: {e}") from None

    def read(self, size, timeout):
        import serial
        self._port.timeout = max(0.0, timeout)
        try:
            return self._port.read(size)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"reading from {self.name} failed: {e}") from None

    def close(self):
        self._port.close()


@dataclass
class LinkStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0                                # requests sent again
    errors: list = field(default_factory=list)      # what made each retry (or the final error), as strings
    stale_frames: int = 0       # whole frames dropped: flushed before a request, or not answering it
    bad_frames: int = 0         # frames dropped for a bad CRC or length
    timeouts: int = 0           # waits that ended without an answer
    seconds: float = 0.0


class Device:
    """A board running a qfab accelerator behind the link.

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for each answer (the transport's clock: wall time for a serial port,
        simulated time for the simulator).
    retries : int
        How many times a request is sent again after a bad or missing answer.
    """

    def __init__(self, transport, *, timeout=2.0, retries=3):
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise LinkError(f"retries must be a whole number of at least 0, not {retries!r}")
        if not timeout > 0:
            raise LinkError(f"the link timeout must be positive, not {timeout!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = protocol.FrameDecoder()
        self._info = None
        self._seq = 0

    # -- frames ------------------------------------------------------------------------------
    def _read(self, timeout):
        data = self.transport.read(4096, timeout)
        if data:
            self.stats.bytes_received += len(data)
            self._decoder.feed(data)
        return data

    def _flush(self):
        """Drop whatever the board sent before this request (late or repeated answers)."""
        while self._read(0.0):
            pass
        self.stats.stale_frames += self._decoder.clear()

    def _send(self, kind, payload, seq):
        frame = protocol.encode_frame(kind, payload, seq)
        self.transport.write(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _receive(self, seqs, want):
        """The answer to this request (a frame of type ``want`` or ERROR whose sequence number is
        in ``seqs``), or ``(None, why)``: a frame was dropped for its CRC or length (likely the
        answer, damaged), or nothing came within ``timeout``."""
        deadline = self.transport.clock() + self.timeout
        bad = self._decoder.bad_frames
        raw = bytearray()
        while True:
            while (frame := self._decoder.next_frame()) is not None:
                if frame.seq in seqs and frame.type in (want, protocol.ERROR):
                    return frame, None
                self.stats.stale_frames += 1        # a late or repeated answer to an earlier request
            if self._decoder.bad_frames != bad:
                self.stats.bad_frames += self._decoder.bad_frames - bad
                return None, "a damaged frame (bad CRC)"
            remaining = deadline - self.transport.clock()
            if remaining <= 0:
                if self._decoder.drop_partial():    # a frame cut short never completes
                    self.stats.bad_frames += 1
                self.stats.timeouts += 1
                if protocol.looks_like_v1(raw):
                    raise LinkError(f"the board on {self.transport.name} speaks link protocol version 1, this "
                                    f"qfab version {protocol.VERSION}: rebuild the bitstream with this qfab "
                                    f"(qfab bitstream) and program the board with it (qfab deploy)")
                return None, f"no answer within {self.timeout:g} s"
            data = self._read(min(remaining, 0.05))
            if len(raw) < 1 << 16:
                raw += data

    def _request(self, kind, payload, want):
        """Send a frame and return the answer's payload; ask again after a bad or missing answer,
        or an error the board reports as transient."""
        seqs = set()
        reasons = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self._flush()
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFF
            seqs.add(seq)
            self._send(kind, payload, seq)
            frame, why = self._receive(seqs, want)
            if frame is None:
                reasons.append(why)
                self.stats.errors.append(why)
                continue
            if frame.type == want:
                return frame.payload
            err = protocol.describe_error(frame.payload)
            self.stats.errors.append(err)
            if not protocol.is_transient(frame.payload):
                raise LinkError(f"the board reported an error: {err}")
            reasons.append(err)
        what = protocol.type_name(want)
        if all(r.startswith("no answer") for r in reasons):
            raise LinkError(f"no answer from the board on {self.transport.name} within {self.timeout:g} s "
                            f"(waiting for {what}, {len(reasons)} attempts); is the bitstream loaded (qfab "
                            f"deploy), the port right and the baud rate that of the bitstream?")
        raise LinkError(f"no good {what} from the board on {self.transport.name} in {len(reasons)} attempts: "
                        f"{'; '.join(dict.fromkeys(reasons))}")

    # -- commands ----------------------------------------------------------------------------
    def info(self):
        """The design on the board: `protocol.Info` (shapes, bits, design id)."""
        if self._info is None:
            self._info = protocol.Info.parse(self._request(protocol.INFO, b"", protocol.INFO_REPLY))
        return self._info

    def check(self, manifest, verilog):
        """Raise `LinkError` unless the board runs the build of ``manifest`` (its
        `qfab.compiler.buildfolder.Manifest`) and ``verilog`` (its accelerator Verilog)."""
        info = self.info()
        want = protocol.design_id(manifest, verilog)
        if info.design_id != want:
            raise LinkError(f"the board runs design {info.design_id:08x}, not this build's {want:08x}: "
                            f"program the board with this build's bitstream (qfab deploy)")
        for side, spec, elements in (("input", manifest.input, info.in_elements),
                                     ("output", manifest.output, info.out_elements)):
            if elements != spec.elements:
                raise LinkError(f"the board's {side} has {elements} elements, the build's {spec.elements}")
        return info

    def infer(self, codes):
        """One inference: ``codes`` (the input's integer codes, any shape) -> output codes (flat)."""
        info = self.info()
        codes = np.asarray(codes).reshape(-1)
        if codes.size != info.in_elements:
            raise LinkError(f"input has {codes.size} elements, the board's design takes {info.in_elements}")
        payload = protocol.pack_input(codes, info.in_bits, info.in_signed)
        out = self._request(protocol.INFER, payload, protocol.RESULT)
        if len(out) != info.out_elements:
            raise LinkError(f"the board sent {len(out)} output bytes, the design has {info.out_elements}")
        try:
            return protocol.unpack_output(out, info.out_bits, info.out_signed)
        except ValueError as e:
            raise LinkError(f"the board sent a bad RESULT: {e}") from None

    def run(self, batch, progress=None):
        """Inferences for every row of ``batch`` (B, ...) -> (B, output elements) int64 codes.
        A `LinkError` names the input (its row index) it happened at."""
        batch = np.asarray(batch)
        t = time.perf_counter()
        out = []
        for k, codes in enumerate(batch):
            try:
                out.append(self.infer(codes))
            except LinkError as e:
                raise LinkError(f"input {k}: {e}") from None
            if progress is not None:
                progress(k + 1, len(batch))
        self.stats.seconds += time.perf_counter() - t
        return np.stack(out).astype(np.int64) if out else np.zeros((0, self.info().out_elements), np.int64)
