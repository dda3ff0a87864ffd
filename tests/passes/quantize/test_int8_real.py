"""int8 on a real trained model: PP-OCRv4 text recognition (``zoo:ppocr-rec``, 1x3x48x320).

Text lines are rendered with Pillow in the fonts this machine has (DejaVu; no CJK font is
installed, so the lines use the Latin letters, digits and punctuation of the model's own
character list), preprocessed as PaddleOCR does (crop, resize to height 48 keeping the
aspect ratio, ``(x/255 - 0.5)/0.5``, zero padding on the right), and read by greedy CTC
decoding. The int8 build is calibrated on a separate set of rendered lines; its strings must
equal the float build's on at least 95 % of the test lines.
"""

from __future__ import annotations

import functools
import glob
from pathlib import Path

import numpy as np
import pytest

from tvmforge import build_model
from tvmforge.frontend import importer as frontend

WORDS = (
    "invoice total amount due date order number customer account balance payment "
    "receipt station street avenue road north south east west hotel market bank "
    "price quantity item service tax discount cash card change thank you welcome open "
    "closed monday friday january october model serial version page chapter section"
).split()


def _fonts() -> list[str]:
    found = sorted(glob.glob("/usr/share/fonts/**/DejaVu*.ttf", recursive=True))
    if not found:  # matplotlib ships DejaVu too
        import matplotlib

        found = sorted(
            glob.glob(str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVu*.ttf"))
        )
    return [f for f in found if "Math" not in f and "ExtraLight" not in f and "Display" not in f]


def text_lines(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (text, font file) pairs: words, prices, dates and codes."""
    rng = np.random.default_rng(seed)
    fonts = _fonts()
    upper = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [str(d) for d in range(10)]
    lines = []
    for _ in range(n):
        kind = int(rng.integers(4))
        if kind == 0:
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 5)))]
            text = " ".join(words)
            text = text.capitalize() if rng.random() < 0.5 else text
        elif kind == 1:
            word = WORDS[int(rng.integers(len(WORDS)))].capitalize()
            text = f"{word} {rng.integers(1, 9999)}.{rng.integers(0, 100):02d}"
        elif kind == 2:
            text = (
                f"{rng.integers(2000, 2030)}-{rng.integers(1, 13):02d}-"
                f"{rng.integers(1, 29):02d} {rng.integers(0, 24):02d}:"
                f"{rng.integers(0, 60):02d}"
            )
        else:
            text = "".join(upper[i] for i in rng.integers(0, len(upper), int(rng.integers(5, 12))))
        lines.append((text, fonts[int(rng.integers(len(fonts)))] if fonts else ""))
    return lines


def render_line(text: str, font: str, shape=(48, 320), size: int = 40) -> np.ndarray:
    """PaddleOCR rec preprocessing of a rendered line: ``[1, 3, H, W]`` float32."""
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(font, size) if font else ImageFont.load_default(size=size)
    left, top, right, bottom = f.getbbox(text)
    pad = size // 6
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=0, font=f)
    h, w = shape
    width = min(w, int(np.ceil(h * img.width / img.height)))
    img = img.resize((width, h), Image.BILINEAR)
    out = np.zeros((1, 3, h, w), np.float32)
    out[0, :, :, :width] = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
    return out


def ctc_decode(probs: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC: best class per step, repeats collapsed, blanks (class 0) dropped."""
    best = probs.argmax(-1).reshape(-1)
    keep = [c for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    return "".join(charset[c] for c in keep)


@functools.cache
def _rec():
    model = frontend.load("zoo:ppocr-rec")
    meta = {p.key: p.value for p in model.proto.metadata_props}
    charset = ["<blank>", *meta["character"].splitlines(), " "]
    calibration = np.concatenate([render_line(*line) for line in text_lines(16, seed=2)])
    f = build_model(model, "x86", threads=2)
    q = build_model(model, "x86", threads=2, quantize="int8", calibration={"x": calibration})
    return charset, f, q


def _read(built, images: list[np.ndarray], charset: list[str]) -> list[str]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return [ctc_decode(vm["main"](tvm.runtime.tensor(x)).numpy(), charset) for x in images]


def test_ppocr_rec_int8_reads_the_same_text_as_float():
    charset, f, q = _rec()
    lines = text_lines(50, seed=1)
    assert all(c in charset for text, _ in lines for c in text)
    images = [render_line(*line) for line in lines]
    want, got = _read(f, images, charset), _read(q, images, charset)
    # the lines are in the model's domain: the float model reads nearly all of them
    assert sum(w == text for w, (text, _) in zip(want, lines, strict=True)) >= 0.85 * len(lines)
    agree = sum(a == b for a, b in zip(want, got, strict=True))
    differ = [(a, b) for a, b in zip(want, got, strict=True) if a != b]
    assert agree >= 0.95 * len(lines), differ
    report = q.quantization["report"]
    ops = {layer["op"] for layer in report["layers"] if layer["kernel"] != "float"}
    assert ops == {"conv2d", "dense", "matmul"}  # the attention's matmuls too
    assert report["channel_tensors"] > 0  # depthwise inputs quantized per channel


def executable_bytes(executable) -> int:
    """Bytes of the serialized VM executable: its constants (weights, biases, scales) and
    bytecode; the kernels' machine code is not in it."""
    import tvm

    return int(tvm.get_global_func("runtime.ModulePackImportsToTensor")(executable.mod).shape[0])


def test_resnet50_int8_weights_are_about_four_times_smaller(tmp_path):
    """int8 weights (one byte, plus a float scale and an int32 bias per channel) against float
    (four bytes): the constants of the artifact shrink to about a quarter."""
    f = build_model("zoo:resnet50", "x86", threads=2)
    q = build_model("zoo:resnet50", "x86", threads=2, quantize="int8", calibration="random")
    fb, qb = executable_bytes(f.executable), executable_bytes(q.executable)
    assert fb > 95e6  # 25.5 M float32 parameters
    assert qb <= 0.3 * fb, (qb, fb)
    # the exported library shrinks alike (constants dominate it)
    sizes = []
    for name, built in (("f", f), ("q", q)):
        path = tmp_path / f"{name}.so"
        built.executable.export_library(str(path))
        sizes.append(path.stat().st_size)
    assert sizes[1] <= 0.3 * sizes[0], sizes


# --- PP-OCRv4 det: the text map of the int8 build covers the same text as float's ----------

DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def render_page(seed: int, size: int = 640, lines: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A white page with ``lines`` rendered text lines at random places and sizes, as
    PaddleOCR's det preprocessing gives it (``[1, 3, size, size]``), and a mask of the lines'
    boxes."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    boxes = np.zeros((size, size), bool)
    y = int(rng.integers(10, 40))
    for text, font in text_lines(lines, seed=seed + 100):
        pt = int(rng.integers(18, 36))
        f = ImageFont.truetype(font, pt) if font else ImageFont.load_default(size=pt)
        x = int(rng.integers(10, 200))
        left, top, right, bottom = draw.textbbox((x, y), text, font=f)
        if bottom >= size - 5:
            break
        ink = tuple(int(c) for c in rng.integers(0, 90, 3))
        draw.text((x, y), text, fill=ink, font=f)
        boxes[top:bottom, left:min(right, size)] = True
        y = bottom + int(rng.integers(15, 45))
    x = np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 255.0
    return (x - DET_MEAN) / DET_STD, boxes


@functools.cache
def _det():
    model = frontend.load("zoo:ppocr-det")
    calibration = np.concatenate([render_page(seed)[0] for seed in (11, 12, 13, 14)])
    f = build_model(model, "x86", threads=2)
    q = build_model(model, "x86", threads=2, quantize="int8", calibration={"x": calibration})
    return f, q


@pytest.mark.slow  # 70 s; PP-OCRv4 rec's int8 test keeps a real OCR model in the default suite
def test_ppocr_det_int8_finds_the_same_text_as_float():
    """On pages it was not calibrated on, the int8 text map (probability > 0.3, PaddleOCR's
    threshold) overlaps the float one with IoU >= 0.8; and float's map is really the text
    (inside the drawn lines' boxes, covering a good part of them)."""
    import tvm
    from tvm import relax

    f, q = _det()
    vm_f = relax.VirtualMachine(f.executable, tvm.cpu())
    vm_q = relax.VirtualMachine(q.executable, tvm.cpu())
    for seed in (1, 2, 3):
        page, boxes = render_page(seed)
        want = vm_f["main"](tvm.runtime.tensor(page)).numpy()[0, 0] > 0.3
        got = vm_q["main"](tvm.runtime.tensor(page)).numpy()[0, 0] > 0.3
        assert (want & boxes).sum() >= 0.9 * want.sum() and want.sum() >= 0.3 * boxes.sum()
        iou = (want & got).sum() / (want | got).sum()
        assert iou >= 0.8, f"page {seed}: IoU {iou:.3f}"
