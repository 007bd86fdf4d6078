"""Compiler: IR, front-ends, quantization, bit-exact reference, lowering."""
