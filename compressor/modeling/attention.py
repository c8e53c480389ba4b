"""Attention maps of chosen layers only, while every other layer keeps its fused attention kernel.

``output_attentions=True`` switches *every* layer of a Hugging Face encoder to eager attention and keeps
all of their (B, H, L, L) maps, yet the attention loss reads only the mapped layers (4 of a 12-layer
teacher). :func:`forward_with_attentions` calls the model without ``output_attentions``, so the other
layers run the kernel the model was loaded with (SDPA by default), and turns on the eager path of the chosen
layers' self-attention modules only, for that one call, taking the map each returns. The maps are the
tensors ``output_attentions=True`` gives: the same eager code on the same additive mask.

Two conventions of self-attention modules are handled:

- the module's ``forward`` takes ``output_attentions`` (transformers 4.x BERT, whose SDPA class falls back
  to eager when it is set; MPNet in 4.x and 5.x): a forward pre-hook sets it;
- the module picks its kernel from ``self.config._attn_implementation`` (transformers 5.x BERT): the module
  gets a copy of the config saying ``eager`` for the call, and a boolean (SDPA) mask is turned into the
  additive mask eager attention adds to its scores.

A model whose self-attention modules cannot be found (one per layer) falls back to ``output_attentions=True``.
"""
from __future__ import annotations

import copy
import inspect
import logging
from contextlib import ExitStack, contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def self_attention_modules(model: nn.Module) -> list[nn.Module] | None:
    """Layer i's self-attention module at index i - 1 (the module whose output ``[1]`` is that layer's map).

    transformers 5 names that class in ``_can_record_outputs["attentions"]``; 4.x models are found by the
    class name ending in ``SelfAttention``. ``None`` unless exactly one per hidden layer is found.
    """
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    cls = getattr(spec, "target_class", spec)
    if isinstance(cls, type):
        found = [m for m in model.modules() if isinstance(m, cls)]
    else:
        found = [m for m in model.modules() if type(m).__name__.endswith("SelfAttention")]
    return found if len(found) == model.config.num_hidden_layers else None


def _takes_output_attentions(module: nn.Module) -> bool:
    return "output_attentions" in inspect.signature(module.forward).parameters


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean keep-mask (SDPA's) as the additive float mask eager attention expects: 0 kept, dtype-min masked."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dim() == 2:  # (B, L) padding mask (flash attention): broadcast over heads and queries
        mask = mask[:, None, None, :]
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), torch.finfo(dtype).min)


@contextmanager
def _eager_for(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module`` computes and returns its attention map; nothing else changes."""
    if _takes_output_attentions(module):
        signature = inspect.signature(module.forward)

        def force(mod, args, kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            bound.arguments["output_attentions"] = True
            return bound.args, bound.kwargs

        handle = module.register_forward_pre_hook(force, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        return

    config = module.config
    eager = copy.copy(config)
    eager._attn_implementation = "eager"

    def additive_mask(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = _additive(kwargs["attention_mask"], hidden.dtype)
        elif len(args) > 1:
            args = (args[0], _additive(args[1], hidden.dtype), *args[2:])
        return args, kwargs

    module.config = eager
    handle = module.register_forward_pre_hook(additive_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        module.config = config


def forward_with_attentions(model: nn.Module, layers: Iterable[int], **inputs: Any):
    """``model(**inputs)`` with ``attentions`` set to a tuple over all layers: layer j's map (1-based) for each j
    in ``layers``, ``None`` for the others, whose attention ran the model's own (fused) kernel."""
    modules = self_attention_modules(model)
    if modules is None or not all(hasattr(m, "config") or _takes_output_attentions(m) for m in modules):
        log.warning("%s: self-attention modules not found; every layer's attention map is computed",
                    type(model).__name__)
        return model(**inputs, output_attentions=True)
    wanted = sorted(set(layers))
    maps: dict[int, Tensor] = {}
    with ExitStack() as stack:
        for j in wanted:
            module = modules[j - 1]
            stack.enter_context(_eager_for(module))
            handle = module.register_forward_hook(lambda mod, args, out, j=j: maps.__setitem__(j, out[1]))
            stack.callback(handle.remove)
        out = model(**inputs, output_attentions=False)
    missing = [j for j in wanted if maps.get(j) is None]
    if missing:
        raise RuntimeError(f"{type(model).__name__} returned no attention map for layers {missing}")
    out.attentions = tuple(maps.get(j) for j in range(1, len(modules) + 1))
    return out
