"""Constructor argument checks shared by the dataflow components of `qfab.hw` (private).

Each check returns the normalized value or raises with the exact message the tests expect:
``"<name> must be ..., not <value!r>"``.
"""

from amaranth.hdl import Shape, ShapeLike

from qfab.base import ints

__all__ = ["check_shape", "check_positive", "check_nonnegative", "check_int", "check_pair",
           "check_padding", "check_in_range", "check_clamp", "code_range"]


def check_shape(name: str, shape: ShapeLike) -> Shape:
    """An element shape: a signed or unsigned integer shape of 1 to 32 bits."""
    try:
        cast = Shape.cast(shape)
    except TypeError:
        cast = None
    if cast is None or not 1 <= cast.width <= 32:
        raise TypeError(f"{name} must be a signed or unsigned shape of 1 to 32 bits, "
                        f"not {shape!r}")
    return cast


def check_int(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    return value


def check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    return value


def check_nonnegative(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def check_pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """A positive integer or a pair of positive integers, as a pair ``(y, x)``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (isinstance(value, tuple) and len(value) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return value
    raise TypeError(f"{name} must be a positive integer or a pair of positive integers, "
                    f"not {value!r}")


def check_padding(name: str, value: int | tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A non-negative integer or four of them, as ``(top, left, bottom, right)``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value,) * 4
    if (isinstance(value, tuple) and len(value) == 4 and
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        return value
    raise TypeError(f"{name} must be a non-negative integer or a tuple (top, left, bottom, right) "
                    f"of them, not {value!r}")


def code_range(shape: Shape) -> tuple[int, int]:
    """Smallest and largest value of an integer shape (`qfab.base.ints.code_range`)."""
    return ints.code_range(shape.width, shape.signed)


def check_in_range(name: str, value: int, shape: Shape, what: str = "the element shape") -> int:
    """An integer that ``shape`` can hold."""
    check_int(name, value)
    low, high = code_range(shape)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {what}'s range {low}..{high}, not {value!r}")
    return value


def check_clamp(lo: int | None, hi: int | None, shape: Shape) -> tuple[int, int]:
    """The output clamp ``(lo, hi)``; ``None`` stands for the end of the code range."""
    low, high = code_range(shape)
    lo = low if lo is None else check_in_range("Output clamp lo", lo, shape, "the output shape")
    hi = high if hi is None else check_in_range("Output clamp hi", hi, shape, "the output shape")
    if lo > hi:
        raise ValueError(f"Output clamp lo must not exceed hi, not {lo!r} > {hi!r}")
    return lo, hi
