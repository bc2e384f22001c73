"""int8 storage and compute of the server blocks (`model.quantize: int8`)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fellrec.errors import FellrecError
from fellrec.model.int8 import Int8Linear, dequantize_int8
from fellrec.model.quantize import param_count, storage_bytes
from tests.model.conftest import lora_grads, make_model, padded_batch, randomize_adapters


def _exact_linear() -> tuple[nn.Linear, torch.Tensor]:
    """A Linear whose rows are integers times one scale each, with 127 in every row: int8 holds it exactly."""
    ints = torch.tensor([[127., -64., 0., 1.], [2., 4., -8., 127.], [-127., 3., 5., -7.]])
    scale = torch.tensor([0.5, 0.01, 2.0])
    linear = nn.Linear(4, 3, bias=False)
    linear.weight.data = ints * scale[:, None]
    return linear, ints


def test_int8_forward_and_backward_known_answers():
    linear, ints = _exact_linear()
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and torch.equal(q.weight, ints.to(torch.int8))
    assert torch.equal(q.dequantized(), linear.weight.data)
    # Activations 0..127 sit on the 7-bit activation grid exactly (scale 1, zero point 0): the int8 kernel's
    # result is then the exact product.
    x = torch.tensor([[0., 1., 2., 127.], [10., 20., 30., 40.]])
    with torch.no_grad():
        assert torch.allclose(q(x), x @ linear.weight.data.T, rtol=0, atol=1e-4)
    x.requires_grad_()
    grad = torch.tensor([[1., -2., 0.5], [0., 3., 1.]])
    q(x).backward(grad)
    assert torch.equal(x.grad, grad @ linear.weight.data)  # grad @ W, from the exact dequantised weights
    assert q.weight.grad is None


def test_int8_matches_dense_on_random_inputs_with_bias():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = Int8Linear(linear)
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        dense, int8 = linear(x), q(x)
    assert int8.shape == dense.shape
    assert 0 < (int8 - dense).norm() < 0.05 * dense.norm()


def test_only_the_server_blocks_are_int8_and_adapters_still_learn():
    dense, model = make_model("tiny-llama", "none"), make_model("tiny-llama", "int8", k=1, m=1)
    server_q = [m for m in model.sides().server.modules() if isinstance(m, Int8Linear)]
    assert len(server_q) == 2 * 7  # q k v o gate up down in each of the 2 middle blocks
    assert not any(isinstance(m, Int8Linear) for m in model.sides().client.modules())
    # same base weights: the int8 model's logits stay close to the dense model's
    batch = padded_batch()
    with torch.no_grad():
        a = dense.full_logits(batch["input_ids"], batch["attention_mask"])
        b = model.full_logits(batch["input_ids"], batch["attention_mask"])
    assert 0 < (a - b).norm() < 0.05 * a.norm()
    # every LoRA tensor, the server's above int8 bases included, gets a gradient through the split
    randomize_adapters(model)
    sides = model.sides().train()
    sides.client.loss(batch).backward()
    grads = lora_grads(model)
    assert len(grads) == 16
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name


def test_int8_storage_and_round_trip_to_dense():
    dense, model = make_model("tiny-llama", "none"), make_model("tiny-llama", "int8")
    d_server, q_server = dense.sides().server, model.sides().server
    n = param_count(d_server)
    assert param_count(q_server) == n + 2 * (64 * 3 + 32 * 2 + 128 * 2)  # plus one scale per weight row
    weights = n - 2 * 2 * 64  # the norms stay fp32
    assert storage_bytes(q_server) == weights + 4 * (n - weights) + 4 * (param_count(q_server) - n)
    blocks = copy.deepcopy(list(q_server.blocks))
    assert dequantize_int8(blocks) == 14
    up_dense = dense.causal_lm.model.layers[1].mlp.up_proj.weight
    up_back = blocks[0].mlp.up_proj.weight
    assert type(blocks[0].mlp.up_proj) is nn.Linear
    assert 0 < (up_back - up_dense).abs().max() <= up_dense.abs().amax(1).max() / 254 + 1e-7  # half a step


def test_rank_in_int8_swaps_only_the_server_blocks_and_keeps_the_trained_adapters():
    model = make_model("tiny-llama", "none", k=1, m=1)
    randomize_adapters(model)
    adapters = {name: p.detach().clone() for name, p in model.adapter_parameters().items()}
    batch = padded_batch()
    with torch.no_grad():
        dense = model.full_logits(batch["input_ids"], batch["attention_mask"])
        model.rank_in_int8()
        int8 = model.full_logits(batch["input_ids"], batch["attention_mask"])
    assert sum(isinstance(m, Int8Linear) for m in model.sides().server.modules()) == 2 * 7
    assert not any(isinstance(m, Int8Linear) for m in model.sides().client.modules())
    assert model.model_args.quantize == "int8"
    after = model.adapter_parameters()
    assert after.keys() == adapters.keys() and all(torch.equal(after[n], a) for n, a in adapters.items())
    assert 0 < (int8 - dense).norm() < 0.05 * dense.norm()  # the adapters still act: close to the dense logits
    model.rank_in_int8()  # already int8: nothing changes
    with torch.no_grad():
        assert torch.equal(model.full_logits(batch["input_ids"], batch["attention_mask"]), int8)


def test_rank_in_int8_refuses_nf4_blocks():
    with pytest.raises(FellrecError, match="needs dense server blocks"):
        make_model("tiny-llama", "nf4").rank_in_int8()
