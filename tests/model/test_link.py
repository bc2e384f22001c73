"""Only hidden states, the 2D mask, position ids and gradients cross the boundary; every byte is counted."""

from __future__ import annotations

import pytest
import torch

from fellrec.model.blocks import position_ids_from_mask
from fellrec.model.link import DOWN, UP
from tests.model.conftest import make_model, padded_batch, randomize_adapters


def run_recorded_step(model, batch):
    """One training step with a recorder on the link and a hook on the server module's own entry."""
    sides = model.sides().train()
    messages, server_calls = [], []
    sides.link.recorder = messages.append
    hook = sides.server.register_forward_pre_hook(
        lambda module, args, kwargs: server_calls.append((args, kwargs)), with_kwargs=True)
    try:
        sides.link.stats.reset()
        loss = sides.client.loss(batch)
        loss.backward()
    finally:
        hook.remove()
        sides.link.recorder = None
    return sides, loss, messages, server_calls


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_tokens_labels_logits_and_loss_never_reach_the_server(name):
    model = make_model(name, "nf4", k=1, m=1)
    randomize_adapters(model)
    batch = padded_batch(batch_size=3, seq_len=12)
    sides, loss, messages, server_calls = run_recorded_step(model, batch)
    B, T = batch["input_ids"].shape
    H, V = model.config.hidden_size, model.config.vocab_size
    with torch.no_grad():
        logits = sides.client(batch["input_ids"], batch["attention_mask"])

    up = [msg for msg in messages if msg.direction == UP]
    assert [msg.kind for msg in up] == ["hidden", "mask", "positions", "grad"]
    assert [msg.kind for msg in messages if msg.direction == DOWN] == ["hidden", "grad"]
    for msg in up:
        t = msg.tensor
        if msg.kind in ("hidden", "grad"):
            assert t.shape == (B, T, H) and t.is_floating_point()
        else:
            assert t.shape == (B, T) and not t.is_floating_point()
        assert t.shape != logits.shape and V not in t.shape
        assert t.grad_fn is None  # a copy: no autograd path back into the client's graph
        for secret in (batch["input_ids"], batch["labels"]):
            assert not (t.shape == secret.shape and torch.equal(t, secret.to(t.dtype)))
        assert t.dim() >= 2  # no scalar (the loss) crosses
    mask_msg, pos_msg = up[1].tensor, up[2].tensor
    assert torch.equal(mask_msg, batch["attention_mask"])
    assert torch.equal(pos_msg, position_ids_from_mask(batch["attention_mask"]))

    # The server module itself was called exactly once, with the three link copies and nothing else.
    assert len(server_calls) == 1
    args, kwargs = server_calls[0]
    assert not kwargs and len(args) == 3
    assert args[0].is_leaf and args[0].requires_grad and args[0].grad_fn is None  # its own graph's root
    assert torch.equal(args[1], mask_msg) and torch.equal(args[2], pos_msg)


def test_bytes_are_counted_both_ways_forward_and_backward():
    model = make_model("tiny-llama", "none", k=1, m=1)
    batch = padded_batch(batch_size=3, seq_len=12)
    sides, _, messages, _ = run_recorded_step(model, batch)
    B, T, H = 3, 12, model.config.hidden_size
    hidden = B * T * H * 4  # fp32
    ints = B * T * 8  # int64 mask and positions
    assert sides.link.stats.bytes_up == hidden + 2 * ints + hidden  # h_k, mask, positions; dL/dh_(n-m)
    assert sides.link.stats.bytes_down == hidden + hidden  # h_(n-m); dL/dh_k
    assert sides.link.stats.messages == len(messages) == 6
    assert sum(m.tensor.nbytes for m in messages if m.direction == UP) == sides.link.stats.bytes_up


def test_inference_crosses_forward_only():
    model = make_model("tiny-qwen2", "nf4")
    sides = model.sides().eval()
    batch = padded_batch()
    sides.link.stats.reset()
    with torch.no_grad():
        sides.client(batch["input_ids"], batch["attention_mask"])
    B, T, H = 3, 12, model.config.hidden_size
    assert (sides.link.stats.bytes_up, sides.link.stats.bytes_down) == (B * T * H * 4 + 2 * B * T * 8, B * T * H * 4)


def test_gradient_crossing_down_is_dl_dh_k():
    """The gradient the server returns is exactly the gradient of the loss w.r.t. h_k in the unsplit model."""
    model = make_model("tiny-llama", "none", k=1, m=1)
    randomize_adapters(model)
    batch = padded_batch()
    sides = model.sides().eval()
    grads = []
    sides.link.recorder = lambda msg: grads.append(msg.tensor) if msg.kind == "grad" and msg.direction == DOWN else None
    sides.client.loss(batch).backward()
    sides.link.recorder = None

    h_k, positions = sides.client.head(batch["input_ids"], batch["attention_mask"])
    h_k = h_k.detach().requires_grad_()
    out = sides.server(h_k, batch["attention_mask"], positions)
    from fellrec.model.blocks import causal_lm_loss
    causal_lm_loss(sides.client.tail(out, batch["attention_mask"], positions), batch["labels"]).backward()
    assert len(grads) == 1 and torch.allclose(grads[0], h_k.grad, atol=1e-7)
