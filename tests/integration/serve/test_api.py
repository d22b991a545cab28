"""The REST query API of a whole agent against a real etcd, with a real HTTP client and curl."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.support.agentproc import AgentProcess, live_overrides
from tests.support.seed import REPO
from tests.support.services import EtcdServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BASE = "/api/v1/monitoring/resources"


def report_state(socket_path: Path, scenario: str, state: str, reason: str) -> None:
    """What the orchestrator sends: a `state` report on the ingest socket."""
    message = {
        "v": 1,
        "type": "state",
        "resource_type": "scenario",
        "id": scenario,
        "state": state,
        "reason": reason,
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(json.dumps(message).encode(), str(socket_path))


def get(agent: AgentProcess, target: str, **headers: str) -> tuple[int, dict[str, str], Any]:
    host, port = agent.config["api"]["listen"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read()
        kind = response.getheader("Content-Type", "")
        document = json.loads(body) if "json" in kind else body.decode()
        return response.status, dict(response.getheaders()), document
    finally:
        connection.close()


async def aget(agent: AgentProcess, target: str, **headers: str) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(get, agent, target, **headers)


@pytest.fixture
def etcd_agent(etcd: EtcdServer, socket_dir: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path / "agent", live_overrides(etcd.endpoint, socket_dir)).start()
    agent.wait_for_log("ready in", 30)
    yield agent
    agent.kill()


async def test_every_endpoint_answers_from_etcd_at_one_revision(
    etcd_agent: AgentProcess, socket_dir: Path
) -> None:
    agent = etcd_agent
    report_state(socket_dir / "ingest.sock", "adas-activation", "playing", "conditions met")

    async def node_metrics() -> dict[str, Any] | None:
        status, _, document = await aget(
            agent, f"{BASE}/node/VisionHPC/metrics?metric_names=cpu_usage&metric_names=memory_usage"
        )
        names = [m["name"] for m in document.get("metrics", []) if m["latest"] is not None]
        return document if status == 200 and names == ["cpu_usage", "memory_usage"] else None

    document = await eventually(node_metrics, 20, "node metrics through the API")
    assert document["source"] == "etcd"
    assert isinstance(document["revision"], int)
    cpu = document["metrics"][0]
    assert set(cpu["latest"]) >= {"value", "unit", "ts", "node"}
    assert cpu["latest"]["unit"] == "%"

    status, _, all_metrics = await aget(agent, f"{BASE}/node/VisionHPC/metrics")
    assert status == 200
    assert {"cpu_usage", "memory_usage", "agent_buffer_depth"} <= {
        m["name"] for m in all_metrics["metrics"]
    }

    status, _, state = await aget(
        agent, f"{BASE}/scenario/adas-activation/state?include_history=true&limit=5"
    )
    assert status == 200
    assert state["state"] is None or state["state"]["state"] in {"playing", "Playing"}

    async def scenario_state() -> dict[str, Any] | None:
        _, _, found = await aget(agent, f"{BASE}/scenario/adas-activation/state")
        return found if found["state"] is not None else None

    found = await eventually(scenario_state, 10, "the reported scenario state")
    assert found["state"]["state"] == "playing"

    # The elected agent marked the other node's model lost: an event to read back.
    async def lost() -> list[Any] | None:
        _, _, found = await aget(
            agent, f"{BASE}/model/sensor-fusion/events?event_types=node_absent&limit=3"
        )
        return found["events"] or None

    events = await eventually(lost, 15, "the node_absent event")
    assert [e["type"] for e in events] == ["node_absent"]
    _, _, none = await aget(agent, f"{BASE}/model/sensor-fusion/events?event_types=nothing")
    assert none["events"] == []


async def test_nodes_resources_alerts_openapi_and_health(etcd_agent: AgentProcess) -> None:
    agent = etcd_agent

    async def nodes_known() -> dict[str, Any] | None:
        _, _, found = await aget(agent, "/api/v1/monitoring/nodes")
        return found if found.get("elected") == "VisionHPC" else None

    await eventually(nodes_known, 15, "the elected agent")
    status, _, nodes = await aget(agent, "/api/v1/monitoring/nodes")
    assert status == 200
    by_name = {n["name"]: n for n in nodes["nodes"]}
    assert by_name["VisionHPC"]["alive"] is True
    assert by_name["VisionHPC"]["elected"] is True
    assert by_name["ChassisECU"]["alive"] is False
    assert nodes["elected"] == "VisionHPC"

    status, _, listed = await aget(agent, "/api/v1/monitoring/resources?type=model&prefix=vision")
    assert status == 200
    assert [r["id"] for r in listed["resources"]] == ["vision-system"]

    status, _, alerts = await aget(agent, "/api/v1/monitoring/alerts")
    assert status == 200
    assert alerts["node"] == "VisionHPC"
    assert isinstance(alerts["alerts"], list)

    status, _, spec = await aget(agent, "/api/v1/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.")
    assert f"{BASE}/{{resource_type}}/{{resource_id}}/metrics" in spec["paths"]

    assert (await aget(agent, "/healthz"))[0] == 200
    assert (await aget(agent, "/readyz"))[0] == 200


@pytest.mark.parametrize(
    ("target", "status", "words"),
    [
        (f"{BASE}/model/bad$id/state", 400, "invalid resource id"),
        (f"{BASE}/gadget/x/state", 400, "unknown resource type"),
        (f"{BASE}/model/vision-system/events?from=yesterday", 400, "not an RFC 3339 time"),
        (f"{BASE}/model/vision-system/events?from=-1x", 400, "bad relative time"),
        (f"{BASE}/model/vision-system/events?limit=-3", 400, "limit must be"),
        (f"{BASE}/model/vision-system/events?from=now&to=-1h", 400, "from is after to"),
        (f"{BASE}/model/vision-system/state?include_history=maybe", 400, "include_history"),
        (f"{BASE}/model/no-such-model/metrics", 404, "no model"),
        ("/api/v1/nothing-here", 404, "no such endpoint"),
        ("/api/v1/monitoring/resources?type=gadget", 400, "unknown resource type"),
    ],
)
async def test_errors_are_problem_documents(
    etcd_agent: AgentProcess, target: str, status: int, words: str
) -> None:
    got, headers, document = await aget(etcd_agent, target)
    assert got == status, document
    assert headers["Content-Type"] == "application/problem+json"
    assert document["status"] == status
    assert words in document["detail"]
    assert set(document) >= {"type", "title", "status", "detail"}


async def test_curl_gets_the_api_and_methods_other_than_get_are_405(
    etcd_agent: AgentProcess,
) -> None:
    curl = require_binary("curl")
    url = f"{etcd_agent.api}{BASE}/node/VisionHPC/state"
    done = await asyncio.to_thread(
        subprocess.run,
        [curl, "-sS", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    body, code = done.stdout.rsplit("\n", 1)
    assert code == "200", done.stderr
    assert json.loads(body)["resource_id"] == "VisionHPC"
    done = await asyncio.to_thread(
        subprocess.run,
        [curl, "-sS", "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.stdout == "405"


async def test_with_etcd_stopped_this_nodes_data_comes_from_the_agent(
    etcd: EtcdServer, socket_dir: Path, tmp_path: Path
) -> None:
    agent = AgentProcess(tmp_path / "agent", live_overrides(etcd.endpoint, socket_dir)).start()
    try:
        agent.wait_for_log("ready in", 30)
        await eventually(
            lambda: asyncio.sleep(0, agent.log_path.read_text().count("etcd reachable") > 0),
            15,
            "etcd reachable",
        )
        await asyncio.to_thread(etcd.stop)
        ingest = socket_dir / "ingest.sock"
        report_state(ingest, "adas-activation", "waiting", "etcd is away")
        await asyncio.sleep(0.3)
        report_state(ingest, "adas-activation", "playing", "etcd is away")  # a transition

        async def local() -> dict[str, Any] | None:
            status, _, document = await aget(
                agent, f"{BASE}/node/VisionHPC/metrics?metric_names=cpu_usage"
            )
            local = status == 200 and document["source"] == "local"
            return document if local and document["metrics"] else None

        started = time.monotonic()
        document = await eventually(local, 30, "a local answer with etcd stopped")
        assert document["revision"] is None
        assert document["metrics"][0]["latest"]["unit"] == "%"
        # The scenario's state change waits in the buffer: it is answered from there.
        status, _, state = await aget(
            agent, f"{BASE}/scenario/adas-activation/state?include_history=true"
        )
        assert status == 200, state
        assert state["source"] == "local"
        assert state["state"]["state"] == "playing"
        assert [(t["from"], t["to"]) for t in state["transitions"]] == [("waiting", "playing")]
        status, _, events = await aget(agent, f"{BASE}/model/vision-system/events")
        assert status == 200
        assert events["source"] == "local"
        # Another node's resource cannot be answered for.
        status, _, problem = await aget(agent, f"{BASE}/model/sensor-fusion/state")
        assert status == 503, problem
        assert "not this node's" in problem["detail"]
        assert time.monotonic() - started < 30
    finally:
        agent.kill()


def test_a_listener_beyond_loopback_needs_tls_or_a_token(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    manifests = REPO / "config" / "manifests"
    config.write_text(f"manifests: {{paths: ['{manifests}']}}\napi:\n  listen: 0.0.0.0:9108\n")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78
    assert f"{config}:3:" in done.stderr
    assert "reachable beyond this machine" in done.stderr
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config.write_text(
        f"manifests: {{paths: ['{manifests}']}}\n"
        f"api:\n  listen: 0.0.0.0:9108\n  token_file: {token}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_a_token_file_guards_the_api(
    etcd: EtcdServer, socket_dir: Path, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    agent = AgentProcess(
        tmp_path / "agent", live_overrides(etcd.endpoint, socket_dir, api__token_file=str(token))
    ).start()
    try:
        agent.wait_for_log("API listening", 30)
        status, _, _ = await aget(agent, "/healthz")
        assert status == 401
        status, _, _ = await aget(agent, "/healthz", Authorization="Bearer tok-123")
        assert status == 200
    finally:
        agent.kill()


async def test_a_huge_body_and_slow_clients_do_not_slow_the_agent(
    etcd_agent: AgentProcess,
) -> None:
    agent = etcd_agent
    host, port = agent.config["api"]["listen"].rsplit(":", 1)

    async def collections() -> int:
        _, _, document = await aget(
            agent,
            f"{BASE}/node/VisionHPC/metrics?metric_names=agent_collector_node_collections"
            "&source=local",
        )
        return int(document["metrics"][0]["latest"]["value"])

    before, started = await collections(), time.monotonic()
    # 20 slow-loris clients sending a head a byte every 100 ms, and one 10 MB body.
    slow = [await asyncio.open_connection(host, int(port)) for _ in range(20)]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
    try:
        for _ in range(40):
            writer.write(b"x" * 262144)
            await writer.drain()
    except ConnectionError:
        pass  # refused unread and closed, as it should be
    for step in range(30):
        for _, slow_writer in slow:
            with contextlib.suppress(ConnectionError):
                slow_writer.write(b"GET /healthz HTTP/1.1\r\n"[step : step + 1])
        await asyncio.sleep(0.1)
    after, ended = await collections(), time.monotonic()
    # The node collector runs every 200 ms in the test agent: it kept (almost) its pace.
    expected = (ended - started) / 0.2
    assert after - before >= 0.8 * expected, (after - before, expected)
    status, _, _ = await aget(agent, "/healthz")
    assert status == 200
    for _, slow_writer in slow:
        slow_writer.close()
    writer.close()
    del reader
