"""Column expressions: field access and comparisons evaluated over a whole batch at C speed.

Where a lambda costs a Python call per record, an expression maps C functions (itemgetter,
operator.eq, dict lookups) over the batch's values. Operators accept an expression wherever they
accept a function; called on one value, an expression behaves like the equivalent function.

>>> from affluent.core.expr import col
>>> views = col("event_type") == "view"
>>> views.evaluate([{"event_type": "view"}, {"event_type": "click"}])
[True, False]
>>> col("ad_id").lookup({"a1": "c9"})({"ad_id": "a1"})
'c9'
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Container, Mapping
from itertools import repeat
from typing import Any


class Expr:
    """A function of one value that can also be evaluated over a list of values in one pass."""

    def evaluate(self, values: list[Any]) -> list[Any]:
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        return self.evaluate([value])[0]

    def _cmp(self, op: Callable[[Any, Any], Any], other: Any) -> Expr:
        return Binary(op, self, other if isinstance(other, Expr) else Const(other))

    def __eq__(self, other: object) -> Expr:  # type: ignore[override]
        return self._cmp(operator.eq, other)

    def __ne__(self, other: object) -> Expr:  # type: ignore[override]
        return self._cmp(operator.ne, other)

    def __lt__(self, other: Any) -> Expr:
        return self._cmp(operator.lt, other)

    def __le__(self, other: Any) -> Expr:
        return self._cmp(operator.le, other)

    def __gt__(self, other: Any) -> Expr:
        return self._cmp(operator.gt, other)

    def __ge__(self, other: Any) -> Expr:
        return self._cmp(operator.ge, other)

    def __add__(self, other: Any) -> Expr:
        return self._cmp(operator.add, other)

    def __sub__(self, other: Any) -> Expr:
        return self._cmp(operator.sub, other)

    def __mul__(self, other: Any) -> Expr:
        return self._cmp(operator.mul, other)

    def __and__(self, other: Expr) -> Expr:
        return Binary(operator.and_, Truth(self), Truth(other))

    def __or__(self, other: Expr) -> Expr:
        return Binary(operator.or_, Truth(self), Truth(other))

    def __hash__(self) -> int:
        return id(self)

    def isin(self, options: Container[Any]) -> Expr:
        members = options if isinstance(options, set | frozenset) else set(options)  # type: ignore[call-overload]
        return Apply(members.__contains__, self)

    def lookup(self, mapping: Mapping[Any, Any]) -> Expr:
        """Map through a dict; a missing key raises KeyError (the record is dead-lettered)."""
        return Apply(mapping.__getitem__, self)

    def get(self, name: Any) -> Expr:
        return Apply(operator.itemgetter(name), self)

    def apply(self, fn: Callable[[Any], Any]) -> Expr:
        return Apply(fn, self)


class Col(Expr):
    """A field of the value (a key of a dict)."""

    def __init__(self, name: Any) -> None:
        self.name = name
        self._item = operator.itemgetter(name)
        self._attr = operator.attrgetter(name) if isinstance(name, str) else self._item

    def evaluate(self, values: list[Any]) -> list[Any]:
        if values and type(values[0]) is not dict and hasattr(values[0], "__struct_fields__"):
            return list(map(self._attr, values))
        return list(map(self._item, values))

    def __call__(self, value: Any) -> Any:
        if type(value) is not dict and hasattr(value, "__struct_fields__"):
            return self._attr(value)
        return value[self.name]

    def __repr__(self) -> str:
        return f"col({self.name!r})"


class Const(Expr):
    def __init__(self, value: Any) -> None:
        self.value = value

    def evaluate(self, values: list[Any]) -> list[Any]:
        return [self.value] * len(values)


class Truth(Expr):
    def __init__(self, inner: Expr) -> None:
        self.inner = inner

    def evaluate(self, values: list[Any]) -> list[Any]:
        return list(map(bool, self.inner.evaluate(values)))


class Binary(Expr):
    def __init__(self, op: Callable[[Any, Any], Any], left: Expr, right: Expr) -> None:
        self.op, self.left, self.right = op, left, right

    def evaluate(self, values: list[Any]) -> list[Any]:
        left = self.left.evaluate(values)
        if isinstance(self.right, Const):
            return list(map(self.op, left, repeat(self.right.value)))
        return list(map(self.op, left, self.right.evaluate(values)))


class Apply(Expr):
    def __init__(self, fn: Callable[[Any], Any], inner: Expr) -> None:
        self.fn, self.inner = fn, inner

    def evaluate(self, values: list[Any]) -> list[Any]:
        return list(map(self.fn, self.inner.evaluate(values)))


def col(name: Any) -> Col:
    """The field `name` of each value."""
    return Col(name)


def evaluate(fn: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    """fn over values: one pass of C calls for an expression, one Python call per value otherwise."""
    if isinstance(fn, Expr):
        return fn.evaluate(values)
    return list(map(fn, values))
