"""Optional dependencies: the few modules that only some commands need are imported when used,
and a missing one is a `QfabError` that names the extra to install."""

import importlib
import types

from .errors import QfabError

__all__ = ["require"]


def require(module: str, extra: str, purpose: str) -> types.ModuleType:
    """Import ``module``, or raise `QfabError` saying that ``purpose`` needs ``qfab[extra]``.

    >>> plt = require("matplotlib.pyplot", "plot", "--plot")           # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise QfabError(f"{purpose} needs {module.split('.')[0]}, which is not installed ({e}): "
                        f"pip install \"qfab[{extra}]\" (from a checkout: pip install -e \".[{extra}]\")") from None
