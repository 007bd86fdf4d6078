"""Quantization-aware training (the ``[train]`` extra: PyTorch CPU).

`train_qat` trains a digits model (or any supported float graph) with learned step sizes, the
MSQE regularizer with a learnable coefficient, and optional pruning by partial L2
regularization, and exports the result to the IR. See docs/training.md.
"""

try:
    import torch  # noqa: F401
except ImportError:          # pragma: no cover - depends on the environment
    raise ImportError("qfab.compiler.train needs PyTorch: pip install -e '.[train]'") from None

from .net import QatNet
from .qat import TrainConfig, digits_model, fit, prune, train_qat
from .quantizers import LearnableCoefficient, LsqQuantizer, msqe, partial_l2

__all__ = ["train_qat", "TrainConfig", "fit", "prune", "digits_model", "QatNet", "LsqQuantizer",
           "LearnableCoefficient", "msqe", "partial_l2"]
