"""The host runtime of the board link: the framed protocol's codec (`qfab.boards.host.protocol`)
and the driver that runs inferences over a transport (`qfab.boards.host.driver`). Pure Python
(numpy, and pyserial for a real port): it imports no Amaranth and no gateware, so a host that
only talks to a programmed board needs neither."""

from .driver import Device, LinkError, LinkStats, SerialTransport, Transport

__all__ = ["Device", "LinkError", "LinkStats", "SerialTransport", "Transport"]
