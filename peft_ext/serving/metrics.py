"""Prometheus metrics of one served model, in a registry of their own (two apps in a process never mix).

Counted as it happens (from the scheduler's callbacks): generated tokens (tokens/s is their ``rate()``), time to
first token, requests per model and finished generations per reason. Read when scraped: whether the server decodes
(``healthy``, as ``/health`` says), queue depth, running batch size and the prompt KV cache's hits and misses (its hit
rate too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .sampling import Token
    from .scheduler import Generation
    from .service import Service

PREFIX = "peft_ext"
# Seconds: from a request entering the queue to its first token (prefill included).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServingMetrics:
    """The metrics of ``service``; :meth:`exposition` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.tokens = Counter(f"{PREFIX}_generated_tokens", "Tokens generated.", ["model"], registry=self.registry)
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests accepted, per model.", ["model"], registry=self.registry
        )
        self.finished = Counter(
            f"{PREFIX}_generations_finished",
            "Generations finished, per reason (stop, length, cancelled, error).",
            ["reason"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Seconds from a request's submission to its first token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(service))
        service.listen(on_token=self._on_token, on_finish=self._on_finish)

    def request(self, model: str) -> None:
        self.requests.labels(model).inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def _on_token(self, generation: Generation, token: Token) -> None:
        self.tokens.labels(generation.label).inc()
        if len(generation.tokens) == 1 and generation.first_token_at is not None:
            self.time_to_first_token.observe(generation.first_token_at - generation.submitted_at)

    def _on_finish(self, generation: Generation) -> None:
        self.finished.labels(generation.finish_reason or "cancelled").inc()


class _StateCollector:
    """What the scheduler and the prompt KV cache report about themselves, read at each scrape."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        stats = self.service.scheduler.stats()
        yield GaugeMetricFamily(
            f"{PREFIX}_healthy",
            "1 while requests are decoded; 0 once it stopped (see /health).",
            value=1.0 if self.service.health() is None else 0.0,
        )
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting to be admitted.", value=stats.queued)
        yield GaugeMetricFamily(f"{PREFIX}_running_requests", "Rows of the running batch.", value=stats.running)
        kv = self.service.prompts.kv_cache_stats()
        yield CounterMetricFamily(f"{PREFIX}_prompt_kv_hits", "Prompt KV cache hits.", value=kv.hits)
        yield CounterMetricFamily(f"{PREFIX}_prompt_kv_misses", "Prompt KV cache misses.", value=kv.misses)
        lookups = kv.hits + kv.misses
        yield GaugeMetricFamily(
            f"{PREFIX}_prompt_kv_hit_rate",
            "Share of prompt KV lookups served from the cache since start (0 before any).",
            value=kv.hits / lookups if lookups else 0.0,
        )
        yield GaugeMetricFamily(f"{PREFIX}_prompt_kv_bytes", "Bytes held by the prompt KV cache.", value=kv.bytes)
