"""The split model computes exactly what the unsplit model computes, and each half holds only its own parts."""

from __future__ import annotations

import pytest
import torch

from fellrec.config import SplitArgs
from fellrec.errors import FellrecError
from fellrec.model.split import resolve_split
from tests.model.conftest import lora_grads, make_model, padded_batch, randomize_adapters


def split_vs_full(model, batch, client=None):
    """Loss, logits and LoRA grads through the link and through the one Hugging Face model (eval: no dropout)."""
    sides = model.sides(client).eval()
    split_logits = sides.client(batch["input_ids"], batch["attention_mask"])
    split_loss = sides.client.loss(batch)
    split_loss.backward()
    split_grads = lora_grads(model)
    full_logits = model.full_logits(batch["input_ids"], batch["attention_mask"])
    full_loss = model.full_loss(batch)
    full_loss.backward()
    full_grads = lora_grads(model)
    return (split_logits, split_loss, split_grads), (full_logits, full_loss, full_grads)


def assert_same(split, full, tol=1e-5, loss_tol=None):
    """Logits within `tol`; loss and grads within `loss_tol` (default `tol`): the split loss runs the LM head on the
    labelled rows only, which in bf16 rounds differently from the head over every row."""
    (s_logits, s_loss, s_grads), (f_logits, f_loss, f_grads) = split, full
    assert torch.isfinite(s_logits).all()
    assert (s_logits - f_logits).abs().max().item() <= tol
    tol = tol if loss_tol is None else loss_tol
    assert abs(s_loss.item() - f_loss.item()) <= tol
    assert s_grads.keys() == f_grads.keys() and len(s_grads) > 0
    for name, g in s_grads.items():
        assert g is not None and f_grads[name] is not None, name
        assert g.abs().sum() > 0, f"{name} got a zero gradient"
        assert (g - f_grads[name]).abs().max().item() <= tol * max(1.0, f_grads[name].abs().max().item()), name


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_split_equals_unsplit_with_left_padding(name, quantize, batch):
    model = make_model(name, quantize=quantize, k=1, m=1)
    randomize_adapters(model)
    assert_same(*split_vs_full(model, batch))


def test_bfloat16_compute_split_equals_unsplit(batch):
    model = make_model("tiny-qwen2", "nf4", compute_dtype="bfloat16")
    randomize_adapters(model)
    assert model.causal_lm.model.embed_tokens.weight.dtype == torch.bfloat16
    split, full = split_vs_full(model, batch)
    assert split[0].dtype == torch.bfloat16
    # The same ops in the same order: bit-identical logits; the loss and grads within bf16 rounding.
    assert_same(split, full, tol=0.0, loss_tol=2e-2)


@pytest.mark.slow
def test_smollm2_split_equals_unsplit():
    model = make_model("smollm2-135m", "nf4", k=2, m=1)
    assert model.n_layers == 30 and model.config.hidden_size == 576
    randomize_adapters(model, scale=0.01)
    assert_same(*split_vs_full(model, padded_batch(batch_size=2, seq_len=16)), tol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_per_client_splits_share_weights_and_agree(name):
    """Clients with other (k, m), k = 0 included, run on the same base model and still match it exactly."""
    model = make_model(name, k=1, m=1, per_client={1: (0, 2), 2: (2, 1), 3: (3, 0)})
    randomize_adapters(model, seed=1)
    batch = padded_batch(seed=3)
    for client in (None, 1, 2, 3):
        assert_same(*split_vs_full(model, batch, client))
    assert (model.sides(1).k, model.sides(1).m) == (0, 2)
    assert model.sides(2).client.head_blocks[0] is model.sides(None).client.head_blocks[0]


def test_nf4_middle_changes_the_model_but_split_still_matches(batch):
    dense, nf4 = make_model("tiny-llama", "none"), make_model("tiny-llama", "nf4")
    with torch.no_grad():
        d = dense.full_logits(batch["input_ids"], batch["attention_mask"])
        q = nf4.full_logits(batch["input_ids"], batch["attention_mask"])
        s = nf4.sides().client(batch["input_ids"], batch["attention_mask"])
    assert (d - q).abs().max() > 1e-4  # the nf4 body really is quantised
    assert (s - q).abs().max() <= 1e-5


def test_halves_hold_only_their_parts():
    model = make_model("tiny-llama", "nf4", k=1, m=1)
    sides = model.sides()
    client_ids = {id(p) for p in sides.client.parameters()}
    server_ids = {id(p) for p in sides.server.parameters()}
    assert not client_ids & server_ids
    everything = {id(p) for p in model.peft.parameters()}
    assert client_ids | server_ids == everything  # nothing lost, nothing held twice
    assert sides.client.lm_head.weight is sides.client.embed_tokens.weight  # tied weights stay tied
    assert len(sides.server.blocks) == 2 and len(sides.client.head_blocks) == 1 and len(sides.client.tail_blocks) == 1
    vocab = model.config.vocab_size
    assert all(vocab not in p.shape for p in sides.server.parameters())  # no embedding, no LM head
    for name, p in list(sides.server.named_parameters()) + list(sides.client.named_parameters()):
        assert p.requires_grad == ("lora_" in name), name  # only LoRA trains; the base is frozen


def test_lightning_hooks_give_a_loss_and_one_optimizer_per_side(batch):
    model = make_model("tiny-qwen2", "nf4")
    sides = model.sides().train()
    client_opt, server_opt = sides.client.configure_optimizers(), sides.server.configure_optimizers()
    before = {n: p.detach().clone() for n, p in model.adapter_parameters().items()}
    loss = sides.client.training_step(batch, 0)
    loss.backward()
    client_opt.step()
    server_opt.step()
    changed = {n for n, p in model.adapter_parameters().items() if not torch.equal(p, before[n])}
    # LoRA B starts at 0 so only B moves on the first step, on both sides of the boundary
    assert {n for n in before if "lora_B" in n} <= changed
    assert any(".layers.1." in n for n in changed) and any(".layers.0." in n for n in changed)
    n_client = sum(p.numel() for g in client_opt.param_groups for p in g["params"])
    n_server = sum(p.numel() for g in server_opt.param_groups for p in g["params"])
    assert n_client + n_server == sum(p.numel() for p in model.adapter_parameters().values())


@pytest.mark.parametrize("k, m", [(3, 1), (4, 0), (2, 2), (0, 4), (5, 0)])
def test_split_leaving_the_server_no_block_is_one_clear_error(k, m):
    with pytest.raises(FellrecError, match="leaves no block for the server"):
        resolve_split(SplitArgs(head_layers=k, tail_layers=m), None, 4)
    with pytest.raises(FellrecError, match="no block for the server"):
        make_model("tiny-llama", k=k, m=m)


def test_bad_per_client_split_names_the_client():
    with pytest.raises(FellrecError, match="client 7"):
        make_model("tiny-llama", k=1, m=1, per_client={7: (3, 1)})
    with pytest.raises(FellrecError, match=">= 0"):
        resolve_split(SplitArgs(head_layers=-1, tail_layers=1), None, 4)
    assert resolve_split(SplitArgs(per_client={"2": (3, 0)}), 2, 30) == (3, 0)  # YAML keys may be strings


def test_unknown_lora_target_is_an_error():
    with pytest.raises(FellrecError, match="lora_targets"):
        make_model("tiny-llama", lora_targets=["no_such_proj"])


def test_boundary_noise_scales_with_each_tokens_rms_and_is_off_at_zero():
    from fellrec.model.split import add_boundary_noise

    h = torch.ones(2, 3, 4096)
    h[1] *= 10.0  # the second row's tokens have RMS 10
    state = torch.random.get_rng_state()
    assert add_boundary_noise(h, 0.0) is h and torch.equal(torch.random.get_rng_state(), state)  # no draw at 0
    noise = add_boundary_noise(h, 0.5, torch.Generator().manual_seed(0)) - h
    assert noise[0].std().item() == pytest.approx(0.5, rel=0.03)
    assert noise[1].std().item() == pytest.approx(5.0, rel=0.03)
    assert noise.mean().abs().item() < 0.05
