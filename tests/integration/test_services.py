"""The test harness itself, against the real etcd, mosquitto, journald and an sd_notify socket."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support.services import (
    JOURNAL_SOCKET,
    EtcdCluster,
    EtcdServer,
    Journald,
    MosquittoServer,
    NotifySocket,
    ServiceError,
    free_ports,
    port_is_free,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def etcdctl(endpoints: str, *args: str, timeout: str = "2s") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_binary("etcdctl"),
            f"--endpoints={endpoints}",
            f"--dial-timeout={timeout}",
            f"--command-timeout={timeout}",
            *args,
        ],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(port_is_free(port) for port in ports)


def test_etcd_keeps_data_across_stop_kill_and_restart(etcd: EtcdServer) -> None:
    assert etcdctl(etcd.endpoint, "put", "/piccolo/test", "kept").returncode == 0
    endpoint = etcd.endpoint

    etcd.stop()
    assert not etcd.running
    assert etcdctl(endpoint, "get", "/piccolo/test", timeout="200ms").returncode != 0
    etcd.start()
    assert etcd.endpoint == endpoint
    assert etcdctl(endpoint, "get", "/piccolo/test", "--print-value-only").stdout == "kept\n"

    etcd.kill()
    etcd.start()
    assert etcdctl(endpoint, "get", "/piccolo/test", "--print-value-only").stdout == "kept\n"
    assert etcd.startup_seconds is not None


def test_etcd_start_failure_reports_the_log(tmp_path: Path) -> None:
    require_binary("etcd")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = int(squatter.getsockname()[1])
        server = EtcdServer(tmp_path / "etcd", client_port=busy)
        with pytest.raises(ServiceError, match="address already in use") as failure:
            server.start()
    assert "last lines of" in str(failure.value)
    assert not server.running


def test_etcd_cluster_of_three_survives_one_member_down(tmp_path: Path) -> None:
    require_binary("etcd")
    with EtcdCluster(tmp_path, size=3) as cluster:
        endpoints = ",".join(cluster.endpoints)
        assert etcdctl(endpoints, "put", "k", "v").returncode == 0
        cluster.members[0].stop()
        survivors = ",".join(cluster.endpoints[1:])
        assert etcdctl(survivors, "get", "k", "--print-value-only").stdout == "v\n"
        cluster.members[0].start()
        members = etcdctl(endpoints, "member", "list").stdout.splitlines()
        assert len(members) == 3


def test_mosquitto_delivers_and_keeps_retained_messages_across_restart(
    mosquitto: MosquittoServer,
) -> None:
    pub, sub = require_binary("mosquitto_pub"), require_binary("mosquitto_sub")
    topic = f"piccolo/test/{uuid.uuid4().hex}"
    address = ["-h", mosquitto.host, "-p", str(mosquitto.port)]

    def receive_one() -> str:
        received = subprocess.run(
            [sub, *address, "-t", topic, "-C", "1", "-W", "5"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return received.stdout

    # Retained, so the subscriber gets it whenever it subscribes: no race with the publisher.
    publish = [pub, *address, "-t", topic, "-m", "hello", "-q", "1", "-r"]
    subprocess.run(publish, check=True, timeout=10)
    assert receive_one() == "hello\n"

    mosquitto.stop()
    assert not mosquitto.connectable()
    mosquitto.start()
    assert receive_one() == "hello\n"


def test_journald_reads_what_systemd_cat_wrote(journald: Journald) -> None:
    identifier = f"piccolo-test-{uuid.uuid4().hex[:12]}"
    cursor = journald.cursor()
    systemd_cat = require_binary("systemd-cat")
    subprocess.run([systemd_cat, "-t", identifier, "echo", "hello"], check=True, timeout=10)

    entries = journald.read(identifier, since_cursor=cursor)
    assert [entry["MESSAGE"] for entry in entries] == ["hello"]
    assert journald.read(identifier, since_cursor=entries[-1]["__CURSOR"], timeout=0.2) == []


def test_journald_keeps_structured_fields_and_matches_on_them(journald: Journald) -> None:
    identifier = f"piccolo-test-{uuid.uuid4().hex[:12]}"
    cursor = journald.cursor()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for index in range(2):
            entry = (
                f"MESSAGE=entry {index}\nSYSLOG_IDENTIFIER={identifier}\nPICCOLO_INDEX={index}\n"
            )
            sock.sendto(entry.encode(), str(JOURNAL_SOCKET))

    entries = journald.read(identifier, since_cursor=cursor, match={"PICCOLO_INDEX": "1"})
    assert [(entry["MESSAGE"], entry["PICCOLO_INDEX"]) for entry in entries] == [("entry 1", "1")]
    with pytest.raises(ValueError, match="not a journal field"):
        journald.read(identifier, match={"--all": "x"})


def test_notify_socket_records_datagrams_with_times_and_sender(
    notify_socket: NotifySocket,
) -> None:
    before = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1\nSTATUS=started\nMAINPID=42", notify_socket.address)
        sock.sendto(b"WATCHDOG=1", notify_socket.address)
        sock.sendto(b"WATCHDOG=1", notify_socket.address)

    ready = notify_socket.wait_for("READY", "1", timeout=2)
    assert before <= ready <= time.monotonic()
    assert notify_socket.receive(timeout=1) == {"READY": "1", "STATUS": "started", "MAINPID": "42"}
    watchdog = notify_socket.wait_for("WATCHDOG", "1", timeout=2)
    notify_socket.wait_for("WATCHDOG", "1", timeout=2, after=watchdog)
    assert len(notify_socket.watchdog_times()) == 2
    assert notify_socket.messages[0].pid == os.getpid()
    with pytest.raises(TimeoutError, match="no STOPPING=1"):
        notify_socket.wait_for("STOPPING", "1", timeout=0.1)


def test_notify_socket_hears_systemd_notify(notify_socket: NotifySocket) -> None:
    notify = require_binary("systemd-notify")
    subprocess.run(
        [notify, "--ready", "--status=from systemd-notify"],
        env={**os.environ, **notify_socket.env},
        check=True,
        timeout=10,
    )
    notify_socket.wait_for("READY", "1", timeout=2)
    assert notify_socket.values("STATUS") == ["from systemd-notify"]


def test_notify_socket_refuses_a_path_too_long_for_unix_sockets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="longer than"):
        NotifySocket(tmp_path / ("x" * 120))


STAND_IN_AGENT = """
import json, os, signal, sys, time
from pathlib import Path

out = Path(sys.argv[1])
received = []
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda signum, frame: received.append(signum))
out.joinpath("agent.json").write_text(json.dumps({"argv": sys.argv[2:], "pgid": os.getpgid(0)}))
while not received:
    time.sleep(0.01)
time.sleep(0.3)  # a second, duplicated signal would arrive meanwhile
out.joinpath("signals.json").write_text(json.dumps(received))
sys.exit(3)
"""


def test_devrun_runs_the_agent_forwards_one_ctrl_c_and_stops_everything(tmp_path: Path) -> None:
    require_binary("etcd")
    stand_in = tmp_path / "agent.py"
    stand_in.write_text(STAND_IN_AGENT)
    run_dir = tmp_path / "run"
    etcd_port, peer_port = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        mqtt_port = int(squatter.getsockname()[1])
        devrun = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.devrun",
                "--config", "config/agent.yaml",
                "--run-dir", str(run_dir),
                "--etcd-port", str(etcd_port),
                "--etcd-peer-port", str(peer_port),
                "--mqtt-port", str(mqtt_port),
                "--agent-cmd", shlex.join([sys.executable, str(stand_in), str(tmp_path)]),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while not (tmp_path / "agent.json").exists():
                assert devrun.poll() is None, devrun.communicate()[0]
                assert time.monotonic() < deadline, "the stand-in agent did not start"
                time.sleep(0.02)
            assert EtcdServer(run_dir / "etcd", etcd_port, peer_port).healthy()
            # What a terminal's Ctrl-C does: SIGINT to the foreground process group, here devrun's.
            os.killpg(devrun.pid, signal.SIGINT)
            output, _ = devrun.communicate(timeout=15)
        finally:
            if devrun.poll() is None:
                devrun.kill()
                devrun.wait()

    assert devrun.returncode == 3, output
    agent = json.loads((tmp_path / "agent.json").read_text())
    assert agent["argv"] == [
        "run",
        "--config", "config/agent.yaml",
        "--state-dir", str(run_dir / "state"),
        "--runtime-dir", str(run_dir / "runtime"),
        "--log-target", "stderr",
    ]  # fmt: skip
    assert agent["pgid"] != devrun.pid
    assert json.loads((tmp_path / "signals.json").read_text()) == [signal.SIGINT]
    assert f"etcd ready at 127.0.0.1:{etcd_port}" in output
    assert f"mosquitto could not start (127.0.0.1:{mqtt_port} is in use" in output
    assert "stopped etcd" in output
    assert "the agent exited with status 3" in output
    assert port_is_free(etcd_port)
    assert port_is_free(peer_port)
