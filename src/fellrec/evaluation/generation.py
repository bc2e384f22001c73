"""Step 1 of BIGRec grounding: the client's model writes a title for each user (batched beam search).

Prompts are tokenised exactly as training tokenises them (no special tokens, the prompt's start cut when too long)
and left-padded, so every row's last prompt token sits at the same column and `generate` continues all rows at once.
Optionally the beams are constrained to a trie of the item titles, so every output is a real item.
"""

from __future__ import annotations

import contextlib
import re
from typing import Optional, Sequence

import torch

from fellrec.data.prompts import quote

# The closing quote of a title: a `"` followed by the end, a new line or the next quoted title (`, "`).
# A quote inside a title (`Tom Clancy's "Splinter Cell", Chaos Theory`) is followed by none of these.
_CLOSER = re.compile(r'"(?=[ \t]*(?:$|\n|,[ \t]*"))')


def parse_title(text: str) -> str:
    """The first quoted title of a response (an untuned model may write words before it); tolerates a missing
    closing quote (cut at the line end). Text without any quote: its first line."""
    text = text.strip()
    opening = text.find('"')
    if opening < 0:
        return text.split("\n", 1)[0].strip()
    body = text[opening + 1:]
    match = _CLOSER.search(body)
    return (body[: match.start()] if match else body.split("\n", 1)[0]).strip()


def language_model(model):
    """The generating module: a SplitModel's peft model (live adapter), or a Hugging Face model as given."""
    return getattr(model, "peft", model)


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else next(language_model(model).parameters()).device


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Eval mode for the block (LoRA dropout off, so generation is deterministic), the caller's mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: Optional[int] = None) -> list[list[int]]:
    """Token ids as `fellrec.data.collate.encode` makes them: no special tokens, an over-long prompt loses its start."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None:
        ids = [row[-max_prompt_tokens:] for row in ids]
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask with every row right-aligned (the last real token in the last column)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


class TitleTrie:
    """Token paths of `"Title"` + EOS for every item title, as training tokenises a response."""

    def __init__(self, tokenizer, titles: Sequence[str]):
        self.eos = tokenizer.eos_token_id
        self.root: dict[int, dict] = {}
        self.depth = 0
        for title in sorted(set(titles)):
            path = tokenizer(quote(title), add_special_tokens=False)["input_ids"] + [self.eos]
            node = self.root
            for token in path:
                node = node.setdefault(token, {})
            self.depth = max(self.depth, len(path))

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens that keep `generated` on a title's path; EOS only once a title is complete (or off the trie)."""
        node = self.root
        for token in generated:
            if token not in node:
                return [self.eos]  # a finished row being padded (or off the trie): nothing but EOS
            node = node[token]
        return list(node) or [self.eos]

    def prefix_fn(self, prompt_width: int):
        """The `prefix_allowed_tokens_fn` for a batch whose (padded) prompts are `prompt_width` wide."""
        def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed(input_ids[prompt_width:].tolist())
        return allowed


def decoder(lm):
    """The decoder stack without the LM head (fewer FLOPs when no logits are needed)."""
    causal_lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return causal_lm.get_decoder()


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with (the prompt template's header), keeping at least one own token per row."""
    n = min(len(r) for r in rows) - 1
    for i in range(max(n, 0)):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return max(n, 0)


def prefix_layout(rows: Sequence[Sequence[int]], pad_id: int, shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `left_pad`, but the `shared` first tokens stay in front: [shared][padding][rest of the row].

    Masked columns add nothing to attention and position ids skip them, so this is the left-padded computation;
    the shared columns are now the same in every row, so their keys and values can be computed once.
    """
    tails, (ids, mask) = [r[shared:] for r in rows], left_pad([r[shared:] for r in rows], pad_id)
    head = torch.tensor(rows[0][:shared], dtype=torch.long).expand(len(tails), shared)
    return torch.cat([head, ids], 1), torch.cat([torch.ones_like(head), mask], 1)


def prompt_cache(lm, ids: torch.Tensor, mask: torch.Tensor, shared: int, copies: int, cache):
    """Fill `cache` with every prompt but its last token, copied for each beam: the shared header is run once for
    the batch, the rest once per prompt.

    On its own, `generate` copies the prompts num_beams times before its prefill and runs each copy, header
    included; the prefill is most of the cost of a short title. Handed this cache, it runs only the last token.
    """
    stack = decoder(lm)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    if shared:
        stack(input_ids=ids[:1, :shared], position_ids=position_ids[:1, :shared], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(ids.shape[0])
    if ids.shape[1] - 1 > shared:
        stack(input_ids=ids[:, shared:-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, shared:-1],
              cache=cache, use_cache=True)
    cache.batch_repeat_interleave(copies)
    return cache


def _generate_batch(lm, tokenizer, rows: list[list[int]], device, num_beams: int, max_new_tokens: int,
                    trie: Optional[TitleTrie], sides=None) -> list[str]:
    from transformers import DynamicCache, GenerationConfig

    from fellrec.model.split_decoding import SplitCache

    shared = shared_prefix(rows)
    ids, mask = (t.to(device) for t in prefix_layout(rows, tokenizer.pad_token_id, shared))
    # A fresh config, so a checkpoint's sampling defaults (temperature, top_p) never leak into the search.
    config = GenerationConfig(do_sample=False, num_beams=num_beams, num_return_sequences=1,
                              max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    extra = {"prefix_allowed_tokens_fn": trie.prefix_fn(ids.shape[1])} if trie is not None else {}
    cache = SplitCache(sides) if sides is not None else DynamicCache(config=lm.config)
    extra["cache"] = prompt_cache(lm, ids, mask, shared, num_beams, cache)
    out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    if trie is not None:  # exactly `"Title"`: drop the two outer quotes, whatever quotes the title holds
        return [t.strip()[1:-1] if len(t.strip()) >= 2 else t.strip() for t in texts]
    return [parse_title(t) for t in texts]


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: Sequence[str], num_beams: int = 4, max_new_tokens: int = 24,
                    batch_size: int = 8, progress=None, trie: Optional[TitleTrie] = None,
                    max_prompt_tokens: Optional[int] = None, client: Optional[int] = None) -> list[str]:
    """The title the model writes after each prompt, in prompt order (greedy when num_beams == 1).

    Batches group prompts of similar length (less padding); each batch runs its prompts once (`prompt_cache`), not
    once per beam. The result is deterministic.
    A SplitModel generates through `client`'s split (fellrec.model.split_decoding): the prompts' tokens, the beams'
    tokens and the logits stay on the client, the server runs its blocks on h_k with its own KV cache.
    `trie` constrains the search to item titles (its depth raises `max_new_tokens` so every title can finish).
    `progress` is anything with `.update(n)` (a tqdm bar).
    """
    from fellrec.model.split_decoding import through_split

    if not prompts:
        return []
    lm = language_model(model)
    rows = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    if trie is not None:
        max_new_tokens = max(max_new_tokens, trie.depth)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    titles: list[Optional[str]] = [None] * len(rows)
    sides = model.sides(client) if hasattr(model, "sides") else None
    routing = through_split(model.causal_lm, sides) if sides is not None else contextlib.nullcontext()
    with eval_mode(lm), routing:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            texts = _generate_batch(lm, tokenizer, [rows[i] for i in chunk], model_device(model), num_beams,
                                    max_new_tokens, trie, sides)
            for i, text in zip(chunk, texts):
                titles[i] = text
            if progress is not None:
                progress.update(len(chunk))
    return titles
