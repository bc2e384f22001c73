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
    """The first quoted title of a response; tolerates a missing closing quote (cut at the line end)."""
    text = text.strip()
    if not text.startswith('"'):
        return text.split("\n", 1)[0].strip().strip('"').strip()
    body = text[1:]
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
        """The `prefix_allowed_tokens_fn` for a batch whose (left-padded) prompts are `prompt_width` wide."""
        def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed(input_ids[prompt_width:].tolist())
        return allowed


def _generate_batch(lm, tokenizer, rows: list[list[int]], device, num_beams: int, max_new_tokens: int,
                    trie: Optional[TitleTrie]) -> list[str]:
    from transformers import GenerationConfig

    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    # A fresh config, so a checkpoint's sampling defaults (temperature, top_p) never leak into the search.
    config = GenerationConfig(do_sample=False, num_beams=num_beams, num_return_sequences=1,
                              max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    extra = {"prefix_allowed_tokens_fn": trie.prefix_fn(ids.shape[1])} if trie is not None else {}
    out = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, **extra)
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    if trie is not None:  # exactly `"Title"`: drop the two outer quotes, whatever quotes the title holds
        return [t.strip()[1:-1] if len(t.strip()) >= 2 else t.strip() for t in texts]
    return [parse_title(t) for t in texts]


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: Sequence[str], num_beams: int = 4, max_new_tokens: int = 24,
                    batch_size: int = 8, progress=None, trie: Optional[TitleTrie] = None,
                    max_prompt_tokens: Optional[int] = None) -> list[str]:
    """The title the model writes after each prompt, in prompt order (greedy when num_beams == 1).

    Batches group prompts of similar length (less padding to run through the model); the result is deterministic.
    `trie` constrains the search to item titles (its depth raises `max_new_tokens` so every title can finish).
    `progress` is anything with `.update(n)` (a tqdm bar).
    """
    if not prompts:
        return []
    lm = language_model(model)
    rows = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    if trie is not None:
        max_new_tokens = max(max_new_tokens, trie.depth)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    titles: list[Optional[str]] = [None] * len(rows)
    with eval_mode(lm):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            texts = _generate_batch(lm, tokenizer, [rows[i] for i in chunk], model_device(model), num_beams,
                                    max_new_tokens, trie)
            for i, text in zip(chunk, texts):
                titles[i] = text
            if progress is not None:
                progress.update(len(chunk))
    return titles
