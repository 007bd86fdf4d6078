"""Hardware library: Amaranth components of a streaming quantized accelerator.

Knows nothing of ONNX, the IR file format, or boards."""
