"""The command line, driven as a user would: exit codes, the one-line errors, the files left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import conv_relu_model, make_model, two_io_model


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in (".tar", ".part", ".unchecked")
        or ".part" in p.name
        or ".unchecked" in p.name
    )


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- compile: success paths ---------------------------------------------------------------


def test_compile_check_writes_artifact_and_reports_errors(cli, tmp_model, tmp_path):
    model = tmp_model(conv_relu_model())
    res = cli("compile", model, "--target", "x86", "-o", "m.tar", "--check")
    assert res.exit_code == 0, res.output
    assert "check against ONNX Runtime" in res.stdout
    assert "y: max abs err" in res.stdout and " ok" in res.stdout
    assert (tmp_path / "m.tar").is_file()
    assert _leftovers(tmp_path) == ["m.tar"]


def test_compile_input_shape_fixes_dynamic_batch(cli, tmp_model, tmp_path):
    model = tmp_model(conv_relu_model(batch="N"))
    res = cli("compile", model, "--input-shape", "x=3x3x16x16", "-o", "b3.tar", "--check")
    assert res.exit_code == 0, res.output
    manifest = json.loads(cli("inspect", "b3.tar", "--json").stdout)
    assert manifest["inputs"] == [{"name": "x", "shape": [3, 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [3, 5], "dtype": "float32"}]


def test_check_failure_exits_1_and_writes_nothing(cli, tmp_model, tmp_path):
    # Zero tolerance on a 576-term conv (3x3, 64 channels; Winograd here, a GEMM in ONNX
    # Runtime): float sums in another order differ in the last bits. A small conv's sums can
    # match bit for bit on some CPUs.
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32), "w")
    conv = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 16, 16])],
        [w],
    )
    model = tmp_model(conv)
    res = cli("compile", model, "-o", "m.tar", "--check", "--atol", "0", "--rtol", "0")
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "--check failed" in line and "y" in line and "no artifact written" in line
    assert _leftovers(tmp_path) == []


# --- compile: bad input, one line each ----------------------------------------------------


def test_missing_file(cli, tmp_path):
    res = cli("compile", "nope.onnx")
    assert res.exit_code == 2
    assert "nope.onnx: no such file" in _one_error_line(res)
    assert _leftovers(tmp_path) == []


def test_not_an_onnx_file(cli, tmp_path):
    (tmp_path / "notes.onnx").write_text("this is not a model\n" * 20)
    res = cli("compile", "notes.onnx")
    assert res.exit_code == 2
    assert "notes.onnx: not an ONNX model" in _one_error_line(res)
    assert _leftovers(tmp_path) == []


def test_truncated_file(cli, tmp_model, tmp_path):
    path = tmp_model(conv_relu_model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = cli("compile", path)
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "model.onnx" in line and "truncated" in line
    assert _leftovers(tmp_path) == []


def test_unsupported_ops_are_all_listed_with_node_names(cli, tmp_model, tmp_path):
    nodes = [
        helper.make_node("Bernoulli", ["x"], ["r"], name="sample_mask"),
        helper.make_node("RandomNormalLike", ["m"], ["d"], name="noise"),
        helper.make_node("Relu", ["r"], ["y"], name="relu_ok"),
    ]
    model = make_model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2, 3]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, [3, 3]),
        ],
    )
    res = cli("compile", tmp_model(model), "-o", "m.tar")
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "2 node(s)" in line
    assert "sample_mask (Bernoulli)" in line and "noise (RandomNormalLike)" in line
    assert "relu_ok" not in line
    assert _leftovers(tmp_path) == []


def test_dynamic_dim_without_input_shape_names_input_and_dim(cli, tmp_model, tmp_path):
    # A dynamic batch alone stays dynamic (tests/test_dynamic_batch.py); any other dim must
    # be fixed.
    model = conv_relu_model(batch="batch")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    res = cli("compile", tmp_model(model))
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "input 'x' has dynamic dimension 2 ('height')" in line
    assert "--input-shape x=Nx3x<height>x16" in line
    assert _leftovers(tmp_path) == []


def test_input_shape_for_unknown_input(cli, tmp_model, tmp_path):
    res = cli("compile", tmp_model(conv_relu_model()), "--input-shape", "image=1x3x16x16")
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "'image', which is not an input" in line and "inputs are: x" in line


def test_input_shape_syntax(cli, tmp_model):
    res = cli("compile", tmp_model(conv_relu_model()), "--input-shape", "x:1,3")
    assert res.exit_code == 2
    assert "NAME=DIMxDIMx" in res.stderr


def test_input_shape_contradicting_static_dim(cli, tmp_model):
    res = cli("compile", tmp_model(conv_relu_model()), "--input-shape", "x=1x4x16x16")
    assert res.exit_code == 2
    assert "dimension 1 is fixed to 3" in _one_error_line(res)


def test_unknown_target(cli, tmp_model):
    res = cli("compile", tmp_model(conv_relu_model()), "--target", "riscv")
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "unknown target 'riscv'" in line and "x86" in line


def test_unknown_preset(cli, tmp_model):
    res = cli("compile", tmp_model(conv_relu_model()), "--target", "arm:cortex-m4")
    assert res.exit_code == 2
    assert "cortex-a72" in _one_error_line(res)


# --- run ---------------------------------------------------------------------------------


@pytest.fixture
def two_io_artifact(cli, tmp_model, tmp_path) -> Path:
    path = tmp_model(two_io_model(), "two.onnx")
    assert cli("compile", path, "-o", "two.tar").exit_code == 0
    return tmp_path / "two.tar"


def test_run_with_inputs_and_output_matches_onnxruntime(cli, tmp_path, two_io_artifact):
    rng = np.random.default_rng(1)
    feed = {
        "a": rng.random((2, 3), dtype=np.float32),
        "b": rng.random((2, 3), dtype=np.float32),
        "k": np.array([1, -2, 3, 40], np.int64),
    }
    np.savez(tmp_path / "in.npz", **feed)
    res = cli("run", two_io_artifact, "--inputs", "in.npz", "--output", "out.npz", "--repeat", "3")
    assert res.exit_code == 0, res.output
    assert "latency over 3 runs" in res.stdout
    out = np.load(tmp_path / "out.npz")
    sess = ort.InferenceSession(
        two_io_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    s_ref, c_ref = sess.run(["s", "c"], feed)
    np.testing.assert_allclose(out["s"], s_ref, rtol=1e-6)
    np.testing.assert_array_equal(out["c"], c_ref)


def test_run_random_inputs(cli, two_io_artifact):
    res = cli("run", two_io_artifact)
    assert res.exit_code == 0
    assert "s: float32[2, 3]" in res.stdout and "c: float32[4]" in res.stdout


def test_run_inputs_missing_array(cli, tmp_path, two_io_artifact):
    np.savez(tmp_path / "in.npz", a=np.zeros((2, 3), np.float32))
    res = cli("run", two_io_artifact, "--inputs", "in.npz", "--output", "out.npz")
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "in.npz: missing array(s) for input(s) 'b', 'k'" in line
    assert not (tmp_path / "out.npz").exists()


def test_run_inputs_misshaped_array(cli, tmp_path, two_io_artifact):
    np.savez(
        tmp_path / "in.npz",
        a=np.zeros((3, 2), np.float32),
        b=np.zeros((2, 3), np.float32),
        k=np.zeros(4, np.int64),
    )
    res = cli("run", two_io_artifact, "--inputs", "in.npz")
    assert res.exit_code == 2
    assert "input 'a' has shape [3, 2], the model expects [2, 3]" in _one_error_line(res)


def test_run_inputs_unknown_name(cli, tmp_path, two_io_artifact):
    np.savez(
        tmp_path / "in.npz",
        a=np.zeros((2, 3), np.float32),
        b=np.zeros((2, 3), np.float32),
        k=np.zeros(4, np.int64),
        z=np.zeros(1),
    )
    res = cli("run", two_io_artifact, "--inputs", "in.npz")
    assert res.exit_code == 2
    assert "'z' is not an input" in _one_error_line(res)


def test_run_not_an_artifact(cli, tmp_path):
    (tmp_path / "x.tar").write_bytes(b"garbage" * 100)
    res = cli("run", "x.tar")
    assert res.exit_code == 2
    assert "x.tar: not a tvmforge artifact" in _one_error_line(res)


# --- inspect and targets -----------------------------------------------------------------


def test_inspect_model_reports_io_ops_flops(cli, tmp_model):
    res = cli("inspect", tmp_model(conv_relu_model()))
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "x: float32[1, 3, 16, 16]" in out and "y: float32[1, 5]" in out
    assert "Conv 1" in out and "MatMul 1" in out
    # Conv: 2 * (8*16*16 outputs) * (3*3*3) = 110592; MatMul 2*5*8 = 80; Relu 2048; pool 2048.
    assert "FLOPs: 0.000 G" in out  # tiny model; exact figure below from --json
    data = json.loads(cli("inspect", tmp_model(conv_relu_model()), "--json").stdout)
    assert data["flops_by_op"]["Conv"] == 2 * 8 * 16 * 16 * 27
    assert data["flops_by_op"]["MatMul"] == 2 * 5 * 8
    assert data["unsupported"] == []


def test_inspect_artifact_shows_manifest(cli, two_io_artifact):
    res = cli("inspect", two_io_artifact)
    assert res.exit_code == 0
    assert "artifact" in res.stdout and "target: x86:native" in res.stdout
    assert "k: int64[4]" in res.stdout


def test_targets_lists_families_and_capabilities(cli):
    res = cli("targets", "--json")
    assert res.exit_code == 0
    rows = {r["key"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"x86", "arm", "cuda"}
    assert rows["x86"]["build"] and rows["x86"]["run"]
    assert {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90"} <= set(rows["cuda"]["presets"])
    assert {"cortex-a72", "cortex-a76", "neoverse-n1"} <= set(rows["arm"]["presets"])
    host = rows["x86"]["host_cpu"]  # this machine is x86-64: its facts, from CPUID
    assert host["lanes"] in (4, 8, 16) and host["cores"] >= 1
    text = cli("targets").stdout
    assert "build here: yes" in text
    assert "this CPU:" in text and f"{host['lanes']} fp32 lanes" in text


def test_bench_no_tune_times_both_and_matches(cli, tmp_model):
    """`bench --no-tune` (the untuned column of the README's tables) runs tvmforge and ONNX
    Runtime on the same inputs and reports a ratio and matching outputs."""
    model = tmp_model(conv_relu_model())
    res = cli("bench", model, "--no-tune", "--threads", "1", "--repeat", "3", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["outputs_match"] is True and not out["lossy"]
    assert out["tvmforge_ms"] > 0 and out["ort_ms"] > 0
    # one round: the paired ratio is that of the unrounded medians (the ms fields are rounded)
    assert out["ratio"] == pytest.approx(out["tvmforge_ms"] / out["ort_ms"], rel=0.2)
    assert out["threads_used"] == 1
    assert out["tvmforge_p99_ms"] >= out["tvmforge_p90_ms"] >= 0
    # from the unrounded median (tvmforge_ms is rounded to the microsecond)
    assert out["throughput_per_s"] == pytest.approx(1e3 / out["tvmforge_ms"], rel=0.05)
    text = cli("bench", model, "--no-tune", "--threads", "1", "--repeat", "5").output
    assert "1 thread(s)" in text and "p99" in text and "runs/s" in text


def test_bench_times_openvino_in_the_same_rounds(cli, tmp_model):
    """`bench --openvino f32`: OpenVINO runs the same inputs on the same thread count, its
    outputs are checked against ONNX Runtime's, and its ratio is paired like ORT's."""
    pytest.importorskip("openvino", reason="OpenVINO is a test extra (pip install openvino)")
    model = tmp_model(conv_relu_model())
    res = cli("bench", model, "--no-tune", "--threads", "1", "--repeat", "5", "--json",
              "--openvino", "f32")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["openvino_precision"] == "f32" and out["openvino_ms"] > 0
    assert out["openvino_max_rel_err"] < 1e-4  # f32 forced: OpenVINO computes what ORT does
    assert out["ratio_openvino"] == pytest.approx(out["tvmforge_ms"] / out["openvino_ms"], rel=0.3)
    text = cli("bench", model, "--no-tune", "--threads", "1", "--repeat", "5",
               "--openvino", "default").output
    assert "openvino     median" in text and "ratio tvmforge/openvino:" in text


def test_paired_ratio_cancels_a_load_that_drifts_between_rounds():
    """Round 1 quiet, round 2 under load (both runtimes 3x slower, ONNX Runtime's round
    longer): tvmforge is 0.8x ONNX Runtime in every round, and the paired ratio says so; the
    ratio of the overall medians would depend on which round dominates each median."""
    from tvmforge.bench.benchmark import paired_ratio

    quiet = ([8.0, 8.1, 7.9], [10.0, 10.1, 9.9])
    loaded = ([24.0, 24.2, 23.8], [30.0, 30.3, 29.7, 30.1, 29.9])
    assert paired_ratio([quiet, loaded]) == pytest.approx(0.8, rel=0.01)
    assert paired_ratio([]) == float("inf")


def test_a_control_character_in_a_name_is_printed_escaped(cli, tmp_model):
    """An OSC escape sequence in a tensor name must not reach the terminal raw."""
    evil = "y\x1b]0;owned\x07"
    model = make_model(
        [helper.make_node("Relu", ["x"], [evil])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(evil, TensorProto.FLOAT, [2])],
    )
    path = tmp_model(model)
    for args in (("inspect", path), ("compile", path, "-o", "m.tar"), ("run", "m.tar")):
        res = cli(*args)
        assert res.exit_code == 0, res.output
        assert "\x1b" not in res.output and "\x07" not in res.output
    assert "y\\x1b]0;owned\\x07" in res.output


def test_verbose_works_after_the_subcommand_too(cli):
    quiet = cli("compile", "nope.onnx")
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    for args in (("--verbose", "compile", "nope.onnx"), ("compile", "nope.onnx", "--verbose"),
                 ("compile", "-v", "nope.onnx")):
        res = cli(*args)
        assert res.exit_code == 2 and "Traceback" in res.output, args


def test_run_repeated_prints_latency_percentiles_and_threads(cli, tmp_model):
    model = tmp_model(conv_relu_model())
    assert cli("compile", model, "-o", "m.tar").exit_code == 0
    res = cli("run", "m.tar", "--repeat", "12")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("latency over 12 runs"))
    assert "thread(s)" in line and "median" in line and "p90" in line and "p99" in line


def test_an_unwritable_output_is_refused_before_the_build(cli, tmp_model, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    res = cli("compile", tmp_model(conv_relu_model()), "-o", tmp_path / "afile" / "m.tar")
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "cannot write there" in line and "m.tar" in line


# --- quantized builds: --quantize int4, --precision ----------------------------------------


def _mlp(k: int = 64, n: int = 32):
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (k, n)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (n, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                      [w1, w2])


def test_compile_quantize_int4_records_its_settings_and_runs(cli, tmp_model):
    model = tmp_model(_mlp())
    res = cli("compile", model, "--quantize", "int4", "--group-size", "16", "--asymmetric",
              "-o", "q4.tar", "--check", "--rtol", "0.2")  # 4-bit weights: a lossy build
    assert res.exit_code == 0, res.output
    manifest = json.loads(cli("inspect", "q4.tar", "--json").stdout)
    q4 = next(p for p in manifest["passes"] if p.get("name") == "quantize_int4")
    assert q4["group_size"] == 16 and q4["scheme"] == "asymmetric"
    assert manifest["quantization"]["layers"] and all(
        layer["name"] in ("fc1", "fc2") for layer in manifest["quantization"]["layers"])


def test_bad_quantization_options_are_one_line_each(cli, tmp_model):
    model = tmp_model(_mlp())
    res = cli("compile", model, "--precision", "int8", "-o", "x.tar")
    assert res.exit_code == 2
    assert "no QuantizeLinear" in _one_error_line(res)
    res = cli("compile", model, "--quantize", "int8", "--precision", "fp32", "--calibration",
              "random", "-o", "x.tar")
    assert res.exit_code == 2
    assert "contradict" in _one_error_line(res)
    res = cli("compile", model, "--quantize", "int4", "--group-size", "48", "-o", "x.tar")
    assert res.exit_code == 2 and "48" in res.output


def test_compile_dynamic_activation_scales_needs_no_data(cli, tmp_model):
    model = tmp_model(_mlp())
    res = cli("compile", model, "--quantize", "int8", "--activation-scales", "dynamic",
              "-o", "d8.tar", "--check", "--rtol", "0.1")  # int8: a lossy build
    assert res.exit_code == 0, res.output
    manifest = json.loads(cli("inspect", "d8.tar", "--json").stdout)
    q8 = next(p for p in manifest["passes"] if p.get("name") == "quantize_int8")
    assert q8["activation_scales"] == "dynamic"
    assert len(manifest["quantization"]["layers"]) == 2


def _qdq_conv():
    """x -> Q/DQ -> Conv(DQ(int8 weights)) -> Relu -> Q/DQ: a QDQ model as ORT writes one."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (16, 3, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array((rng.random(16) * 0.01 + 0.001).astype(f32), "ws"),
             numpy_helper.from_array(np.zeros(16, np.int8), "wz"),
             numpy_helper.from_array(f32(0.01), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(f32(0.02), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             node("Relu", ["c"], ["r"]),
             node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                      inits, opset=13)


def test_compile_says_how_it_built_a_pre_quantized_model(cli, tmp_model):
    model = tmp_model(_qdq_conv())
    res = cli("compile", model, "--target", "x86:avx512-vnni", "-o", "v.tar")
    assert res.exit_code == 0, res.output
    assert "pre-quantized model (qdq): int8 kernels" in res.stdout
    assert "1 layer(s) int8 (1 with VNNI)" in res.stdout
    res = cli("compile", model, "--precision", "fp32", "-o", "f.tar", "--check")
    assert res.exit_code == 0, res.output
    assert "pre-quantized model (qdq): fp32 kernels; --precision fp32" in res.stdout
    manifest = json.loads(cli("inspect", "f.tar", "--json").stdout)
    assert manifest["precision"]["kernels"] == "fp32"


def test_zoo_lists_models_by_family(cli):
    res = cli("zoo", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"resnet50", "bert-base", "ppocr-det", "silero-vad", "digits-forest"} <= set(rows)
    assert rows["silero-vad"]["family"] == "audio" and rows["silero-vad"]["frozen"] == {
        "sr": [16000.0]
    }
    assert rows["magika"]["source"].startswith("magika==")
    bench_set = json.loads(cli("zoo", "--set", "--json").stdout)
    assert len(bench_set) >= 15 and all(r["benchmark_set"] for r in bench_set)
    text = cli("zoo", "--family", "audio").stdout
    assert text.startswith("audio:") and "zoo:oww-melspectrogram" in text
    assert "zoo:resnet50" not in text and "model(s)" in text.splitlines()[-1]


def test_zoo_fetch_downloads_and_names_the_file(cli):
    res = cli("zoo", "zoo:silero-vad", "--fetch")
    assert res.exit_code == 0, res.output
    line = res.stdout.strip()
    assert line.startswith("zoo:silero-vad: ") and line.endswith("silero_vad.onnx")
    assert Path(line.split(": ", 1)[1]).is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zoo:lenet"], "no model named 'lenet'"),
        (["--family", "poetry"], "no family 'poetry'"),
    ],
)
def test_zoo_bad_names_are_one_line_errors(cli, args, message):
    res = cli("zoo", *args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
