"""The docker compose file of the distributed stack, checked offline (no Docker engine here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from affluent.config import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_it_parses_against_the_compose_specification(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with check-jsonschema (dev extra)")
    from importlib.resources import files

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_every_service_has_an_image_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "stock", "bikes", "jobs", "dashboard", "kafka", "affluent"} <= set(services)
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_kafka_runs_in_kraft_mode_with_three_replicas(compose: dict[str, Any]) -> None:
    brokers = {n: s for n, s in compose["services"].items() if n.startswith("kafka-")}
    assert len(brokers) == 3
    for svc in brokers.values():
        assert svc["image"].startswith("apache/kafka:")
        env = svc["environment"]
        assert "controller" in env["KAFKA_PROCESS_ROLES"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3 and env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 3
    assert len({s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()}) == 3


def test_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host = str(port).split(":")[0]
            assert host not in seen, f"{name} and {seen[host]} both publish host port {host}"
            seen[host] = name


def test_the_apps_get_every_setting_they_need(compose: dict[str, Any]) -> None:
    known = set(Settings.model_fields)
    for name in ("stock", "bikes", "jobs", "dashboard", "affluent"):
        env = compose["services"][name]["environment"]
        assert env["AFFLUENT__LOG__URL"].startswith("kafka://"), name
        for var in env:
            if var.startswith("AFFLUENT__"):
                assert var.split("__")[1].lower() in known, f"{name}: {var} is not an affluent setting"
        assert "FRANCE_TRAVAIL_CLIENT_ID" in env and "FRANCE_TRAVAIL_CLIENT_SECRET" in env
    assert compose["services"]["stock"]["environment"]["AFFLUENT__LOG__URL"].count("kafka-") == 3
