"""Alert bytes -> :class:`~streamer.photometry.DecodedAlert`: framing, Avro, photometry.

The one entry point is :class:`AlertDecoder`; every bad input raises :class:`RejectedAlert`
with a stable ``reason`` (see :data:`REJECTION_REASONS`).
"""

from streamer.alerts.decoder import AlertDecoder, Framing
from streamer.alerts.errors import REJECTION_REASONS, RejectedAlert, SchemaRegistryUnavailable

__all__ = [
    "REJECTION_REASONS",
    "AlertDecoder",
    "Framing",
    "RejectedAlert",
    "SchemaRegistryUnavailable",
]
