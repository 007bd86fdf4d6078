"""Numbers that the hardware library and the compiler's estimates must agree on."""

__all__ = ["LOGIC_WEIGHT_LIMIT_BITS"]

#: `qfab.hw.weights.MemoryKind.AUTO` keeps a weight memory of at most this many bits in logic
#: (constants the MAC array folds in), above it in block RAM; the estimates
#: (`qfab.compiler.estimate`) assume the same choice.
LOGIC_WEIGHT_LIMIT_BITS = 1024
