"""Boards: the registry (`registry`), the toolchain runner (`toolchain`, with `synth`, `bitstream`
and `report` above it), the gateware (`gateware`), the host runtime (`host`) and the link's
simulation (`link_sim`)."""
