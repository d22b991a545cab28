"""A dependency on a model of another node, followed through its state record in a real etcd."""

from __future__ import annotations

import pytest

from agent.alerts.alerts import AlertManager
from agent.config import load_config
from agent.evaluate.impact import Impact, RemoteStates
from agent.evaluate.states import StateTracker
from agent.manifests import build_inventory, load_manifests
from agent.model import ResourceType
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker
from tests.support.seed import REPO

pytestmark = pytest.mark.integration

PREFIX = "/remote"
PACKAGE = (ResourceType.PACKAGE, "adas-software")


async def test_a_remote_model_is_followed_through_etcd_and_never_ok_while_unknown(
    store: EtcdStore,
) -> None:
    config = load_config(REPO / "config" / "agent.yaml")
    inventory = build_inventory("VisionHPC", load_manifests([REPO / "config" / "manifests"]))
    tracker = StateTracker()
    impact = Impact(
        lambda: (config, inventory),
        tracker,
        AlertManager("VisionHPC", renotify_s=300, rate_limit_per_s=50),
        lambda _alerts: None,
        keys=KeyMaker("VisionHPC"),
        submit_records=lambda _records: None,
        submit_samples=lambda _samples: None,
    )
    remote = RemoteStates(store, PREFIX, impact)
    # adas-software: adas-planner here, sensor-fusion on ChassisECU.
    assert impact.remote_models() == ["sensor-fusion"]
    tracker.observe(ResourceType.MODEL, "adas-planner", "Running", 1, "running")

    def sensor_fusion() -> tuple[str, str]:
        health, details = impact.dependency_status(PACKAGE)
        (detail,) = [d for d in details if d.node[1] == "sensor-fusion"]
        return health, detail.reason

    await remote.step()
    assert sensor_fusion() == ("Warning", "on another node; its state is not known here")
    chassis = KeyMaker("ChassisECU")
    for state, expected in [("Running", "OK"), ("Failed", "Error"), ("Unknown", "Warning")]:
        record = chassis.state(
            ResourceType.MODEL,
            "sensor-fusion",
            state=state,
            since_ns=2,
            previous=None,
            reason="written by the other node",
        )
        await store.put(f"{PREFIX}/{record.key}".encode(), record.value)
        await remote.step()
        health, reason = sensor_fusion()
        assert health == expected, (state, reason)
        assert reason == f"{state} (on another node, from etcd)"
    await store.put(f"{PREFIX}/model/sensor-fusion/state".encode(), b"damaged {")
    await remote.step()
    assert sensor_fusion()[0] == "Warning"
