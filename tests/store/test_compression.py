"""service.store.compression: zstd frames with the shipped dictionary, its id in each frame, and
values written before compression read as they are."""

from __future__ import annotations

import orjson
import pytest
import zstandard

from service.store import compression


def sample_body(n: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"msg_{n:032x}",
            "type": "payment.captured",
            "timestamp": "2026-12-01T15:40:38.437Z",
            "data": {"id": f"pay_{n}", "status": "captured", "payer": {"fullName": f"P {n}"}},
        }
    )


def test_round_trip_gives_the_same_bytes() -> None:
    """What compress() is given, decompress() gives back byte for byte."""
    for n in range(20):
        body = sample_body(n)
        assert compression.decompress(compression.compress(body)) == body


def test_frames_name_the_shipped_dictionary() -> None:
    """A compressed value is a zstd frame carrying the current dictionary's id, and the
    dictionary ships with the package."""
    frame = compression.compress(sample_body(1))
    assert frame.startswith(compression.ZSTD_MAGIC)
    assert zstandard.get_frame_parameters(frame).dict_id == compression.DICT_ID
    assert compression.dictionary(compression.DICT_ID) is not None


def test_frames_without_a_dictionary_still_read() -> None:
    """A frame made without a dictionary (id 0) is read too: the id in the frame decides."""
    body = sample_body(2)
    plain_frame = zstandard.ZstdCompressor().compress(body)
    assert compression.decompress(plain_frame) == body


def test_uncompressed_values_read_as_they_are() -> None:
    """A value written before compression (JSON) is returned unchanged."""
    assert compression.decompress(b'{"body": "x"}') == b'{"body": "x"}'


def test_unknown_dictionary_is_a_clear_error() -> None:
    """A frame naming a dictionary that is not shipped fails with its id, not garbage."""
    zdict = zstandard.train_dictionary(4096, [sample_body(n) * 3 for n in range(200)], dict_id=77)
    frame = zstandard.ZstdCompressor(dict_data=zdict).compress(sample_body(3))
    with pytest.raises(ValueError, match="77"):
        compression.decompress(frame)
