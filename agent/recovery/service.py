"""The recovery stage: failed models started again, per policy, and never against their owner.

Told of every model view (after each collection and runtime event). A model whose phase turns
`Failed` is a crash when it ended on its own with a non-zero code or an OOM kill; it is restarted
after the policy's backoff (agent.recovery.policy) through the Podman API, or for a process
model through `recovery.command`. Not restarted:

- a container stopped on purpose: ended by SIGTERM, SIGKILL, SIGINT or SIGHUP without an OOM kill
  (`podman stop`, `podman kill`, an operator; see `STOP_CODES`), or stopped or killed through
  podman where its events say so, or a model or package the orchestrator reported `unloaded`,
  `undeployed` or `stopped`;
- a container with its own restart policy (on-failure, always, unless-stopped): Podman's job;
- an ASIL A-D model without `allow_asil` in its per-model policy;
- a model bound to a systemd unit: systemd's own `Restart=` is the owner there (this stage would
  only race it), and a unit the agent restarted would hide a failure from systemd's accounting.

Every attempt is an event (`recovery_started`, `recovery_succeeded`, `recovery_failed`) and part
of one alert episode, `recovery` (warning, each attempt counted), that turns critical when the
policy gives up and ends when the model ran cleanly for the policy's window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from agent.alerts.alerts import AlertKey
from agent.model import ResourceType
from agent.recovery.policy import CrashLoop
from agent.runtime.podman import RuntimeUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from agent.alerts.alerts import AlertManager
    from agent.collectors.capabilities import Restarts
    from agent.config import Config, RecoveryOverride
    from agent.manifests import Inventory
    from agent.model import Alert, ModelView, Record
    from agent.store.keys import KeyMaker

_log = logging.getLogger(__name__)

KIND = "recovery"
OWNED_STATES = frozenset({"unloaded", "undeployed", "stopped"})
"""States the orchestrator reports for what it took down on purpose."""
STOP_CODES = frozenset({128 + 1, 128 + 2, 128 + 9, 128 + 15})
"""Exit codes of SIGHUP, SIGINT, SIGKILL and SIGTERM: what `podman stop` and `podman kill` (and
an operator's kill) end a container with. Podman 4.3 records no stop or kill event and no
"stopped by user" flag, so the signal is the sign of an owner's decision; a crash ends on its own
(an error code, SIGSEGV 139, SIGABRT 134, ...) or by the OOM killer (OOMKilled, restarted)."""
CONFIRM_S = 5.0
"""How long a restarted model may take to be seen running before the attempt failed."""


class Recovery:
    def __init__(
        self,
        world: Callable[[], tuple[Config, Inventory]],
        alerts: AlertManager,
        raise_alerts: Callable[[list[Alert]], None],
        *,
        keys: KeyMaker,
        submit_records: Callable[[list[Record]], None],
        restarter: Callable[[], Restarts | None],
        reported: Callable[[ResourceType, str], str | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`restarter()`: the container collector that can start containers (None: none runs);
        `reported(type, id)`: the state the orchestrator last reported for a resource."""
        self._world = world
        self._alerts = alerts
        self._raise = raise_alerts
        self._keys = keys
        self._records = submit_records
        self._restarter = restarter
        self._reported = reported
        self._clock = clock
        self.loops: dict[str, CrashLoop] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._views: dict[str, ModelView] = {}
        self._settled: set[str] = set()
        """Models whose present failure is handled for good (given up, or stopped on purpose):
        nothing more is done until they run again."""
        self.attempts = 0

    def _policy(self, model: str) -> RecoveryOverride:
        return self._world()[0].recovery.for_model(model)

    # views ------------------------------------------------------------------------------------

    def observe(self, views: Iterable[ModelView]) -> None:
        config, inventory = self._world()
        if not config.recovery.enabled and not config.recovery.models:
            return
        now = self._clock()
        for view in views:
            self._views[view.name] = view
            policy = self._policy(view.name)
            if not policy.enabled:
                continue
            loop = self.loops.setdefault(view.name, CrashLoop())
            if view.phase == "Running":
                self._settled.discard(view.name)
                if loop.running(now, policy):
                    self._resolve(view.name, "ran cleanly for the policy's window")
                continue
            if view.phase != "Failed" or view.name in self._pending or view.name in self._settled:
                continue
            why = self._not_ours(view, policy, inventory)
            if why is not None:
                _log.debug("model %s failed and is not restarted: %s", view.name, why)
                continue
            decision = loop.crashed(now, policy)
            if decision.action == "give_up":
                self._settled.add(view.name)
                self._give_up(view, policy, decision.attempt)
                continue
            task = asyncio.get_running_loop().create_task(
                self._restart_after(view.name, decision.delay_s, decision.attempt),
                name=f"recovery-{view.name}",
            )
            self._pending[view.name] = task
            task.add_done_callback(self._done(view.name))

    def _not_ours(
        self, view: ModelView, policy: RecoveryOverride, inventory: Inventory
    ) -> str | None:
        """Why a failed model is not this stage's to restart; None: it is a crash to recover."""
        placed = inventory.models.get(view.name)
        asil = placed.asil_level if placed is not None else "QM"
        packages = placed.packages if placed is not None else ()
        process = view.source == "process"
        reasons = (
            (
                asil != "QM" and not policy.allow_asil,
                f"ASIL {asil}: restarted only with allow_asil in its recovery policy",
            ),
            (
                view.restart_policy not in (None, "", "no"),
                f"its container restarts by itself (--restart={view.restart_policy})",
            ),
            (
                self._reported(ResourceType.MODEL, view.name) in OWNED_STATES,
                "the orchestrator took it down",
            ),
            (
                any(self._reported(ResourceType.PACKAGE, p) in OWNED_STATES for p in packages),
                "the orchestrator took its package down",
            ),
            (process and self._is_unit(view.name), "a systemd unit: systemd's Restart= owns it"),
            (process and policy.command is None, "a process model without recovery.command"),
            (view.source not in {"process", "container"}, "nothing of it was found to restart"),
            (view.reason != "OOMKilled" and view.exit_code == 0, "it exited with code 0"),
            (
                view.reason != "OOMKilled" and view.exit_code in STOP_CODES,
                (
                    f"ended by a signal from outside (exit code {view.exit_code}: podman stop "
                    "or kill, an operator's kill)"
                ),
            ),
        )
        return next((why for applies, why in reasons if applies), None)

    def _done(self, model: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._pending.pop(model, None)

        return forget

    def _is_unit(self, model: str) -> bool:
        bindings = self._world()[0].resource_monitoring.process.bindings
        return any(b.model == model and b.systemd_unit for b in bindings)

    # acting -----------------------------------------------------------------------------------

    async def _restart_after(self, model: str, delay_s: float, attempt: int) -> None:
        await asyncio.sleep(delay_s)
        view = self._views.get(model)
        restarter = self._restarter()
        if view is None or view.phase != "Failed":
            return  # it came back by itself meanwhile
        if view.source == "container" and (
            restarter is None or restarter.stopped_on_purpose(model)
        ):
            _log.info("model %s was stopped on purpose: not restarted", model)
            self._settled.add(model)
            return
        policy = self._policy(model)
        loop = self.loops.setdefault(model, CrashLoop())
        loop.restarted(self._clock(), policy)
        self.attempts += 1
        message = (
            f"restarting {model} (attempt {attempt} of {policy.max_restarts} within the "
            f"window) after {delay_s:g} s: {view.reason}"
        )
        _log.warning("%s", message)
        self._event(model, "recovery_started", "warning", message, attempt)
        self._fire(model, "warning", attempt, message, policy)
        try:
            if view.source == "process":
                assert policy.command is not None  # noqa: S101 - _not_ours checked it
                await self._run_command(policy.command.replace("{model}", model))
            else:
                assert restarter is not None  # noqa: S101 - checked above
                await restarter.restart(model)
        except (RuntimeUnavailable, OSError) as exc:
            text = f"restarting {model} failed: {exc}"
            _log.error("%s", text)
            self._event(model, "recovery_failed", "warning", text, attempt)
            return
        if await self._seen_running(model):
            self._event(model, "recovery_succeeded", "info", f"{model} runs again", attempt)
        else:
            text = f"{model} was started but is not seen running within {CONFIRM_S:g} s"
            self._event(model, "recovery_failed", "warning", text, attempt)

    async def _run_command(self, command: str) -> None:
        process = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, errors = await process.communicate()
        if process.returncode != 0:
            raise RuntimeUnavailable(
                f"{command!r} exited with {process.returncode}: {errors.decode()[-200:]}"
            )

    async def _seen_running(self, model: str) -> bool:
        deadline = self._clock() + CONFIRM_S
        while self._clock() < deadline:
            view = self._views.get(model)
            if view is not None and view.phase == "Running":
                return True
            await asyncio.sleep(0.05)
        return False

    def _give_up(self, view: ModelView, policy: RecoveryOverride, attempts: int) -> None:
        message = (
            f"{view.name} failed again after {attempts} restarts within "
            f"{policy.window:g} s: recovery gives up ({view.reason})"
        )
        _log.error("%s", message)
        self._event(view.name, "recovery_failed", "critical", message, attempts)
        self._fire(view.name, "critical", attempts, message, policy)

    def _fire(
        self, model: str, severity: str, attempt: int, message: str, policy: RecoveryOverride
    ) -> None:
        inventory = self._world()[1]
        placed = inventory.models.get(model)
        alerts = self._alerts.fire(
            AlertKey("model", model, KIND, "restarts"),
            severity=severity,  # type: ignore[arg-type]
            value=attempt,
            threshold=policy.max_restarts,
            asil=placed.asil_level if placed is not None else "QM",
            message=message,
            now_ns=time.time_ns(),
        )
        self._raise(alerts)

    def _resolve(self, model: str, why: str) -> None:
        key = AlertKey("model", model, KIND, "restarts")
        if self._alerts.is_firing(key):
            self._raise(self._alerts.resolve(key, now_ns=time.time_ns(), message=why))

    def _event(self, model: str, kind: str, severity: str, message: str, attempt: int) -> None:
        self._records(
            [
                self._keys.event(
                    ResourceType.MODEL,
                    model,
                    event_type=kind,
                    severity=severity,  # type: ignore[arg-type]
                    message=message,
                    details={"attempt": attempt},
                )
            ]
        )

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
