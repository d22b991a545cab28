"""What applications and the orchestrator report through the ingest socket, kept per resource.

- Application metrics of a model (inference time, throughput, latency, accuracy, response time,
  seed 7.3): the latest value and the mean since the last collection.
- Scenario executions (seed 2.1, 7.1): count, mean and last duration, failure rate, last result,
  and the response-time constraint (annotation `responseTimeConstraint`, e.g. "300ms") against the
  last execution.

`ReportsCollector` turns them into samples every collection, like any other collector, and the
scenario status documents with them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from agent.clock import rfc3339
from agent.evaluate.dependencies import static_dependency_status, worst
from agent.evaluate.documents import (
    ActivePackage,
    DependencyDetail,
    ScenarioCondition,
    ScenarioEvent,
    ScenarioMetrics,
    ScenarioSafety,
    ScenarioStatusDoc,
)
from agent.model import ResourceType, Sample, saturating_add
from agent.units import parse_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from agent.evaluate.documents import SafetyMetricsDoc
    from agent.evaluate.events import LoggedEvent
    from agent.manifests import Inventory, Scenario
    from agent.model import ModelView, Record
    from agent.store.keys import KeyMaker

APP_METRICS = {
    "inference_time": "inferenceTime",
    "throughput": "throughput",
    "latency": "latency",
    "accuracy": "accuracy",
    "response_time": "responseTime",
}


@dataclass(slots=True)
class _Series:
    last: float
    unit: str
    total: float = 0.0
    count: int = 0


class AppMetrics:
    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}

    def record(self, model: str, name: str, value: float, unit: str) -> None:
        series = self._series.get((model, name))
        if series is None:
            series = self._series[(model, name)] = _Series(value, unit)
        series.last, series.unit = value, unit
        series.total = saturating_add(series.total, value)
        series.count += 1

    def of_model(self, model: str) -> dict[str, float]:
        """Template field (inferenceTime, ...) -> the mean since the last drain, else the last."""
        out = {}
        for (owner, name), series in self._series.items():
            if owner == model:
                value = series.total / series.count if series.count else series.last
                out[APP_METRICS.get(name, name)] = round(value, 6)
        return out

    def drain(self) -> list[tuple[str, str, float, str]]:
        """(model, name, mean since the last drain, unit) of every series that got values."""
        out = []
        for (model, name), series in self._series.items():
            if series.count:
                out.append((model, name, series.total / series.count, series.unit))
                series.total, series.count = 0.0, 0
        return out


@dataclass(slots=True)
class _Executions:
    count: int = 0
    failures: int = 0
    total_ms: float = 0.0
    last_ms: float | None = None
    last_result: str | None = None
    last_at_ns: int | None = None


def response_constraint_ms(scenario: Scenario) -> float | None:
    text = scenario.metadata.annotations.get("responseTimeConstraint")
    if text is None:
        return None
    try:
        return parse_duration(text) * 1e3
    except ValueError:
        return None


_POLICIES = frozenset({"allowed", "denied"})
_ACTIVE = frozenset({"active", "playing", "running"})
_PACKAGE_STATUS = {
    "deployed": "running",
    "failed": "error",
    "deploying": "initializing",
    "undeployed": "stopped",
}
"""A package's tracked deployment state -> the words of the scenario template's activePackages."""


class Scenarios:
    def __init__(self) -> None:
        self._runs: dict[str, _Executions] = {}
        self.states: dict[str, tuple[str, str, int]] = {}
        """Scenario -> (state, reason, since) as the orchestrator reported it."""
        self.policies: dict[str, str] = {}
        """Scenario -> allowed or denied, as last reported."""
        self.transitions: dict[str, int] = {}
        """Scenario -> when its reported state last changed."""
        self._conditions: dict[tuple[str, str], tuple[str, int]] = {}
        """(scenario, condition type) -> (status, since when)."""

    def report(self, scenario: str, state: str, reason: str, now_ns: int) -> None:
        """The orchestrator reported `scenario` in `state`."""
        before = self.states.get(scenario)
        if before is None or before[0] != state:
            self.transitions[scenario] = now_ns
        self.states[scenario] = (state, reason, now_ns)
        if state.lower() in _POLICIES:
            self.policies[scenario] = state.lower()

    def execution(self, scenario: str, duration_ms: float, result: str, now_ns: int) -> None:
        runs = self._runs.setdefault(scenario, _Executions())
        runs.count += 1
        runs.failures += result != "success"
        runs.total_ms = saturating_add(runs.total_ms, duration_ms)
        runs.last_ms = duration_ms
        runs.last_result = "Success" if result == "success" else "Failure"
        runs.last_at_ns = now_ns

    def active(self, scenario: str) -> bool:
        """Whether the orchestrator last reported `scenario` active (active, playing, running)."""
        state = self.states.get(scenario)
        return state is not None and state[0].lower() in _ACTIVE

    def usage(self, package: str, scenarios: Iterable[Scenario]) -> tuple[int, int]:
        """(executions reported of the scenarios that launch `package`, scenarios targeting it
        that are active) for a package's usageCount and activeScenarios."""
        targeting = [s for s in scenarios if package in s.spec.target.packages]
        uses = sum(
            self._runs[s.name].count
            for s in targeting
            if s.spec.action == "launch" and s.name in self._runs
        )
        return uses, sum(1 for s in targeting if self.active(s.name))

    def metrics(self, scenario: Scenario, dependency: str) -> ScenarioMetrics:
        runs = self._runs.get(scenario.name, _Executions())
        active = self.active(scenario.name)
        constraint = response_constraint_ms(scenario)
        return ScenarioMetrics(
            active_state="Active" if active else "Inactive",
            execution_count=runs.count,
            average_execution_time=round(runs.total_ms / runs.count, 3) if runs.count else None,
            last_execution_time=runs.last_ms,
            failure_rate=round(runs.failures / runs.count * 100, 3) if runs.count else None,
            last_execution_result=runs.last_result,
            dependency_status=dependency,
            response_time=runs.last_ms,
            safety_metrics=ScenarioSafety(
                response_time_constraint=constraint,
                response_time_actual=runs.last_ms,
                constraints_met=None
                if constraint is None or runs.last_ms is None
                else runs.last_ms <= constraint,
            ),
        )

    def conditions(
        self, scenario: Scenario, packages: Sequence[str], dependency: str, now_ns: int
    ) -> tuple[ScenarioCondition, ...]:
        """The scenario's conditions (docs/status-fields.md defines each), with when each last
        changed. `packages`: the template words of its target packages' states."""
        state = self.states.get(scenario.name)
        met = "Unknown" if state is None else str(self.active(scenario.name))
        policy = self.policies.get(scenario.name)
        if any(p == "unknown" for p in packages):
            ready = "Unknown"
        else:
            ready = "True" if all(p == "running" for p in packages) else "False"
        statuses = {
            "ConditionsMet": met,
            "PolicyAllowed": "Unknown" if policy is None else str(policy == "allowed"),
            "PackagesReady": ready,
            "DependenciesOK": str(dependency == "OK"),
        }
        out = []
        for kind, status in statuses.items():
            key = (scenario.name, kind)
            known = self._conditions.get(key)
            if known is None or known[0] != status:
                known = self._conditions[key] = (status, now_ns)
            out.append(ScenarioCondition(kind, status, rfc3339(known[1])))
        return tuple(out)

    def document(
        self,
        scenario: Scenario,
        dependency: str,
        *,
        details: Sequence[DependencyDetail] = (),
        package_state: Callable[[str], str | None] = lambda _name: None,
        utilization: float | None = None,
        events: tuple[int, Sequence[LoggedEvent]] = (0, ()),
        now_ns: int | None = None,
    ) -> ScenarioStatusDoc:
        """The `status:` block of a Scenario (seed 7.1). `package_state(name)`: a target
        package's tracked deployment state (None: not known here); `utilization`: its
        resourceUtilization; `events`: (events written for it, the newest first)."""
        now = time.time_ns() if now_ns is None else now_ns
        state = self.states.get(scenario.name)
        since = self.transitions.get(scenario.name)

        def status_of(package: str) -> str:
            known = package_state(package)
            if known is None:
                return "unknown"
            return _PACKAGE_STATUS.get(known.lower(), known.lower())

        packages = [(p, status_of(p)) for p in scenario.spec.target.packages]
        total, recent = events
        metrics = replace(
            self.metrics(scenario, dependency),
            dependency_details=tuple(details),
            resource_utilization=utilization,
            total_events=total,
            last_event_time=recent[0].at if recent else None,
            recent_events=tuple(ScenarioEvent(e.type, e.at, e.message) for e in recent),
        )
        return ScenarioStatusDoc(
            current_state=state[0] if state else None,
            policy_status=self.policies.get(scenario.name),
            last_transition_time=None if since is None else rfc3339(since),
            message=state[1] if state else None,
            conditions=self.conditions(scenario, [s for _, s in packages], dependency, now),
            active_packages=tuple(ActivePackage(name=p, status=s) for p, s in packages),
            metrics=metrics,
        )


def resource_utilization(views: Iterable[ModelView]) -> float | None:
    """% of their limits that `views` use, for the tighter of memory and CPU: the sum of their
    use over the sum of their limits, of the models that have that limit. None without limits."""
    memory = [
        (v.memory_mb, v.memory_limit_mb)
        for v in views
        if v.memory_mb is not None and v.memory_limit_mb
    ]
    cpu = [
        (v.cpu_percent / 100, v.cpu_limit_cores)
        for v in views
        if v.cpu_percent is not None and v.cpu_limit_cores
    ]
    shares = [
        sum(used for used, _ in pairs) / sum(limit for _, limit in pairs) * 100
        for pairs in (memory, cpu)
        if pairs
    ]
    return round(max(shares), 3) if shares else None


_SAMPLED = {
    "executionCount": ("execution_count", ""),
    "averageExecutionTime": ("average_execution_time", "ms"),
    "lastExecutionTime": ("last_execution_time", "ms"),
    "failureRate": ("failure_rate", "%"),
    "lastExecutionResult": ("last_execution_result", ""),
    "activeState": ("active_state", ""),
}


_SAFETY = {
    "deadlineMissCount": ("deadline_miss_count", ""),
    "budgetOverrunCount": ("budget_overrun_count", ""),
    "worstCaseExecutionTime": ("worst_case_execution_time", "ms"),
    "averageExecutionTime": ("average_execution_time", "ms"),
    "schedulingLatency": ("scheduling_latency", "ms"),
    "localStatus": ("safety_status", ""),
}


class ReportsCollector:
    """Samples of reported application metrics and scenario executions, and scenario documents."""

    def __init__(
        self,
        apps: AppMetrics,
        scenarios: Scenarios,
        inventory: Callable[[], Inventory],
        keys: KeyMaker,
        submit: Callable[[list[Record]], None],
        *,
        safety: Callable[[str], SafetyMetricsDoc | None] | None = None,
        dependency: Callable[[str], tuple[str, list[DependencyDetail]]] | None = None,
        package_state: Callable[[str], str | None] | None = None,
        views: Callable[[], Mapping[str, ModelView]] | None = None,
        events: Callable[[str], tuple[int, Sequence[LoggedEvent]]] | None = None,
    ) -> None:
        """`dependency(scenario)`: its live dependency status and details
        (agent.evaluate.impact); without it, what the manifests alone decide.
        `package_state(name)`: a package's tracked deployment state. `views()`: this node's
        model views (resourceUtilization); `events(scenario)`: its event tally."""
        self._views = views or dict
        self._events = events or (lambda _scenario: (0, ()))
        self._safety = safety or (lambda _: None)
        self._dependency = dependency
        self._package_state = package_state or (lambda _name: None)
        self._apps = apps
        self._scenarios = scenarios
        self._inventory = inventory
        self._keys = keys
        self._submit = submit

    async def collect(self) -> Sequence[Sample]:
        now = time.time_ns()
        samples = [
            Sample(ResourceType.MODEL, model, name, round(value, 6), unit, now)
            for model, name, value, unit in self._apps.drain()
        ]
        inventory = self._inventory()
        for model in inventory.models:
            safety = self._safety(model)
            if safety is None:
                continue
            supervision = safety.supervision
            activations = (
                sum(t.activations or 0 for t in supervision.tasks) if supervision is not None else 0
            )
            samples.append(Sample(ResourceType.MODEL, model, "activations", activations, "", now))
            written = safety.to_json()
            for field, (name, unit) in _SAFETY.items():
                value = written.get(field)
                if isinstance(value, int | float | str):
                    samples.append(Sample(ResourceType.MODEL, model, name, value, unit, now))
        dependencies: dict[str, str] = {
            d.resource_id: d.status
            for d in static_dependency_status(inventory)
            if d.resource_type is ResourceType.SCENARIO
        }
        records: list[Record] = []
        for scenario in inventory.scenarios.values():
            dependency = dependencies.get(scenario.name, "OK")
            details: list[DependencyDetail] = []
            if self._dependency is not None:
                live, details = self._dependency(scenario.name)
                dependency = worst([dependency, live])  # type: ignore[list-item]
            views = self._views()
            models = {
                m.name
                for p in scenario.spec.target.packages
                if p in inventory.packages
                for m in inventory.packages[p].spec.models
            }
            document = self._scenarios.document(
                scenario,
                dependency,
                details=details,
                package_state=self._package_state,
                utilization=resource_utilization(views[m] for m in models if m in views),
                events=self._events(scenario.name),
                now_ns=now,
            )
            metrics = document.metrics.to_json()
            for field, (name, unit) in _SAMPLED.items():
                value = metrics[field]
                if isinstance(value, int | float | str):
                    samples.append(
                        Sample(ResourceType.SCENARIO, scenario.name, name, value, unit, now)
                    )
            records.append(
                self._keys.status(ResourceType.SCENARIO, scenario.name, document.to_json())
            )
        self._submit(records)
        return samples
