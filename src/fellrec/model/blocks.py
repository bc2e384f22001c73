"""Run a slice of decoder blocks exactly as the Hugging Face model's own forward loop does (transformers 5).

Each side of the split rebuilds the attention masks and rotary embeddings for its own blocks from the 2D mask and
the position ids it holds, so the two halves together compute what the whole model computes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (0 at each row's first real token), as `generate` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def layer_types(config, n_layers: int) -> list[str]:
    """Attention kind of every block ("full_attention" or "sliding_attention"); Llama has only full."""
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * n_layers


def _mask_builders():
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    return {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def build_masks(config, kinds: Sequence[str], h: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, cache=None, layers: Sequence[int] = ()) -> dict:
    """The attention mask of each kind used by these blocks (None where sdpa can use is_causal instead).

    With a KV cache, `attention_mask` covers the cached tokens too; each mask is sized against the first of these
    blocks' `layers` of its kind (a side's cache holds only its own blocks' entries)."""
    builders, sized_against = _mask_builders(), {}
    if cache is not None:
        for kind, layer in zip(kinds, layers):
            sized_against.setdefault(kind, {"layer_idx": layer})
    return {kind: builders[kind](config=config, inputs_embeds=h, attention_mask=attention_mask, cache=cache,
                                 position_ids=position_ids, **sized_against.get(kind, {}))
            for kind in sorted(set(kinds))}


def layer_index(block: nn.Module) -> int:
    """The block's index in the whole model (the slot its keys and values take in a KV cache)."""
    return block.self_attn.layer_idx


def run_blocks(blocks: nn.ModuleList, kinds: Sequence[str], rotary: nn.Module, config, h: torch.Tensor,
               attention_mask: torch.Tensor, position_ids: torch.Tensor, cache=None) -> torch.Tensor:
    """h through `blocks` with the model's masks and rotary position embeddings; with `cache` (a transformers
    Cache), the blocks read and extend their keys and values there (incremental decoding)."""
    if len(blocks) == 0:
        return h
    layers = [layer_index(b) for b in blocks] if cache is not None else ()
    masks = build_masks(config, kinds, h, attention_mask, position_ids, cache, layers)
    position_embeddings = rotary(h, position_ids=position_ids)
    for block, kind in zip(blocks, kinds):
        h = block(h, attention_mask=masks[kind], position_ids=position_ids, position_embeddings=position_embeddings,
                  cache=cache, use_cache=cache is not None)
    return h


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100 (the shift inside, as in Hugging Face's loss)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
