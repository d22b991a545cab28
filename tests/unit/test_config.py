from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config, parse_broker
from agent.errors import ConfigError
from tests.support.seed import REPO, seed_blocks

DEFAULT_CONFIG = REPO / "config" / "agent.yaml"


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("section", [3, 4, 5])
def test_every_seed_block_of_sections_3_to_5_loads_as_written(tmp_path: Path, section: int) -> None:
    blocks = seed_blocks(section)
    assert blocks, f"no yaml blocks found in seed section {section}"
    for index, block in enumerate(blocks):
        config = load_config(write(tmp_path, block, f"s{section}-{index}.yaml"))
        assert isinstance(config, Config)


def test_seed_blocks_keep_their_values(tmp_path: Path) -> None:
    text = "\n".join(seed_blocks(3) + seed_blocks(4)[:1] + seed_blocks(5)[:1])
    config = load_config(write(tmp_path, text))
    thresholds = config.resource_state_monitoring.alerting.stuck_states.thresholds
    assert thresholds == {"loading": 30.0, "initializing": 60.0}
    warning = config.performance_monitoring.metrics[0].threshold_warning
    assert warning is not None
    assert (warning.value, warning.unit) == (0.5, "s")
    memory = config.performance_monitoring.metrics[1]
    assert memory.threshold_critical is not None
    assert memory.threshold_critical.value == 95.0
    assert config.resource_monitoring.model.metrics is not None
    assert "gpu_usage" in config.resource_monitoring.model.metrics
    assert config.resource_monitoring.scenario.collection_interval == 5.0
    storage = config.data_storage
    assert storage.configuration.endpoints[0] == "etcd-server-1:2379"
    assert storage.configuration.tls.enabled
    assert storage.retention.events == 90 * 86400
    assert storage.compaction.interval == 86400


def test_default_config_loads_and_points_at_the_example_manifests() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert config.node.name == "VisionHPC"
    assert config.manifests.paths == (REPO / "config" / "manifests",)
    assert config.buffer.max_bytes == 256 * 2**20


def test_default_config_is_commented_in_full_sentences() -> None:
    lines = DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines()
    comments = [line.strip() for line in lines if line.strip().startswith("#")]
    assert len(comments) > 40
    top_level = [line.split(":")[0] for line in lines if line and line[0].isalpha()]
    assert set(top_level) == set(Config.model_fields), "every section is written out"


@pytest.mark.parametrize("text", ["", "   \n  \n", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_refused_never_taken_for_all_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    (message,) = problems(path)
    assert message.startswith(f"{path}:1:1:")
    assert "empty" in message


def test_an_empty_mapping_is_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "{}\n"))
    assert config.data_storage.data_organization.prefix == "/piccolo/monitoring"


def test_missing_file_is_named(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.yaml") == [f"{tmp_path / 'absent.yaml'}: file not found"]


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "node:\n  name: [VisionHPC\nbuffer: {}\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:3:")
    assert "invalid YAML" in message


def test_bad_duration_names_file_line_column_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "resource_monitoring:\n  node:\n    collection_interval: 10 parsecs\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:3:26: resource_monitoring.node.collection_interval:")
    assert "invalid duration '10 parsecs'" in message
    assert "500ms" in message


def test_unknown_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "buffer:\n  max_bytes: 1MiB\n  max_byte: 2\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:3:3: buffer.max_byte: unknown key; allowed keys:")
    assert "file, max_bytes, min_free_bytes, sync" in message


def test_unknown_top_level_section(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, "nodes:\n  name: x\n"))
    assert ":1:1: nodes: unknown key; allowed keys: anomaly_detection, api, buffer," in message


def test_resource_id_with_a_slash_is_refused(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, "node:\n  name: vision/hpc\n"))
    assert ":2:9: node.name: invalid resource id 'vision/hpc'" in message
    assert "contains '/'" in message


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node:\n  name: a b\nbuffer:\n  sync: sometimes\nmqtt:\n  keepalive: -1s\n",
    )
    found = problems(path)
    assert [m.split(":")[1] for m in found] == ["2", "4", "6"]
    assert "Input should be 'normal' or 'full'" in found[1]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, "buffer:\n  sync: full\n  sync: normal\n"))
    assert ":3:3: buffer.sync: duplicate key (first defined at line 2)" in message


def test_thresholds_must_fit_the_metric(tmp_path: Path) -> None:
    text = (
        "performance_monitoring:\n  metrics:\n"
        "    - name: memory_usage\n      threshold_warning: 500ms\n"
        "    - name: execution_time\n      threshold_warning: 2s\n      threshold_critical: 1s\n"
    )
    first, second = problems(write(tmp_path, text))
    assert "performance_monitoring.metrics[0]" in first
    assert "must be a percentage such as 80%" in first
    assert "performance_monitoring.metrics[1]" in second
    assert "above threshold_critical" in second


def test_unknown_metric_name_lists_the_known_ones(tmp_path: Path) -> None:
    text = "resource_monitoring:\n  model:\n    metrics: [load_status, accuracyy]\n"
    (message,) = problems(write(tmp_path, text))
    assert "unknown model metric 'accuracyy'; known: accuracy," in message


def test_key_layout_cannot_be_changed(tmp_path: Path) -> None:
    text = "data_storage:\n  data_organization:\n    key_structure:\n      state: '{x}/state'\n"
    (message,) = problems(write(tmp_path, text))
    assert "key_structure.state is fixed" in message


def test_config_is_frozen() -> None:
    config = load_config(DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="frozen"):
        config.node.name = "other"  # type: ignore[misc]


def test_broker_addresses_are_parsed() -> None:
    assert parse_broker("10.0.0.1:1884", tls=False) == ("10.0.0.1", 1884)
    assert parse_broker("broker.local", tls=False) == ("broker.local", 1883)
    assert parse_broker("broker.local", tls=True) == ("broker.local", 8883)
    assert parse_broker("mqtts://broker.local", tls=False) == ("broker.local", 8883)
    assert parse_broker("mqtt://[::1]:1999", tls=False) == ("::1", 1999)
    with pytest.raises(ValueError, match="host:port"):
        parse_broker("broker:0", tls=False)
