"""In-process counters and gauges, labelled, cheap to bump per batch.

`ops` renders them in the Prometheus text format; tests and the CLI read them directly.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1, /, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.counters[name][key] += value

    def set(self, name: str, value: float, /, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.gauges[name][key] = value

    def get(self, name: str, /, **labels: str) -> float:
        """Sum of a counter (or gauge) over the series matching `labels`."""
        want = set(labels.items())
        with self._lock:
            series = dict(self.counters.get(name) or self.gauges.get(name) or {})
        return sum(v for k, v in series.items() if want <= set(k))

    def samples(self) -> Iterator[tuple[str, str, Labels, float]]:
        with self._lock:
            for name, series in sorted(self.counters.items()):
                for labels, v in series.items():
                    yield name, "counter", labels, v
            for name, series in sorted(self.gauges.items()):
                for labels, v in series.items():
                    yield name, "gauge", labels, v


#: the process-wide registry used when no other is given
METRICS = Metrics()
