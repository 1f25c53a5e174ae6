"""``/healthz`` and ``/readyz`` answers while a Kafka call blocks (no broker needed)."""

from __future__ import annotations

from streamer.metrics import Health


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _health(clock: _Clock) -> Health:
    health = Health(clock=clock, max_call_s=300.0)
    health.model_loaded = health.assigned = health.broker_reachable = True
    return health


def test_a_kafka_call_blocked_past_the_outage_budget_fails_liveness_so_the_pod_restarts() -> None:
    """Blocked 20 s: not ready, still alive (an outage is ridden out). Blocked past
    ``max_call_s``: dead, named, and Kubernetes restarts the pod (librdkafka can block for
    good after an outage; a restart resumes from the committed offsets)."""
    clock = _Clock()
    health = _health(clock)
    with health.kafka_call():
        clock.now = 20.0
        assert health.ready() == (False, "waiting for the broker")
        assert health.alive() == (True, "ok")
        clock.now = 301.0
        assert health.alive() == (False, "a Kafka call has blocked for 301 s")
    assert health.alive() == (True, "ok")
    assert health.ready() == (True, "ok")


def test_a_silent_loop_fails_liveness_but_not_while_a_kafka_call_blocks() -> None:
    clock = _Clock()
    health = _health(clock)
    clock.now = 61.0
    assert health.alive() == (False, "processing loop silent for 61 s")
    health.beat()
    with health.kafka_call():
        clock.now = 200.0
        assert health.alive() == (True, "ok")


def test_liveness_waits_for_the_model_then_times_the_loop_from_its_load() -> None:
    """A model download can outlast the liveness bound: until the model is loaded
    ``/healthz`` answers 503 (the startup probe's 10 minutes apply), and the silence
    of the load does not count against the loop afterwards."""
    clock = _Clock()
    health = Health(clock=clock)
    clock.now = 500.0
    assert health.alive() == (False, "starting: model not loaded")
    health.model_ready()
    assert health.alive() == (True, "ok")
    clock.now = 561.0
    assert health.alive() == (False, "processing loop silent for 61 s")
