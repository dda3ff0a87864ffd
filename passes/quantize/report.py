"""What ``quantize_int8`` did, per layer and in total (``QuantReport``): the manifest's and the
CLI's record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# --------------------------------------------------------------------------------------------
# Report


@dataclass
class LayerInfo:
    name: str
    op: str
    kernel: str  # "vnni", "sdot", "int32" or "float" (skipped)
    output: str  # "uint8" or "float32"
    fused: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class QuantReport:
    """What ``quantize_int8`` did, layer by layer."""

    activation: str
    vnni: bool = False
    layers: list[LayerInfo] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "where: why" for sites left alone
    observed_tensors: int = 0
    channel_tensors: int = 0  # depthwise inputs quantized per channel
    qdq_tensors: int = 0  # tensors whose parameters came from the model's own Q/DQ pairs
    errors: dict[str, float] = field(default_factory=dict)  # per-layer error (sensitivity)
    sdot: bool = False  # ARM dot-product kernels (``sdot``)

    @property
    def quantized(self) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.kernel != "float"]

    def summary(self) -> str:
        vnni = sum(layer.kernel == "vnni" for layer in self.layers)
        skipped = len(self.layers) - len(self.quantized)
        qdq = f", {self.qdq_tensors} from Q/DQ" if self.qdq_tensors else ""
        dot = f"{vnni} with VNNI"
        if self.sdot:
            dot = f"{sum(layer.kernel == 'sdot' for layer in self.layers)} with sdot"
        elif not vnni and any(layer.kernel == "avx2" for layer in self.layers):
            dot = (f"{sum(layer.kernel == 'avx2' for layer in self.layers)} with AVX2 "
                   "vpmaddubsw, 7-bit weights")
        return (f"{len(self.quantized)} layer(s) int8 ({dot}), {skipped} left float; "
                f"{self.observed_tensors} activation range(s) calibrated{qdq}")

    def to_json(self) -> dict:
        extra = {"sdot": True} if self.sdot else {}
        return {"activation": self.activation, "vnni": self.vnni, **extra,
                "layers": [asdict(layer) for layer in self.layers], "refused": self.refused,
                "observed_tensors": self.observed_tensors,
                "channel_tensors": self.channel_tensors, "qdq_tensors": self.qdq_tensors,
                "errors": self.errors,
                "summary": self.summary()}




