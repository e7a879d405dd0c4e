"""Counters, gauges and histograms of the serving API, written out in Prometheus' text format at /metrics."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total:.6f}",
                      f"{name}_count {self.count}"]


class Metrics:
    """What /metrics reports. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.filtered = defaultdict(int)  # action -> replies
        self.latency = Histogram()
        self.first_token = Histogram()
        self.queue_length = 0
        self.batch_rows = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def completion(self, prompt_tokens: int, completion_tokens: int, latency_s: float,
                   first_token_s: float | None) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.latency.observe(latency_s)
            if first_token_s is not None:
                self.first_token.observe(first_token_s)

    def filtered_reply(self, action: str) -> None:
        with self._lock:
            self.filtered[action] += 1

    def engine_step(self, rows: int, waiting: int) -> None:
        self.batch_rows, self.queue_length = rows, waiting  # plain assignments: read whole by render()

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP align_requests_total HTTP requests answered, by endpoint and status.",
                     "# TYPE align_requests_total counter"]
            lines += [f'align_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP align_prompt_tokens_total Prompt tokens of finished completions.",
                      "# TYPE align_prompt_tokens_total counter", f"align_prompt_tokens_total {self.prompt_tokens}",
                      "# HELP align_completion_tokens_total Generated tokens (rate() of it: output tokens/s).",
                      "# TYPE align_completion_tokens_total counter",
                      f"align_completion_tokens_total {self.completion_tokens}",
                      "# HELP align_filtered_replies_total Replies the output filter caught, by action.",
                      "# TYPE align_filtered_replies_total counter"]
            lines += [f'align_filtered_replies_total{{action="{a}"}} {n}' for a, n in sorted(self.filtered.items())]
            lines += ["# HELP align_queue_length Requests waiting to join the batch.",
                      "# TYPE align_queue_length gauge", f"align_queue_length {self.queue_length}",
                      "# HELP align_batch_rows Rows (choices) decoding together now.",
                      "# TYPE align_batch_rows gauge", f"align_batch_rows {self.batch_rows}",
                      "# HELP align_request_latency_seconds Time from a completion's arrival to its last token.",
                      "# TYPE align_request_latency_seconds histogram"]
            lines += self.latency.lines("align_request_latency_seconds")
            lines += ["# HELP align_time_to_first_token_seconds Time from a completion's arrival to its first text.",
                      "# TYPE align_time_to_first_token_seconds histogram"]
            lines += self.first_token.lines("align_time_to_first_token_seconds")
        return "\n".join(lines) + "\n"
