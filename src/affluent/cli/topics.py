"""`affluent topics ...`: list, create, delete, describe, tail and produce, on any log backend."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table as RichTable

from affluent.cli.common import console, fail, open_configured_log
from affluent.core.clock import now_ms
from affluent.core.errors import AffluentError, ConfigError
from affluent.core.log import DAY_MS, MAX_PARTITIONS, OutgoingBatch, TopicConfig
from affluent.core.records import Record

app = typer.Typer(help="Create, inspect, read and write topics of the log.", no_args_is_help=True)


def _size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


def _retention(ms: int | None) -> str:
    if ms is None:
        return "forever"
    if ms % DAY_MS == 0:
        return f"{ms // DAY_MS} d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    return f"{ms} ms"


@app.command("list")
def list_topics(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Also show dead-letter and late topics.")] = False,
) -> None:
    """List topics with their partitions, records and size."""
    try:
        with open_configured_log() as log:
            topics = log.list_topics()
    except AffluentError as exc:
        fail(exc)
    table = RichTable("topic", "partitions", "records", "size", "retention", "format")
    for t in topics:
        if not all_ and (t.name.endswith(".dlq") or t.name.endswith(".late")) and t.records == 0:
            continue
        table.add_row(t.name, str(t.config.partitions), f"{t.records:,}", _size(t.size_bytes), _retention(t.config.retention_ms), t.config.value_format)
    console.print(table if topics else "no topics yet")


@app.command()
def create(
    name: str,
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1, max=MAX_PARTITIONS)] = 1,
    retention_ms: Annotated[int | None, typer.Option(help="Drop batches older than this (default 7 days).")] = 7 * DAY_MS,
    retention_bytes: Annotated[int | None, typer.Option(help="Keep at most this many bytes per partition.")] = None,
    value_format: Annotated[str, typer.Option("--format", help="json, text or bytes")] = "json",
    keep_forever: Annotated[bool, typer.Option("--keep-forever", help="No time retention.")] = False,
) -> None:
    """Create a topic."""
    try:
        config = TopicConfig(partitions, None if keep_forever else retention_ms, retention_bytes, value_format)
        with open_configured_log() as log:
            log.create_topic(name, config, exist_ok=False)
    except AffluentError as exc:
        fail(exc)
    console.print(f"created topic [bold]{name}[/] ({partitions} partition{'s' * (partitions > 1)})")


@app.command()
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a topic and everything in it."""
    try:
        with open_configured_log() as log:
            info = log.describe_topic(name)
            if not yes and not typer.confirm(f"delete topic {name} and its {info.records:,} records?"):
                raise typer.Exit(1)
            log.delete_topic(name)
    except AffluentError as exc:
        fail(exc)
    console.print(f"deleted topic [bold]{name}[/]")


@app.command()
def describe(name: str) -> None:
    """Show a topic's configuration, partitions, offsets and consumer groups."""
    try:
        with open_configured_log() as log:
            info = log.describe_topic(name)
            groups = [g for g in log.list_groups() if g[1] == name]
            owners: dict[tuple[str, tuple[str, int]], str] = {}
            for g in {g for g, *_ in groups}:
                with contextlib.suppress(AffluentError):  # a broker that cannot describe groups shows no workers
                    owners.update({(g, tp): worker for worker, tps in log.group_members(g).items() for tp in tps})
    except AffluentError as exc:
        fail(exc)
    c = info.config
    console.print(
        f"[bold]{info.name}[/]  partitions={c.partitions} retention={_retention(c.retention_ms)} "
        f"retention_bytes={c.retention_bytes or '-'} format={c.value_format}"
    )
    table = RichTable("partition", "start offset", "end offset", "records", "size", "first event", "last event")
    for p in info.partitions:
        table.add_row(
            str(p.partition),
            str(p.start_offset),
            str(p.end_offset),
            f"{p.records:,}",
            _size(p.size_bytes),
            _when(p.first_timestamp_ms),
            _when(p.last_timestamp_ms),
        )
    console.print(table)
    if groups:
        ends = {p.partition: p.end_offset for p in info.partitions}
        gt = RichTable("group", "partition", "committed", "lag", "worker")
        for g, _, part, off in groups:
            gt.add_row(g, str(part), str(off), str(ends.get(part, off) - off), owners.get((g, (name, part)), "-"))
        console.print(gt)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _show(r: Record, raw: bool) -> None:
    if raw:
        sys.stdout.write(orjson.dumps(r.value).decode() + "\n")
        return
    doc: dict[str, Any] = {"partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms, "key": r.key, "value": r.value}
    if r.headers:
        doc["headers"] = r.headers
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")


@app.command()
def tail(
    name: str,
    n: Annotated[int, typer.Option("-n", min=1, help="How many of the last records to show.")] = 10,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Print everything from the first offset.")] = False,
    partition: Annotated[int | None, typer.Option("--partition", "-p")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print values only.")] = False,
) -> None:
    """Print the last records of a topic as JSON lines (with --follow, keep printing)."""
    try:
        with open_configured_log() as log:
            info = log.describe_topic(name)
            parts = [p for p in info.partitions if partition is None or p.partition == partition]
            if not parts:
                raise ConfigError(f"topic {name!r} has no partition {partition}")
            pos = {p.partition: p.start_offset if from_beginning else max(p.start_offset, p.end_offset - n) for p in parts}
            while True:
                got = 0
                for p, off in pos.items():
                    for b in log.read(name, p, off):
                        for r in b.records():
                            _show(r, raw)
                        pos[p] = b.next_offset
                        got += len(b)
                sys.stdout.flush()
                if not follow:
                    if got == 0:
                        break
                    continue
                if got == 0:
                    time.sleep(0.2)
    except AffluentError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def produce(
    name: str,
    values: Annotated[list[str] | None, typer.Argument(help="Values to append; none: one per line of standard input.")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k")] = None,
    key_field: Annotated[str | None, typer.Option(help="Take each record's key from this field of the JSON value.")] = None,
    create_topic: Annotated[bool, typer.Option("--create", help="Create the topic if it does not exist.")] = False,
) -> None:
    """Append records. JSON topics check every value and refuse the whole lot if one is not JSON."""
    # (line number, text): stdin lines keep their numbers, blank lines included, for error messages
    lines = list(enumerate(values, 1)) if values else [(n, line.rstrip("\n")) for n, line in enumerate(sys.stdin, 1) if line.strip()]
    where = "value" if values else "line"
    try:
        with open_configured_log() as log:
            if create_topic and not log.topic_exists(name):
                log.create_topic(name)
            config = log.describe_topic(name).config
            out = OutgoingBatch()
            now = now_ms()
            for i, line in lines:
                if config.value_format == "json":
                    try:
                        v: Any = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ConfigError(f"{where} {i} is not valid JSON ({exc}): {line[:80]!r}; nothing was appended") from exc
                else:
                    v = line
                k = key
                if key_field is not None and isinstance(v, dict) and v.get(key_field) is not None:
                    k = str(v[key_field])
                out.keys.append(k)
                out.values.append(v)
                out.timestamps.append(now)
            if config.value_format != "json":
                out.values = [x.encode() for x in out.values]
                out.raw = True
            written = log.append(name, out)
    except AffluentError as exc:
        fail(exc)
    total = sum(c for _, c in written.values())
    console.print(f"appended {total} record{'s' * (total != 1)} to [bold]{name}[/]", highlight=False)
