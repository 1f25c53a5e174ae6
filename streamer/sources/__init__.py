"""Sources: where alert messages come from (archive files here, Kafka in the service)."""

from streamer.sources.archive import iter_archive_messages

__all__ = ["iter_archive_messages"]
