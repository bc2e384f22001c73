"""Per-client adapters over one base model: flat states, side-separated storage, swaps, peft-format files."""

from __future__ import annotations

import json

import pytest
import torch

from fellrec.errors import FellrecError
from fellrec.model.adapters import AdapterStore, load_adapter
from fellrec.model.lora import layer_index
from tests.model.conftest import make_model, padded_batch


def random_state(store, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=g) * 0.1 for n, t in store.initial.items()}


@pytest.fixture
def store():
    return AdapterStore(make_model("tiny-llama", "nf4", k=1, m=1, per_client={2: (2, 1)}))


def logits(store, client, batch):
    sides = store.activate(client).eval()
    with torch.no_grad():
        return sides.client(batch["input_ids"], batch["attention_mask"])


def test_flat_state_matches_peft_names_and_order(store):
    from peft import get_peft_model_state_dict

    peft_state = get_peft_model_state_dict(store.model.peft)
    state = store.state(0)
    assert list(state) == list(peft_state)  # peft's saved names, in model order
    assert all(torch.equal(state[n], peft_state[n].cpu()) for n in state)
    assert len(state) == 4 * 2 * 2  # 4 blocks x (q, v) x (A, B)
    assert list(store.state(2)) == list(state)  # same names whatever the client's split


def test_parts_are_split_by_each_clients_boundary(store):
    n = store.model.n_layers
    assert {layer_index(x) for x in store.client_state(0)} == {0, n - 1}
    assert {layer_index(x) for x in store.server_state(0)} == {1, 2}
    assert {layer_index(x) for x in store.client_state(2)} == {0, 1, n - 1}  # client 2 keeps k = 2 blocks
    assert {layer_index(x) for x in store.server_state(2)} == {2}
    assert not set(store.client_state(0)) & set(store.server_state(0))


def test_swap_copies_into_the_live_model_without_rebuilding_it(store):
    batch = padded_batch()
    modules_before = [id(m) for m in store.model.peft.modules()]
    base_ptr = store.model.causal_lm.model.layers[1].self_attn.q_proj.base_layer.weight.data_ptr()
    live_ptrs = {n: p.data_ptr() for n, p in store.live.items()}
    store.set_state(1, random_state(store, 1))
    store.set_state(2, random_state(store, 2))
    out0, out1, out2 = logits(store, 0, batch), logits(store, 1, batch), logits(store, 2, batch)
    assert not torch.allclose(out0, out1) and not torch.allclose(out1, out2)
    assert torch.equal(logits(store, 1, batch), out1)  # swapping back restores the exact model
    assert [id(m) for m in store.model.peft.modules()] == modules_before
    assert store.model.causal_lm.model.layers[1].self_attn.q_proj.base_layer.weight.data_ptr() == base_ptr
    assert {n: p.data_ptr() for n, p in store.live.items()} == live_ptrs
    assert store.active == 1
    assert all(torch.equal(store.live[n].detach().cpu(), t) for n, t in store.state(1).items())


def test_capture_stores_what_training_changed(store):
    batch = padded_batch()
    sides = store.activate(3).train()
    opts = [sides.client.configure_optimizers(), sides.server.configure_optimizers()]
    sides.client.training_step(batch, 0).backward()
    for opt in opts:
        opt.step()
    store.capture()
    trained = store.state(3)
    assert any(not torch.equal(trained[n], store.initial[n]) for n in trained if n in store.server_state(3))
    assert any(not torch.equal(trained[n], store.initial[n]) for n in trained if n in store.client_state(3))
    assert all(torch.equal(store.state(0)[n], store.initial[n]) for n in trained)  # others untouched


def test_save_and_load_keep_the_sides_apart_and_round_trip(store, tmp_path):
    store.set_state(1, random_state(store, 5))
    out = store.save(1, tmp_path / "c1")
    for part in ("client_side", "server_side"):
        assert (out / part / "adapter_model.safetensors").is_file()
        config = json.loads((out / part / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 16 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert set(load_adapter(out / "server_side")) == set(store.server_state(1))
    assert set(load_adapter(out / "client_side")) == set(store.client_state(1))
    store.load(4, out)
    assert all(torch.equal(store.state(4)[n], t) for n, t in store.state(1).items())


def test_export_loads_with_plain_peft(tmp_path):
    from peft import PeftModel

    from fellrec.config import ModelArgs
    from fellrec.model.loading import load_base_model

    store = AdapterStore(make_model("tiny-qwen2", "none", k=1, m=1))
    store.set_state(0, random_state(store, 7))
    batch = padded_batch()
    ours = logits(store, 0, batch)
    store.export(0, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(load_base_model(ModelArgs(name="tiny-qwen2")), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = store.model.full_logits(batch["input_ids"], batch["attention_mask"])
        from fellrec.model.blocks import position_ids_from_mask
        peft_logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=position_ids_from_mask(batch["attention_mask"])).logits
    assert (ours - theirs).abs().max() <= 1e-5
    assert (peft_logits - ours).abs().max() <= 1e-5
    store.load(9, tmp_path / "adapter")
    assert all(torch.equal(store.state(9)[n], t) for n, t in store.state(0).items())


def test_a_state_that_does_not_fit_is_an_error(store):
    state = dict(store.state(0))
    state.pop(next(iter(state)))
    with pytest.raises(FellrecError, match="1 tensors missing"):
        store.set_state(0, state)
    bad = dict(store.state(0))
    name = next(iter(bad))
    bad[name] = torch.zeros(3, 3)
    with pytest.raises(FellrecError, match="has shape"):
        store.set_state(0, bad)
    with pytest.raises(FellrecError, match="no client is active"):
        AdapterStore(store.model).capture()
