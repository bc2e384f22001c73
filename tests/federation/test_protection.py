"""Clipping and noising of an uploaded adapter update."""

import pytest
import torch

from fellrec.errors import FellrecError
from fellrec.federation.protection import protect_update, update_norm


def states():
    g = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(30, 40, generator=g), "b": torch.zeros(40, 30)}
    new = {"a": start["a"] + 0.3 * torch.randn(30, 40, generator=g), "b": torch.randn(40, 30, generator=g)}
    return start, new


def test_without_options_the_update_is_untouched():
    start, new = states()
    out = protect_update(start, new, None, 0.0, seed=1)
    assert all(torch.equal(out[n], new[n]) for n in new)


def test_clipping_scales_the_whole_update_to_the_norm():
    start, new = states()
    assert update_norm(start, new) > 10
    out = protect_update(start, new, 2.0, 0.0, seed=1)
    assert update_norm(start, out) == pytest.approx(2.0, rel=1e-5)
    ratio = (out["b"] - start["b"]) / (new["b"] - start["b"])
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one scale for every tensor: direction kept
    small = protect_update(start, {n: start[n] + 1e-3 * (new[n] - start[n]) for n in new}, 2.0, 0.0, seed=1)
    assert update_norm(start, small) < 2.0  # an update inside the ball is not scaled up


def test_noise_has_the_asked_std_and_follows_the_seed():
    start, new = states()
    start_same = {n: t.clone() for n, t in start.items()}
    a = protect_update(start, start_same, 0.5, 2.0, seed=3)  # a zero update: what remains is the noise
    noise = torch.cat([(a[n] - start[n]).flatten() for n in a])
    assert noise.std().item() == pytest.approx(1.0, rel=0.05)
    b = protect_update(start, start_same, 0.5, 2.0, seed=3)
    c = protect_update(start, start_same, 0.5, 2.0, seed=4)
    assert torch.equal(a["a"], b["a"]) and not torch.equal(a["a"], c["a"])


def test_noise_without_a_clip_norm_is_refused():
    start, new = states()
    with pytest.raises(FellrecError, match="clip_norm"):
        protect_update(start, new, None, 1.0, seed=1)
