"""The board's gateware: the host link's board side (`qfab.boards.gateware.link`), the inference
core around a build's accelerator (`qfab.boards.gateware.core`), PLLs (`qfab.boards.gateware.pll`)
and the board top on a board's pins (`qfab.boards.gateware.top`). Amaranth components; the host
side of the same link is `qfab.boards.host`."""
