"""Exact head-size padding: widen every attention head to a multiple of 8 with zero weights.

GPU fused-attention kernels (FlashAttention, cuDNN/TensorRT MHA, ORT's fused Attention on CUDA) want head
sizes that are multiples of 8; the 4L-312H student has 312/12 = 26. Padding each head's query/key/value
projection with zero rows (26 -> 32) adds zero terms to every dot product and zero value channels, and the
output projection gets matching zero input columns, so the layer computes exactly what it did.

The only thing that would change is the softmax scale: the attention module divides by sqrt(head size),
which becomes sqrt(32). Instead of overriding the module's forward (which the ONNX exporter and ORT's
fusion would have to understand), the query weights and bias are multiplied by sqrt(32)/sqrt(26), so the
effective scale stays 1/sqrt(26) with an unmodified forward: the model stays a plain transformers model
that exports and fuses like any BERT.
"""
from __future__ import annotations

import math

import torch
from torch import nn

MULTIPLE = 8


def padded_size(head_size: int, multiple: int = MULTIPLE) -> int:
    return -(-head_size // multiple) * multiple


def _pad_rows(linear: nn.Linear, heads: int, old: int, new: int, scale: float = 1.0) -> nn.Linear:
    """Output features (heads*old) -> (heads*new): head h keeps rows [h*new, h*new+old), the rest are zero."""
    out = nn.Linear(linear.in_features, heads * new, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight.view(heads, new, -1)[:, :old] = linear.weight.view(heads, old, -1) * scale
        if linear.bias is not None:
            out.bias.zero_()
            out.bias.view(heads, new)[:, :old] = linear.bias.view(heads, old) * scale
    return out


def _pad_columns(linear: nn.Linear, heads: int, old: int, new: int) -> nn.Linear:
    """Input features (heads*old) -> (heads*new) with zero columns for the padded channels."""
    out = nn.Linear(heads * new, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight.view(linear.out_features, heads, new)[:, :, :old] = linear.weight.view(linear.out_features, heads, old)
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def _attention_blocks(model: nn.Module):
    """(self-attention, output projection) pairs of every BERT-style attention block in ``model``."""
    for module in model.modules():
        inner = getattr(module, "self", None)
        output = getattr(module, "output", None)
        if inner is not None and hasattr(inner, "attention_head_size") and hasattr(output, "dense"):
            yield inner, output


def pad_attention_heads(model: nn.Module, multiple: int = MULTIPLE) -> dict:
    """Pad the heads of ``model`` in place; return what changed (recorded in the export manifest).

    A model whose heads are already a multiple of ``multiple`` is left alone (``{"padded": False}``).
    """
    blocks = list(_attention_blocks(model))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no BERT-style attention blocks to pad")
    old = blocks[0][0].attention_head_size
    new = padded_size(old, multiple)
    summary = {"padded": new != old, "head_size": old, "padded_head_size": new,
               "num_heads": blocks[0][0].num_attention_heads, "layers": len(blocks),
               "scale": f"1/sqrt({old}) kept: query weights and bias multiplied by sqrt({new}/{old})"}
    if new == old:
        return summary
    query_scale = math.sqrt(new) / math.sqrt(old)
    for attn, output in blocks:
        heads = attn.num_attention_heads
        attn.query = _pad_rows(attn.query, heads, old, new, query_scale)
        attn.key = _pad_rows(attn.key, heads, old, new)
        attn.value = _pad_rows(attn.value, heads, old, new)
        output.dense = _pad_columns(output.dense, heads, old, new)
        attn.attention_head_size = new
        attn.all_head_size = heads * new
        if hasattr(attn, "scaling"):
            attn.scaling = new ** -0.5
    return summary
