"""qfab: compile quantized neural networks to streaming FPGA accelerators."""
__version__ = "0.1.0"
