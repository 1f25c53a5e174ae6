"""Alert decoding spread over worker processes (``STREAMER_DECODE_PROCESSES``).

Avro decoding holds the GIL, so in one process decoding uses one core however many the
pod has: with Rubin alerts of a few hundred history rows that caps a replica at a few
thousand alerts a second (``benchmarks/e2e.py``, small model), below what a GPU, or a
many-core CPU, can embed. :class:`DecodePool` decodes a batch's messages in chunks, in
worker processes that each hold their own :class:`~streamer.alerts.AlertDecoder` built
with the same settings, and returns exactly what :func:`~streamer.pipeline.decode_messages`
returns for the whole batch: the same alerts, origins and rejections, in the same order.

Workers are started with ``spawn`` (never ``fork``: the parent runs librdkafka and
onnxruntime threads) and ignore SIGINT, so Ctrl-C and SIGTERM reach only the parent, which
finishes its batch and closes the pool. A worker that dies (killed for memory, say) breaks
the pool: the batch is then decoded in the parent, nothing is lost, and a new pool is
started for the next one (should that fail too, decoding stays in the parent).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from streamer.alerts import AlertDecoder
from streamer.photometry import DecodedAlert
from streamer.pipeline import Decoded, Message, Rejection, decode_messages

log = logging.getLogger("streamer")

#: Chunks per worker and batch: fewer pay less for the hand-over, more balance better.
CHUNKS_PER_PROCESS = 2

#: One message's decoding as a worker sends it back: :data:`~streamer.pipeline.Decoded`
#: without copies of the message's own bytes (``None`` for an origin that is the message,
#: ``b""`` and ``True`` for a rejection that carries its bytes).
_Sent = tuple[list[DecodedAlert], list[Message | None], list[tuple[Rejection, bool]]]

_worker_decoder: AlertDecoder | None = None


def _start_worker(decoder_kwargs: dict[str, Any]) -> None:
    global _worker_decoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    _worker_decoder = AlertDecoder(**decoder_kwargs)


def _decode_chunk(messages: list[Message]) -> tuple[list[_Sent], float]:
    """Decode in a worker: each message's result, and the CPU seconds it took."""
    assert _worker_decoder is not None
    cpu = time.process_time()
    sent = [_strip(message, decode_messages(_worker_decoder, [message])) for message in messages]
    return sent, time.process_time() - cpu


def _strip(message: Message, decoded: Decoded) -> _Sent:
    alerts, origins, rejections = decoded
    return (
        alerts,
        [None if origin is message else origin for origin in origins],
        [(replace(r, data=b""), True) if r.data is message.data else (r, False) for r in rejections],
    )


def _restore(message: Message, sent: _Sent, into: Decoded) -> None:
    alerts, origins, rejections = sent
    into[0].extend(alerts)
    into[1].extend(message if origin is None else origin for origin in origins)
    into[2].extend(replace(r, data=message.data) if own else r for r, own in rejections)


class DecodePool:
    """:func:`~streamer.pipeline.decode_messages` on ``processes`` worker processes.

    Parameters
    ----------
    processes : int
        Worker processes (at least 1).
    decoder_kwargs : dict
        :class:`~streamer.alerts.AlertDecoder` arguments, for each worker and for the
        parent's own decoder (used when the pool breaks); picklable.
    """

    def __init__(self, processes: int, decoder_kwargs: dict[str, Any]) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self._decoder_kwargs = dict(decoder_kwargs)
        self._decoder = AlertDecoder(**self._decoder_kwargs)  # checks the settings here
        self._pool: ProcessPoolExecutor | None = self._new_pool()
        #: CPU seconds the workers spent decoding (they add to the process's own).
        self.worker_cpu_seconds = 0.0
        #: Times a broken pool (a worker died) was replaced.
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        """A pool whose workers are started (and have imported the decoder) already, so that
        the first batch does not wait for them."""
        pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._decoder_kwargs,),
        )
        # Each task submitted while no worker is idle starts one (spawn starts them on demand).
        list(pool.map(_decode_chunk, [[]] * self.processes))
        return pool

    def decode(self, messages: Iterable[Message]) -> Decoded:
        """Decode ``messages`` in the workers; the result equals ``decode_messages``'s."""
        messages = list(messages)
        if self._pool is None:  # no pool could be started again
            return decode_messages(self._decoder, messages)
        if not messages:
            return [], [], []
        size = -(-len(messages) // (self.processes * CHUNKS_PER_PROCESS))
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        try:
            results = list(self._pool.map(_decode_chunk, chunks))
        except BrokenProcessPool as exc:
            log.warning("a decoding worker died (%s): decoding this batch here, starting a new pool", exc)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            here = decode_messages(self._decoder, messages)
            self.restarts += 1
            try:
                self._pool = self._new_pool()
            except BrokenProcessPool as again:
                log.error("no new decoding pool (%s): decoding in the main process from now on", again)
            return here
        decoded: Decoded = ([], [], [])
        sent = (one for chunk_result, _ in results for one in chunk_result)
        for message, its in zip(messages, sent, strict=True):
            _restore(message, its, decoded)
        self.worker_cpu_seconds += sum(cpu for _, cpu in results)
        return decoded

    def pids(self) -> list[int]:
        """The worker processes' ids."""
        processes = self._pool._processes if self._pool is not None else None
        return [p.pid for p in (processes or {}).values() if p.pid is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
