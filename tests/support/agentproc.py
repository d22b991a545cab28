"""The agent as a child process, the way systemd or `make run` starts it, for integration tests.

Its config is the repo's default with the changes a test asks for, written to the test's folder;
its output goes to a log file there (a pipe nobody reads could fill up and stall the agent).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.support.seed import REPO
from tests.support.services import free_port


def agent_config(work: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The default config, pointed at the example manifests and at no etcd unless told otherwise.

    `overrides` maps dotted paths (`"data_storage.configuration.endpoints"`) to values.
    """
    config: dict[str, Any] = yaml.safe_load(
        (REPO / "config" / "agent.yaml").read_text(encoding="utf-8")
    )
    config["manifests"]["paths"] = [str(REPO / "config" / "manifests")]
    config["logging"]["target"] = "stderr"
    config["resource_monitoring"]["node"]["collection_interval"] = "200ms"
    # A port nobody listens on: a test that wants etcd says where it is.
    config["data_storage"]["configuration"]["endpoints"] = [f"127.0.0.1:{free_port()}"]
    config["data_storage"]["configuration"]["dial_timeout"] = "1s"
    config["mqtt"]["broker"] = f"127.0.0.1:{free_port()}"
    # Its own API port: several test agents run at once.
    config["api"]["listen"] = f"127.0.0.1:{free_port()}"
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = config
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    del work
    return config


class AgentProcess:
    """One agent: `start()`, `signal()`, `stop()`, `kill()`, and its log."""

    def __init__(
        self,
        work: Path,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        *,
        prelude: str | None = None,
    ) -> None:
        """`prelude`: Python run in the agent's process before the agent starts (fault
        injection: it may patch a real component to fail the way a test needs)."""
        work.mkdir(parents=True, exist_ok=True)
        self.prelude = prelude
        self.work = work
        self.identifier = f"piccolo-test-{uuid.uuid4().hex[:8]}"
        self.config_path = work / "agent.yaml"
        self.log_path = work / "agent.log"
        self.state_dir = work / "state"
        self.config = agent_config(
            work, {"logging.syslog_identifier": self.identifier, **(overrides or {})}
        )
        self.write_config()
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        """The base URL of its API (`http://127.0.0.1:PORT`)."""
        return f"http://{self.config['api']['listen']}"

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")

    def start(self) -> AgentProcess:
        with self.log_path.open("ab") as log:
            if self.prelude is None:
                entry = ["-m", "agent"]
            else:
                code = f"{self.prelude}\nimport sys\nfrom agent.cli import main\nsys.exit(main())"
                entry = ["-c", code]
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *entry,
                    "run",
                    "--config",
                    str(self.config_path),
                    "--state-dir",
                    str(self.state_dir),
                    "--runtime-dir",
                    str(self.work / "run"),
                ],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> float:
        assert self.process is not None
        self.process.send_signal(sig)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the agent's log:\n{self.log()[-3000:]}")
            if not self.running:
                raise RuntimeError(f"the agent exited; its log:\n{self.log()[-3000:]}")
            time.sleep(0.05)


def live_overrides(
    etcd_endpoint: str, socket_dir: Path, broker: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Config overrides for an agent against real services: this etcd, this broker (none: MQTT
    off), its ingest socket in the short `socket_dir`, no Podman; `extra` on top (dotted keys
    written with `__`, e.g. `manifests__etcd_prefix="/m/"`)."""
    overrides: dict[str, Any] = {
        "data_storage.configuration.endpoints": [etcd_endpoint],
        "ingest.socket": str(socket_dir / "ingest.sock"),
        "resource_monitoring.container.socket": str(socket_dir / "no-podman.sock"),
    }
    if broker is None:
        overrides["mqtt.enabled"] = False
    else:
        overrides["mqtt.broker"] = broker
    overrides.update({key.replace("__", "."): value for key, value in extra.items()})
    return overrides
