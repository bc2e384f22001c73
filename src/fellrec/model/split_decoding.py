"""Generation through the split: Hugging Face's `generate` drives the search, every forward pass runs client head ->
link -> server -> client tail, and each side keeps the KV cache of its own blocks.

`through_split(causal_lm, sides)` routes the decoder's forward through `sides` while it is open; the LM head `generate`
calls is the client's own. `SplitCache` is the cache `generate` is handed: it holds the client's blocks' keys and
values and opens a second cache on the server for the server's blocks. Beam search reorders both: the server gets
the surviving beams' row indices through the link (counted like every other message), never a token.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from fellrec.model.blocks import layer_index
from fellrec.model.link import UP


class SplitCache(DynamicCache):
    """The client's KV cache of a generation through `sides`; creating one opens a fresh cache on the server."""

    def __init__(self, sides):
        config = sides.client.model_config
        super().__init__(config=config)
        self.sides = sides
        self.client_layers = [layer_index(b) for b in (*sides.client.head_blocks, *sides.client.tail_blocks)]
        sides.server.cache = DynamicCache(config=config)

    @property
    def server_cache(self) -> DynamicCache:
        return self.sides.server.cache

    def _on_server(self, operation: str, rows: torch.Tensor) -> None:
        """Apply a batch-row operation to the server's cache: the row indices cross the link, nothing else."""
        getattr(self.server_cache, operation)(self.sides.link.send(rows, UP, "beams"))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far (what `generate` asks to cut the next inputs), read from the client's own blocks;
        a client without blocks asks the server for the count."""
        if self.client_layers:
            return super().get_seq_length(self.client_layers[0])
        return self.server_cache.get_seq_length(layer_index(self.sides.server.blocks[0]))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._on_server("reorder_cache", beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._on_server("batch_select_indices", indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.server_cache.batch_repeat_interleave(repeats)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.server_cache.crop(tokens_to_remove)


@contextlib.contextmanager
def through_split(causal_lm, sides):
    """While open, `causal_lm`'s decoder (what `generate` and `get_decoder()` call) runs as the split `sides`;
    hand `generate` a SplitCache. On exit the decoder is the plain one again and the server's cache is dropped."""
    stack = causal_lm.get_decoder()

    def split_forward(input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                      **ignored):
        if attention_mask is None:  # every token real: the cached ones and the new ones
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long,
                                        device=input_ids.device)
        hidden = sides.client.hidden(input_ids, attention_mask, position_ids, cache)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache)

    stack.forward = split_forward  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    try:
        yield
    finally:
        del stack.forward
        sides.server.cache = None
