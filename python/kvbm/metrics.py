"""Prometheus text exposition of a kvbm.BlockManager's counters (and, for the vLLM connector,
its own), through Debian's python3-prometheus-client. Every metric is listed, with its
meaning, in docs/metrics.md.

    server = kvbm.metrics.serve(manager, port)   # GET http://host:port/metrics
    text = kvbm.metrics.exposition(manager)      # the same text, for tests and tools

Values are read from manager.counters() at each scrape (no background thread, nothing
cached). The port comes from KVBM_METRICS_PORT where the caller takes it from the
environment (kvbm.vllm does); unset: no exporter."""

import threading
from typing import Callable, Dict, Iterator, Optional

TIERS = ("G1", "G2", "G3")
MOVES = ("g1_to_g2", "g2_to_g3", "g1_to_g3", "g2_to_g1", "g3_to_g1")
POOL_GAUGES = ("total", "free", "inactive", "active", "registered")

# The vLLM connector's counters (kvbm.vllm's Stats): name -> help.
CONNECTOR_COUNTERS = {
    "matched_tokens": "Tokens the connector told the scheduler it can load (per load issued)",
    "load_requests": "Loads issued (one per request and step that had a match)",
    "loaded_blocks": "Blocks loaded into the engine's KV cache",
    "load_failed_blocks": "Engine blocks whose load failed (reported as load errors)",
    "save_requests": "Saves issued (one per finished request with full blocks)",
    "saved_blocks": "Engine blocks saved into G2",
    "save_present_blocks": "Engine blocks not saved: already on G2",
    "save_dropped_blocks": "Engine blocks not saved: no room on G2, or the copy failed",
}
CONNECTOR_GAUGES = {
    "pending_loads": "Loads issued and not yet finished",
    "pending_saves": "Saves issued and not yet reported finished",
}


def _families(manager, extra: Optional[Callable[[], Dict[str, int]]]) -> Iterator:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    c = manager.counters()
    yield CounterMetricFamily("kvbm_lookups", "Block manager lookups (match calls)",
                              value=c["lookups"])
    specs = [
        ("kvbm_hit_blocks", "Blocks whose bytes were there to use, per tier", "hit_blocks"),
        ("kvbm_hit_tokens", "Tokens of those blocks, per tier", "hit_tokens"),
        ("kvbm_stored_blocks", "Blocks registered on a tier (Stored events)", "stored"),
        ("kvbm_removed_blocks", "Blocks no longer matchable on a tier (Removed events)",
         "removed"),
        ("kvbm_evictions", "Inactive blocks evicted to make room, per tier", "evictions"),
        ("kvbm_pool_lookups", "Prefix lookups on a tier's pool", "lookups"),
        ("kvbm_pool_matched_blocks", "Blocks matched on a tier's pool", "matched_blocks"),
    ]
    for name, doc, key in specs:
        f = CounterMetricFamily(name, doc, labels=["tier"])
        for t in TIERS:
            f.add_metric([t], c["tiers"][t][key])
        yield f
    g = GaugeMetricFamily("kvbm_pool_blocks", "Blocks of a tier's pool by state",
                          labels=["tier", "state"])
    for t in TIERS:
        tc = c["tiers"][t]
        for state in POOL_GAUGES:
            g.add_metric([t, state], tc[f"{state}_blocks"])
    yield g
    for name, doc, key in [
        ("kvbm_moved_blocks", "Blocks copied between tiers, per direction", "blocks"),
        ("kvbm_moved_bytes", "Bytes copied between tiers, per direction", "bytes"),
        ("kvbm_failed_blocks", "Block copies that failed, per direction", "failed_blocks"),
    ]:
        f = CounterMetricFamily(name, doc, labels=["direction"])
        for d in MOVES:
            f.add_metric([d], c[d][key])
        yield f
    yield CounterMetricFamily("kvbm_dropped_offloads",
                              "Offloads dropped: queue full or no room on the destination",
                              value=c["dropped_offloads"])
    yield GaugeMetricFamily("kvbm_offload_queue_depth", "Offloads waiting in the queue",
                            value=c["queued_offloads"])
    if extra is None:
        return
    s = extra()
    for key, doc in CONNECTOR_COUNTERS.items():
        yield CounterMetricFamily(f"kvbm_vllm_{key}", doc, value=s.get(key, 0))
    for key, doc in CONNECTOR_GAUGES.items():
        yield GaugeMetricFamily(f"kvbm_vllm_{key}", doc, value=s.get(key, 0))


class Collector:
    """A prometheus_client collector reading `manager` (and `extra()`) at each scrape."""

    def __init__(self, manager, extra: Optional[Callable[[], Dict[str, int]]] = None):
        self._manager = manager
        self._extra = extra

    def collect(self):
        return _families(self._manager, self._extra)


def registry(manager, extra=None):
    from prometheus_client import CollectorRegistry

    r = CollectorRegistry(auto_describe=False)
    r.register(Collector(manager, extra))
    return r


def exposition(manager, extra=None) -> str:
    """The Prometheus text format of every metric, now."""
    from prometheus_client import generate_latest

    return generate_latest(registry(manager, extra)).decode()


class Server:
    """An HTTP server on `port` (0: any free one, see .port) answering /metrics."""

    def __init__(self, manager, port: int, extra=None, addr: str = "0.0.0.0"):
        from http.server import ThreadingHTTPServer

        from prometheus_client.exposition import MetricsHandler

        handler = MetricsHandler.factory(registry(manager, extra))
        self._httpd = ThreadingHTTPServer((addr, port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="kvbm-metrics")
        self._thread.start()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve(manager, port: int, extra=None, addr: str = "0.0.0.0") -> Server:
    return Server(manager, port, extra, addr)
