"""Check values of the envelopes: the classic XOR BCC and CRC-16/X-25."""

from __future__ import annotations


def bcc(data: bytes | bytearray | memoryview) -> int:
    """XOR of all bytes.

    Folded on one big integer instead of a per-byte loop: the halves stay byte-aligned,
    so XOR-ing them preserves the XOR of all bytes, and the work is done in C. This is
    on the hot path of every frame in both directions.
    """
    n = len(data)
    if n == 0:
        return 0
    x = int.from_bytes(data, "little")
    width = n
    while width > 1:
        half = (width + 1) // 2
        x = (x & ((1 << (8 * half)) - 1)) ^ (x >> (8 * half))
        width = half
    return x


def _crc16_x25_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_X25_TABLE = _crc16_x25_table()


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25: reflected poly 0x1021 (0x8408), init 0xFFFF, xorout 0xFFFF.

    RSU_PROTOCOL.md: used by the ``jinyi`` and ``gb2019tcp`` envelopes, sent high byte
    first. Check value over b"123456789" is 0x906E.
    """
    crc = 0xFFFF
    table = _X25_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFF
