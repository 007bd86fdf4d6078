"""Real data that ships with qfab (nothing is downloaded).

``digits``: the UCI "Optical Recognition of Handwritten Digits" test set as scikit-learn ships it
(``sklearn.datasets.load_digits``; 1797 8x8 images, 10 classes, pixel values 0..16). The file
``data/digits.csv.gz`` is scikit-learn's copy, unchanged (one image per line: 64 pixels, then the
label). Source: E. Alpaydin and C. Kaynak, UCI Machine Learning Repository (1998),
https://doi.org/10.24432/C50P49, licensed CC BY 4.0; bundled here so that the digits models need
neither scikit-learn nor a download. Pixels are scaled to 0..1 and split once with a fixed seed:
1437 images for training and calibration, 360 for testing.
"""

import gzip
from importlib.resources import files

import numpy as np

__all__ = ["digits", "load_digits_raw"]

N_TRAIN = 1437


def load_digits_raw():
    """``(pixels, labels)``: ``(1797, 64)`` float64 pixels 0..16 and int64 labels, in the file's
    order (the same arrays as ``sklearn.datasets.load_digits()``'s ``data`` and ``target``)."""
    with gzip.open(files("qfab.compiler") / "data" / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def digits(layout="NCHW"):
    """``(x_train, y_train, x_test, y_test)``; images ``(N, 1, 8, 8)`` (NCHW), ``(N, 8, 8, 1)``
    (NHWC) or vectors ``(N, 64)`` (``layout="flat"``), float32 in [0, 1]."""
    if layout not in ("NCHW", "NHWC", "flat"):
        raise ValueError(f"layout must be NCHW, NHWC or flat, not {layout!r}")
    pixels, labels = load_digits_raw()
    x = (pixels / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], labels[order]
    if layout == "NCHW":
        x = x.reshape(-1, 1, 8, 8)
    elif layout == "NHWC":
        x = x.reshape(-1, 8, 8, 1)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
