"""``tvmforge profile``, driven as a user would: the table, --json, an artifact, bad input."""

from __future__ import annotations

import json

from onnx_builders import conv_relu_model


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_profile_prints_the_kernel_table_and_onnxruntime_by_op(cli, tmp_model):
    model = tmp_model(conv_relu_model())
    res = cli("profile", model, "--no-tune", "--runs", "3", "--top", "2")
    assert res.exit_code == 0, res.output
    out = res.stdout.splitlines()
    assert out[0].startswith(f"profile {model} on x86:") and "3 runs" in out[0]
    assert out[1].startswith("run ") and "kernels" in out[1]
    assert "ONNX nodes" in out[2]
    assert "conv1, relu1 [Conv/Relu]" in out[3]  # the slowest kernel: the conv, ReLU fused
    assert "more kernel(s)" in res.stdout  # --top 2 of 3
    assert "onnxruntime: run" in res.stdout and "Conv" in res.stdout


def test_profile_json_of_an_artifact(cli, tmp_model):
    model = tmp_model(conv_relu_model())
    assert cli("compile", model, "-o", "m.tar", "--no-tune").exit_code == 0
    res = cli("profile", "m.tar", "--runs", "2", "--json", "--no-ort")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == "m.tar" and data["ort"] is None and data["runs"] == 2
    rows = data["rows"]
    assert rows and all(r["onnx_nodes"] for r in rows)
    assert {n for r in rows for n in r["onnx_nodes"]} == {"conv1", "relu1", "pool", "fc"}
    assert sum(r["percent"] for r in rows) == 100.0 or abs(
        sum(r["percent"] for r in rows) - 100.0) < 1e-6
    assert data["kernels_ms"] > 0 and "outside_ms" in data


def test_profile_bad_input_is_one_error_line_exit_2(cli, tmp_model, tmp_path):
    res = cli("profile", "missing.onnx")
    assert res.exit_code == 2
    assert _one_error_line(res).startswith("error: missing.onnx")
    model = tmp_model(conv_relu_model())
    assert cli("compile", model, "-o", "m.tar", "--no-tune").exit_code == 0
    res = cli("profile", "m.tar", "--input-shape", "x=1x3x16x16")
    assert res.exit_code == 2 and "artifact" in res.output
