"""The DFU suffix qfab appends when ``dfu-suffix`` is absent (OrangeCrab bitstreams)."""

from qfab.boards.bitstream import append_dfu_suffix


def _dfu_crc(data):
    """dfu-util's CRC-32, bit by bit: reflected 0xEDB88320, initial 0xFFFFFFFF, no final inversion."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def test_suffix_layout_and_crc(tmp_path):
    path = tmp_path / "x.bit"
    body = bytes(range(256)) * 3 + b"qfab"
    path.write_bytes(body)
    append_dfu_suffix(path, 0x1209, 0x5AF0)
    data = path.read_bytes()
    assert data[:len(body)] == body and len(data) == len(body) + 16
    suffix = data[len(body):]
    assert suffix[:12] == bytes.fromhex("ffff f05a 0912 0001") + b"UFD" + bytes([16])
    assert int.from_bytes(suffix[12:], "little") == _dfu_crc(data[:-4])
