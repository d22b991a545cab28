"""`make run`: a throwaway etcd and mosquitto on loopback, then the agent in the foreground.

    python -m tests.support.devrun --config config/agent.yaml --run-dir .run

etcd listens on 127.0.0.1:2379 (peer 2380) with its data in `<run-dir>/etcd`, mosquitto on
127.0.0.1:1883 with its files in `<run-dir>/mosquitto`. Each run starts afresh: etcd's data and the
agent's state directory are removed first (a try-out keeps nothing from the last one). One that
cannot start (program missing, port taken) is reported and left out: the agent runs anyway and
buffers until it can reach it. The agent logs to this terminal (`--log-target stderr`), even where
journald runs. The CLI is `.venv/bin/piccolo-agent` (`source .venv/bin/activate` puts it on PATH).

The agent runs in a process group of its own, so a Ctrl-C in the terminal reaches devrun alone and
devrun passes on exactly one SIGINT per Ctrl-C (the agent's "second SIGINT forces the stop" keeps
its meaning). SIGTERM is passed on the same way. devrun waits until the agent has exited, stops
what it started, and exits with the agent's status (128 + N when signal N ended it).
"""

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from .services import (
    EtcdServer,
    MosquittoServer,
    ServiceError,
    find_binary,
    parent_death_hook,
    port_is_free,
)

_FORWARDED = (signal.SIGINT, signal.SIGTERM)


class _Server(Protocol):
    @property
    def log_path(self) -> Path: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def startup_seconds(self) -> float | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _Interrupted(Exception):  # noqa: N818 -- a signal, not an error
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM: before the agent runs they abort the start-up (_Interrupted); once it
    runs each is passed on to it; after it exited they are ignored while services stop."""

    def __init__(self) -> None:
        self._agent: subprocess.Popen[bytes] | None = None
        self._launching = False
        self._settled = False
        self._pending: list[int] = []

    def install(self) -> None:
        for signum in _FORWARDED:
            signal.signal(signum, self._handle)

    def launch(self, argv: Sequence[str]) -> "subprocess.Popen[bytes]":
        self._launching = True
        agent = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=parent_death_hook(),  # noqa: PLW1509 -- it only calls prctl(2)
        )
        self._agent = agent
        for signum in self._pending:
            agent.send_signal(signum)
        return agent

    def settle(self) -> None:
        """From now on signals are ignored: what was started is being stopped anyway."""
        self._settled = True

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        agent = self._agent
        if agent is not None:
            if agent.poll() is None:
                agent.send_signal(signum)
        elif self._launching:
            self._pending.append(signum)
        elif not self._settled:
            raise _Interrupted(signum)


def _say(message: str) -> None:
    print(f"devrun: {message}", flush=True)  # noqa: T201 -- this program talks to its terminal


def _start(
    name: str,
    binary: str,
    ports: Sequence[int],
    consequence: str,
    make: Callable[[], _Server],
) -> _Server | None:
    """Start one server; on failure say why and what that means, and return None."""
    try:
        find_binary(binary)
    except ServiceError:
        reason = f"{binary} is not installed; `make deps` installs it"
    else:
        busy = [port for port in ports if not port_is_free(port)]
        if busy:
            reason = f"127.0.0.1:{busy[0]} is in use: another {name}, or an earlier `make run`?"
        else:
            server = make()
            try:
                server.start()
            except ServiceError as error:
                reason = f"{str(error).splitlines()[0]}; see {server.log_path}"
            else:
                _say(
                    f"{name} ready at {server.endpoint} in {server.startup_seconds or 0:.1f} s "
                    f"(log {server.log_path})"
                )
                return server
    _say(f"{name} could not start ({reason}); the agent will run and {consequence}")
    return None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.devrun",
        description="Run etcd and mosquitto on loopback, then the agent in the foreground.",
    )
    parser.add_argument("--config", required=True, help="agent config file")
    parser.add_argument("--run-dir", type=Path, required=True, help="where everything is kept")
    parser.add_argument("--etcd-port", type=int, default=2379)
    parser.add_argument("--etcd-peer-port", type=int, default=2380)
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument(
        "--agent-cmd",
        default=shlex.join([sys.executable, "-m", "agent"]),
        help="the command that runs the agent; `run --config ... --state-dir ... "
        "--runtime-dir ...` is appended (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    run_dir: Path = args.run_dir.resolve()
    signals = _Signals()
    signals.install()
    started: list[tuple[str, _Server]] = []
    for stale in (run_dir / "etcd", run_dir / "state"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        etcd = _start(
            "etcd",
            "etcd",
            (args.etcd_port, args.etcd_peer_port),
            "buffer locally",
            lambda: EtcdServer(
                run_dir / "etcd", args.etcd_port, args.etcd_peer_port, "piccolo-dev"
            ),
        )
        if etcd is not None:
            started.append(("etcd", etcd))
        mosquitto = _start(
            "mosquitto",
            "mosquitto",
            (args.mqtt_port,),
            "keep alerts in its outbox",
            lambda: MosquittoServer(run_dir / "mosquitto", args.mqtt_port),
        )
        if mosquitto is not None:
            started.append(("mosquitto", mosquitto))
        state_dir, runtime_dir = run_dir / "state", run_dir / "runtime"
        state_dir.mkdir(parents=True, exist_ok=True)
        runtime_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *shlex.split(args.agent_cmd),
            "run",
            "--config", args.config,
            "--state-dir", str(state_dir),
            "--runtime-dir", str(runtime_dir),
            "--log-target", "stderr",
        ]  # fmt: skip
        cli = Path(sys.executable).parent / "piccolo-agent"
        _say(
            f"the CLI: {cli} (try `{cli} status --config {args.config}` in another terminal; "
            f"`source {cli.parent}/activate` puts piccolo-agent on PATH)"
        )
        _say(f"starting the agent (Ctrl-C stops it): {shlex.join(command)}")
        status = signals.launch(command).wait()
        _say(f"the agent exited with status {_exit_code(status)}")
    except _Interrupted as interrupted:
        _say(f"{interrupted} before the agent started")
        status = -interrupted.signum
    finally:
        signals.settle()
        for name, server in reversed(started):
            server.stop()
            _say(f"stopped {name} ({server.endpoint})")
    return _exit_code(status)


def _exit_code(status: int) -> int:
    """A Popen status as a shell reports it: -N (killed by signal N) becomes 128 + N."""
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
