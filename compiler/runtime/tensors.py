"""What an artifact's inputs and outputs are: ``TensorInfo`` (name, shape, dtype).

It lives with the runtime, which reads it from the manifest; the frontend fills it in from the
ONNX graph. Nothing here imports onnx or the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TensorInfo"]


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: ONNX name, shape (ints, or names of dynamic dims), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])
