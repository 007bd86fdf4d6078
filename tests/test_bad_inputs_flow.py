"""Input checks shared by the CLI and the flow (`flow.load_array`, `flow.input_codes`): a batch
axis is expected, an empty batch is refused, codes out of range and NaN name their index,
infinities saturate, huge declared arrays are refused before allocation."""

import io

import numpy as np
import pytest

from qfab import flow
from qfab.base.errors import QfabError
from qfab.cli import main
from qfab.compiler import modelfile
from qfab.compiler.ir import Layout
from tests.compiler.graphs import conv_graph, dense_graph


@pytest.fixture
def dense():
    return dense_graph(k=64, n=5)


def _fails(fn, *phrases):
    with pytest.raises(QfabError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_one_item_without_batch_axis(dense):
    _fails(lambda: flow.input_codes(dense, np.zeros(64, np.float32)),
           "shape (64,)", "without the batch axis", "(N, 64)", "(1, 64)")


def test_wrong_shapes_say_the_batch_shape(dense):
    _fails(lambda: flow.input_codes(dense, np.float32(1.0)), "shape ()", "batch of shape (N, 64)")
    _fails(lambda: flow.input_codes(dense, np.zeros((2, 63), np.float32)), "shape (2, 63)", "(N, 64)")
    _fails(lambda: flow.input_codes(dense, np.zeros((2, 8, 8), np.float32)), "(N, 64)")


def test_empty_batch(dense):
    _fails(lambda: flow.input_codes(dense, np.zeros((0, 64), np.float32)), "no items", "(0, 64)")
    _fails(lambda: flow.input_codes(dense, np.zeros((0, 64), np.int64)), "no items")


def test_nchw_model_names_shapes_in_its_own_layout():
    g = conv_graph(h=5, w=6, cin=4).replace(input_layout=Layout.NCHW)
    _fails(lambda: flow.input_codes(g, np.zeros((4, 5, 6), np.float32)), "(N, 4, 5, 6)", "without the batch axis")
    x = np.zeros((2, 4, 5, 6), np.float32)
    x[1, 3, 2, 1] = np.nan
    _fails(lambda: flow.input_codes(g, x), "input item 1, element (3, 2, 1) is NaN")


def test_integer_codes_out_of_range_name_the_index(dense):
    q = dense.tensors["x"].qtype
    x = np.full((3, 64), q.qmin, np.int64)
    x[2, 17] = q.qmax + 1
    x[2, 20] = q.qmin - 1
    _fails(lambda: flow.input_codes(dense, x), "input item 2, element (17,)", str(q.qmax + 1),
           f"[{q.qmin}, {q.qmax}]", "2 elements out of range")
    big = np.zeros((1, 64), np.uint64)
    big[0, 5] = 2 ** 64 - 1
    _fails(lambda: flow.input_codes(dense, big), "input item 0, element (5,)", str(2 ** 64 - 1))


def test_integer_codes_in_range_pass_unchanged(dense):
    q = dense.tensors["x"].qtype
    x = np.random.default_rng(0).integers(q.qmin, q.qmax + 1, size=(4, 64))
    got = flow.input_codes(dense, x.astype(np.int16))
    assert got.dtype == np.int64 and np.array_equal(got, x)


def test_float_inputs_nan_is_refused_and_infinities_saturate(dense):
    q = dense.tensors["x"].qtype
    x = np.zeros((3, 64), np.float32)
    x[0, :4] = [np.inf, -np.inf, 1e30, -1e30]
    codes = flow.input_codes(dense, x)
    assert codes[0, :4].tolist() == [q.qmax, q.qmin, q.qmax, q.qmin]
    assert (codes[1:] == q.zero_point).all() and (codes[0, 4:] == q.zero_point).all()
    x[1, 9] = np.nan
    _fails(lambda: flow.input_codes(dense, x), "input item 1, element (9,) is NaN", "1 NaN")


def test_load_array_refuses_a_huge_header_before_allocating(tmp_path):
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)})
    path = tmp_path / "huge.npy"
    path.write_bytes(h.getvalue() + bytes(64))
    _fails(lambda: flow.load_array(path), "huge.npy", "(1000000, 1000000)", "8000000000000 bytes", "64 bytes")


def test_load_array_refuses_non_npy_and_non_numeric(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones(3))
    _fails(lambda: flow.load_array(tmp_path / "a.npz"), "not a numpy .npy array")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    _fails(lambda: flow.load_array(tmp_path / "s.npy", "calibration data"), "calibration data", "<U1")
    _fails(lambda: flow.load_array(tmp_path), "is a folder")
    np.save(tmp_path / "ok.npy", np.arange(6).reshape(2, 3))
    assert flow.load_array(tmp_path / "ok.npy").tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("x, phrase", [
    (np.zeros(64, np.float32), "batch axis"),
    (np.zeros((0, 64), np.float32), "no items"),
    (np.full((2, 64), np.nan, np.float32), "input item 0, element (0,) is NaN"),
    (np.full((2, 64), 1000, np.int64), "input item 0, element (0,) is 1000"),
])
def test_cli_reference_says_what_is_wrong(tmp_path, capsys, x, phrase):
    model = tmp_path / "m.qfab"
    modelfile.save(dense_graph(k=64, n=5), model)
    np.save(tmp_path / "x.npy", x)
    assert main(["reference", str(model), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err, err
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("mixed", [None, "40%"])
def test_calibration_data_of_the_wrong_shape_names_both_shapes(mixed):
    """Plain and mixed-precision quantization check the calibration data alike (the mixed path once
    reached numpy's matmul with it: found by tests/test_cli_fuzz.py)."""
    from importlib.resources import files
    model = str(files("qfab.compiler") / "data" / "digits_mlp.onnx")
    _fails(lambda: flow.quantize(model, np.zeros((4, 12), np.float32), mixed_budget=mixed),
           "calibration data has shape (4, 12)", "(N, 64)")
