"""`/metrics` of a whole agent: promtool accepts a real scrape, and a real Prometheus server that
scrapes the agent answers PromQL for a model's CPU and its deadline-miss counter."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ingest.client import Reporter
from tests.conftest import require_binary
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.services import EtcdServer, PodmanService, PrometheusServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MS = 1_000_000


def scrape(agent: AgentProcess, accept: str = "") -> tuple[str, str]:
    """(Content-Type, body) of `GET /metrics`."""
    host, port = agent.config["api"]["listen"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        assert response.status == 200
        return response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def agent(
    podman: PodmanService, etcd: EtcdServer, socket_dir: Path, tmp_path: Path
) -> Iterator[AgentProcess]:
    overrides = live_overrides(
        etcd.endpoint,
        socket_dir,
        resource_monitoring__container__socket=str(podman.socket),
        resource_monitoring__container__collection_interval="250ms",
    )
    proc = AgentProcess(tmp_path / "agent", overrides).start()
    proc.wait_for_log("ready in", 30)
    name = f"vision-{time.monotonic_ns()}"
    podman.run_container(
        name,
        "--label=piccolo.io/model=vision-system",
        command=["sh", "-c", "while :; do :; done"],
    )
    yield proc
    proc.kill()
    podman.podman("rm", "-f", name, check=False)


def misses(reporter: Reporter, count: int) -> None:
    """`count` activations of `detect` (deadline 8 ms) that took 9 ms: each one a miss."""
    now = time.monotonic_ns() - 100 * MS
    for seq in range(count):
        start = now + seq * 10 * MS
        reporter.report_activation("detect", start, start + 9 * MS, seq, start)


async def test_promtool_accepts_a_real_scrape_in_both_formats(
    agent: AgentProcess, socket_dir: Path
) -> None:
    promtool = require_binary("promtool")
    misses(Reporter(socket_dir / "ingest.sock", model="vision-system"), 3)

    def cpu_seen() -> str | None:
        _, body = scrape(agent)
        return (
            body
            if 'piccolo_model_cpu_usage_ratio{node="VisionHPC",model="vision-system"' in body
            else None
        )

    body = await eventually(lambda: asyncio.to_thread(cpu_seen), 20, "the model's CPU in a scrape")
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout  # no lint complaint either
    assert checked.stderr.strip() == "", checked.stderr
    labels = 'node="VisionHPC",model="vision-system",task="detect",asil="B"'
    assert f"piccolo_task_deadline_misses_total{{{labels}}} 3" in body
    assert "# TYPE piccolo_task_deadline_misses_total counter" in body
    kind, open_metrics = await asyncio.to_thread(scrape, agent, "application/openmetrics-text")
    assert kind.startswith("application/openmetrics-text; version=1.0.0")
    assert open_metrics.endswith("# EOF\n")
    assert "# TYPE piccolo_task_deadline_misses counter" in open_metrics
    # Every series has its node label, and no label value comes from a report.
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert all('node="VisionHPC"' in line for line in samples)


async def test_a_real_prometheus_scrapes_the_agent_and_answers_promql(
    agent: AgentProcess, socket_dir: Path, tmp_path: Path
) -> None:
    require_binary("prometheus")
    misses(Reporter(socket_dir / "ingest.sock", model="vision-system"), 5)
    target = agent.config["api"]["listen"]
    with PrometheusServer(tmp_path / "prometheus", [target]) as prometheus:

        def query(promql: str) -> list[dict[str, Any]] | None:
            return prometheus.query(promql) or None

        cpu = await eventually(
            lambda: asyncio.to_thread(
                query, 'piccolo_model_cpu_usage_ratio{model="vision-system"} > 0.2'
            ),
            60,
            "the busy model's CPU through PromQL",
        )
        assert cpu[0]["metric"]["node"] == "VisionHPC"
        assert cpu[0]["metric"]["asil"] == "B"
        missed = await eventually(
            lambda: asyncio.to_thread(
                query, 'sum by (model) (piccolo_task_deadline_misses_total{model="vision-system"})'
            ),
            30,
            "the deadline-miss counter through PromQL",
        )
        assert missed[0]["value"][1] == "5"
        up = prometheus.query('up{job="piccolo"}')
        assert up[0]["value"][1] == "1"
