"""Parameter counts: of a torch model, of a state dict, of an ONNX graph's initialisers."""
from __future__ import annotations

import os
from typing import Any


def count_params(model: Any) -> int:
    """Parameters of a torch module (a tensor shared by two modules, e.g. tied embeddings, counts once), or
    elements of a mapping of tensors (a state dict). Works on meta-device models: shapes only."""
    if hasattr(model, "parameters"):
        return int(sum(p.numel() for p in model.parameters()))
    if hasattr(model, "values"):
        return int(sum(t.numel() for t in model.values()))
    raise TypeError(f"count_params takes a torch module or a mapping of tensors, not {type(model).__name__}")


def onnx_params(path: str | os.PathLike) -> int:
    """Elements of an ONNX graph's initialisers (its weights), read without loading external weight files."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    total = 0
    for tensor in graph.initializer:
        size = 1
        for dim in tensor.dims:
            size *= dim
        total += size
    return total
