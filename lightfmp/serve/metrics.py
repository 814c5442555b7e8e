"""GET /metrics: request counts, errors, a latency histogram and the model calls, in the Prometheus text
exposition format (version 0.0.4), written here without a client library. Updated on the event loop only."""
from __future__ import annotations

from collections import defaultdict

from ..serving import RUN_ROWS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# request latency buckets, seconds
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# rows per model call
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = next((k for k, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for b, c in zip(list(self.bounds) + ["+Inf"], self.counts):
            total += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{braces} {_number(self.sum)}", f"{name}_count{braces} {self.count}"]


class Metrics:
    """What /metrics reports. `endpoint` is a route name (infer, records, metadata, ...), never a raw path."""

    def __init__(self, model: str):
        self.model = model
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.in_flight = 0
        self.calls = 0
        self.rows = 0
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float | None) -> None:
        """One answered request; `seconds` None where it was not timed."""
        self.requests[(endpoint, status)] += 1
        if seconds is not None:
            self.latency.setdefault(endpoint, Histogram(BUCKETS)).observe(seconds)

    def model_call(self, rows: int, requests: int) -> None:
        self.calls += 1
        self.rows += rows
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (endpoint, status), n in self.requests.items():
            if status >= 400:
                out[endpoint] += n
        return out

    def text(self) -> str:
        m = _esc(self.model)
        lines = ["# HELP lightfmp_requests_total HTTP requests answered, by endpoint and status code.",
                 "# TYPE lightfmp_requests_total counter"]
        lines += [f'lightfmp_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                  for (e, c), n in sorted(self.requests.items())]
        lines += ["# HELP lightfmp_request_errors_total Requests answered with a 4xx or 5xx status, by endpoint.",
                  "# TYPE lightfmp_request_errors_total counter"]
        lines += [f'lightfmp_request_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(self.errors().items())]
        lines += ["# HELP lightfmp_request_duration_seconds Time from the request's arrival to its response.",
                  "# TYPE lightfmp_request_duration_seconds histogram"]
        for e, h in sorted(self.latency.items()):
            lines += h.lines("lightfmp_request_duration_seconds", f'endpoint="{e}"')
        lines += ["# HELP lightfmp_requests_in_flight Requests being handled now (this scrape excluded).",
                  "# TYPE lightfmp_requests_in_flight gauge", f"lightfmp_requests_in_flight {self.in_flight}",
                  "# HELP lightfmp_model_calls_total Model calls: one per dynamic batch, which ONNX Runtime runs in slices of "
                  f"at most {RUN_ROWS} rows.",
                  "# TYPE lightfmp_model_calls_total counter",
                  f'lightfmp_model_calls_total{{model="{m}"}} {self.calls}',
                  "# HELP lightfmp_rows_scored_total Rows scored by the model.",
                  "# TYPE lightfmp_rows_scored_total counter", f'lightfmp_rows_scored_total{{model="{m}"}} {self.rows}',
                  "# HELP lightfmp_batch_rows Rows per model call.", "# TYPE lightfmp_batch_rows histogram"]
        lines += self.batch_rows.lines("lightfmp_batch_rows", f'model="{m}"')
        lines += ["# HELP lightfmp_batch_requests Requests per model call.", "# TYPE lightfmp_batch_requests histogram"]
        lines += self.batch_requests.lines("lightfmp_batch_requests", f'model="{m}"')
        return "\n".join(lines) + "\n"


def _number(v) -> str:
    return v if isinstance(v, str) else repr(float(v)) if isinstance(v, float) else str(v)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


__all__ = ["Metrics", "Histogram", "CONTENT_TYPE"]
