"""A student checkpoint made for another tokenizer, moved onto the teacher's vocabulary.

A published small encoder (all-MiniLM-L6-v2, BERT's uncased WordPiece) is a strong start for a student or a
teacher assistant, but the student reads the teacher's token ids (all-mpnet-base-v2's vocabulary: the same
WordPiece pieces at other ids, plus its own special tokens). Its word-embedding matrix is re-indexed by token
string: a teacher token keeps the embedding the checkpoint learned for the same string, special tokens are
matched by role (``[CLS]`` for ``<s>``...), and the few tokens the checkpoint never had start at the mean
embedding. Where the two tokenizers split text differently (few strings in common) no re-indexing can help,
and :class:`~compressor.modeling.StudentError` says so.
"""
from __future__ import annotations

import torch

from compressor.modeling import StudentError

SPECIAL_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")
MIN_COVERAGE = 0.9
"""The least share of the teacher's tokens the checkpoint must know by string to be re-indexed."""


def token_map(source_tokenizer, target_tokenizer) -> dict[int, int]:
    """Target token id -> source token id for every target token the source knows (special tokens by role)."""
    source = source_tokenizer.get_vocab()
    roles = {getattr(target_tokenizer, r): getattr(source_tokenizer, r) for r in SPECIAL_ROLES
             if getattr(target_tokenizer, r, None) is not None and getattr(source_tokenizer, r, None) is not None}
    out = {}
    for token, target_id in target_tokenizer.get_vocab().items():
        source_id = source.get(roles.get(token, token))
        if source_id is not None:
            out[target_id] = source_id
    return out


def needs_reindexing(source_tokenizer, target_tokenizer, name: str = "the checkpoint") -> bool:
    """Whether a model made for ``source_tokenizer`` must be re-indexed to read ``target_tokenizer``'s ids; raises
    :class:`StudentError` where it cannot be (below :data:`MIN_COVERAGE` of the target's tokens known)."""
    if source_tokenizer.get_vocab() == target_tokenizer.get_vocab():
        return False
    mapping_coverage(token_map(source_tokenizer, target_tokenizer), target_tokenizer, name)
    return True


def mapping_coverage(mapping: dict[int, int], target_tokenizer, name: str) -> int:
    total = len(target_tokenizer.get_vocab())
    if len(mapping) < MIN_COVERAGE * total:
        raise StudentError(f"{name} knows only {len(mapping):,} of the teacher's {total:,} tokens by string (its "
                           "tokenizer splits text differently); start from a checkpoint with the teacher's tokenizer "
                           "or a compatible one (the same WordPiece/BPE pieces)")
    return total


def reindex_embeddings(model, source_tokenizer, target_tokenizer, name: str = "the checkpoint") -> dict[str, int]:
    """Re-index ``model``'s word embeddings (in place) from ``source_tokenizer``'s ids to ``target_tokenizer``'s;
    returns ``{"found": ..., "total": ...}``."""
    mapping = token_map(source_tokenizer, target_tokenizer)
    total = mapping_coverage(mapping, target_tokenizer, name)
    old = model.get_input_embeddings().weight.detach().clone()
    size = max(total, max(target_tokenizer.get_vocab().values()) + 1)
    new = old.mean(0, keepdim=True).repeat(size, 1)
    index = torch.tensor(sorted(mapping), dtype=torch.long)
    new[index] = old[torch.tensor([mapping[i] for i in sorted(mapping)], dtype=torch.long)]
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(new)
    model.config.vocab_size = size
    model.config.pad_token_id = target_tokenizer.pad_token_id
    return {"found": len(mapping), "total": total}
