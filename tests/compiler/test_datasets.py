"""The bundled digits data is scikit-learn's, element for element."""

import numpy as np
import pytest

from qfab.compiler.datasets import digits, load_digits_raw


def test_bundled_digits_equal_scikit_learn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is the oracle")
    ref = sklearn_datasets.load_digits()
    pixels, labels = load_digits_raw()
    assert np.array_equal(pixels, ref.data)
    assert np.array_equal(labels, ref.target)


def test_split_and_layouts():
    x, y, xt, yt = digits("NCHW")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert y.shape == (1437,) and yt.shape == (360,)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    flat = digits("flat")[2]
    assert np.array_equal(flat.reshape(-1, 1, 8, 8), xt)
    assert np.array_equal(digits("NHWC")[2].transpose(0, 3, 1, 2), xt)
    with pytest.raises(ValueError, match="layout"):
        digits("CHW")
