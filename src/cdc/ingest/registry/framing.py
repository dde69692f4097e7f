"""Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro body.

The id is a signed 32-bit integer, as Confluent's Java clients read it (``ByteBuffer.getInt``):
a header whose top bit is set carries a negative id, which no registry assigns, so such bytes
are not a Confluent frame.
"""

from __future__ import annotations

from cdc.errors import FramingError

__all__ = ["HEADER_SIZE", "MAGIC_BYTE", "MAX_SCHEMA_ID", "frame", "unframe"]

MAGIC_BYTE = 0
HEADER_SIZE = 5
MAX_SCHEMA_ID = 2**31 - 1
"""Schema ids are Java ints in the Confluent registry."""


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header.

    Args:
        schema_id: Registry id of the writer schema, 0..2^31-1.
        body: The Avro binary encoding of one datum.

    Returns:
        The framed message.

    Raises:
        FramingError: ``schema_id`` is outside 0..2^31-1.
    """
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise FramingError(f"schema id {schema_id} is outside 0..{MAX_SCHEMA_ID}")
    return b"\x00" + schema_id.to_bytes(4, "big") + bytes(body)


def unframe(data: bytes | bytearray | memoryview) -> tuple[int, bytes | memoryview]:
    """Split a Confluent-framed message into schema id and Avro body.

    Args:
        data: The raw Kafka key or value.

    Returns:
        ``(schema_id, body)``; the body is a zero-copy view of ``data``.

    Raises:
        FramingError: The message is shorter than the header, the magic byte is not 0, or
            the schema id is negative.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise FramingError(
            f"too short for the Confluent wire format: {size} byte{'' if size == 1 else 's'}, "
            f"need at least {HEADER_SIZE}"
        )
    if data[0] != MAGIC_BYTE:
        raise FramingError(f"bad magic byte {data[0]} (expected {MAGIC_BYTE})")
    schema_id = int.from_bytes(data[1:HEADER_SIZE], "big", signed=True)
    if schema_id < 0:
        raise FramingError(
            f"negative schema id {schema_id} (a registry assigns 0..{MAX_SCHEMA_ID})"
        )
    return schema_id, memoryview(data)[HEADER_SIZE:]
