from __future__ import annotations

from agent.config import Config
from agent.evaluate.coverage import MODES, configured_checks, functional_safety, monitored_modes
from agent.evaluate.documents import FunctionalSafety, SafetyMetricsDoc, Supervision
from agent.model import ModelView
from agent.timing.checks import TaskSpec

MS = 1_000_000


def config(**sections: object) -> Config:
    return Config.model_validate(sections)


def spec(**fields: int) -> TaskSpec:
    return TaskSpec(
        "m",
        "t",
        period_ns=fields.get("period_ns"),
        deadline_ns=fields.get("deadline_ns"),
        budget_ns=fields.get("budget_ns"),
        reference_cycle_ns=fields.get("reference_cycle_ns"),
    )


DETECTING = {"methods": [{"type": "statistical", "metrics": ["memory_usage"]}]}


def test_modes_follow_what_is_configured_and_found() -> None:
    running = ModelView("m", "n", "Running", "running", "container", memory_limit_mb=256.0)
    bare = config(anomaly_detection={"enabled": False})
    assert monitored_modes(None, bare, []) == set()
    assert monitored_modes(running, bare, []) == {"exit", "resources"}
    timed = spec(
        period_ns=10 * MS, deadline_ns=8 * MS, budget_ns=5 * MS, reference_cycle_ns=100 * MS
    )
    assert monitored_modes(running, config(anomaly_detection=DETECTING), [timed]) == {
        "exit", "deadline", "budget", "alive", "resources", "anomaly",
    }  # fmt: skip
    assert configured_checks(timed) == ("Deadline", "Execution budget", "Alive")


def test_coverages_are_shares_of_what_is_monitored_recovered_and_evaluated() -> None:
    view = ModelView("m", "n", "Running", "running", "container", memory_limit_mb=256.0)
    timed = spec(period_ns=10 * MS, deadline_ns=8 * MS, reference_cycle_ns=100 * MS)
    off = functional_safety(
        "m", view, config(), specs=[timed], checks={"t/Deadline": True, "t/Alive": False}, asil="QM"
    )
    # exit, deadline, alive, resources: 4 of the 7 modes; none recovered; 1 of 2 checks ran.
    assert off == FunctionalSafety(round(4 / len(MODES) * 100, 1), 0.0, 50.0)
    recovering = config(recovery={"enabled": True})
    on = functional_safety("m", view, recovering, specs=[timed], checks={}, asil="QM")
    assert on.error_recovery_coverage == 50.0  # exit and OOM of the 4 monitored
    assert on.diagnostics_coverage is None
    # ASIL B without the opt-in: nothing is recovered by the agent.
    asil = functional_safety("m", view, recovering, specs=[timed], checks={}, asil="B")
    assert asil.error_recovery_coverage == 0.0


def test_the_block_sits_before_runtime_verification_or_last() -> None:
    functional = FunctionalSafety(50.0, 20.0, None)
    alone = SafetyMetricsDoc("QM", "Inactive", None, functional).to_json()
    assert list(alone) == ["asilLevel", "safetyMonitorStatus", "functionalSafetyMetrics"]
    supervised = SafetyMetricsDoc("B", "Active", Supervision(), functional)
    keys = list(supervised.to_json())
    assert keys.index("functionalSafetyMetrics") == keys.index("runtimeVerification") - 1
    assert SafetyMetricsDoc.from_json(supervised.to_json()) == supervised
