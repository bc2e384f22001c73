"""Prompts to token batches: the causal-LM loss on the response only (or on everything with train_on_inputs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fellrec.errors import FellrecError

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode(prompt: str, response: str, tokenizer, max_length: int, train_on_inputs: bool = False) -> Encoded:
    """Tokenise prompt and response apart, so training sees the prompt tokens exactly as generation will.

    The response ends with EOS so the model learns where a title stops. An over-long sample loses the start of its
    prompt (the instruction header), never the history's end or the response.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(response_ids)
    if room < 1:
        raise FellrecError(f"model.max_length {max_length} leaves no room for a prompt before a "
                           f"{len(response_ids)}-token response: raise it")
    truncated = len(prompt_ids) > room
    prompt_ids = prompt_ids[-room:]
    prompt_labels = list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    return Encoded(prompt_ids + response_ids, prompt_labels + response_ids, truncated)


def collate(batch: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to the longest sample (generation pads on the left too)."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[row, width - n:] = torch.tensor(e.input_ids)
        labels[row, width - n:] = torch.tensor(e.labels)
        attention_mask[row, width - n:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
