"""The host side of the board link: a driver that runs inferences on a board over its UART.

The driver speaks the framed protocol of docs/link.md (`qfab.boards.host.protocol`) through a
*transport*: anything with ``write(data)`` and ``read(size, timeout)``. `SerialTransport` is a real
port (pyserial); `qfab.boards.link_sim` gives the same driver a transport into a Verilator
simulation of the board's gateware, so the code that talks to the board is the code that is tested.

Every wait has a deadline: a board that does not answer raises `LinkError` naming the port and
what to check, never hangs. A frame the board reports as corrupted (bad checksum, wrong length,
timed out) is sent again, up to ``retries`` times.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from qfab.base.errors import QfabError

from . import protocol

__all__ = ["LinkError", "Transport", "SerialTransport", "Device", "LinkStats"]


class LinkError(QfabError):
    """The board did not answer, answered with an error frame, or sent a malformed frame."""


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
    retries: int = 0
    errors: list = field(default_factory=list)      # device error frames seen, as strings
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
        How many times a frame the board reports as corrupted is sent again.
    """

    def __init__(self, transport, *, timeout=2.0, retries=3):
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = protocol.FrameDecoder()
        self._info = None

    # -- frames ------------------------------------------------------------------------------
    def _send(self, kind, payload=b""):
        frame = protocol.encode_frame(kind, payload)
        self.transport.write(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _receive(self, what):
        """The next whole frame from the board; `LinkError` after ``timeout`` without one."""
        deadline = self.transport.clock() + self.timeout
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - self.transport.clock()
            if remaining <= 0:
                self._decoder.drop_partial()        # a frame cut short never completes
                raise LinkError(f"no answer from the board on {self.transport.name} within {self.timeout:g} s "
                                f"(waiting for {what}); is the bitstream loaded (qfab deploy), the port right "
                                f"and the baud rate that of the bitstream?")
            data = self.transport.read(4096, min(remaining, 0.05))
            if data:
                self.stats.bytes_received += len(data)
                self._decoder.feed(data)

    def _request(self, kind, payload, want):
        """Send a frame and return the answer's payload; resend on errors the board reports."""
        for attempt in range(self.retries + 1):
            self._send(kind, payload)
            frame = self._receive(protocol.type_name(want))
            if frame.type == want:
                return frame.payload
            if frame.type == protocol.ERROR:
                err = protocol.describe_error(frame.payload)
                self.stats.errors.append(err)
                if attempt < self.retries and protocol.is_transient(frame.payload):
                    self.stats.retries += 1
                    continue
                raise LinkError(f"the board reported an error: {err}")
            raise LinkError(f"the board answered a {protocol.type_name(kind)} frame with a "
                            f"{protocol.type_name(frame.type)} frame")
        raise LinkError(f"{self.retries + 1} attempts failed: {'; '.join(self.stats.errors[-3:])}")

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
        return protocol.unpack_output(out, info.out_bits, info.out_signed)

    def run(self, batch, progress=None):
        """Inferences for every row of ``batch`` (B, ...) -> (B, output elements) int64 codes."""
        batch = np.asarray(batch)
        t = time.perf_counter()
        out = []
        for k, codes in enumerate(batch):
            out.append(self.infer(codes))
            if progress is not None:
                progress(k + 1, len(batch))
        self.stats.seconds += time.perf_counter() - t
        return np.stack(out).astype(np.int64) if out else np.zeros((0, self.info().out_elements), np.int64)
