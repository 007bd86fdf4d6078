"""The .qfab model file: a zip holding ``model.json`` (the graph, human-readable) and
``arrays.npz`` (weights and per-channel constants, saved without pickle).

Read one with ``unzip -p model.qfab model.json``. Files are untrusted input: loading checks
every field's type and then runs the verifier; anything wrong raises `ModelFormatError` or
`VerifyError` naming the node and field. Memory is bounded before any array data is read: each
array's ``.npy`` header (dtype, shape) is read first and checked against the limits and against
what model.json says the node needs (the verifier runs on zero-cost placeholders of the declared
shapes); arrays model.json does not name are refused unread; corrupt members (bad CRC, broken
deflate data, truncation) are a one-line `ModelFormatError`.
"""

import dataclasses
import io
import json
import math
import sys
import zipfile
import zlib

import numpy as np

from qfab.base.errors import ModelFormatError

from .ir import NODE_KINDS, Graph, Layout, QType, Requant, Tensor, WeightType
from .verify import verify

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "qfab-model"
VERSION = 1
MAX_JSON_BYTES = 1 << 26           # model.json, uncompressed
MAX_ARRAY_ELEMENTS = 1 << 24       # all arrays of a model together (128 MiB as int64)
_ARRAY_SLACK_BYTES = 1 << 20       # headers and zip records on top of the array data
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
               NotImplementedError, KeyError)
_FLOAT_MAX = sys.float_info.max

_STR_FIELDS = {"name", "input", "output", "a", "b", "rounding"}
_ARRAY_FIELDS = {"weights", "multipliers", "bias"}
_INT_FIELDS = {"groups", "m_a", "m_b", "shift", "lo", "hi"}
_PAIR_FIELDS = {"kernel", "stride"}
_QUAD_FIELDS = {"padding"}


def _encode_node(node, arrays):
    out = {"kind": node.kind}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{node.name}.{f.name}"
        if f.name in _ARRAY_FIELDS:
            arrays[key] = np.asarray(value, dtype=np.int64)
            out[f.name] = key
        elif f.name == "w_type":
            arrays[key + ".scales"] = np.asarray(value.scales, dtype=np.float64)
            out[f.name] = {"bits": value.bits, "signed": value.signed, "bipolar": value.bipolar,
                           "scales": key + ".scales"}
        elif f.name == "requant":
            arrays[key + ".m0"] = np.asarray(value.m0, dtype=np.int64)
            arrays[key + ".shift"] = np.asarray(value.shift, dtype=np.int64)
            out[f.name] = {"m0": key + ".m0", "shift": key + ".shift",
                           "lo": int(value.lo), "hi": int(value.hi)}
        elif f.name in _PAIR_FIELDS | _QUAD_FIELDS:
            out[f.name] = [int(v) for v in value]
        elif f.name in _INT_FIELDS:
            out[f.name] = None if value is None else int(value)
        else:
            out[f.name] = value
    return out


def save(graph, path):
    """Write ``graph`` (verified first) to ``path``."""
    verify(graph)
    arrays = {}
    doc = {
        "format": FORMAT, "version": VERSION, "m_bits": graph.m_bits,
        "input_layout": graph.input_layout.value,
        "inputs": list(graph.inputs), "outputs": list(graph.outputs),
        "metadata": graph.metadata,
        "tensors": [{"name": t.name, "shape": list(t.shape), "bits": t.qtype.bits,
                     "signed": t.qtype.signed, "scale": t.qtype.scale,
                     "zero_point": t.qtype.zero_point} for t in graph.tensors.values()],
        "nodes": [_encode_node(n, arrays) for n in graph.nodes],
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(doc, indent=1))
        zf.writestr("arrays.npz", buf.getvalue())


class _Header:
    """An array of arrays.npz known only by its ``.npy`` header: shape and dtype, no data."""
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


class _Reader:
    def __init__(self, arrays):
        self.arrays = arrays        # name -> ndarray, or -> _Header (the placeholder pass)
        self.used = set()
        self.where = "model"

    def fail(self, message):
        raise ModelFormatError(f"{self.where}: {message}")

    def get(self, obj, key, kind):
        if not isinstance(obj, dict) or key not in obj:
            self.fail(f"missing field {key!r}")
        value = obj[key]
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "float": (isinstance(value, float) and math.isfinite(value))
                     or (isinstance(value, int) and not isinstance(value, bool)
                         and abs(value) <= _FLOAT_MAX),
            "list": isinstance(value, list),
            "dict": isinstance(value, dict),
            "int?": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        }[kind]
        if not ok:
            self.fail(f"field {key!r} must be {kind}, not {value!r:.60}")
        return value

    def ints(self, obj, key, count):
        value = self.get(obj, key, "list")
        if len(value) != count or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.fail(f"field {key!r} must be a list of {count} integers, not {value!r:.60}")
        return tuple(value)

    def array(self, obj, key, dtype_kind):
        ref = self.get(obj, key, "str")
        if ref not in self.arrays:
            self.fail(f"field {key!r} names array {ref!r}, which arrays.npz does not hold")
        self.used.add(ref)
        a = self.arrays[ref]
        if a.dtype.kind not in dtype_kind:
            self.fail(f"array {ref!r} has dtype {a.dtype}, expected {'integers' if 'i' in dtype_kind else 'floats'}")
        if isinstance(a, _Header):
            # a read-only placeholder of the declared shape holding a value every check accepts
            # (bipolar weights are +-1, scales positive): no memory, whatever the shape
            bipolar = isinstance(obj.get("w_type"), dict) and obj["w_type"].get("bipolar") is True
            fill = 1.0 if "f" in dtype_kind else (1 if key == "weights" and bipolar else 0)
            return np.broadcast_to(np.array(fill, np.float64 if "f" in dtype_kind else np.int64), a.shape)
        if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) >= 1 << 63:
            self.fail(f"array {ref!r} holds values beyond the int64 range")
        return a.astype(np.int64 if "i" in dtype_kind else np.float64, copy=False)


def _decode_node(r, obj):
    kind = r.get(obj, "kind", "str")
    cls = NODE_KINDS.get(kind)
    r.where = f"node {obj.get('name', '?')!r}"
    if cls is None:
        r.fail(f"unknown node kind {kind!r} (known: {', '.join(NODE_KINDS)})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj and f.default is not dataclasses.MISSING:
            continue
        if f.name in _STR_FIELDS:
            values[f.name] = r.get(obj, f.name, "str")
        elif f.name in _ARRAY_FIELDS:
            values[f.name] = r.array(obj, f.name, "iu")
        elif f.name in _INT_FIELDS:
            values[f.name] = r.get(obj, f.name, "int?")
        elif f.name in _PAIR_FIELDS:
            values[f.name] = r.ints(obj, f.name, 2)
        elif f.name in _QUAD_FIELDS:
            values[f.name] = r.ints(obj, f.name, 4)
        elif f.name == "w_type":
            wt = r.get(obj, "w_type", "dict")
            values[f.name] = WeightType(bits=r.get(wt, "bits", "int"), signed=r.get(wt, "signed", "bool"),
                                        scales=r.array(wt, "scales", "f"), bipolar=r.get(wt, "bipolar", "bool"))
        elif f.name == "requant":
            rq = r.get(obj, "requant", "dict")
            values[f.name] = Requant(m0=r.array(rq, "m0", "iu"), shift=r.array(rq, "shift", "iu"),
                                     lo=r.get(rq, "lo", "int"), hi=r.get(rq, "hi", "int"))
    for key in ("lo", "hi", "groups", "m_a", "m_b", "shift"):
        if key in values and values[key] is None and key not in ("lo", "hi"):
            r.fail(f"field {key!r} must be an integer")
    return cls(**values)


def _member(zf, path, name, limit):
    """The bytes of member ``name`` of the outer zip, refused unread if over ``limit`` bytes."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ModelFormatError(f"{path}: not a qfab model file (no {name})") from None
    if info.file_size > limit:
        raise ModelFormatError(f"{path}: {name} is {info.file_size} bytes, over the limit of {limit} "
                               "for this model")
    try:
        return zf.read(info)
    except _ZIP_ERRORS as e:
        raise ModelFormatError(f"{path}: {name} is corrupt ({type(e).__name__}: {e})") from None


def _npy_header(npz, path, info):
    """``_Header`` of the ``.npy`` member ``info`` of arrays.npz (reads only the header)."""
    where = f"{path}: arrays.npz member {info.filename!r}"
    fmt = np.lib.format
    try:
        with npz.open(info) as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ModelFormatError(f"{where}: unsupported .npy format version {version}")
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            header_bytes = f.tell()
    except ModelFormatError:
        raise
    except _ZIP_ERRORS as e:
        raise ModelFormatError(f"{where} is corrupt or not a .npy array ({type(e).__name__}: {e})") from None
    if len(shape) > 8 or any(d < 0 for d in shape):
        raise ModelFormatError(f"{where}: its header declares the impossible shape {shape}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise ModelFormatError(f"{path}: arrays.npz cannot be read without pickle or holds a non-numeric "
                               f"array ({info.filename!r} has dtype {dtype})")
    elements = math.prod(shape)
    if info.file_size != header_bytes + elements * dtype.itemsize:
        raise ModelFormatError(f"{where}: its header declares shape {shape} of {dtype} "
                               f"({elements * dtype.itemsize} bytes) but the member holds "
                               f"{info.file_size - header_bytes} bytes of data")
    return _Header(tuple(shape), dtype)


def _array_headers(npz_bytes, path):
    """``(zip, {name: _Header})`` of arrays.npz, reading no array data."""
    try:
        npz = zipfile.ZipFile(io.BytesIO(npz_bytes))
        infos = npz.infolist()
    except _ZIP_ERRORS as e:
        raise ModelFormatError(f"{path}: arrays.npz cannot be read without pickle "
                               f"(not a zip of .npy arrays: {e})") from None
    headers = {}
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename[:-4] in headers:
            raise ModelFormatError(f"{path}: arrays.npz member {info.filename!r} is not a .npy array "
                                   "or appears twice")
        headers[info.filename[:-4]] = info
    return npz, headers


class _LazyHeaders(dict):
    """Headers read on first use, so that a member model.json never names is never opened;
    the declared elements of all used arrays are counted against `MAX_ARRAY_ELEMENTS`."""
    def __init__(self, npz, infos, path):
        super().__init__()
        self.npz, self.infos, self.path, self.elements = npz, infos, path, 0

    def __contains__(self, name):
        return name in self.infos

    def __getitem__(self, name):
        if not dict.__contains__(self, name):
            header = _npy_header(self.npz, self.path, self.infos[name])
            self.elements += math.prod(header.shape)
            if self.elements > MAX_ARRAY_ELEMENTS:
                raise ModelFormatError(
                    f"{self.path}: array {name!r} declares shape {header.shape}; with the arrays before it "
                    f"the model holds {self.elements} array elements, over the limit of {MAX_ARRAY_ELEMENTS}")
            dict.__setitem__(self, name, header)
        return dict.__getitem__(self, name)


def _read_arrays(npz, infos, names, path):
    """The data of the arrays ``names`` (their headers already checked)."""
    arrays = {}
    for name in sorted(names):
        try:
            with npz.open(infos[name]) as f:
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
        except _ZIP_ERRORS as e:
            raise ModelFormatError(f"{path}: array {name!r} in arrays.npz is corrupt "
                                   f"({type(e).__name__}: {e})") from None
    return arrays


def _decode_graph(r, doc):
    if r.get(doc, "format", "str") != FORMAT:
        r.fail(f"format is {doc['format']!r}, not {FORMAT!r}")
    if r.get(doc, "version", "int") != VERSION:
        r.fail(f"version {doc['version']} is not supported (this qfab reads version {VERSION})")
    tensors = {}
    for t in r.get(doc, "tensors", "list"):
        r.where = f"tensor {t.get('name', '?') if isinstance(t, dict) else '?'!r}"
        name = r.get(t, "name", "str")
        shape = r.get(t, "shape", "list")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            r.fail(f"shape must be a list of integers, not {shape!r:.60}")
        if name in tensors:
            r.fail("tensor name used twice")
        tensors[name] = Tensor(name, tuple(shape), QType(
            bits=r.get(t, "bits", "int"), signed=r.get(t, "signed", "bool"),
            scale=float(r.get(t, "scale", "float")), zero_point=r.get(t, "zero_point", "int")))
    nodes = tuple(_decode_node(r, n) for n in r.get(doc, "nodes", "list"))
    r.where = "model"
    layout = r.get(doc, "input_layout", "str")
    if layout not in Layout.__members__:
        r.fail(f"input_layout must be NHWC or NCHW, not {layout!r}")
    for key in ("inputs", "outputs"):
        if not all(isinstance(v, str) for v in r.get(doc, key, "list")):
            r.fail(f"{key} must be a list of tensor names")
    return Graph(tensors=tensors, nodes=nodes, inputs=tuple(doc["inputs"]),
                 outputs=tuple(doc["outputs"]), m_bits=r.get(doc, "m_bits", "int"),
                 input_layout=Layout[layout], metadata=r.get(doc, "metadata", "dict"))


def load(path):
    """Read and verify a .qfab file; raise `ModelFormatError`/`VerifyError` if it is bad.

    Order: model.json (size-limited); the headers of the arrays it names (dtype, shape, total
    size against `MAX_ARRAY_ELEMENTS`, arrays it does not name refused); the verifier on the
    graph with zero-cost placeholder arrays of the declared shapes; only then the array data,
    and the verifier again on the real graph."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise ModelFormatError(f"{path}: not a qfab model file ({e})") from None
    with zf:
        text = _member(zf, path, "model.json", MAX_JSON_BYTES)
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:   # JSONDecodeError is a ValueError
            raise ModelFormatError(f"{path}: model.json is not valid JSON ({e})") from None
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        limit = MAX_ARRAY_ELEMENTS * 8 + _ARRAY_SLACK_BYTES * (1 + (len(nodes) if isinstance(nodes, list) else 0))
        npz_bytes = _member(zf, path, "arrays.npz", limit)
    npz, infos = _array_headers(npz_bytes, path)
    with npz:
        headers = _LazyHeaders(npz, infos, path)
        r = _Reader(headers)
        verify(_decode_graph(r, doc))           # shapes checked before any data is read
        unused = sorted(set(infos) - r.used)
        if unused:
            raise ModelFormatError(f"{path}: arrays.npz holds {len(unused)} array(s) model.json does not use "
                                   f"({', '.join(map(repr, unused[:3]))}{', ...' if len(unused) > 3 else ''}); "
                                   "refusing the file")
        arrays = _read_arrays(npz, infos, r.used, path)
    return verify(_decode_graph(_Reader(arrays), doc))
