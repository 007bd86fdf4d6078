"""Real data that ships with the installed packages (nothing is downloaded).

``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), pixel values 0..16
scaled to 0..1, split once with a fixed seed: 1437 for training and calibration, 360 for testing.
"""

import numpy as np

__all__ = ["digits"]


def digits(layout="NCHW"):
    """``(x_train, y_train, x_test, y_test)``; images ``(N, 1, 8, 8)`` (NCHW), ``(N, 8, 8, 1)``
    (NHWC) or vectors ``(N, 64)`` (``layout="flat"``), float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n_train = 1437
    if layout == "NCHW":
        x = x.reshape(-1, 1, 8, 8)
    elif layout == "NHWC":
        x = x.reshape(-1, 8, 8, 1)
    elif layout != "flat":
        raise ValueError(f"layout must be NCHW, NHWC or flat, not {layout!r}")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
