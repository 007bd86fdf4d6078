"""The .qfab model file: a zip holding ``model.json`` (the graph, human-readable) and
``arrays.npz`` (weights and per-channel constants, saved without pickle).

Read one with ``unzip -p model.qfab model.json``. Files are untrusted input: loading checks
every field's type and then runs the verifier; anything wrong raises `ModelFormatError` or
`VerifyError` naming the node and field.
"""

import dataclasses
import io
import json
import math
import sys
import zipfile

import numpy as np

from qfab.base.errors import ModelFormatError

from .ir import NODE_KINDS, Graph, Layout, QType, Requant, Tensor, WeightType
from .verify import verify

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "qfab-model"
VERSION = 1
MAX_MEMBER_BYTES = 1 << 30
_FLOAT_MAX = sys.float_info.max

_STR_FIELDS = {"name", "input", "output", "a", "b"}
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


class _Reader:
    def __init__(self, arrays):
        self.arrays = arrays
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
        a = self.arrays[ref]
        if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) >= 1 << 63:
            self.fail(f"array {ref!r} holds values beyond the int64 range")
        if a.dtype.kind not in dtype_kind:
            self.fail(f"array {ref!r} has dtype {a.dtype}, expected {'integers' if 'i' in dtype_kind else 'floats'}")
        return a.astype(np.int64) if "i" in dtype_kind else a.astype(np.float64)


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


def _read_zip(path):
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelFormatError(f"{path}: not a qfab model file ({e})") from None
    with zf:
        members = {}
        for name in ("model.json", "arrays.npz"):
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise ModelFormatError(f"{path}: not a qfab model file (no {name})") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise ModelFormatError(f"{path}: {name} is {info.file_size} bytes, over the limit")
            members[name] = zf.read(name)
    return members


def load(path):
    """Read and verify a .qfab file; raise `ModelFormatError`/`VerifyError` if it is bad."""
    members = _read_zip(path)
    try:
        doc = json.loads(members["model.json"])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:   # JSONDecodeError is a ValueError
        raise ModelFormatError(f"{path}: model.json is not valid JSON ({e})") from None
    try:
        with np.load(io.BytesIO(members["arrays.npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFormatError(f"{path}: arrays.npz cannot be read without pickle ({e})") from None
    r = _Reader(arrays)
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
    graph = Graph(tensors=tensors, nodes=nodes, inputs=tuple(doc["inputs"]),
                  outputs=tuple(doc["outputs"]), m_bits=r.get(doc, "m_bits", "int"),
                  input_layout=Layout[layout], metadata=r.get(doc, "metadata", "dict"))
    return verify(graph)
