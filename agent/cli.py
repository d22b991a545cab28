"""Command line: `run` (the daemon) and `check-config`; the one place mapping outcomes to exits.

Exit codes: 0 ok, 1 runtime failure, 2 usage (argparse), 78 (EX_CONFIG) invalid config or manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.app import Outcome, Paths, World, load_world, run_agent
from agent.config import DEFAULT_CONFIG_PATH
from agent.errors import ConfigError, SinkUnavailable
from agent.statusview import from_buffer, from_etcd, render, wanted_keys
from agent.store.etcd import EtcdStore, StoreRejected
from agent.systemd import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

_log = logging.getLogger("agent")


def _default_config() -> Path:
    return Path(os.environ.get("PICCOLO_AGENT_CONFIG", str(DEFAULT_CONFIG_PATH)))


def _systemd_dir(variable: str, fallback: str) -> Path:
    # systemd passes StateDirectory=/RuntimeDirectory= as colon-separated absolute paths.
    value = os.environ.get(variable, "")
    return Path(value.split(":")[0]) if value else Path(fallback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piccolo-agent",
        description="Per-node monitoring daemon for PICCOLO resources.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"configuration file (default: $PICCOLO_AGENT_CONFIG or {DEFAULT_CONFIG_PATH})",
        )

    run = commands.add_parser("run", help="run the agent in the foreground (the default)")
    with_config(run)
    run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="buffer and baselines (default: $STATE_DIRECTORY or /var/lib/piccolo-agent)",
    )
    run.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        help="ingest socket (default: $RUNTIME_DIRECTORY or /run/piccolo-agent)",
    )
    check = commands.add_parser(
        "check-config", help="validate the configuration and manifests, start nothing"
    )
    with_config(check)
    status = commands.add_parser(
        "status", help="this node's models, packages and scenarios with their key metrics"
    )
    with_config(status)
    status.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the buffer is, read when etcd is away (default as for run)",
    )
    return parser


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    count = len(exc.problems)
    print(f"{count} problem{'s' if count != 1 else ''} found; nothing was started", file=sys.stderr)


def _summary(world: World) -> str:
    inv = world.inventory
    return f"node {inv.node}: {inv.summary()}"


def check_config(config_path: Path) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    for warning in world.inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config_path}: OK ({_summary(world)})")
    if prefix := world.config.manifests.etcd_prefix:
        print(f"manifests under etcd prefix {prefix} are read and validated when the agent runs")
    return EXIT_OK


def _prepare(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)


def run(config_path: Path, state_dir: Path | None, runtime_dir: Path | None) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    # A watchdog SIGABRT or a fatal signal leaves a Python traceback in the journal.
    with contextlib.suppress(OSError, ValueError):
        faulthandler.enable()
    log = world.config.logging
    target = configure_logging(log.level, log.target, log.syslog_identifier)
    _log.info(
        "piccolo-agent %s starting (config %s, logging to %s)", __version__, config_path, target
    )
    paths = Paths(
        state_dir=state_dir or _systemd_dir("STATE_DIRECTORY", "/var/lib/piccolo-agent"),
        runtime_dir=runtime_dir or _systemd_dir("RUNTIME_DIRECTORY", "/run/piccolo-agent"),
    )
    try:
        _prepare(paths.state_dir, 0o700)
        _prepare(paths.runtime_dir, 0o755)
    except OSError as exc:
        _log.critical("cannot prepare directories: %s", exc)
        return EXIT_FAILURE
    test_hooks = os.environ.get("PICCOLO_AGENT_TEST_HOOKS") == "1"
    try:
        outcome = run_agent(world, paths, test_hooks=test_hooks)
    except Exception:  # noqa: BLE001 - any escape from the pipeline is a runtime failure: exit 1
        _log.critical("agent failed", exc_info=True)
        return EXIT_FAILURE
    if outcome is Outcome.FORCED:
        _log.warning("stop was forced; some data may not have been flushed")
        return EXIT_FAILURE
    return EXIT_OK


def status(config_path: Path, state_dir: Path | None) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    inventory = world.inventory
    storage = world.config.data_storage
    names = {
        "models": list(inventory.models),
        "packages": list(inventory.packages),
        "scenarios": list(inventory.scenarios),
    }
    keys = wanted_keys(inventory.node, **names)

    async def read() -> dict[str, dict[str, object]]:
        store = EtcdStore(storage.configuration)
        try:
            return await from_etcd(store.get, storage.data_organization.prefix, keys)
        finally:
            await store.close()

    try:
        documents = asyncio.run(read())
        source = "etcd " + ", ".join(storage.configuration.endpoints)
    except (SinkUnavailable, StoreRejected) as exc:
        directory = state_dir or _systemd_dir("STATE_DIRECTORY", "/var/lib/piccolo-agent")
        buffer = directory / world.config.buffer.file
        print(f"etcd not readable ({exc}); showing what the local buffer holds", file=sys.stderr)
        documents = from_buffer(buffer, keys)
        source = f"the local buffer {buffer}"
    print(render(inventory.node, documents=documents, source=source, **names))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = args.config if getattr(args, "config", None) else _default_config()
    if args.command == "check-config":
        return check_config(config)
    if args.command == "status":
        return status(config, args.state_dir)
    return run(config, getattr(args, "state_dir", None), getattr(args, "runtime_dir", None))
