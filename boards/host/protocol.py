"""The host link's framed protocol, version 2 (docs/link.md): the host side's encoder, decoder
and packing. Pure Python; the gateware side is `qfab.boards.gateware.link`.

A frame is ``0xA5, type, seq, length (u16 little-endian), payload, CRC-32`` where the CRC-32
(`crc32`: the CRC-32 of zlib and Ethernet, ``amaranth.lib.crc.catalog.CRC32_ISO_HDLC``) covers
every byte after the start byte and goes out little-endian. ``seq`` is the host's sequence
number of a request; the board echoes it in the answer. Bytes outside frames are skipped (resync).
"""

import dataclasses
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError
from qfab.base.ints import code_range

__all__ = ["START", "INFER", "INFO", "RESULT", "INFO_REPLY", "ERROR", "ERROR_CODES", "MAX_PAYLOAD",
           "HEADER", "TRAILER", "BAD_CRC", "BAD_LENGTH", "UNKNOWN_TYPE", "TIMEOUT", "BUSY",
           "Frame", "FrameDecoder", "encode_frame", "crc32", "pack_input", "unpack_output", "Info",
           "design_id", "type_name", "describe_error", "is_transient", "VERSION", "LinkError",
           "looks_like_v1"]

VERSION = 2
START = 0xA5
INFER, INFO = 0x01, 0x02                      # host -> board
RESULT, INFO_REPLY, ERROR = 0x81, 0x82, 0xEE  # board -> host
MAX_PAYLOAD = 0xFFFF
HEADER = 5                                    # start, type, seq, length (2)
TRAILER = 4                                   # CRC-32, little-endian

BAD_CRC, BAD_LENGTH, UNKNOWN_TYPE, TIMEOUT, BUSY = 1, 2, 3, 4, 5
ERROR_CODES = {BAD_CRC: "bad CRC", BAD_LENGTH: "wrong length", UNKNOWN_TYPE: "unknown frame type",
               TIMEOUT: "frame timed out half-way", BUSY: "input buffer busy"}
_NAMES = {INFER: "INFER", INFO: "INFO", RESULT: "RESULT", INFO_REPLY: "INFO reply", ERROR: "ERROR"}


class LinkError(QfabError):
    """The board did not answer, answered with an error frame, or sent a malformed frame."""


def type_name(kind):
    return _NAMES.get(kind, f"type 0x{kind:02x}")


def crc32(data, crc=0):
    """CRC-32 of ``data``: polynomial 0x04C11DB7, bits reflected, initial value and final XOR
    0xFFFFFFFF (CRC-32/ISO-HDLC: zlib's, Ethernet's, ``amaranth.lib.crc.catalog.CRC32_ISO_HDLC``,
    which the gateware is built from); ``crc`` continues an earlier value. Computed by zlib."""
    return zlib.crc32(bytes(data), crc) & 0xFFFFFFFF


def encode_frame(kind, payload=b"", seq=0):
    payload = bytes(payload)
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"frame type must be a byte, not {kind!r}")
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"sequence number must be a byte, not {seq!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([kind, seq]) + struct.pack("<H", len(payload)) + payload
    return bytes([START]) + body + struct.pack("<I", crc32(body))


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes
    seq: int = 0


class FrameDecoder:
    """Incremental decoder: `feed` bytes as they arrive, take whole frames with `next_frame` (or
    all of them with `frames`).

    Frames with a bad CRC are dropped and counted in ``bad_crcs``; a claimed length above
    ``max_payload`` (so that a corrupted length cannot swallow the stream) in ``bad_lengths``, as
    is a start byte whose claimed length runs past a whole, checked frame of a known type that
    follows it (a corrupted frame's data byte that reads as a start). Either way the decoder
    resynchronizes on the next start byte after the rejected one. ``skipped`` counts bytes outside
    frames. (The board answers the host's corrupted frames with ERROR; the host has nothing to
    answer, it asks again.)
    """

    def __init__(self, max_payload=4096):
        if not isinstance(max_payload, int) or not 0 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be an integer from 0 to {MAX_PAYLOAD}, not {max_payload!r}")
        self._buffer = bytearray()
        self._frames = []
        self.max_payload = max_payload
        self.bad_crcs = 0
        self.bad_lengths = 0
        self.skipped = 0

    @property
    def bad_frames(self):
        """Frames dropped, for either reason."""
        return self.bad_crcs + self.bad_lengths

    def feed(self, data):
        self._buffer += data
        while True:
            start = self._buffer.find(START)
            if start < 0:
                self.skipped += len(self._buffer)
                self._buffer.clear()
                return
            if start:
                self.skipped += start
                del self._buffer[:start]
            if len(self._buffer) < HEADER:
                return
            kind, seq, length = self._buffer[1], self._buffer[2], self._buffer[3] | self._buffer[4] << 8
            if length > self.max_payload:
                self.bad_lengths += 1
                del self._buffer[:1]                 # not a frame start after all: resync
                continue
            end = HEADER + length + TRAILER
            if len(self._buffer) < end:
                if not self._complete_frame_after_start():
                    return
                # a start byte that was data (a corrupted frame's payload): its claimed length
                # runs past a whole, checked frame that follows, so it is no frame
                self.bad_lengths += 1
                del self._buffer[:1]
                continue
            frame = bytes(self._buffer[:end])
            if not _crc_ok(frame):
                self.bad_crcs += 1
                del self._buffer[:1]
                continue
            del self._buffer[:end]
            self._frames.append(Frame(kind, frame[HEADER:HEADER + length], seq))

    def _complete_frame_after_start(self):
        """Whether a whole frame of a known type with a good CRC starts after the buffer's first byte."""
        at = 0
        while (at := self._buffer.find(START, at + 1)) >= 0:
            if len(self._buffer) < at + HEADER:
                return False
            kind, length = self._buffer[at + 1], self._buffer[at + 3] | self._buffer[at + 4] << 8
            end = at + HEADER + length + TRAILER
            if kind in _NAMES and length <= self.max_payload and end <= len(self._buffer) \
                    and _crc_ok(self._buffer[at:end]):
                return True
        return False

    def drop_partial(self):
        """Forget an unfinished frame (the host's timeout: what is left will never complete);
        counted in ``bad_lengths`` if there was one. Returns the bytes dropped."""
        dropped = len(self._buffer)
        if dropped:
            self.bad_lengths += 1
            self._buffer.clear()
        return dropped

    def clear(self):
        """Forget everything not taken yet, whole frames and an unfinished one (not counted).
        Returns the number of whole frames dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        self._buffer.clear()
        return dropped

    def next_frame(self):
        """The oldest whole frame not taken yet, or None."""
        return self._frames.pop(0) if self._frames else None

    def frames(self):
        """Yield (and take) every whole frame decoded so far."""
        while self._frames:
            yield self._frames.pop(0)


def _crc_ok(frame):
    return crc32(bytes(frame[1:-TRAILER])) == int.from_bytes(frame[-TRAILER:], "little")


def looks_like_v1(data):
    """Whether ``data`` (bytes from a board) holds a whole frame of protocol version 1 (``A5, type,
    length u16, payload, check byte`` with all bytes after the start summing to 0 mod 256) of a
    board-to-host type: a board programmed by an older qfab."""
    data = bytes(data)
    at = -1
    while (at := data.find(START, at + 1)) >= 0:
        if at + 5 > len(data) or data[at + 1] not in (RESULT, INFO_REPLY, ERROR):
            continue
        end = at + 5 + (data[at + 2] | data[at + 3] << 8)
        if end <= len(data) and not sum(data[at + 1:end]) & 0xFF:
            return True
    return False


def pack_input(codes, bits, signed):
    """Input codes (one per element, element order) -> INFER payload: one byte each."""
    lo, hi = code_range(bits, signed, max_bits=8)     # one byte per element
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        bad = codes[(codes < lo) | (codes > hi)][0]
        raise ValueError(f"input code {bad} outside the {'signed' if signed else 'unsigned'} {bits}-bit range "
                         f"[{lo}, {hi}]")
    return (codes & 0xFF).astype(np.uint8).tobytes()


def unpack_output(payload, bits, signed):
    """RESULT payload -> output codes (int64); signed outputs arrive sign-extended to 8 bits.

    A byte that is not a ``bits``-bit code (which the board never sends) raises ValueError.
    """
    lo, hi = code_range(bits, signed, max_bits=8)     # one byte per element
    raw = np.frombuffer(bytes(payload), dtype=np.uint8).astype(np.int64)
    if signed:
        raw = np.where(raw >= 128, raw - 256, raw)
    if raw.size and (raw.min() < lo or raw.max() > hi):
        bad = raw[(raw < lo) | (raw > hi)][0]
        raise ValueError(f"output byte 0x{int(bad) & 0xFF:02x} is not a {'signed' if signed else 'unsigned'} "
                         f"{bits}-bit code")
    return raw


@dataclass(frozen=True)
class Info:
    version: int
    in_elements: int
    out_elements: int
    in_bits: int
    in_signed: bool
    out_bits: int
    out_signed: bool
    design_id: int

    FORMAT = "<BHHBBBBI"

    def encode(self):
        return struct.pack(self.FORMAT, self.version, self.in_elements, self.out_elements, self.in_bits,
                           int(self.in_signed), self.out_bits, int(self.out_signed), self.design_id)

    @classmethod
    def parse(cls, payload):
        """An INFO reply's payload -> `Info`; `LinkError` (one line) if it is not one of this
        protocol version: another version (rebuild the bitstream), a wrong length, or fields out
        of range."""
        payload = bytes(payload)
        size = struct.calcsize(cls.FORMAT)
        if payload and payload[0] != VERSION:
            raise LinkError(f"the board speaks link protocol version {payload[0]}, this qfab version {VERSION}: "
                            f"rebuild the bitstream with this qfab (qfab bitstream) and program the board with it "
                            f"(qfab deploy)")
        if len(payload) != size:
            raise LinkError(f"malformed INFO reply from the board: {len(payload)} bytes, expected {size} "
                            f"(a bitstream of another qfab version? rebuild it with qfab bitstream)")
        v, ni, no, bi, si, bo, so, did = struct.unpack(cls.FORMAT, payload)
        bad = [f"{name} {value}" for name, value, ok in (
            ("input elements", ni, ni >= 1), ("output elements", no, no >= 1),
            ("input bits", bi, 1 <= bi <= 8), ("input signedness", si, si in (0, 1)),
            ("output bits", bo, 1 <= bo <= 8), ("output signedness", so, so in (0, 1))) if not ok]
        if bad:
            raise LinkError(f"malformed INFO reply from the board: {', '.join(bad)} "
                            f"(a bitstream of another qfab version? rebuild it with qfab bitstream)")
        return cls(v, ni, no, bi, bool(si), bo, bool(so), did)


def design_id(manifest, verilog):
    """A 32-bit id of a build: CRC-32 of a canonical JSON of its accelerator Verilog's CRC-32
    (the weights are in the Verilog, not in the manifest), the manifest's input and output
    formats, top module, stages and initiation interval. The board reports it (INFO) so the host
    knows what it talks to; both sides compute it with this function from the build's
    `qfab.compiler.buildfolder.Manifest` and the text of its ``qfab_top.v``."""
    key = {"verilog": zlib.crc32(verilog.encode()), "input": dataclasses.asdict(manifest.input),
           "output": dataclasses.asdict(manifest.output), "top": manifest.top,
           "stages": [[s.name, s.kind, s.pe, s.simd, s.style] for s in manifest.stages],
           "ii": manifest.initiation_interval}
    return zlib.crc32(json.dumps(key, sort_keys=True).encode()) & 0xFFFFFFFF


def describe_error(payload):
    if len(payload) != 2:
        return f"malformed ERROR frame ({len(payload)} bytes)"
    code, kind = payload
    return f"{ERROR_CODES.get(code, f'error code {code}')} (in a {type_name(kind)} frame)"


def is_transient(payload):
    """Errors a resend can cure: the frame was damaged on the wire, or came too early (BUSY)."""
    return len(payload) == 2 and payload[0] in (BAD_CRC, TIMEOUT, BUSY)
