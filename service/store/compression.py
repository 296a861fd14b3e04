"""Compression of the large values kartahook keeps in Redis: raw webhook records and delivery
snapshots (docs/decisions/compression.md).

A compressed value is one zstd frame, made with the shipped dictionary of id :data:`DICT_ID`
(``zdict/<id>.zdict``, package data, trained on the sandbox's bodies by
``python -m bench.compression --train-dict``). The frame header carries the dictionary's id, so
:func:`decompress` picks the dictionary a value was made with: a new dictionary ships beside the
old ones, :data:`DICT_ID` moves to it, and values written before still read. A value that is not
a zstd frame (written before compression, e.g. a raw record from an older release) is returned
as it is.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import zstandard

# The dictionary new values are compressed with (0: none).
DICT_ID = 14_001
# Level 3 (zstd's default): ~as fast as level 1 on these small bodies, a little smaller.
LEVEL = 3
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@cache
def dictionary(dict_id: int) -> zstandard.ZstdCompressionDict | None:
    """The shipped dictionary ``dict_id`` (None for 0 or one not shipped)."""
    if not dict_id:
        return None
    path = resources.files("service.store") / "zdict" / f"{dict_id}.zdict"
    if not path.is_file():
        return None
    return zstandard.ZstdCompressionDict(path.read_bytes())


@cache
def _compressor() -> zstandard.ZstdCompressor:
    zdict = dictionary(DICT_ID)
    if zdict is None:
        return zstandard.ZstdCompressor(level=LEVEL)
    return zstandard.ZstdCompressor(level=LEVEL, dict_data=zdict)


@cache
def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    zdict = dictionary(dict_id)
    if dict_id and zdict is None:
        raise ValueError(f"zstd dictionary {dict_id} is not shipped")
    return zstandard.ZstdDecompressor(dict_data=zdict) if zdict else zstandard.ZstdDecompressor()


def compress(data: bytes) -> bytes:
    """``data`` as one zstd frame, with the current dictionary."""
    return _compressor().compress(data)


def decompress(data: bytes) -> bytes:
    """The bytes :func:`compress` was given; a value that is not a zstd frame as it is."""
    if not data.startswith(ZSTD_MAGIC):
        return data
    dict_id = zstandard.get_frame_parameters(data).dict_id
    return _decompressor(dict_id).decompress(data)
