"""Board targets, top-level wrappers, toolchain runs and the host driver."""
