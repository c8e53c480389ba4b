"""Texts to model inputs: the one tokenisation path of `runtime`.

The `Classifier` (and through it the BentoML service), export parity and the benchmark's real-sentence
points all encode with :class:`Encoder`, so what parity checks and what the benchmark times is what serving
feeds the model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime.errors import ModelDirError

INPUT_ARRAYS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))

# What "blank" means, written once: a text made only of these characters has nothing to classify. The union of
# what Python's str.isspace() and JSON Schema's (ECMA-262) \s call whitespace, so the published pattern and the
# check agree on every character: C0 separators and NEL are in Python's set only, the byte-order mark in ECMA's.
BLANK_CHARS = ("\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
               "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")
NOT_BLANK_PATTERN = "[^" + "".join(f"\\u{ord(c):04x}" for c in BLANK_CHARS) + "]"
"""A JSON Schema (ECMA-262) and Python ``re`` pattern that a text matches when it has a non-blank character."""


def is_blank(text: str) -> bool:
    """True when ``text`` has no character outside :data:`BLANK_CHARS` (the empty string too)."""
    return not text.strip(BLANK_CHARS)


class Encoder:
    """One tokenisation per call with the fast (Rust) tokenizer: it truncates as HF's ``truncation=True``
    does (longest first, special tokens kept), pads to the longest member and keeps what it cut in
    ``overflowing``, so truncation is known without tokenising twice. Works on a copy, so the HF tokenizer's
    own settings stay untouched. ``where`` names the model in errors."""

    def __init__(self, tokenizer, max_length: int, where: str):
        if not getattr(tokenizer, "is_fast", False):
            raise ModelDirError(f"{where} has no fast tokenizer: save one beside the model "
                                "(AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR))")
        if tokenizer.pad_token is None:
            raise ModelDirError(f"{where}: the tokenizer has no pad token: set tokenizer.pad_token and save it")
        from tokenizers import Tokenizer

        self.max_length = max_length
        self.rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.rust.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
        self.rust.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                                 pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token)
        self.left_padded = tokenizer.padding_side == "left"
        # offsets are not needed: the fast variant skips computing them (tokenizers >= 0.21)
        self.encode_batch = getattr(self.rust, "encode_batch_fast", self.rust.encode_batch)

    def __call__(self, texts: Sequence) -> tuple[dict[str, np.ndarray], list[bool]]:
        """int64 ``input_ids``, ``attention_mask`` and ``token_type_ids`` padded to the longest member, and
        which texts (strings or (text, text_pair) tuples) were cut to ``max_length``."""
        texts = list(texts)
        encodings = self.encode_batch(texts) if texts else []
        width = len(encodings[0].ids) if encodings else 0
        arrays = {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64).reshape(len(texts), width)
                  for name, attr in INPUT_ARRAYS}
        return arrays, [bool(e.overflowing) for e in encodings]

    def batches(self, texts: Sequence, batch_size: int) -> list[dict[str, np.ndarray]]:
        """``texts`` in order, ``batch_size`` at a time, each batch padded to its own longest member."""
        texts = list(texts)
        return [self(texts[start:start + batch_size])[0] for start in range(0, len(texts), batch_size)]

    def trim(self, inputs: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        """Cut a group's padding down to its own longest member."""
        return {k: v[:, -width:] if self.left_padded else v[:, :width] for k, v in inputs.items()}
