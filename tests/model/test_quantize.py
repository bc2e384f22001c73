"""nf4 storage of the server blocks, the AVX512-BF16 repacking trap, and storage accounting."""

from __future__ import annotations

import pytest
import torch

from fellrec.model.quantize import bytes_in_dtype, import_bnb, param_count, storage_bytes
from tests.model.conftest import lora_grads, make_model, padded_batch, randomize_adapters

bnb = import_bnb()


def linear4bits(module):
    return [m for m in module.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_only_the_server_blocks_are_nf4():
    model = make_model("tiny-qwen2", "nf4", k=1, m=1)
    sides = model.sides()
    server_q = linear4bits(sides.server)
    assert len(server_q) == 2 * 7  # q k v o gate up down in each of the 2 middle blocks
    for q in server_q:
        assert q.weight.dtype == torch.uint8 and q.weight.quant_state.quant_type == "nf4"
        assert q.weight.bnb_quantized and q.support_avx512bf16_for_cpu is False
    assert not linear4bits(sides.client)
    assert all(p.dtype == torch.float32 for p in sides.client.parameters())


def test_nf4_weights_approximate_the_dense_ones():
    dense, nf4 = make_model("tiny-llama", "none"), make_model("tiny-llama", "nf4")
    w = dense.causal_lm.model.layers[1].mlp.up_proj.weight
    q = nf4.causal_lm.model.layers[1].mlp.up_proj  # not a LoRA target: the Linear4bit itself
    back = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)
    err = (back - w).abs()
    assert back.shape == w.shape and 0 < err.max() < 0.25 * w.abs().max()
    assert err.mean() < 0.1 * w.abs().mean() + 1e-3


def test_every_lora_tensor_gets_a_gradient_after_an_eval_pass():
    """The AVX512-BF16 trap: an eval-mode no-grad forward must not cut the LoRA gradients of later training."""
    model = make_model("tiny-llama", "nf4", k=1, m=1)
    randomize_adapters(model)
    sides = model.sides().eval()
    batch = padded_batch()
    with torch.no_grad():
        sides.client(batch["input_ids"], batch["attention_mask"])
        model.full_logits(batch["input_ids"], batch["attention_mask"])
    sides.train()
    sides.client.loss(batch).backward()
    grads = lora_grads(model)
    assert len(grads) == 16
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(),
                    reason="the repacking trap exists only on AVX512-BF16 CPUs")
def test_the_trap_is_real_without_the_guard():
    """Sanity of the test above: re-enabling bitsandbytes' CPU repacking does cut the server's gradients here."""
    model = make_model("tiny-llama", "nf4", k=1, m=1)
    randomize_adapters(model)
    for q in linear4bits(model.peft):
        q.support_avx512bf16_for_cpu = True
    sides = model.sides().eval()
    batch = padded_batch()
    with torch.no_grad():
        sides.client(batch["input_ids"], batch["attention_mask"])
    sides.train()
    with pytest.warns(UserWarning):
        sides.client.loss(batch).backward()
    grads = lora_grads(model)
    assert all(grads[n] is None for n in grads if ".layers.1." in n or ".layers.2." in n)


def test_storage_accounting():
    dense, nf4 = make_model("tiny-llama", "none"), make_model("tiny-llama", "nf4")
    d_server, q_server = dense.sides().server, nf4.sides().server
    n = param_count(d_server)
    assert n == param_count(q_server) == 2 * (4 * 64 * 64 + 3 * 64 * 128 - 2 * 64 * 32 + 2 * 64)
    assert storage_bytes(d_server) == 4 * n and bytes_in_dtype(d_server, torch.bfloat16) == 2 * n
    packed = sum(q.weight.numel() for q in linear4bits(q_server))
    assert packed * 2 == n - 2 * 2 * 64  # two 4-bit weights per byte; the norms stay dense
    assert 0.5 * n / 2 < storage_bytes(q_server) < 0.4 * 2 * n  # ~0.26 of bf16 plus tiny-model overheads
    # tied embedding counted once, adapters never
    full = param_count(dense.peft)
    assert full == 49152 * 64 + 4 * (n // 2) + 64
