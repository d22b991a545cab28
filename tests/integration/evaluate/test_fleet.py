"""The elected agent's roll-up of a package across nodes, against a real etcd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import Compaction
from agent.evaluate.fleet import Fleet
from agent.health import Progress
from agent.manifests import load_manifests
from agent.model import Record
from agent.store.election import Election
from agent.store.etcd import EtcdStore
from agent.store.keys import KeyMaker

pytestmark = pytest.mark.integration

PREFIX = "/fleet"
MANIFEST = """\
apiVersion: piccolo.io/v1
kind: Package
metadata:
  name: spread
  labels: {types: [resource-bounded]}
spec:
  pattern: {type: selector, nodeSelector: {gpu: available}}
  models:
    - {name: detector, node: n1}
    - {name: tracker, node: n2}
"""


def election(store: EtcdStore, node: str, labels: dict[str, str], fleet: Fleet) -> Election:
    return Election(
        store,
        KeyMaker(node),
        prefix=PREFIX,
        ttl_s=5,
        compaction=Compaction.model_validate({"enabled": False}),
        progress=Progress(),
        chores=(fleet.step,),
        labels=lambda: labels,
    )


async def test_labels_are_published_and_judge_the_selector_of_a_package_across_nodes(
    store: EtcdStore, tmp_path: Path
) -> None:
    (tmp_path / "spread.yaml").write_text(MANIFEST)
    located = load_manifests([tmp_path])
    submitted: list[Record] = []
    fleet = Fleet(
        store,
        KeyMaker("n1"),
        prefix=PREFIX,
        manifests=lambda: located,
        submit=submitted.extend,
        package_every_s=0.0,
    )
    quiet = Fleet(
        store, KeyMaker("n2"), prefix=PREFIX, manifests=lambda: (), submit=lambda _records: None
    )
    labels_n2 = {"gpu": "none"}
    first = election(store, "n1", {"gpu": "available"}, fleet)
    second = election(store, "n2", labels_n2, quiet)
    await first.step()
    await second.step()
    published = json.loads((await store.get(f"{PREFIX}/nodes/n2/agent".encode())) or b"{}")
    assert published["labels"] == {"gpu": "none"}
    await first.step()

    def document() -> dict[str, Any]:
        records = [r for r in submitted if r.key == "package/spread"]
        assert records, submitted
        status = json.loads(records[-1].value)["status"]
        assert isinstance(status, dict)
        return status

    status = document()
    assert status["patternStatus"]["nodesMatched"] == 1
    metrics = status["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["patternMetrics"]["patternComplianceScore"] == 50.0
    assert metrics["diskUsage"] is None  # sizes are measured by each node, not known here
    # Models without a status document are not known: never OK.
    assert [m["status"] for m in status["models"]] == ["Unknown", "Unknown"]
    # Documents read back carry no limits nor supervision: the type rules are not judged there.
    assert status["packageTypeStatus"]["complianceStatus"] is None
    assert status["packageTypeStatus"]["typeConstraints"] == []

    # A reload that relabels n2 is published at its next step, and the selector follows.
    labels_n2["gpu"] = "available"
    await second.step()
    published = json.loads((await store.get(f"{PREFIX}/nodes/n2/agent".encode())) or b"{}")
    assert published["labels"] == {"gpu": "available"}
    submitted.clear()
    await first.step()
    assert document()["patternStatus"]["nodesMatched"] == 2
    await first.resign()
    await second.resign()
