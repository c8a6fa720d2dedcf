"""Window aggregates: one `create`/`add`/`merge`/`result` idiom for all of them.

Accumulators are plain JSON values (numbers, lists), so window state checkpoints as it is.

>>> agg = Mean("price")
>>> acc = agg.create()
>>> for v in ({"price": 2.0}, {"price": 4.0}):
...     acc = agg.add(acc, v, 0)
>>> agg.result(acc)
3.0
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

Getter = Callable[[Any], Any]


def _getter(field: str | Getter | None) -> Getter | None:
    if field is None or callable(field):
        return field
    return operator.itemgetter(field)


class Aggregate:
    """Base class: subclasses override `create`, `add`, `merge` and optionally `result`."""

    name = "value"

    def create(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        return acc


class Count(Aggregate):
    name = "count"

    def create(self) -> int:
        return 0

    def add(self, acc: int, value: Any, timestamp_ms: int) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b


class _FieldAggregate(Aggregate):
    def __init__(self, field: str | Getter | None = None, *, name: str | None = None) -> None:
        self.get = _getter(field) or (lambda v: v)
        if name:
            self.name = name


class Sum(_FieldAggregate):
    name = "sum"

    def create(self) -> float:
        return 0

    def add(self, acc: float, value: Any, timestamp_ms: int) -> float:
        x = self.get(value)
        return acc if x is None else acc + x

    def merge(self, a: float, b: float) -> float:
        return a + b


class Mean(_FieldAggregate):
    name = "mean"

    def create(self) -> list[float]:
        return [0, 0]

    def add(self, acc: list[float], value: Any, timestamp_ms: int) -> list[float]:
        x = self.get(value)
        if x is not None:
            acc = [acc[0] + x, acc[1] + 1]
        return acc

    def merge(self, a: list[float], b: list[float]) -> list[float]:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc: list[float]) -> float | None:
        return acc[0] / acc[1] if acc[1] else None


class Min(_FieldAggregate):
    name = "min"

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        x = self.get(value)
        return x if acc is None or (x is not None and x < acc) else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b < a) else a


class Max(_FieldAggregate):
    name = "max"

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        x = self.get(value)
        return x if acc is None or (x is not None and x > acc) else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b > a) else a


class First(_FieldAggregate):
    """The value with the earliest event time (the first seen, on ties)."""

    name = "first"

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        return [timestamp_ms, self.get(value)] if acc is None or timestamp_ms < acc[0] else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b[0] < a[0]) else a

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[1]


class Last(_FieldAggregate):
    """The value with the latest event time (the last seen, on ties)."""

    name = "last"

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        return [timestamp_ms, self.get(value)] if acc is None or timestamp_ms >= acc[0] else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None or (b is not None and b[0] >= a[0]) else a

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[1]


class Reduce(Aggregate):
    """A custom aggregate from functions; `merge` is needed only by session windows."""

    def __init__(
        self,
        create: Callable[[], Any],
        add: Callable[[Any, Any], Any],
        *,
        merge: Callable[[Any, Any], Any] | None = None,
        result: Callable[[Any], Any] | None = None,
        name: str = "value",
    ) -> None:
        self._create, self._add, self._merge, self._result = create, add, merge, result
        self.name = name

    def create(self) -> Any:
        return self._create()

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        return self._add(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        if self._merge is None:
            raise TypeError(f"aggregate {self.name!r} has no merge function, which session windows need")
        return self._merge(a, b)

    def result(self, acc: Any) -> Any:
        return self._result(acc) if self._result else acc


class Aggregates(Aggregate):
    """Several named aggregates over the same window; the result is a dict."""

    def __init__(self, parts: Mapping[str, Aggregate]) -> None:
        self.parts = list(parts.items())

    def create(self) -> list[Any]:
        return [a.create() for _, a in self.parts]

    def add(self, acc: list[Any], value: Any, timestamp_ms: int) -> list[Any]:
        return [a.add(x, value, timestamp_ms) for (_, a), x in zip(self.parts, acc, strict=True)]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [p.merge(x, y) for (_, p), x, y in zip(self.parts, a, b, strict=True)]

    def result(self, acc: list[Any]) -> dict[str, Any]:
        return {n: a.result(x) for (n, a), x in zip(self.parts, acc, strict=True)}


def as_aggregate(spec: Aggregate | Mapping[str, Aggregate]) -> Aggregate:
    return spec if isinstance(spec, Aggregate) else Aggregates(spec)


def result_fields(agg: Aggregate, acc: Any) -> dict[str, Any]:
    """The fields an aggregate contributes to a window result."""
    out = agg.result(acc)
    return out if isinstance(agg, Aggregates) else {agg.name: out}
