"""A model's `functionalSafetyMetrics` (seed 7.3): what the agent really supervises, detects and
recovers for it, as percentages (docs/status-fields.md defines them).

The failure modes the agent can detect for a model, `MODES`: its process ending (`exit`, when
a container or process of it is watched), a missed deadline, an overrun execution budget, a task
that stops reporting (`alive`), a wrong order of checkpoints (`logical`), resource exhaustion
(a memory or CPU threshold on the model, or an OOM kill of a container with a memory limit), and
an anomaly of one of its series. For one model:

- errorDetectionCoverage: the modes monitored for it, of all `MODES`;
- errorRecoveryCoverage: of the modes monitored, those the agent also recovers from (an exit
  and an OOM kill, restarted when its recovery policy is enabled and allowed);
- diagnosticsCoverage: of the checks its supervised tasks have, those evaluated at least once
  (a check never run diagnoses nothing); None without supervised tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from agent.evaluate.documents import FunctionalSafety

if TYPE_CHECKING:
    from agent.config import Config
    from agent.model import ModelView
    from agent.timing.checks import TaskSpec

MODES: Final = ("exit", "deadline", "budget", "alive", "logical", "resources", "anomaly")
RECOVERABLE: Final = frozenset({"exit", "resources"})
_RESOURCE_METRICS = frozenset({"memory_usage", "memory_usage_percent", "cpu_usage"})


def monitored_modes(view: ModelView | None, config: Config, specs: Iterable[TaskSpec]) -> set[str]:
    specs = list(specs)
    modes: set[str] = set()
    if view is not None and view.source in {"container", "process"}:
        modes.add("exit")
    if any(s.deadline_ns for s in specs):
        modes.add("deadline")
    if any(s.budget_ns for s in specs):
        modes.add("budget")
    if any(s.expected_alive for s in specs):
        modes.add("alive")
    if any(s.checkpoints for s in specs):
        modes.add("logical")
    thresholds = {m.name for m in config.performance_monitoring.metrics}
    limited = view is not None and view.memory_limit_mb is not None
    if thresholds & _RESOURCE_METRICS or limited:
        modes.add("resources")
    detection = config.anomaly_detection
    if detection.enabled and any(m.type == "statistical" and m.metrics for m in detection.methods):
        modes.add("anomaly")
    return modes


def configured_checks(spec: TaskSpec) -> tuple[str, ...]:
    """The checks of a supervised task that report a verdict (their names in `last_check`)."""
    names = []
    if spec.deadline_ns:
        names.append("Deadline")
    if spec.budget_ns:
        names.append("Execution budget")
    if spec.expected_alive:
        names.append("Alive")
    return tuple(names)


def functional_safety(
    model: str,
    view: ModelView | None,
    config: Config,
    *,
    specs: Iterable[TaskSpec],
    checks: Mapping[str, bool],
    asil: str,
) -> FunctionalSafety:
    """`checks`: (task/check) -> whether it was evaluated at least once, of the model's tasks."""
    specs = list(specs)
    modes = monitored_modes(view, config, specs)
    policy = config.recovery.for_model(model)
    allowed = asil == "QM" or policy.allow_asil
    recovered = modes & RECOVERABLE if policy.enabled and allowed else set()
    return FunctionalSafety(
        error_detection_coverage=round(len(modes) / len(MODES) * 100, 1),
        error_recovery_coverage=round(len(recovered) / len(modes) * 100, 1) if modes else None,
        diagnostics_coverage=(
            round(sum(checks.values()) / len(checks) * 100, 1) if checks else None
        ),
    )
