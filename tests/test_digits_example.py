"""The real-data demonstration (examples/digits_pruning.py) runs end to end with --quick."""
import json
import os

import pytest
from examples_support import load_example

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _load():
    return load_example("digits_pruning.py")


def test_quick_run_writes_json_and_plot(tmp_path, capsys):
    digits = _load()
    out = tmp_path / "digits"
    criteria, scopes = ["l2", "taylor"], ["local", "global"]
    returned = digits.main(["--quick", "--out", str(out), "--criteria", ",".join(criteria)])  # ~10 s (int8 rows included)

    json_path, png_path = out / digits.JSON_NAME, out / digits.PNG_NAME
    assert json_path.is_file()
    result = json.loads(json_path.read_text())
    assert result["rows"] == json.loads(json.dumps(returned["rows"]))
    assert sorted((r["criterion"], r["scope"]) for r in result["rows"]) == sorted(
        (c, s) for c in criteria for s in scopes)
    assert not [p for p in os.listdir(out) if p.startswith(".")], "temporary files left behind"

    unpruned = result["unpruned"]
    assert 0.0 <= unpruned["accuracy"] <= 1.0
    for row in result["rows"]:
        # target_macs is an upper bound: the measured MACs never exceed half of the unpruned model's.
        assert row["macs_after"] <= int(0.5 * unpruned["macs"])
        assert 0.0 < row["macs_ratio"] <= 0.5
        assert 0.0 < row["params_ratio"] < 1.0
        for key in ("acc_pruned", "acc_bn_recal", "acc_finetuned", "acc_onnx_fp32", "acc_int8"):
            assert 0.0 <= row[key] <= 1.0
        # the fp32 ONNX file is the fine-tuned model (at most one of the 360 test images may flip)
        assert abs(row["acc_onnx_fp32"] - row["acc_finetuned"]) <= 1 / 360 + 1e-9
        assert row["int8_delta_points"] == pytest.approx(100 * (row["acc_int8"] - row["acc_onnx_fp32"]))
        assert row["onnx_int8_bytes"] < row["onnx_fp32_bytes"]
    assert 0.0 <= unpruned["acc_int8"] <= 1.0 and abs(unpruned["acc_onnx_fp32"] - unpruned["accuracy"]) <= 1 / 360 + 1e-9
    best = result["best"]
    assert (best["criterion"], best["scope"]) in {(r["criterion"], r["scope"]) for r in result["rows"]}
    assert best["acc_finetuned"] == max(r["acc_finetuned"] for r in result["rows"])

    assert png_path.is_file() and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "acc fine-tuned" in printed and "acc int8" in printed and "elapsed" in printed
