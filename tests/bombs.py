"""Decompression bombs made without decoding (or compressing) one: a valid PNG whose header declares a huge size."""

from __future__ import annotations

import struct
import zlib

ROWS_PER_PIECE = 100


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _deflate(data: bytes, final: bool) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: pieces are concatenated below
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def png_bomb(side: int = 16500) -> bytes:
    """A black side×side greyscale PNG (16500²: ~270 KB that decode to 272 MP).

    Compressing 272 MB takes seconds, so one piece of ``ROWS_PER_PIECE`` rows is compressed with a full flush
    (byte-aligned, no reference to earlier data) and repeated: a valid zlib stream of the same image.
    """
    row = bytes(side + 1)  # filter byte 0 + the row's pixels
    whole, rest = divmod(side, ROWS_PER_PIECE)
    stream = _deflate(row * ROWS_PER_PIECE, final=False) * whole + _deflate(row * rest, final=True)
    n = side * len(row)
    adler = ((n % 65521) << 16) | 1  # adler32 of n zero bytes: a = 1, b = n
    idat = b"\x78\xda" + stream + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
