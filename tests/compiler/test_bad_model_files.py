"""Resource exhaustion and corruption in .qfab files: refused with a one-line `ModelFormatError`
(or `VerifyError`) before the array data is read, in bounded memory."""

import io
import json
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from qfab.base.errors import ModelFormatError, VerifyError
from qfab.compiler import modelfile

from .graphs import dense_graph

MEMORY_BOUND = 200 << 20


def _parts():
    buf = io.BytesIO()
    modelfile.save(dense_graph(name="fc1"), buf)
    with zipfile.ZipFile(buf) as zf:
        doc = json.loads(zf.read("model.json"))
        npz = zf.read("arrays.npz")
    return doc, npz


def _npy_header(shape, descr="<i8"):
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": descr, "fortran_order": False, "shape": shape})
    return h.getvalue()


def _deflated_zeros(prefix, zero_bytes, chunk=1 << 22):
    """Raw deflate data of ``prefix`` then ``zero_bytes`` zero bytes, built from one compressed
    chunk repeated (a full flush resets the compressor, so every chunk compresses alike)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert zero_bytes % chunk == 0
    crc = zlib.crc32(prefix)
    zeros = bytes(chunk)
    for _ in range(zero_bytes // chunk):
        crc = zlib.crc32(zeros, crc)
    return head + unit * (zero_bytes // chunk) + c.flush(), crc, len(prefix) + zero_bytes


def _zip(members):
    """A zip written by hand: ``members`` maps name -> (method, data as stored, crc, size)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, (method, data, crc, size) in members.items():
        offset = out.tell()
        fields = (20, 0, method, 0, 0, crc & 0xFFFFFFFF, len(data), size, len(name))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + name.encode() + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, offset)
                      + name.encode())
    cd = central.getvalue()
    start = out.tell()
    out.write(cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), start, 0))
    return out.getvalue()


def _stored(data):
    return (0, data, zlib.crc32(data), len(data))


def _inner_members(npz):
    """The members of a saved arrays.npz, as stored bytes for `_zip`."""
    with zipfile.ZipFile(io.BytesIO(npz)) as zf:
        return {info.filename: _stored(zf.read(info)) for info in zf.infolist()}


def _qfab(path, doc, npz):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(doc))
        zf.writestr("arrays.npz", npz)
    return path


def _load_fails_bounded(path, error, *phrases):
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            modelfile.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    assert peak < MEMORY_BOUND, f"peak {peak} bytes"
    return message


def test_the_helpers_make_a_loadable_file(tmp_path):
    doc, npz = _parts()
    rebuilt = _zip(_inner_members(npz))
    graph = modelfile.load(_qfab(tmp_path / "m.qfab", doc, rebuilt))
    assert graph.nodes[0].name == "fc1"
    data, crc, size = _deflated_zeros(b"abc", 1 << 23)
    assert zlib.decompress(data, -15) == b"abc" + bytes(1 << 23) and crc == zlib.crc32(b"abc" + bytes(1 << 23))


def test_unreferenced_zero_array_is_refused_unread(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    n = 1 << 30                                           # 1 GiB of zeros, ~1 MB compressed
    members["junk.npy"] = (8, *_deflated_zeros(_npy_header((n,), "|u1"), n))
    path = _qfab(tmp_path / "m.qfab", doc, _zip(members))
    assert path.stat().st_size < 2 << 20
    _load_fails_bounded(path, ModelFormatError, "'junk'", "does not use")


def test_unreferenced_small_array_is_refused(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, np.int64))
    members["extra.npy"] = _stored(buf.getvalue())
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError,
                        "1 array(s) model.json does not use", "'extra'")


def test_header_declaring_a_trillion_elements(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    members["fc1.weights.npy"] = _stored(_npy_header((1, 10 ** 6, 10 ** 6)) + bytes(64))
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError,
                        "'fc1.weights.npy'", "(1, 1000000, 1000000)", "8000000000000 bytes")


def test_consistent_array_beyond_the_size_limit(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    n = modelfile.MAX_ARRAY_ELEMENTS + (1 << 22)           # int8: data present, compressed to ~30 KB
    members["fc1.weights.npy"] = (8, *_deflated_zeros(_npy_header((1, 1, n), "|i1"), n))
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError,
                        "'fc1.weights'", "over the limit", str(modelfile.MAX_ARRAY_ELEMENTS))


def test_array_shape_the_node_does_not_need_is_refused_before_reading(tmp_path):
    doc, npz = _parts()                                   # Dense 12 -> 5: weights (1, 5, 12)
    members = _inner_members(npz)
    n = 5 * (1 << 21)                                     # 80 MiB as int64, within the element limit
    members["fc1.weights.npy"] = (8, *_deflated_zeros(_npy_header((1, 5, 1 << 21)), n * 8))
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), VerifyError,
                        "'fc1'", "weights expect (2097152,)")


def test_header_with_negative_dimensions(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    members["fc1.weights.npy"] = _stored(_npy_header((-1, -5, -12)) + bytes(8))
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError, "impossible shape")


def test_truncated_array_data(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    data = members["fc1.bias.npy"][1]
    members["fc1.bias.npy"] = _stored(data[:-8])
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError,
                        "'fc1.bias.npy'", "declares shape (5,)")


def _flip(data, at):
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_bad_crc_of_an_inner_array(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    method, data, crc, size = members["fc1.weights.npy"]
    members["fc1.weights.npy"] = (method, _flip(data, len(data) - 3), crc, size)   # a weight byte
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError,
                        "'fc1.weights", "corrupt", "CRC")


def test_broken_deflate_data_of_an_inner_array(tmp_path):
    doc, npz = _parts()
    members = _inner_members(npz)
    raw = members["fc1.weights.npy"][1]
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = c.compress(raw) + c.flush()
    members["fc1.weights.npy"] = (8, data[:len(data) // 2] + b"\xff" * 40, zlib.crc32(raw), len(raw))
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, _zip(members)), ModelFormatError, "corrupt")


def test_bad_crc_of_the_outer_members(tmp_path):
    doc, npz = _parts()
    text = json.dumps(doc).encode()
    for name in ("model.json", "arrays.npz"):
        members = {"model.json": _stored(text), "arrays.npz": _stored(npz)}
        method, data, crc, size = members[name]
        members[name] = (method, data, crc ^ 1, size)
        path = tmp_path / "m.qfab"
        path.write_bytes(_zip(members))
        _load_fails_bounded(path, ModelFormatError, name, "corrupt", "CRC")


def test_model_json_declared_larger_than_the_limit(tmp_path):
    doc, npz = _parts()
    text = json.dumps(doc).encode() + b" " * 100
    members = {"model.json": (0, text, zlib.crc32(text), modelfile.MAX_JSON_BYTES + 1),
               "arrays.npz": _stored(npz)}
    path = tmp_path / "m.qfab"
    path.write_bytes(_zip(members))
    _load_fails_bounded(path, ModelFormatError, "model.json", "over the limit")


def test_duplicate_array_members(tmp_path):
    doc, npz = _parts()
    members = list(_inner_members(npz).items())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (_, data, _, _) in members:
            zf.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr(members[0][0], members[0][1][1])
    _load_fails_bounded(_qfab(tmp_path / "m.qfab", doc, buf.getvalue()), ModelFormatError, "appears twice")
