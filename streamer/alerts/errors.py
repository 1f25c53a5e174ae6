"""The one error a decoder raises for bad input, and its stable reason codes."""

from __future__ import annotations

#: Every ``RejectedAlert.reason``, with what it means. The codes are metric labels and
#: dead-letter reasons, so they are part of the public interface: add, never rename.
REJECTION_REASONS: dict[str, str] = {
    "truncated": "the message ends before its framing or Avro payload does",
    "bad_magic": "the bytes do not start with the forced framing's magic, or (auto framing) they hold "
    "a Confluent header with a known Rubin schema id behind a magic byte other than 0x00",
    "not_avro": "the bytes match no framing and no schemaless schema is configured",
    "bad_container": "an Avro container file with a broken header, codec, sync marker or record count",
    "unknown_schema": "no schema for the Confluent schema id, or a schema that is not an alert we map",
    "schema_mismatch": "the payload does not decode with its schema (bad union index, UTF-8, trailing bytes)",
    "null_object_id": "the alert names no object (null or empty object id)",
    "non_finite_time": "the triggering detection has a null or non-finite time (or one past 1e30 in "
    "magnitude)",
    "non_finite_flux": "the triggering detection has a null or non-finite flux (or one past 1e30 in "
    "magnitude, or an unknown ZTF sign)",
    "non_finite_error": "the triggering detection has a null or non-finite flux error (or one past 1e30 "
    "in magnitude)",
    "negative_error": "the triggering detection has a negative flux error",
    "unknown_band": "the triggering detection has a null band or one outside u g r i z y",
    "no_usable_point": "no photometry row survived validation, or (embedding) the alert's as-of light "
    "curve holds no point the model can use",
    "oversized": "the message is longer than the configured max_message_bytes; it is not decoded",
    "decode_error": "decoding raised an unexpected error (a bug in streamer: the detail names the error, "
    "the log has its traceback; please report it with the message)",
}


class RejectedAlert(ValueError):
    """An alert message that cannot be turned into photometry points.

    Decoders raise this, and only this, for bad input, so a runner can route every
    rejection to one dead-letter path with ``reason`` as the label.

    Parameters
    ----------
    reason : str
        A key of :data:`REJECTION_REASONS`: short, stable, fit for a metrics label.
    detail : str
        Human-readable specifics (field, value, offset) for logs and dead-letter headers.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECTION_REASONS:
            # A typo here would silently create a new metrics label; fail loudly instead.
            raise AssertionError(f"unregistered rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[RejectedAlert], tuple[str, str]]:
        # Keep the two-argument constructor usable across process pools.
        return (type(self), (self.reason, self.detail))


class SchemaRegistryUnavailable(RuntimeError):
    """The schema registry could not be asked (network, auth, server error).

    Deliberately not a :class:`RejectedAlert`: the message itself may be fine, so a runner
    should retry or stop rather than dead-letter it.
    """
