"""Calibration: reading DATA, the three range methods, and ``build_model(quantize=...)``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from onnx_builders import conv_relu_model
from tvmforge.driver.calibration import (
    Calibrator,
    entropy_threshold,
    load_samples,
    percentile_threshold,
    quantize_pass,
)
from tvmforge.errors import InputError
from tvmforge.frontend.importer import TensorInfo

X = TensorInfo("x", (1, 3, 4, 4), "float32")
K = TensorInfo("k", (2,), "float32")


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.random((n, 1, 3, 4, 4)).astype(np.float32),
            "k": rng.random((n, 2)).astype(np.float32)}


# ---- data ----------------------------------------------------------------------------------


def test_npz_file_gives_one_sample_per_leading_index(tmp_path: Path):
    arrays = _arrays(5)
    np.savez(tmp_path / "cal.npz", **arrays)
    samples = load_samples(tmp_path / "cal.npz", [X, K])
    assert len(samples) == 5
    np.testing.assert_array_equal(samples[3][0], arrays["x"][3])
    np.testing.assert_array_equal(samples[3][1], arrays["k"][3])


def test_folder_of_npz_files_is_joined_in_name_order(tmp_path: Path):
    a, b = _arrays(2, seed=1), _arrays(3, seed=2)
    np.savez(tmp_path / "b.npz", **b)
    np.savez(tmp_path / "a.npz", **a)
    samples = load_samples(str(tmp_path), [X, K])
    assert len(samples) == 5
    np.testing.assert_array_equal(samples[0][0], a["x"][0])
    np.testing.assert_array_equal(samples[4][1], b["k"][2])


def test_batch_one_input_accepts_samples_without_the_batch_axis():
    x = np.zeros((7, 3, 4, 4), np.float32)  # [num_samples, *shape[1:]]
    samples = load_samples({"x": x}, [X])
    assert len(samples) == 7 and samples[0][0].shape == (1, 3, 4, 4)


def test_random_must_be_asked_for_and_is_seeded():
    a = load_samples("random", [X], random_samples=3, seed=4)
    b = load_samples("random", [X], random_samples=3, seed=4)
    assert len(a) == 3 and a[0][0].shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(a[2][0], b[2][0])


@pytest.mark.parametrize(("data", "message"), [
    ({"y": np.zeros((2, 1, 3, 4, 4))}, r"no array for input\(s\) x"),
    ({"x": np.zeros((2, 3, 3))}, r"input x has shape \[2, 3, 3\]"),
    ({"x": np.zeros((0, 1, 3, 4, 4))}, r"no samples"),
])
def test_data_that_does_not_fit_is_refused_naming_the_input(data, message):
    with pytest.raises(InputError, match=message):
        load_samples(data, [X])


def test_unreadable_paths_are_refused(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        load_samples(tmp_path / "missing.npz", [X])
    with pytest.raises(InputError, match=r"no \.npz file"):
        load_samples(tmp_path, [X])
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_samples(tmp_path / "bad.npz", [X])


def test_inputs_with_different_sample_counts_are_refused():
    with pytest.raises(InputError, match="different numbers of samples"):
        load_samples({"x": np.zeros((2, 1, 3, 4, 4)), "k": np.zeros((3, 2))}, [X, K])


# ---- thresholds ----------------------------------------------------------------------------


def test_percentile_threshold_on_a_known_histogram():
    hist = np.zeros(100, np.int64)
    hist[:90] = 1  # 90 % of the mass below 0.9 * amax
    hist[99] = 10
    assert percentile_threshold(hist, 1.0, 90.0) == pytest.approx(0.90)
    assert percentile_threshold(hist, 1.0, 100.0) == pytest.approx(1.0)


def test_entropy_clips_a_sparse_tail_and_keeps_a_dense_range():
    rng = np.random.default_rng(0)
    dense = np.abs(rng.normal(0, 1, 200_000))
    outliers = np.array([40.0, 50.0])
    data = np.concatenate([dense, outliers])
    hist, _ = np.histogram(data, bins=2048, range=(0, data.max()))
    t = entropy_threshold(hist, float(data.max()))
    assert 2.0 < t < 10.0  # far below the outliers, above the bulk of a unit normal
    flat = np.full(2048, 100)
    assert entropy_threshold(flat, 8.0) > 7.5  # uniform data: keep (almost) everything


# ---- the calibrator, with a stand-in runner --------------------------------------------------


def _fake_runner(outputs_per_sample):
    calls = iter(outputs_per_sample * 2)  # histogram methods run the samples twice

    def compile_(probe):
        assert probe == "probe"
        return lambda _sample: next(calls)

    return compile_


def test_minmax_percentile_entropy_ranges():
    rng = np.random.default_rng(1)
    bulk = [rng.normal(0, 1, 50_000).astype(np.float32) for _ in range(4)]
    bulk[2][0] = 60.0  # one outlier
    relu = [np.maximum(b, 0) for b in bulk]
    outs = [[b, r] for b, r in zip(bulk, relu, strict=True)]
    samples = [[np.zeros(1)] for _ in range(4)]

    mm = Calibrator(samples, "minmax", runner=_fake_runner(outs))("probe")
    assert mm[0][1] == pytest.approx(60.0) and mm[1][0] == 0.0
    assert mm[0][0] == pytest.approx(min(float(b.min()) for b in bulk))
    pc = Calibrator(samples, "percentile", percentile=99.9, runner=_fake_runner(outs))("probe")
    assert 2.5 < pc[0][1] < 4.5 and pc[0][0] == pytest.approx(-pc[0][1])
    en = Calibrator(samples, "entropy", runner=_fake_runner(outs))("probe")
    assert 2.0 < en[1][1] < 10.0 and en[1][0] == 0.0


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_per_channel_statistics_give_elementwise_ranges(method):
    """The last ``channels`` outputs are per-sample ``[2, C]`` minima/maxima: their range is the
    elementwise min of the minima and max of the maxima, whatever the method."""
    rng = np.random.default_rng(2)
    plain = [rng.normal(0, 1, 1000).astype(np.float32) for _ in range(3)]
    stats = [np.stack([rng.normal(-1, 1, 5), rng.normal(1, 1, 5)]).astype(np.float32)
             for _ in range(3)]
    outs = [[p, st] for p, st in zip(plain, stats, strict=True)]
    samples = [[np.zeros(1)] for _ in range(3)]
    cal = Calibrator(samples, method, runner=_fake_runner(outs))
    assert cal.supports_channels
    (lo, hi), (clo, chi) = cal("probe", channels=1)
    assert lo < 0 < hi and np.ndim(lo) == 0
    np.testing.assert_array_equal(clo, np.min([st[0] for st in stats], axis=0))
    np.testing.assert_array_equal(chi, np.max([st[1] for st in stats], axis=0))


def test_calibrator_refuses_unknown_methods_and_no_samples():
    with pytest.raises(InputError, match="use one of minmax, percentile, entropy"):
        Calibrator([[np.zeros(1)]], "kl")
    with pytest.raises(InputError, match="at least one sample"):
        Calibrator([], "minmax")


# ---- build_model(quantize=...) -------------------------------------------------------------


def test_quantize_without_data_is_refused_unless_random_is_asked_for():
    from tvmforge.frontend import importer as frontend

    model = frontend.load(conv_relu_model())
    inputs = frontend.resolve_inputs(model, {})
    with pytest.raises(InputError, match="needs calibration data") as err:
        quantize_pass(model, inputs, "int8", None)
    assert "--calibration random" in err.value.hint
    with pytest.raises(InputError, match="--quantize int2"):
        quantize_pass(model, inputs, "int2", "random")
    with pytest.raises(InputError, match="--calibration-method kl"):
        quantize_pass(model, inputs, "int8", "random", "kl")


def test_build_records_quantization_in_the_manifest(tmp_path: Path):
    from tvmforge.driver.build import build_model, export

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.random((4, 1, 3, 16, 16)).astype(np.float32))
    built = build_model(conv_relu_model(), "x86", threads=2, quantize="int8",
                        calibration=tmp_path / "cal.npz", calibration_method="percentile")
    path = export(built, tmp_path / "q.tar")
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    step = next(p for p in manifest["passes"] if p["name"] == "quantize_int8")
    assert step["calibration_method"] == "percentile" and step["samples"] == 4
    assert step["calibration"] == str(tmp_path / "cal.npz")
    layers = manifest["quantization"]["layers"]
    assert [(layer["name"], layer["fused"]) for layer in layers] == [("conv1", ["bias", "relu"]),
                                                         ("fc", [])]
