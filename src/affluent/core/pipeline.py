"""The pipeline DSL: write a pipeline once, run it on any log backend.

>>> from affluent.core.pipeline import Pipeline
>>> p = Pipeline("alerts")
>>> readings = p.topic("stock.readings")
>>> _ = readings.filter(lambda r: r["alert"], name="only-alerts").to_topic("stock.alerts")
>>> p.describe().splitlines()[0]
'pipeline alerts'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from affluent.core.aggregates import Aggregate, as_aggregate
from affluent.core.clock import DEFAULT_MAX_EVENT_AHEAD_MS
from affluent.core.errors import PipelineError
from affluent.core.log import TopicConfig
from affluent.core.operators import (
    Batch,
    BatchMap,
    Branch,
    Filter,
    FlatMap,
    Fn,
    Inspect,
    KeyBy,
    Map,
    Node,
    Outlet,
    Repartition,
    ToSink,
    ToTopic,
    Unwrap,
    Validate,
    WithTimestamp,
)
from affluent.core.records import ValueDecoder
from affluent.core.sinks import Sink
from affluent.core.sources import Source
from affluent.core.stateful import Dedupe, Enrich, KeyedStep, Step, Table, WindowOp
from affluent.core.windows import Window

if False:  # pragma: no cover - typing only, avoids an import cycle
    from affluent.core.runtime import TaskContext


class TopicInput(Node):
    """The root of a pipeline's tree for one input topic."""

    kind = "topic"

    def __init__(self, topic: str, config: TopicConfig | None, schema: Any = None, dead_letters: bool = True) -> None:
        super().__init__(topic)
        self.topic = topic
        self.config = config
        self.schema = schema
        self.dead_letters = dead_letters
        self.decoder = ValueDecoder(schema) if schema is not None else None

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        self.emit(batch, ctx)


@dataclass(slots=True)
class SourceBinding:
    source: Source
    topic: str
    config: TopicConfig | None
    key: Fn | None = None


class Pipeline:
    """A named dataflow from input topics to output topics and sinks.

    The name is the consumer group, the prefix of state stores and of the dead-letter topic
    `<name>.dlq`. Sources bound with `source()` run beside the pipeline and feed its topics.
    """

    def __init__(
        self,
        name: str,
        *,
        commit_interval_ms: int = 100,
        max_poll_records: int = 20_000,
        poll_interval_ms: int = 50,
        max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
        own_process: bool = False,
    ) -> None:
        if not name or "/" in name or any(c.isspace() for c in name):
            raise PipelineError(f"bad pipeline name {name!r}")
        if max_event_ahead_ms is not None and max_event_ahead_ms < 0:
            raise PipelineError(f"pipeline {name!r}: max_event_ahead_ms must be positive or None, not {max_event_ahead_ms}")
        self.name = name
        self.commit_interval_ms = commit_interval_ms
        self.max_poll_records = max_poll_records
        self.poll_interval_ms = poll_interval_ms
        #: a record timed further ahead of the wall clock is a dead letter (None: no bound, for simulated clocks)
        self.max_event_ahead_ms = max_event_ahead_ms
        #: run in a process of its own, on another core than the other pipelines (its steps and sinks are
        #: pickled: they must be importable; a pipeline that cannot be runs in a thread, and says why)
        self.own_process = own_process
        self.inputs: dict[str, TopicInput] = {}
        self.sources: list[SourceBinding] = []
        self.tables: dict[str, Table] = {}
        self.output_topics: dict[str, TopicConfig | None] = {}
        self.sinks: list[Sink] = []
        #: topics this pipeline writes and reads back to spread re-keyed steps over workers
        self.repartition_topics: set[str] = set()
        self._names: set[str] = set()
        self._counter = 0

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    def _step_name(self, name: str | None, kind: str) -> str:
        if name is None:
            self._counter += 1
            name = f"{kind}-{self._counter}"
        if name in self._names:
            raise PipelineError(f"pipeline {self.name!r} has two steps named {name!r}; step names must be unique")
        self._names.add(name)
        return name

    # -- inputs -------------------------------------------------------------------------------------------
    def topic(self, name: str, *, config: TopicConfig | None = None, schema: Any = None, dead_letters: bool = True) -> Stream:
        """Read a topic; it is created with `config` if it does not exist yet.

        schema: a msgspec Struct type: values are decoded straight into it, reading only its fields;
        a value that does not match goes to the dead-letter topic with the reason.
        dead_letters: False when another pipeline reading the same topic already dead-letters its
        undecodable records: this one skips them (counted as dropped), so each lands in one DLQ once.
        """
        node = self.inputs.get(name)
        if node is None:
            node = self.inputs[name] = TopicInput(name, config, schema, dead_letters)
        elif schema is not None and node.schema is not schema:
            raise PipelineError(f"topic {name!r} is already read with another schema in pipeline {self.name!r}")
        return Stream(self, node)

    def source(self, source: Source, *, topic: str, config: TopicConfig | None = None, key: Fn | None = None, schema: Any = None) -> Stream:
        """Run `source` and append what it fetches to `topic`; returns the stream of that topic (read as `topic` reads it)."""
        self._step_name(source.name, "source")
        self.sources.append(SourceBinding(source, topic, config, key))
        return self.topic(topic, config=config, schema=schema)

    def table(self, name: str, topic: str, *, key: Fn | None = None, value: Fn | None = None, config: TopicConfig | None = None) -> Table:
        """A lookup table holding the latest value per key of `topic` (the record key by default)."""
        self._step_name(name, "table")
        t = Table(name, topic, key=key, value=value)
        self.tables[name] = t
        # a table is rebuilt from its topic at each start: by default the topic keeps everything
        self.output_topics.setdefault(topic, config or TopicConfig(retention_ms=None))
        return t

    # -- introspection ---------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        out: list[Node] = []
        for root in self.inputs.values():
            out.extend(root.walk())
        return out

    @property
    def reads(self) -> bool:
        """Whether a step reads the input topics (a pipeline of sources alone only appends)."""
        return any(root.children for root in self.inputs.values())

    def stateful_nodes(self) -> list[Node]:
        return [n for n in self.nodes() if n.stateful]

    def spread_by_repartition(self, partitions: Mapping[str, int]) -> None:
        """Feed each step that groups records by a key other than their input's (a window or a dedupe
        after `key_by`) from a repartition topic, `<pipeline>.<step>.repartition`, partitioned by that
        key: each key then has one owner among the workers. Done only when running as workers: alone,
        one process sees every key and needs no repartition topic. `partitions`: each input's count."""
        widest = max(partitions.values(), default=1)
        for source_topic, source_root in list(self.inputs.items()):
            self._repartition_under(source_root, partitions.get(source_topic, 1), widest)

    def _repartition_under(self, source_root: Node, origins: int, widest: int) -> None:
        for parent in list(source_root.walk()):
            for i, child in enumerate(parent.children):
                regroups = getattr(child, "across", False) or getattr(child, "rekeyed_input", False)
                if not regroups or getattr(child, "repartitioned", False):
                    continue
                topic = f"{self.name}.{child.name}.repartition"
                key = getattr(child, "key_fn", None) if isinstance(child, Dedupe | KeyedStep) else None
                parent.children[i] = Repartition(f"{child.name}.repartition", topic, key)
                if isinstance(child, WindowOp):
                    child.origins = origins
                root = self.inputs[topic] = TopicInput(topic, TopicConfig(partitions=widest, retention_ms=86_400_000))
                unwrap = Unwrap(f"{child.name}.unwrap")
                root.children.append(unwrap)
                unwrap.children.append(child)
                setattr(child, "repartitioned", True)  # noqa: B010 - windows and dedupes have it
                self.repartition_topics.add(topic)

    def single_worker_reasons(self) -> list[str]:
        """Why this pipeline must run in one worker at a time (empty: its partitions can be shared)."""
        reasons = [r for n in self.nodes() if (r := n.single_owner_reason()) is not None]
        reasons += [f"sink {s.name!r} takes one writer at a time" for s in self.sinks if not s.shared_writes]
        return reasons

    def describe(self) -> str:
        lines = [f"pipeline {self.name}"]
        for b in self.sources:
            lines.append(f"  source {b.source.name} -> topic {b.topic}")

        def walk(node: Node, depth: int) -> None:
            label = f"{node.kind} {node.name}"
            if isinstance(node, ToTopic):
                label = f"to_topic {node.topic}"
            lines.append("  " * depth + label)
            for c in node.children:
                walk(c, depth + 1)
            late = getattr(node, "late", None)
            if isinstance(late, Outlet) and late.children:
                lines.append("  " * (depth + 1) + "late:")
                for c in late.children:
                    walk(c, depth + 2)

        for root in self.inputs.values():
            walk(root, 1)
        return "\n".join(lines)

    def run(self, log: Any = None, **kwargs: Any) -> None:
        """Run this pipeline (and its sources) until interrupted. See `affluent.core.runtime.Runtime`."""
        from affluent.core.runtime import Runtime

        Runtime(log, **kwargs).add(self).run()


class Stream:
    """A stream of records inside a pipeline. Every method returns a new stream (or a sink end)."""

    def __init__(self, pipeline: Pipeline, node: Node, *, rekeyed: bool = False) -> None:
        self.pipeline = pipeline
        self.node = node
        #: the key is no longer the input topic's key: a key's records may sit in every input partition
        self.rekeyed = rekeyed

    def _then(self, node: Node, *, rekeyed: bool | None = None) -> Stream:
        self.node.children.append(node)
        return Stream(self.pipeline, node, rekeyed=self.rekeyed if rekeyed is None else rekeyed)

    def _name(self, name: str | None, kind: str) -> str:
        return self.pipeline._step_name(name, kind)

    # -- stateless ----------------------------------------------------------------------------------------
    def map(self, fn: Fn, *, name: str | None = None) -> Stream:
        return self._then(Map(self._name(name, "map"), fn))

    def batch_map(self, fn: Callable[[list[Any]], list[Any]], *, name: str | None = None) -> Stream:
        return self._then(BatchMap(self._name(name, "batch_map"), fn))

    def filter(self, fn: Fn, *, name: str | None = None) -> Stream:
        return self._then(Filter(self._name(name, "filter"), fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        return self._then(FlatMap(self._name(name, "flat_map"), fn))

    def key_by(self, fn: Fn, *, name: str | None = None) -> Stream:
        return self._then(KeyBy(self._name(name, "key_by"), fn), rekeyed=True)

    def with_timestamp(self, fn: Fn, *, name: str | None = None) -> Stream:
        """Take each record's event time (int UTC epoch ms) from its value."""
        return self._then(WithTimestamp(self._name(name, "with_timestamp"), fn))

    def validate(self, check: Any, *, name: str | None = None) -> Stream:
        """Dead-letter values rejected by `check` (a function that raises, or a pydantic model)."""
        return self._then(Validate(self._name(name, "validate"), check))

    def inspect(self, fn: Callable[[Any, Any, int], None], *, name: str | None = None) -> Stream:
        return self._then(Inspect(self._name(name, "inspect"), fn))

    def branch(self, predicates: Mapping[str, Fn], *, default: str | None = None, name: str | None = None) -> dict[str, Stream]:
        """Route each record to the first branch whose predicate holds; the rest to `default`."""
        node = Branch(self._name(name, "branch"), dict(predicates), default)
        self.node.children.append(node)
        return {n: Stream(self.pipeline, o, rekeyed=self.rekeyed) for n, o in node.outlets.items()}

    # -- stateful ------------------------------------------------------------------------------------------
    def dedupe(self, *, name: str, key: Fn | None = None, version: Fn | None = None, ttl_ms: int | None = None) -> Stream:
        """Drop records whose key was seen with the same or a newer version (within `ttl_ms` of event time)."""
        across = self.rekeyed or key is not None
        return self._then(Dedupe(self._name(name, "dedupe"), key, version, ttl_ms, across_partitions=across))

    def enrich(self, table: Table, *, key: Fn, join: Callable[[Any, Any], Any], how: str = "left", name: str | None = None) -> Stream:
        """Lookup-join each record with `table[key(value)]`; `join(value, row)` makes the new value."""
        return self._then(Enrich(self._name(name, "enrich"), table, key, join, how))

    def stateful(
        self,
        step: Step,
        *,
        key: Fn,
        name: str,
        ttl_ms: int | None = None,
        coalesce: bool = False,
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> Stream:
        """Run `step(state, value, timestamp_ms) -> (new state, outputs)` with one state per `key(value)`.

        For rules that windows and dedupe do not express; the state is checkpointed exactly once with
        the outputs; with `ttl_ms`, a key's state is forgotten that long (in event time) after its last
        record; with `coalesce`, a batch emits only each key's last output; with `combine`, a batch's values of
        one key are merged before the step. See `affluent.core.stateful.KeyedStep`.
        """
        node = KeyedStep(self._name(name, "stateful"), key, step, ttl_ms=ttl_ms, coalesce=coalesce, combine=combine)
        node.rekeyed_input = self.rekeyed  # after a key_by, workers feed it from a repartition topic
        return self._then(node, rekeyed=True)

    def window(
        self,
        window: Window,
        aggregate: Aggregate | Mapping[str, Aggregate],
        *,
        name: str,
        emit: str = "close",
    ) -> WindowedStream:
        """Aggregate per key and event-time window. Results: {key, start_ms, end_ms, <aggregates>}."""
        node = WindowOp.of(self._name(name, "window"), window, as_aggregate(aggregate), emit, across_partitions=self.rekeyed)
        self.node.children.append(node)
        return WindowedStream(self.pipeline, node, rekeyed=True)

    # -- outputs ---------------------------------------------------------------------------------------------
    def to_topic(self, topic: str, *, config: TopicConfig | None = None, name: str | None = None) -> Stream:
        self.pipeline.output_topics.setdefault(topic, config)
        return self._then(ToTopic(self._name(name, f"to-{topic}"), topic))

    def to_sink(self, sink: Sink, *, name: str | None = None) -> Stream:
        if sink not in self.pipeline.sinks:
            self.pipeline.sinks.append(sink)
        return self._then(ToSink(self._name(name or sink.name, "sink"), sink))


class WindowedStream(Stream):
    """The results of a window; `.late` is the stream of records that came after their window closed."""

    node: WindowOp

    @property
    def late(self) -> Stream:
        return Stream(self.pipeline, self.node.late, rekeyed=self.rekeyed)
