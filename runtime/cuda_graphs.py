"""CUDA graphs for the torch back end: each input shape's whole forward captured once and replayed as one launch.

The small student spends most of its GPU time waiting for the CPU to launch kernels; a replayed graph
launches them all at once. The ``cuda-graphs`` back end (``runtime.backends.cuda_graphs_backend``, and so
``Classifier.load(..., backend="cuda-graphs")`` and the service's ``COMPRESSOR_BACKEND=cuda-graphs``) runs the
model through :class:`CudaGraphRunner`.

Shapes are bucketed: rows and sequence length are padded up to the next power of two (the length no further
than the model's position table), so a server sending many batch sizes and lengths captures a few dozen
graphs, not one per shape. Padding rows repeat the first row and padding tokens are masked out, so the answers
of the real rows do not change. All graphs share one memory pool; calls are serialised by a lock (a replay
overwrites the pool's intermediate buffers).
"""
from __future__ import annotations

import threading

import numpy as np


def padding_mask_3d(mask):
    """The 2-D padding mask as the equivalent 3-D one: BERT's SDPA path checks a 2-D mask for all-ones on the
    host (a synchronisation, which capture forbids, and a graph break under torch.compile); the 3-D form
    takes the path without it and gives the same attention."""
    return mask[:, None, :].expand(-1, mask.shape[1], -1)


def bucket(n: int, cap: int | None = None) -> int:
    """The next power of two >= ``n``, no more than ``cap`` (and never less than ``n``)."""
    size = 1 << max(0, n - 1).bit_length()
    return max(n, min(size, cap)) if cap else size


class CudaGraphRunner:
    """``model`` (already on its CUDA device, in eval mode and its dtype) replayed through captured graphs.

    Called with int64 arrays named ``input_names`` (those of them the model's forward accepts), returns
    float32 logits. Capture warms up three forwards on a side stream first (cuBLAS handles and workspaces are
    allocated there, outside the graph).
    """

    def __init__(self, model, device: str, input_names: list[str]):
        import torch

        self.model, self.device, self.input_names = model, device, list(input_names)
        config = getattr(model, "config", None)
        self.pad_id = int(getattr(config, "pad_token_id", None) or 0)
        self.max_width = getattr(config, "max_position_embeddings", None)
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._lock = threading.Lock()

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        return bucket(rows), bucket(width, self.max_width)

    def pad(self, feed: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Rows up to ``shape[0]`` (copies of the first), tokens up to ``shape[1]`` (pad id, masked, type 0)."""
        rows, width = feed["input_ids"].shape
        out = {}
        for name, array in feed.items():
            fill = self.pad_id if name == "input_ids" else 0
            wide = np.full((rows, shape[1]), fill, dtype=np.int64)
            wide[:, :width] = array
            out[name] = np.concatenate([wide, np.repeat(wide[:1], shape[0] - rows, axis=0)])
        return out

    def _forward(self, static: dict):
        inputs = {n: padding_mask_3d(t) if n == "attention_mask" else t for n, t in static.items()}
        return self.model(**inputs).logits

    def _capture(self, feed: dict[str, np.ndarray]):
        import torch

        static = {n: torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(static)
        return static, out, graph

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        rows, width = feed["input_ids"].shape
        shape = self.shape_for(rows, width)
        padded = self.pad({n: feed[n] for n in self.input_names}, shape)
        with self._lock, torch.no_grad():
            if shape not in self._graphs:
                self._graphs[shape] = self._capture(padded)
            static, out, graph = self._graphs[shape]
            for name, tensor in static.items():
                tensor.copy_(torch.from_numpy(padded[name]))
            graph.replay()
            return out[:rows].float().cpu().numpy()
