"""Train the two digits models that int8 quantization is checked on, and write their ONNX files.

scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes) is split once, with a fixed seed,
into a training set, a calibration set (drawn from the training images) and a held-out test
set. Two models, both trained here with numpy/scikit-learn only (no download, no GPU):

- ``digits_mlp.onnx``: ``MLPClassifier(128, 64)`` (ReLU), exported by hand as
  Gemm → Relu → Gemm → Relu → Gemm (logits); input ``x`` ``[1, 64]``.
- ``digits_cnn.onnx``: a small residual CNN, trained by a numpy SGD (Adam) loop::

      x[1,1,8,8] → Conv 3x3 (16) → Relu → Conv 3x3 (32) → Relu → MaxPool 2 → p
      p → Conv 3x3 (32) → Relu → Conv 1x1 (32) → Add(p) → Relu → Flatten → Gemm (10)

Run ``python benchmarks/digits/train.py`` to rewrite both files (deterministic for a given
numpy / scikit-learn version); it prints the float test accuracy of each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MLP_PATH = HERE / "digits_mlp.onnx"
CNN_PATH = HERE / "digits_cnn.onnx"
SEED = 0
TEST_FRACTION = 0.25
CALIBRATION_SAMPLES = 200
IR_VERSION = 9  # onnxruntime 1.31 reads IR <= 13
OPSET = 17


def split() -> dict[str, np.ndarray]:
    """``x_train, y_train, x_calib, x_test, y_test`` (images as float32 in [0, 1], 8x8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    rng = np.random.default_rng(SEED)
    calib = rng.choice(len(x_train), CALIBRATION_SAMPLES, replace=False)
    return {"x_train": x_train, "y_train": y_train, "x_calib": x_train[calib],
            "x_test": x_test, "y_test": y_test}


def _model(nodes, inits, in_shape, name) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k)
         for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="tvmforge-digits")
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------
# MLP (scikit-learn)


def train_mlp(data: dict[str, np.ndarray]) -> onnx.ModelProto:
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(128, 64), activation="relu", max_iter=400,
                        random_state=SEED)
    clf.fit(data["x_train"].reshape(-1, 64), data["y_train"])
    inits, nodes, prev = {}, [], "x"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits[f"fc{i}.weight"], inits[f"fc{i}.bias"] = w, b
        out = "logits" if i == last else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                      name=f"fc{i}"))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    return _model(nodes, inits, [1, 64], "digits_mlp")


# --------------------------------------------------------------------------------------------
# CNN (numpy)


def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """``[N, C, H, W]`` → ``[N, H, W, C*k*k]`` patches (stride 1, 'same' output size)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, h, w, c, k, k), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[..., i, j] = xp[:, :, i:i + h, j:j + w].transpose(0, 2, 3, 1)
    return cols.reshape(n, h, w, c * k * k)


def _col2im(cols: np.ndarray, shape, k: int, pad: int) -> np.ndarray:
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, k, k)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + h, j:j + w] += cols[..., i, j].transpose(0, 3, 1, 2)
    return xp[:, :, pad:pad + h, pad:pad + w]


class _Conv:
    def __init__(self, rng, cin: int, cout: int, k: int):
        self.k, self.pad = k, k // 2
        self.w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        self.b = np.zeros(cout, np.float32)

    def forward(self, x):
        self.shape = x.shape
        self.cols = _im2col(x, self.k, self.pad)
        y = self.cols @ self.w.reshape(len(self.w), -1).T + self.b
        return y.transpose(0, 3, 1, 2)

    def backward(self, dy):
        dy = dy.transpose(0, 2, 3, 1)  # N, H, W, O
        flat = dy.reshape(-1, dy.shape[-1])
        self.dw = (flat.T @ self.cols.reshape(len(flat), -1)).reshape(self.w.shape)
        self.db = flat.sum(0)
        dcols = dy @ self.w.reshape(len(self.w), -1)
        return _col2im(dcols, self.shape, self.k, self.pad)

    def params(self):
        return [(self.w, "dw"), (self.b, "db")]


def _relu(x):
    return np.maximum(x, 0)


def _maxpool2(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    y = r.max(axis=(3, 5))
    mask = r == y[:, :, :, None, :, None]
    mask = mask / mask.sum(axis=(3, 5), keepdims=True)
    return y, mask


class _Cnn:
    def __init__(self, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.c1 = _Conv(rng, 1, 16, 3)
        self.c2 = _Conv(rng, 16, 32, 3)
        self.c3 = _Conv(rng, 32, 32, 3)
        self.c4 = _Conv(rng, 32, 32, 1)
        self.fc_w = rng.normal(0, np.sqrt(1.0 / 512), (512, 10)).astype(np.float32)
        self.fc_b = np.zeros(10, np.float32)

    def forward(self, x):
        self.a1 = self.c1.forward(x)
        r1 = _relu(self.a1)
        self.a2 = self.c2.forward(r1)
        r2 = _relu(self.a2)
        self.p, self.mask = _maxpool2(r2)
        self.a3 = self.c3.forward(self.p)
        r3 = _relu(self.a3)
        self.s = self.c4.forward(r3) + self.p
        self.f = _relu(self.s).reshape(len(x), -1)
        return self.f @ self.fc_w + self.fc_b

    def backward(self, dlogits):
        self.dfc_w = self.f.T @ dlogits
        self.dfc_b = dlogits.sum(0)
        df = (dlogits @ self.fc_w.T).reshape(self.s.shape) * (self.s > 0)
        dp = df + self.c3.backward(self.c4.backward(df) * (self.a3 > 0))
        n, c, h, w = dp.shape
        dr2 = (self.mask * dp[:, :, :, None, :, None]).reshape(n, c, h * 2, w * 2)
        dr1 = self.c2.backward(dr2 * (self.a2 > 0))
        self.c1.backward(dr1 * (self.a1 > 0))

    def tensors(self):
        out = []
        for conv in (self.c1, self.c2, self.c3, self.c4):
            out += [(conv, "w", "dw"), (conv, "b", "db")]
        return [*out, (self, "fc_w", "dfc_w"), (self, "fc_b", "dfc_b")]


def train_cnn(data: dict[str, np.ndarray], epochs: int = 30, batch: int = 32,
              lr: float = 2e-3) -> onnx.ModelProto:
    net = _Cnn()
    x = data["x_train"][:, None]
    y = data["y_train"]
    rng = np.random.default_rng(SEED)
    slots = net.tensors()
    m = [np.zeros_like(getattr(o, a)) for o, a, _ in slots]
    v = [np.zeros_like(getattr(o, a)) for o, a, _ in slots]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            logits = net.forward(x[idx])
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            net.backward(p / len(idx))
            step += 1
            for i, (obj, attr, grad) in enumerate(slots):
                g = getattr(obj, grad) + 1e-4 * getattr(obj, attr)
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                mh, vh = m[i] / (1 - 0.9**step), v[i] / (1 - 0.999**step)
                setattr(obj, attr, (getattr(obj, attr) - lr * mh / (np.sqrt(vh) + 1e-8))
                        .astype(np.float32))
    inits = {}
    nodes = []
    for i, (conv, src, out) in enumerate([(net.c1, "x", "conv1"), (net.c2, "relu1", "conv2"),
                                          (net.c3, "pool", "conv3"), (net.c4, "relu3", "conv4")]):
        inits[f"{out}.weight"], inits[f"{out}.bias"] = conv.w, conv.b
        pads = [conv.pad] * 4
        nodes.append(helper.make_node("Conv", [src, f"{out}.weight", f"{out}.bias"], [out],
                                      name=out, pads=pads, kernel_shape=[conv.k, conv.k]))
        if i == 0:
            nodes.append(helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"))
        elif i == 1:
            nodes.append(helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"))
            nodes.append(helper.make_node("MaxPool", ["relu2"], ["pool"], name="pool",
                                          kernel_shape=[2, 2], strides=[2, 2]))
        elif i == 2:
            nodes.append(helper.make_node("Relu", ["conv3"], ["relu3"], name="relu3"))
    nodes += [
        helper.make_node("Add", ["conv4", "pool"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["relu4"], name="relu4"),
        helper.make_node("Flatten", ["relu4"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
    ]
    inits["fc.weight"], inits["fc.bias"] = net.fc_w, net.fc_b
    return _model(nodes, inits, [1, 1, 8, 8], "digits_cnn")


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model under ONNX Runtime, one image at a time."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    hits = sum(int(np.argmax(sess.run(None, {"x": xi.reshape(shape)})[0]) == yi)
               for xi, yi in zip(x, y, strict=True))
    return hits / len(y)


def main() -> int:
    data = split()
    for path, train in ((MLP_PATH, train_mlp), (CNN_PATH, train_cnn)):
        model = train(data)
        onnx.save(model, path)
        acc = accuracy(model, data["x_test"], data["y_test"])
        print(f"{path.name}: test top-1 {100 * acc:.2f}% on {len(data['y_test'])} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
