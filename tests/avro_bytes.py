"""Hand-made Avro bytes for bad-input tests (fastavro will not write malformed data)."""
from __future__ import annotations


def zigzag(n: int) -> bytes:
    """Avro's zig-zag varint encoding of the long ``n``."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
