"""Command line: `run` (the daemon), `check-config`, `status`, `query`, `top`, `report`; the one
place mapping outcomes to exit codes.

Exit codes: 0 ok, 1 runtime failure (or nothing could be read), 2 usage (argparse), 78
(EX_CONFIG) invalid config or manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import errno
import faulthandler
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent import __version__, console
from agent.app import Outcome, Paths, run_agent
from agent.config import DEFAULT_CONFIG_PATH, Config, unacted_settings
from agent.errors import ConfigError, SinkUnavailable
from agent.evaluate.anomaly import parse_timestamp, replay
from agent.ingest.client import DEFAULT_PATH, PATH_VARIABLE, Reporter
from agent.ingest.protocol import (
    APP_METRICS,
    NAME_PATTERN,
    SCENARIO_RESULTS,
    STATE_RESOURCE_TYPES,
    WALL_CLOCK_AHEAD_NS,
)
from agent.manifests import Inventory
from agent.model import check_resource_id
from agent.runtime.scheduling import raise_loop_priority
from agent.statusview import from_buffer, from_etcd, render, wanted_keys
from agent.store.etcd import EtcdStore, StoreRejected
from agent.systemd import configure_logging
from agent.units import parse_duration
from agent.world import World, load_world

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
EXIT_CODES = "exit codes: 0 ok, 1 nothing answered or could be read, 2 usage, 78 invalid config"
RUN_EXIT_CODES = (
    "exit codes: 0 stopped cleanly, 1 a stage failed for good or the stop was forced, 2 usage, "
    "78 invalid config or manifests (systemd does not restart it: RestartPreventExitStatus=78)"
)
REPORT_EXIT_CODES = (
    "exit codes: 0 the socket took the report, 1 it did not (no agent, full queue, no "
    "permission), 2 usage (a bad value, a wall-clock time)"
)

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

    run = commands.add_parser(
        "run",
        help="run the agent in the foreground (the default)",
        description="Run the agent in the foreground, as systemd does (Type=notify).",
        epilog=RUN_EXIT_CODES,
    )
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
    run.add_argument(
        "--log-target",
        choices=["auto", "journald", "stderr"],
        default=None,
        help="where the log goes, instead of logging.target (make run: stderr, this terminal)",
    )
    check = commands.add_parser(
        "check-config",
        help="validate the configuration and manifests, start nothing",
        description="Validate the configuration and the manifests it names, print what would "
        "run and every warning; start nothing.",
        epilog="exit codes: 0 valid (warnings may be printed), 2 usage, 78 invalid, each problem "
        "named with file:line:column and field",
    )
    with_config(check)
    status = commands.add_parser(
        "status",
        help="this node's models, packages and scenarios with their key metrics",
        description="This node's documents from etcd (else the local buffer) with the agent's "
        "live values, and whether the agent answers.",
        epilog=EXIT_CODES,
    )
    with_config(status)
    status.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the buffer is, read when etcd is away (default as for run)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    _add_query_parser(commands, with_config)
    top = commands.add_parser(
        "top",
        help="a live view of this node (models, packages, scenarios, alerts), every second",
        description="A live view of this node through the agent's API, redrawn every second. "
        "Keys: n, c, m, d sort by name, CPU, memory, deadline misses; q quits.",
        epilog=EXIT_CODES,
    )
    with_config(top)
    top.add_argument(
        "--sort",
        choices=["name", "cpu", "memory", "misses"],
        default="name",
        help="the models' order at start (default name)",
    )
    top.add_argument("--once", action="store_true", help="print one screen and exit (no terminal)")
    _add_anomaly_parser(commands)
    _add_report_parser(commands)
    return parser


def _add_anomaly_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    anomaly = commands.add_parser(
        "anomaly",
        help="anomaly detection tools (replay a recorded series)",
        description="Anomaly detection tools.",
        epilog=EXIT_CODES,
    )
    tools = anomaly.add_subparsers(dest="anomaly_command", metavar="TOOL", required=True)
    replay = tools.add_parser(
        "replay",
        help="score a recorded series with the daemon's detector, to tune sensitivity",
        description="Read timestamp,value rows (ISO 8601 or YYYY-MM-DD HH:MM:SS, any sampling "
        "rate, a header line) and feed them, at their own times, to the daemon's detector. "
        "Writes timestamp,value,anomaly_score,label (label 0 or 1) to stdout, one row per input "
        "row with the timestamp as read, after a header line. The first tenth of the series "
        "(30 to 1,000 rows) is learned before it may alert.",
        epilog="exit codes: 0 written, 1 the file could not be read (its line named), 2 usage",
    )
    replay.add_argument("file", type=Path, help="the CSV file (- for stdin)")
    replay.add_argument("--metric", default=None, help="the series' name (for the record only)")
    replay.add_argument(
        "--method",
        choices=["statistical", "pattern_based"],
        default="statistical",
        help="statistical: the values themselves; pattern_based: the values are counts per "
        "window (transitions, errors)",
    )
    replay.add_argument(
        "--sensitivity", choices=["low", "medium", "high"], default="medium", help="default medium"
    )
    replay.add_argument(
        "--learning-points",
        type=_count,
        default=None,
        help="rows learned before alerting (default: a tenth, 30 to 1,000)",
    )


def _add_query_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    query = commands.add_parser(
        "query",
        help="one resource's metrics, state or events, through the agent's API (or etcd)",
        description="Ask the local agent's API (api.listen) for one resource's metrics, state "
        "or events; with --etcd, answer in this process straight from etcd (no agent needed).",
        epilog=EXIT_CODES,
    )
    with_config(query)
    query.add_argument("what", choices=["metrics", "state", "events"], help="what to read")
    query.add_argument(
        "type", choices=["scenario", "package", "model", "node"], help="the resource's type"
    )
    query.add_argument("id", type=_resource_id, help="the resource's name")
    query.add_argument(
        "--names", help="metrics (for metrics) or event types (for events), comma-separated"
    )
    query.add_argument(
        "--from",
        dest="start",
        help="start: RFC 3339, now, or relative such as -1h (default -1h)",
    )
    query.add_argument("--to", dest="end", help="end, spelled as --from (default now)")
    query.add_argument("--limit", type=int, help="events or transitions at most (default 100)")
    query.add_argument("--json", action="store_true", help="print the API's JSON document")
    query.add_argument(
        "--etcd", action="store_true", help="read etcd directly instead of asking the agent"
    )


def _resource_id(value: str) -> str:
    try:
        return check_resource_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid name {value!r}: 1-128 letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return value


def _count(value: str) -> int:
    number = int(value)
    if not 0 <= number < 1 << 63:
        raise argparse.ArgumentTypeError(f"{value} is not a count from 0 to 2^63-1")
    return number


def _time_ns(value: str) -> int:
    """A CLOCK_MONOTONIC time in ns, or `now` (read here); a wall-clock time is refused."""
    if value == "now":
        return time.monotonic_ns()
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: CLOCK_MONOTONIC ns, or now"
        ) from None
    if not 0 <= number < 1 << 63:
        raise argparse.ArgumentTypeError(f"{value} is not a CLOCK_MONOTONIC time in ns")
    if number - time.monotonic_ns() > WALL_CLOCK_AHEAD_NS:
        raise argparse.ArgumentTypeError(
            f"{value} is a wall-clock time (as date +%s%N prints), not CLOCK_MONOTONIC: write "
            "now, or a time from clock_gettime(CLOCK_MONOTONIC) (Python: time.monotonic_ns())"
        )
    return number


def _duration_ns(value: str) -> int:
    try:
        return int(parse_duration(value) * 1e9)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number")
    return number


def _duration_ms(value: str) -> float:
    number = _finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _add_report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="send one report to the agent's ingest socket (docs/ingest-protocol.md)",
        description="Send one report to the agent's ingest socket. Exits 1 when it could not be "
        "handed to the socket (no agent, full queue, no permission).",
        epilog=REPORT_EXIT_CODES,
    )
    types = report.add_subparsers(dest="report_type", metavar="TYPE", required=True)

    def add(name: str, help_text: str, *, task: bool) -> argparse.ArgumentParser:
        sub = types.add_parser(
            name, help=help_text, description=help_text.capitalize() + ".", epilog=REPORT_EXIT_CODES
        )
        sub.add_argument(
            "--socket",
            type=Path,
            default=None,
            help=f"the agent's socket (default: ${PATH_VARIABLE} or {DEFAULT_PATH})",
        )
        if task:
            sub.add_argument("--model", type=_resource_id, required=True, help="the model's name")
            sub.add_argument(
                "--task", type=_name, required=True, help="the supervised task (timing.tasks)"
            )
        return sub

    times = "CLOCK_MONOTONIC ns, or now"

    def add_ts(sub: argparse.ArgumentParser, option: str = "--ts-ns") -> None:
        sub.add_argument(option, type=_time_ns, default=None, help=f"{times} (default: now)")

    def add_seq(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--seq", type=_count, required=True, help="the activation's number")

    start = add("start", "an activation began", task=True)
    add_seq(start)
    add_ts(start)
    start.add_argument("--release-ns", type=_time_ns, default=None, help=f"its release: {times}")
    end = add("end", "an activation (the same --seq) finished", task=True)
    add_seq(end)
    add_ts(end)
    activation = add("activation", "a whole activation", task=True)
    add_seq(activation)
    activation.add_argument(
        "--start-ns", "--start", dest="start_ns", type=_time_ns, required=True, help=times
    )
    ends = activation.add_mutually_exclusive_group(required=True)
    ends.add_argument("--end-ns", "--end", dest="end_ns", type=_time_ns, help=times)
    ends.add_argument(
        "--duration", type=_duration_ns, help="instead of --end: how long it ran, e.g. 9ms"
    )
    activation.add_argument(
        "--release-ns", type=_time_ns, default=None, help=f"its release: {times}"
    )
    add_ts(add("heartbeat", "a task is alive", task=True))
    checkpoint = add("checkpoint", "a task reached a checkpoint", task=True)
    checkpoint.add_argument(
        "--checkpoint", type=_name, required=True, help="the checkpoint reached (its name)"
    )
    add_ts(checkpoint)
    metric = add("metric", "an application metric of a model", task=False)
    metric.add_argument("--model", type=_resource_id, required=True, help="the model's name")
    metric.add_argument("--name", choices=sorted(APP_METRICS), required=True, help="the metric")
    metric.add_argument("--value", type=_finite, required=True, help="a finite number")
    metric.add_argument("--unit", required=True, help="its unit, e.g. ms or fps")
    scenario = add("scenario", "one execution of a scenario", task=False)
    scenario.add_argument("--scenario", type=_resource_id, required=True, help="its name")
    scenario.add_argument(
        "--duration-ms", type=_duration_ms, required=True, help="how long it ran, in ms"
    )
    scenario.add_argument(
        "--result", choices=sorted(SCENARIO_RESULTS), required=True, help="how it ended"
    )
    state = add("state", "a resource's state as the orchestrator sees it", task=False)
    state.add_argument(
        "--type",
        dest="resource_type",
        choices=sorted(STATE_RESOURCE_TYPES),
        required=True,
        help="the resource's type",
    )
    state.add_argument("--id", type=_resource_id, required=True, help="the resource's name")
    state.add_argument("--state", type=_name, required=True, help="its state, e.g. playing")
    state.add_argument("--reason", default="", help="why, in a few words")


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    count = len(exc.problems)
    print(f"{count} problem{'s' if count != 1 else ''} found; nothing was started", file=sys.stderr)


def _names(inventory: Inventory) -> dict[str, list[str]]:
    """This node's models, packages and scenarios by kind, as `status` and `top` show them."""
    return {
        "models": list(inventory.models),
        "packages": list(inventory.packages),
        "scenarios": list(inventory.scenarios),
    }


def _summary(world: World) -> str:
    inv = world.inventory
    unknown = sum(1 for m in inv.models.values() if m.manifest is None)
    without = (
        f"; {unknown} of the models named by packages only, no Model manifest" if unknown else ""
    )
    return f"node {inv.node}: {inv.summary()}{without}"


def check_config(config_path: Path) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    for warning in world.inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for text in world.warnings:
        print(f"warning: {config_path}: {text}", file=sys.stderr)
    for path, why in unacted_settings(world.config):
        print(f"warning: {config_path}: {path} is set but not acted on yet: {why}", file=sys.stderr)
    print(f"{config_path}: OK ({_summary(world)})")
    if prefix := world.config.manifests.etcd_prefix:
        print(f"manifests under etcd prefix {prefix} are read and validated when the agent runs")
    return EXIT_OK


def _prepare(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)


def run(
    config_path: Path,
    state_dir: Path | None,
    runtime_dir: Path | None,
    log_target: str | None = None,
) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    # A watchdog SIGABRT or a fatal signal leaves a Python traceback in the journal.
    with contextlib.suppress(OSError, ValueError):
        faulthandler.enable()
    log = world.config.logging
    if log_target is not None:
        log = log.model_copy(update={"target": log_target})
        world = dataclasses.replace(world, config=world.config.model_copy(update={"logging": log}))
    target = configure_logging(log.level, log.target, log.syslog_identifier)
    _log.info(
        "piccolo-agent %s starting (config %s, logging to %s)", __version__, config_path, target
    )
    for text in world.warnings:
        _log.warning("%s", text)
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
    if unacted := unacted_settings(world.config):
        _log.warning(
            "settings not acted on yet (accepted, no effect): %s",
            "; ".join(f"{path} ({why})" for path, why in unacted),
        )
    # Before any thread starts: the threads started later inherit it.
    scheduling = raise_loop_priority(world.config.timing.realtime_priority)
    _log.info("event loop scheduling: %s, priority %d", scheduling.policy, scheduling.priority)
    test_hooks = os.environ.get("PICCOLO_AGENT_TEST_HOOKS") == "1"
    try:
        outcome = run_agent(world, paths, test_hooks=test_hooks)
    except Exception:  # noqa: BLE001 - any escape from the pipeline is a runtime failure: exit 1
        _log.critical("agent failed", exc_info=True)
        return EXIT_FAILURE
    if outcome is Outcome.FORCED:
        _log.warning("stop was forced; some data may not have been flushed")
        return EXIT_FAILURE
    if outcome is Outcome.FAILED:
        return EXIT_FAILURE
    return EXIT_OK


def status(config_path: Path, state_dir: Path | None, *, as_json: bool = False) -> int:
    """This node's documents (etcd, else the local buffer) with the agent's live values; exits 1
    when it could read nothing at all."""
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    inventory = world.inventory
    config = world.config
    storage = config.data_storage
    names = _names(inventory)
    keys = wanted_keys(inventory.node, **names)

    async def read() -> dict[str, dict[str, object]]:
        store = EtcdStore(storage.configuration)
        try:
            return await from_etcd(store.get, storage.data_organization.prefix, keys)
        finally:
            await store.close()

    running, live = asyncio.run(_live(config, names["models"]))
    try:
        documents = asyncio.run(read())
        source = "etcd " + ", ".join(storage.configuration.endpoints)
    except (SinkUnavailable, StoreRejected) as exc:
        directory = state_dir or _systemd_dir("STATE_DIRECTORY", "/var/lib/piccolo-agent")
        buffer = directory / config.buffer.file
        if buffer.exists():
            documents = from_buffer(buffer, keys)
            source = f"the local buffer {buffer} ({len(documents)} of {len(keys)} keys pending)"
        else:
            documents = {}
            source = f"nowhere: no buffer at {buffer}"
        print(f"etcd not readable ({exc})", file=sys.stderr)
    if as_json:
        document = {
            "node": inventory.node,
            "agent": {"answering": running is not None, "detail": running},
            "source": source,
            "documents": documents,
            "live": live,
        }
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(
            render(
                inventory.node,
                documents=documents,
                source=source,
                live=live,
                running=running,
                **names,
            )
        )
    if not documents and running is None:
        print("nothing could be read: no etcd, no buffer, no agent answering", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _live(
    config: Config, models: list[str]
) -> tuple[str | None, dict[str, dict[str, object]]]:
    """(what the agent's /healthz said, or None when it did not answer; model -> its newest
    values as the agent holds them)."""
    try:
        health = await console.ask(config, "/healthz", timeout_s=2.0)
    except console.Unanswered:
        return None, {}
    detail = "healthy" if health.status == 200 else (health.document or {}).get("detail", "")
    live: dict[str, dict[str, object]] = {}
    for model in models:
        answer = await console.ask(
            config, console.resource_target("metrics", "model", model, source="local")
        )
        if answer.status == 200 and isinstance(answer.document, dict):
            live[model] = {
                m["name"]: (m.get("latest") or {}).get("value")
                for m in answer.document.get("metrics", [])
            }
    return str(detail), live


def query(args: argparse.Namespace, config_path: Path) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    target = console.resource_target(
        args.what,
        args.type,
        args.id,
        names=args.names,
        start=args.start,
        end=args.end,
        limit=args.limit,
        history=args.what == "state",
    )
    try:
        if args.etcd:
            answer = asyncio.run(console.ask_etcd(world.config, world.manifests, target))
        else:
            answer = asyncio.run(console.ask(world.config, target))
    except console.Unanswered as exc:
        print(f"{exc}; is piccolo-agent running? (--etcd reads etcd directly)", file=sys.stderr)
        return EXIT_FAILURE
    document = answer.document if isinstance(answer.document, dict) else {}
    if answer.status != 200:
        print(f"{answer.status}: {document.get('detail', document)}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        json.dumps(document, indent=2) if args.json else console.render_answer(args.what, document)
    )
    return EXIT_OK


def top(args: argparse.Namespace, config_path: Path) -> int:
    try:
        world = load_world(config_path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    inventory = world.inventory
    names = _names(inventory)
    if args.once:
        try:
            screen = asyncio.run(console.gather_screen(world.config, names))
        except console.Unanswered as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILURE
        print("\n".join(console.draw(screen, sort=args.sort)))
        return EXIT_OK
    return console.top(world.config, names, sort=args.sort)


_UNDELIVERED = {
    errno.ENOENT: "no socket at {path}: is piccolo-agent running?",
    errno.ECONNREFUSED: "nobody receives on {path}: piccolo-agent stopped or is restarting",
    errno.EAGAIN: "the agent's queue is full; the report was dropped",
    errno.ENOBUFS: "the agent's queue is full; the report was dropped",
    errno.EACCES: "no permission to send to {path}: is this user in the socket's group?",
}


def anomaly_replay(args: argparse.Namespace) -> int:
    """`anomaly replay`: score a CSV series; the output is CSV on stdout."""
    source = sys.stdin if str(args.file) == "-" else None
    try:
        text = source.read() if source is not None else args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    rows: list[tuple[str, float]] = []
    for number, line in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not line or not "".join(line).strip():
            continue
        if len(line) < 2:
            print(f"error: {args.file}:{number}: expected timestamp,value", file=sys.stderr)
            return EXIT_FAILURE
        stamp, raw = line[0].strip(), line[1].strip()
        try:
            value = float(raw)
            parse_timestamp(stamp)
        except ValueError:
            if not rows and number == 1:
                continue  # the header line
            print(
                f"error: {args.file}:{number}: not a timestamp and a number: {line[:2]}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if not math.isfinite(value):
            print(f"error: {args.file}:{number}: {raw} is not a finite number", file=sys.stderr)
            return EXIT_FAILURE
        rows.append((stamp, value))
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["timestamp", "value", "anomaly_score", "label"])
    for stamp, value, score, label in replay(
        rows, sensitivity=args.sensitivity, learning_points=args.learning_points
    ):
        out.writerow([stamp, repr(value) if not value.is_integer() else int(value), score, label])
    return EXIT_OK


def report(args: argparse.Namespace) -> int:
    """Send the one report described by `args`; exit 1 when the socket did not take it."""
    reporter = Reporter(args.socket, getattr(args, "model", None))
    kind = args.report_type
    if kind == "start":
        reporter.start(args.task, args.seq, args.release_ns, ts_ns=args.ts_ns)
    elif kind == "end":
        reporter.end(args.task, args.seq, ts_ns=args.ts_ns)
    elif kind == "activation":
        end_ns = args.end_ns if args.end_ns is not None else args.start_ns + args.duration
        reporter.report_activation(args.task, args.start_ns, end_ns, args.seq, args.release_ns)
    elif kind == "heartbeat":
        reporter.heartbeat(args.task, ts_ns=args.ts_ns)
    elif kind == "checkpoint":
        reporter.checkpoint(args.task, args.checkpoint, ts_ns=args.ts_ns)
    elif kind == "metric":
        reporter.metric(args.name, args.value, args.unit)
    elif kind == "scenario":
        reporter.scenario(args.scenario, args.duration_ms, args.result)
    else:
        reporter.state(args.resource_type, args.id, args.state, args.reason)
    reporter.close()
    if reporter.sent:
        return EXIT_OK
    message = _UNDELIVERED.get(reporter.last_error, "the report could not be sent to {path}: {why}")
    why = os.strerror(reporter.last_error) if reporter.last_error else "unknown error"
    print(f"warning: {message.format(path=reporter.path, why=why)}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    without_config: dict[str, Callable[[argparse.Namespace], int]] = {
        "report": report,
        "anomaly": anomaly_replay,
    }
    if args.command in without_config:
        return without_config[args.command](args)
    config = args.config if getattr(args, "config", None) else _default_config()
    with_config: dict[str, Callable[[], int]] = {
        "check-config": lambda: check_config(config),
        "status": lambda: status(config, args.state_dir, as_json=args.json),
        "query": lambda: query(args, config),
        "top": lambda: top(args, config),
    }
    if args.command in with_config:
        return with_config[args.command]()
    return run(
        config,
        getattr(args, "state_dir", None),
        getattr(args, "runtime_dir", None),
        getattr(args, "log_target", None),
    )
