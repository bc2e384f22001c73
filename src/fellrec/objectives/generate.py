"""BIGRec on the split model: the loss is the causal-LM loss of the target title; ranking writes a title and grounds
it to the nearest real items (METHOD.md §2 and §6)."""

from __future__ import annotations

from typing import Optional

import torch

from fellrec.data.collate import collate, encode
from fellrec.data.prompts import PromptStyle, render
from fellrec.data.table import Sample
from fellrec.objectives.base import lr_groups


class GenerateObjective:
    name = "generate"

    def __init__(self, cfg, model, tokenizer, data, item_index_fn, autocast):
        self.cfg, self.model, self.tokenizer, self.data = cfg, model, tokenizer, data
        self.style, self.item_index_fn, self.autocast = PromptStyle.from_args(cfg.data), item_index_fn, autocast
        self.store = None

    def init_clients(self, store, client_users: dict[int, set[str]]) -> None:
        """Nothing client-specific: every client starts from the common initial adapter."""

    def encode(self, samples: list[Sample]) -> list:
        return [encode(*render(s, self.data.titles, self.style), self.tokenizer, self.cfg.model.max_length,
                       self.cfg.train.train_on_inputs) for s in samples]

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        return collate(batch, self.tokenizer.pad_token_id)

    def loss(self, sides, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sides.client.loss(batch)

    def param_groups(self, live: dict, train) -> list[dict]:
        return lr_groups(live, train.lr, lambda name: False, None)

    def evaluate(self, samples_per_client: dict[int, list[Sample]], mask: str, progress: bool = True,
                 pop_gamma: float = 0.0, collaborative: Optional[dict] = None) -> dict:
        from fellrec.evaluation.evaluate import evaluate_clients

        ev = self.cfg.eval
        return evaluate_clients(self.model, self.store, self.tokenizer, self.data,
                                samples_per_client=samples_per_client, style=self.style, num_beams=ev.num_beams,
                                max_new_tokens=ev.max_new_tokens, item_index=self.item_index_fn(),
                                pop_gamma=pop_gamma, grounding=ev.grounding, batch_size=ev.batch_size,
                                progress=progress, mask=mask, collaborative=collaborative)
