"""The server's Prometheus metrics, in a registry of their own (one per server)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Requests and errors per endpoint, tokens, latencies, batch sizes, documents compressed,
    and the memory cache's hits, misses and bytes."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("lcirc_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("lcirc_errors", "Requests answered with an error", ["code"],
                              registry=r)
        self.tokens = Counter("lcirc_tokens", "Tokens read or generated", ["kind"], registry=r)
        self.latency = Histogram("lcirc_request_latency_seconds", "Request latency",
                                 ["endpoint"], registry=r,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch = Histogram("lcirc_batch_size", "Rows per decoding batch", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batch_documents = Histogram("lcirc_batch_documents",
                                         "Distinct documents read by one decoding batch",
                                         registry=r, buckets=(0, 1, 2, 4, 8, 16, 32, 64))
        self.compressed = Counter("lcirc_documents_compressed", "Documents compressed",
                                  registry=r)
        self.cache_hits = Counter("lcirc_cache_hits", "Memory cache hits", registry=r)
        self.cache_misses = Counter("lcirc_cache_misses", "Memory cache misses", registry=r)
        self.cache_bytes = Gauge("lcirc_cache_bytes", "Bytes held by the memory cache", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
