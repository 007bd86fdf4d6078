"""The .qfab file: exact round trips, and bad files rejected with a message naming the problem."""

import dataclasses
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from qfab.base.errors import ModelFormatError, VerifyError
from qfab.compiler import modelfile, reference
from qfab.compiler.ir import Layout, Requant, WeightType

from .graphs import chain_st, dense_graph, every_kind_graphs, graph_st, random_codes

# ---- round trip ------------------------------------------------------------------------------

def _field_equal(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and np.array_equal(a, b))
    if isinstance(a, (WeightType, Requant)):
        return type(a) is type(b) and all(_field_equal(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    return type(a) is type(b) and a == b


def assert_same_graph(got, want):
    assert got.tensors == want.tensors
    assert list(got.tensors) == list(want.tensors)
    assert got.inputs == want.inputs and got.outputs == want.outputs
    assert got.m_bits == want.m_bits and got.input_layout is want.input_layout
    assert got.metadata == want.metadata
    assert len(got.nodes) == len(want.nodes)
    for a, b in zip(got.nodes, want.nodes):
        assert type(a) is type(b)
        for f in dataclasses.fields(b):
            assert _field_equal(getattr(a, f.name), getattr(b, f.name)), (b.name, f.name)


def _round_trip(graph, path):
    modelfile.save(graph, path)
    loaded = modelfile.load(path)
    assert_same_graph(loaded, graph)
    codes = random_codes(graph, 5)
    want = reference.run(graph, codes, keep_all=True)
    got = reference.run(loaded, codes, keep_all=True)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    return loaded


@pytest.mark.parametrize("label", sorted(every_kind_graphs()))
def test_round_trip_every_kind(label, tmp_path):
    graph = every_kind_graphs()[label].replace(
        metadata={"source": label, "nested": {"list": [1, 2.5, "x", None, True]}},
        input_layout=Layout.NCHW if label == "conv" else Layout.NHWC)
    _round_trip(graph, tmp_path / "m.qfab")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=chain_st() | graph_st("Conv2d") | graph_st("Add") | graph_st("MaxPool"))
def test_round_trip_random_graphs(graph, tmp_path):
    _round_trip(graph, tmp_path / "m.qfab")


def test_file_is_a_readable_zip(tmp_path):
    path = tmp_path / "m.qfab"
    modelfile.save(dense_graph(name="fc1"), path)
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"model.json", "arrays.npz"}
        doc = json.loads(zf.read("model.json"))
    assert doc["format"] == modelfile.FORMAT and doc["version"] == modelfile.VERSION
    assert doc["nodes"][0]["kind"] == "Dense" and doc["nodes"][0]["name"] == "fc1"


def test_save_verifies_first(tmp_path):
    g = dense_graph(name="fc1")
    bad = g.replace(nodes=(dataclasses.replace(g.nodes[0], bias=np.full(5, 2**40)),))
    with pytest.raises(VerifyError, match="'fc1'"):
        modelfile.save(bad, tmp_path / "m.qfab")
    assert not (tmp_path / "m.qfab").exists()


# ---- bad files -------------------------------------------------------------------------------

def _parts(graph=None):
    """``(doc, arrays)`` of a saved graph, to be broken and re-zipped by `_write`."""
    buf = io.BytesIO()
    modelfile.save(graph or dense_graph(name="fc1"), buf)
    with zipfile.ZipFile(buf) as zf:
        doc = json.loads(zf.read("model.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz"))) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return doc, arrays


def _write(path, doc=None, arrays=None, members=None, allow_pickle=False):
    members = dict(members or {})
    if doc is not None:
        members["model.json"] = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
    if arrays is not None:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=allow_pickle, **arrays)
        members["arrays.npz"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _load_fails(path, error, *phrases):
    with pytest.raises(error) as info:
        modelfile.load(path)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_not_a_zip(tmp_path):
    path = tmp_path / "m.qfab"
    path.write_bytes(b"\x00ONNX and not a zip at all")
    _load_fails(path, ModelFormatError, "not a qfab model file")


def test_missing_file(tmp_path):
    _load_fails(tmp_path / "nope.qfab", ModelFormatError, "not a qfab model file")


def test_zip_without_model_json(tmp_path):
    _, arrays = _parts()
    _load_fails(_write(tmp_path / "m.qfab", arrays=arrays, members={"other.json": "{}"}),
                ModelFormatError, "no model.json")


def test_zip_without_arrays(tmp_path):
    doc, _ = _parts()
    _load_fails(_write(tmp_path / "m.qfab", doc=doc), ModelFormatError, "no arrays.npz")


@pytest.mark.parametrize("text", ["{not json", "", b"\xff\xfe\x00garbage"])
def test_invalid_json(tmp_path, text):
    _, arrays = _parts()
    _load_fails(_write(tmp_path / "m.qfab", doc=text, arrays=arrays), ModelFormatError,
                "model.json is not valid JSON")


@pytest.mark.parametrize("text", ['{"format": ' + "9" * 5000 + "}", "[" * 100000],
                         ids=["5000-digit-integer", "deep-nesting"])
def test_json_beyond_the_parser_limits(tmp_path, text):
    _, arrays = _parts()
    _load_fails(_write(tmp_path / "m.qfab", doc=text, arrays=arrays), ModelFormatError,
                "model.json is not valid JSON")


@pytest.mark.parametrize("where,key", [("doc", "version"), ("doc", "m_bits"), ("tensor", "scale"),
                                       ("tensor", "zero_point"), ("requant", "lo")])
def test_huge_integers(tmp_path, where, key):
    doc, arrays = _parts()
    obj = {"doc": doc, "tensor": doc["tensors"][0], "requant": doc["nodes"][0]["requant"]}[where]
    obj[key] = 10**400                            # valid JSON; not convertible to a float
    with pytest.raises((ModelFormatError, VerifyError)):
        modelfile.load(_write(tmp_path / "m.qfab", doc, arrays))


def test_json_that_is_not_an_object(tmp_path):
    _, arrays = _parts()
    _load_fails(_write(tmp_path / "m.qfab", doc=[1, 2], arrays=arrays), ModelFormatError, "'format'")


def test_wrong_format(tmp_path):
    doc, arrays = _parts()
    doc["format"] = "onnx"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "format is 'onnx'", "qfab-model")


@pytest.mark.parametrize("version,phrase", [(2, "version 2 is not supported"), (0, "version 0 is not supported"),
                                            ("1", "'version' must be int"), (True, "'version' must be int")])
def test_unsupported_version(tmp_path, version, phrase):
    doc, arrays = _parts()
    doc["version"] = version
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, phrase)


@pytest.mark.parametrize("where,key", [
    ("doc", "tensors"), ("doc", "nodes"), ("doc", "inputs"), ("doc", "m_bits"), ("doc", "metadata"),
    ("doc", "input_layout"), ("tensor", "zero_point"), ("tensor", "scale"), ("node", "weights"),
    ("node", "requant"), ("node", "name"), ("node", "kind"), ("w_type", "bipolar"), ("requant", "lo"),
])
def test_missing_fields(tmp_path, where, key):
    doc, arrays = _parts()
    obj = {"doc": doc, "tensor": doc["tensors"][0], "node": doc["nodes"][0],
           "w_type": doc["nodes"][0]["w_type"], "requant": doc["nodes"][0]["requant"]}[where]
    del obj[key]
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, f"missing field {key!r}")


@pytest.mark.parametrize("where,key,value,phrase", [
    ("tensor", "bits", "8", "field 'bits' must be int"),
    ("tensor", "bits", True, "field 'bits' must be int"),
    ("tensor", "zero_point", 1.5, "field 'zero_point' must be int"),
    ("tensor", "signed", 1, "field 'signed' must be bool"),
    ("tensor", "scale", "0.1", "field 'scale' must be float"),
    ("tensor", "scale", True, "field 'scale' must be float"),
    ("tensor", "shape", [12.0], "shape must be a list of integers"),
    ("tensor", "shape", [True], "shape must be a list of integers"),
    ("tensor", "shape", "12", "field 'shape' must be list"),
    ("tensor", "name", 3, "field 'name' must be str"),
    ("w_type", "bits", "8", "field 'bits' must be int"),
    ("w_type", "bits", False, "field 'bits' must be int"),
    ("requant", "lo", "-128", "field 'lo' must be int"),
    ("requant", "hi", True, "field 'hi' must be int"),
    ("requant", "m0", 5, "field 'm0' must be str"),
    ("node", "input", ["x"], "field 'input' must be str"),
    ("node", "w_type", "i8", "field 'w_type' must be dict"),
    ("doc", "m_bits", "24", "field 'm_bits' must be int"),
    ("doc", "m_bits", True, "field 'm_bits' must be int"),
    ("doc", "metadata", [], "field 'metadata' must be dict"),
    ("doc", "inputs", ["x", 3], "inputs must be a list of tensor names"),
    ("doc", "input_layout", "NWHC", "input_layout must be NHWC or NCHW"),
])
def test_wrong_field_types(tmp_path, where, key, value, phrase):
    doc, arrays = _parts()
    obj = {"doc": doc, "tensor": doc["tensors"][0], "node": doc["nodes"][0],
           "w_type": doc["nodes"][0]["w_type"], "requant": doc["nodes"][0]["requant"]}[where]
    obj[key] = value
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, phrase)


@pytest.mark.parametrize("key,value,phrase", [
    ("groups", "1", "field 'groups' must be int"),
    ("groups", None, "field 'groups' must be an integer"),
    ("stride", [1, True], "field 'stride' must be a list of 2 integers"),
    ("stride", [1, 1, 1], "field 'stride' must be a list of 2 integers"),
    ("padding", [1, 1], "field 'padding' must be a list of 4 integers"),
    ("padding", [1, 1, 1, 1.0], "field 'padding' must be a list of 4 integers"),
])
def test_wrong_conv_field_types(tmp_path, key, value, phrase):
    doc, arrays = _parts(every_kind_graphs()["conv"])
    doc["nodes"][0][key] = value
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "node 'conv'", phrase)


def test_tensor_error_names_the_tensor(tmp_path):
    doc, arrays = _parts()
    doc["tensors"][1]["bits"] = "8"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "tensor 'y'")


def test_unknown_node_kind(tmp_path):
    doc, arrays = _parts()
    doc["nodes"][0]["kind"] = "Softmax"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "node 'fc1'",
                "unknown node kind 'Softmax'", "Dense")


def test_array_name_not_in_npz(tmp_path):
    doc, arrays = _parts()
    doc["nodes"][0]["weights"] = "fc1.nothing"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "node 'fc1'",
                "'fc1.nothing'", "arrays.npz does not hold")
    doc, arrays = _parts()
    del arrays["fc1.requant.shift"]
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "'fc1.requant.shift'")


class _Trap:
    """Unpickling this would create a directory: proof that load never unpickles."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_object_array_is_not_unpickled(tmp_path):
    doc, arrays = _parts()
    sentinel = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Trap(sentinel)
    arrays["fc1.weights"] = evil
    path = _write(tmp_path / "m.qfab", doc, arrays, allow_pickle=True)
    _load_fails(path, ModelFormatError, "arrays.npz cannot be read without pickle")
    assert not sentinel.exists()
    with zipfile.ZipFile(path) as zf:               # the trap is real: pickle would spring it
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=True) as npz:
            npz["fc1.weights"]
    assert sentinel.exists()


def test_arrays_npz_that_is_not_npz(tmp_path):
    doc, _ = _parts()
    _load_fails(_write(tmp_path / "m.qfab", doc, members={"arrays.npz": b"junk bytes"}), ModelFormatError,
                "arrays.npz")
    _load_fails(_write(tmp_path / "m.qfab", doc, members={"arrays.npz": b""}), ModelFormatError, "arrays.npz")


def test_float_weights(tmp_path):
    doc, arrays = _parts()
    arrays["fc1.weights"] = arrays["fc1.weights"].astype(np.float32)
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "node 'fc1'",
                "'fc1.weights' has dtype float32, expected integers")


def test_bool_bias_and_integer_scales(tmp_path):
    doc, arrays = _parts()
    arrays["fc1.bias"] = arrays["fc1.bias"] > 0
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "'fc1.bias' has dtype bool")
    doc, arrays = _parts()
    arrays["fc1.w_type.scales"] = np.ones(5, dtype=np.int64)
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), ModelFormatError, "expected floats")


def test_weights_out_of_their_bit_range(tmp_path):
    doc, arrays = _parts()
    doc["nodes"][0]["w_type"]["bits"] = 2                     # i2: [-2, 1], weights are i8
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'", "weights has value")


def test_weights_of_the_wrong_shape(tmp_path):
    doc, arrays = _parts()
    arrays["fc1.weights"] = arrays["fc1.weights"][:, :, :-1]
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'", "weights expect (11,)")


def test_node_reading_an_unproduced_tensor(tmp_path):
    doc, arrays = _parts()
    doc["tensors"].append({**doc["tensors"][0], "name": "ghost"})
    doc["nodes"][0]["input"] = "ghost"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'",
                "input 'ghost' is not produced by an earlier node")


def test_node_reading_an_undeclared_tensor(tmp_path):
    doc, arrays = _parts()
    doc["nodes"][0]["input"] = "nowhere"
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'nowhere'")


def test_duplicate_node_names(tmp_path):
    doc, arrays = _parts()
    second = json.loads(json.dumps(doc["nodes"][0]))
    second["input"], second["output"] = "x", "z"
    doc["nodes"].append(second)
    doc["tensors"].append({**doc["tensors"][1], "name": "z"})
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'", "node name used twice")


def test_bipolar_flag_on_a_multibit_type(tmp_path):
    doc, arrays = _parts()
    doc["nodes"][0]["w_type"]["bipolar"] = True
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'", "bipolar")


def test_verifier_runs_on_load(tmp_path):
    doc, arrays = _parts()
    doc["tensors"][0]["zero_point"] = 300
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'x'", "zero point 300")
    doc, arrays = _parts()
    doc["nodes"][0]["requant"]["hi"] = 1000
    _load_fails(_write(tmp_path / "m.qfab", doc, arrays), VerifyError, "'fc1'", "clamp [-128, 1000]")
