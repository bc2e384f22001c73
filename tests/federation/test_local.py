"""Local training with one optimizer, scheduler and gradient clipping per side of the split (client and server)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fellrec.federation import local
from fellrec.federation.local import proximal_term, side_optimizers, train_client
from fellrec.federation.strategies.fedprox import FedProx
from tests.objectives.test_score import build


def _trained(everything_on_the_client: bool, monkeypatch, max_grad_norm: float = 0.0, mu: float | None = None):
    """(adapter after one local round of 2 steps, mean train loss); optionally with one optimizer over all tensors,
    as before the split optimisation (every tensor counted as the client's)."""
    objective, store, data = build(score_targets="all")
    if everything_on_the_client:
        monkeypatch.setattr(local, "side_of", lambda sides: lambda tensor: "client")
    sides = store.activate(0)
    with torch.no_grad():  # LoRA B starts at 0: give the server's adapters something to pull towards the anchor
        for p in store.live.values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    start = {n: t.detach().clone() for n, t in store.live.items()}
    proximal = proximal_term(FedProx(mu), sides, store.live, start) if mu is not None else None
    args = dataclasses.replace(objective.cfg.train, batch_size=3, micro_batch_size=2, max_grad_norm=max_grad_norm,
                               warmup_steps=0)
    result, _ = train_client(sides, objective, objective.param_groups(store.live, args),
                             objective.encode(data.train), args, 0, 0, torch.device("cpu"), objective.autocast,
                             proximal)
    monkeypatch.undo()
    return {n: t.detach().clone() for n, t in store.live.items()}, result.train_loss


def test_each_side_steps_its_own_tensors_and_clips_its_own_norm():
    """Client gradients of norm 10, server gradients of norm 1, clip 2: the client's are scaled to 2 and the
    server's kept at 1 (one global clip would have scaled both by 2 / sqrt(101), the server's to 0.199)."""
    objective, store, _ = build()
    sides = store.activate(0)
    optimizers = side_optimizers(sides, objective.param_groups(store.live, objective.cfg.train),
                                 objective.cfg.train, total_steps=1, warmup_steps=0)
    server = {id(p) for p in sides.server.parameters() if p.requires_grad}
    assert {id(p) for p in optimizers["server"].params} == server and server
    assert len(optimizers["client"].params) + len(server) == len(store.live)
    assert any(n.startswith("score_head.") for n, p in store.live.items()
               if any(p is q for q in optimizers["client"].params))  # the item table is the client's
    for name, norm in (("client", 10.0), ("server", 1.0)):
        params = optimizers[name].params
        count = sum(p.numel() for p in params)
        for p in params:
            p.grad = torch.full_like(p, norm / count ** 0.5)
        optimizers[name].step(max_grad_norm=2.0)
    grad_norm = {name: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in side.params])).item()
                 for name, side in optimizers.items()}
    assert grad_norm == {"client": pytest.approx(2.0, rel=1e-5), "server": pytest.approx(1.0, rel=1e-5)}


def test_without_clipping_two_optimizers_train_as_one(monkeypatch):
    """AdamW updates every tensor on its own, so splitting it by side changes nothing when nothing is clipped."""
    split, split_loss = _trained(False, monkeypatch)
    single, single_loss = _trained(True, monkeypatch)
    assert split_loss == pytest.approx(single_loss, abs=1e-6)
    for name in split:
        torch.testing.assert_close(split[name], single[name], rtol=1e-5, atol=1e-6)


def test_fedprox_server_term_moves_the_same_tensors_but_stays_out_of_the_client_loss(monkeypatch):
    """With mu = 5 the adapters end where one optimizer over client loss + the whole proximal term put them, while
    the client's reported loss no longer holds the server's term (the server computes it on its own tensors)."""
    split, split_loss = _trained(False, monkeypatch, mu=5.0)
    single, single_loss = _trained(True, monkeypatch, mu=5.0)
    for name in split:
        torch.testing.assert_close(split[name], single[name], rtol=1e-5, atol=1e-6)
    assert split_loss < single_loss - 1e-4  # the single loss counted the server's term too


def test_clipping_is_per_side_not_global(monkeypatch):
    """With a tight clip the split differs from one global clip: the change this optimisation makes."""
    split, _ = _trained(False, monkeypatch, max_grad_norm=1e-3)
    single, _ = _trained(True, monkeypatch, max_grad_norm=1e-3)
    assert any(not torch.allclose(split[n], single[n], rtol=1e-5, atol=1e-6) for n in split)


def test_kept_optimizer_state_is_one_per_side_and_is_taken_up_again():
    objective, store, data = build()
    sides = store.activate(0)
    args = dataclasses.replace(objective.cfg.train, batch_size=3, micro_batch_size=3, keep_optimizer_state=True)
    groups = objective.param_groups(store.live, args)
    _, state = train_client(sides, objective, groups, objective.encode(data.train), args, 0, 0,
                            torch.device("cpu"), objective.autocast)
    assert set(state) == {"client", "server"}
    assert all(s["state"][0]["step"].item() == 2 for s in state.values())  # 6 samples, batches of 3
    again = side_optimizers(sides, groups, args, total_steps=2, warmup_steps=0, state=state)
    assert again["server"].optimizer.state_dict()["state"][0]["step"].item() == 2
