"""Only hidden states, the 2D mask, position ids and gradients reach the server (checked on the server module's own
inputs with tests/model/server_probe.py); every byte crossing the link is counted."""

from __future__ import annotations

import pytest
import torch

from fellrec.model.blocks import position_ids_from_mask
from fellrec.model.link import DOWN, UP
from tests.model.conftest import make_model, padded_batch, randomize_adapters
from tests.model.server_probe import ServerProbe, boundary_ints, secrets_of


def run_recorded_step(model, batch):
    """One training step with a recorder on the link: (sides, loss, messages)."""
    sides = model.sides().train()
    messages = []
    sides.link.recorder = messages.append
    try:
        sides.link.stats.reset()
        loss = sides.client.loss(batch)
        loss.backward()
    finally:
        sides.link.recorder = None
    return sides, loss, messages


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_tokens_labels_logits_and_loss_never_reach_the_server(name):
    """Instrument the server module itself (its forward, its blocks, rotary embedding, every submodule, and the
    gradient its backward receives) during a training step, and look for what must stay with the client."""
    model = make_model(name, "nf4", k=1, m=1)
    randomize_adapters(model)
    batch = padded_batch(batch_size=3, seq_len=12)
    B, T = batch["input_ids"].shape
    H, V = model.config.hidden_size, model.config.vocab_size
    head_dim = H // model.config.num_attention_heads
    sides = model.sides().train()
    messages = []
    sides.link.recorder = messages.append
    try:
        with ServerProbe(sides.server) as probe, ServerProbe(sides.server, deep=True) as deep:
            torch.manual_seed(0)  # LoRA dropout: the head is recomputed below with the same draws
            loss = sides.client.loss(batch)
            loss.backward()
    finally:
        sides.link.recorder = None
    n_server_blocks = len(sides.server.blocks)
    assert n_server_blocks == model.n_layers - 2

    # The hooks fired: one server forward, one backward, each block once (the check below is not vacuous).
    assert probe.calls["ServerModule.forward"] == 1 and probe.calls["ServerModule.backward"] == 1
    assert all(probe.calls[f"ServerModule.blocks.{i}.forward"] == 1 for i in range(n_server_blocks))
    assert len(deep.calls) > 10 * n_server_blocks  # attention, projections, LoRA layers, MLP of every block

    # Exactly what ServerModule.forward received: h_k (float, B x T x hidden), the 2D mask and the position ids.
    entry = probe.at("ServerModule.forward")
    assert [r.path for r in entry] == ["args[0]", "args[1]", "args[2]"]
    h, mask, positions = (r.tensor for r in entry)
    assert h.shape == (B, T, H) and h.is_floating_point()
    assert torch.equal(mask, batch["attention_mask"])
    assert torch.equal(positions, position_ids_from_mask(batch["attention_mask"]))
    torch.manual_seed(0)
    with torch.no_grad():  # h_k is the client head's output, not an embedding lookup the server could invert
        h_k, _ = sides.client.head(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(h, h_k)
    (grad,) = probe.at("ServerModule.backward")
    assert grad.tensor.shape == (B, T, H) and grad.tensor.is_floating_point()

    # Inside the server: no tensor equal to the token ids or labels (in any dtype), none of vocabulary width (logits),
    # no scalar (the loss), no integer tensor but the mask and positions, floats only of hidden or head width.
    rules = dict(secrets=secrets_of(batch), forbidden_sizes={"vocab": V}, allowed_ints=boundary_ints(batch))
    assert probe.leaks(**rules, float_last_dims={H, head_dim}) == []
    assert deep.leaks(**rules) == []
    # The only bool tensors are the 4D causal masks built from the 2D mask: key j visible to query i iff j <= i and
    # j is not padding (the rows of padded queries included), and i - j < window in sliding-attention blocks.
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    window = getattr(model.config, "sliding_window", None) or T
    visible = {"full_attention": j <= i, "sliding_attention": (j <= i) & (i - j < window)}
    bools = [r for r in deep.records if r.tensor.dtype == torch.bool]
    assert len(bools) == 2 * n_server_blocks  # each block and its attention get the mask, nothing else is bool
    for r in bools:
        kind = sides.server.kinds[int(r.where.split(".")[2])]
        expected = (visible[kind][None] & batch["attention_mask"].bool()[:, None, :])[:, None]
        assert torch.equal(r.tensor, expected), (r.where, kind)
    # What the link says it carried matches: hidden, mask, positions up, hidden down; then the two gradients.
    assert [(m.direction, m.kind) for m in messages] == [(UP, "hidden"), (UP, "mask"), (UP, "positions"),
                                                         (DOWN, "hidden"), (UP, "grad"), (DOWN, "grad")]
    assert torch.equal(messages[0].tensor, h) and torch.equal(messages[4].tensor, grad.tensor)
    # What goes up is a copy: no autograd path back into the client's graph.
    assert all(m.tensor.grad_fn is None for m in messages if m.direction == UP)


def test_the_probe_flags_token_ids_and_labels_given_to_the_server():
    """The detector is not vacuous: a split step that hands the server the token ids (or labels) is caught."""
    model = make_model("tiny-llama", "none", k=1, m=1)
    batch = padded_batch(batch_size=3, seq_len=12)
    sides = model.sides().train()
    rules = dict(secrets=secrets_of(batch), forbidden_sizes={"vocab": model.config.vocab_size},
                 allowed_ints=boundary_ints(batch))
    honest = sides.link.server
    for secret in ("input_ids", "labels"):
        # A broken link: the position ids replaced by a secret (rotary embeddings accept any integers, so it runs).
        sides.link.server = lambda h, mask, pos, leaked=batch[secret]: honest(h, mask, leaked)  # noqa: E731
        try:
            with ServerProbe(sides.server) as probe:
                sides.client.loss(batch).backward()
        finally:
            sides.link.server = honest
        found = probe.leaks(**rules)
        assert any(f"ServerModule.forward args[2] (3, 12) torch.int64: equals {secret}" == f for f in found), found
        assert any("blocks.0.forward kwargs['position_ids']" in f and secret in f for f in found), found
    # The same check on the honest step finds nothing.
    with ServerProbe(sides.server) as probe:
        sides.client.loss(batch).backward()
    assert probe.leaks(**rules) == [] and probe.calls["ServerModule.forward"] == 1


def test_the_probe_flags_logits_loss_and_cast_tokens():
    """Each rule of ServerProbe.leaks fires on its own kind of leak (a toy module stands in for the server)."""
    class Sink(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return args[0]

    batch = padded_batch(batch_size=3, seq_len=12)
    B, T, V, H = 3, 12, 49152, 64
    rules = dict(secrets=secrets_of(batch), forbidden_sizes={"vocab": V}, allowed_ints=boundary_ints(batch),
                 float_last_dims={H})
    sink = Sink()
    with ServerProbe(sink, backward=False) as probe:
        sink(torch.randn(B, T, H), batch["attention_mask"], position_ids_from_mask(batch["attention_mask"]))
    assert probe.leaks(**rules) == []
    cases = {
        "logits": ((torch.randn(B, T, H),), {"extra": torch.randn(B, T, V)}, "has a dimension of size 49152"),
        "loss": ((torch.randn(B, T, H), torch.tensor(2.5)), {}, "a scalar"),
        "float ids": ((batch["input_ids"].float(),), {}, "equals input_ids"),
        "flat labels": ((torch.randn(B, T, H), [batch["labels"].reshape(-1)]), {}, "equals labels"),
        "other ints": ((torch.randn(B, T, H), torch.arange(B * T).view(B, T)), {}, "neither the mask nor"),
        "odd width": ((torch.randn(B, T, 7),), {}, "unexpected width 7"),
    }
    for name, (args, kwargs, expected) in cases.items():
        with ServerProbe(sink, backward=False) as probe:
            sink(*args, **kwargs)
        found = probe.leaks(**rules)
        assert any(expected in f for f in found), (name, found)


def test_bytes_are_counted_both_ways_forward_and_backward():
    model = make_model("tiny-llama", "none", k=1, m=1)
    batch = padded_batch(batch_size=3, seq_len=12)
    sides, _, messages = run_recorded_step(model, batch)
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
