"""ServerProbe: record every tensor that enters the server half of the split model, then look for leaks.

The link's own messages say what the *link* sent; they cannot show what the server module actually received (a bug
could hand it token ids some other way, or a new objective could pass item ids / scores to it). This probe sits on
the server side instead: forward pre-hooks on the ServerModule and on its blocks and rotary embedding (or on every
submodule with ``deep=True``), plus a backward pre-hook on the ServerModule for the gradient it is given. Every
tensor argument (positional, keyword, or nested in tuples/lists/dicts) is copied and recorded.

Typical use (a training step through the split model)::

    from tests.model.server_probe import ServerProbe, boundary_ints, secrets_of

    sides = model.sides().train()
    with ServerProbe(sides.server) as probe:
        sides.client.loss(batch).backward()
    leaks = probe.leaks(secrets=secrets_of(batch),                 # input_ids and labels
                        forbidden_sizes={"vocab": model.config.vocab_size},
                        allowed_ints=boundary_ints(batch))          # the 2D mask and its position ids
    assert not leaks, leaks
    assert probe.calls["ServerModule.forward"] == 1  # the hooks did fire: the check is not vacuous

For the scoring objective (METHOD.md section 6b), pass the item table / item ids / scores as ``secrets`` and the
number of items as a ``forbidden_sizes`` entry (pick a catalogue size that differs from the batch size, sequence
length, hidden size and head sizes, or the size rule will flag legitimate tensors).

Rules of :meth:`ServerProbe.leaks` (each finding is one readable string):
  * a recorded tensor equal to a secret, compared by value after casting both to float64 (so ``ids.float()`` or a
    reshaped copy is caught too: the flattened values are compared when the element counts match);
  * a tensor with any dimension equal to a forbidden size (logits have the vocabulary as their last dimension);
  * a 0-dim tensor (a loss or any other scalar statistic);
  * an integer tensor that is not value-equal to one of ``allowed_ints`` (the 2D mask, the position ids). Bool
    tensors (the 4D causal masks the blocks build from the 2D mask) carry one bit per element and pass unless
    ``allow_bool=False``; check their values yourself if it matters (tests/model/test_link.py does);
  * with ``float_last_dims`` given: a floating tensor whose last dimension is not one of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from fellrec.model.blocks import position_ids_from_mask


@dataclass
class Record:
    """One tensor that entered a probed module: where (``<module>.forward`` / ``.backward``), which argument."""

    where: str
    path: str
    tensor: torch.Tensor


def _tensors(value: Any, path: str):
    """(path, tensor) for every tensor in an argument, nested containers included."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(v, f"{path}[{k!r}]")


class ServerProbe:
    """Records the tensor inputs of ``server`` (and its blocks and rotary embedding, or every submodule with
    ``deep=True``) while the ``with`` block runs; the hooks are removed on exit.

    Attributes:
        records: every recorded input, in call order (copies, detached).
        calls: how many times each probed module ran (``Counter`` keyed by ``where``).
    """

    def __init__(self, server: nn.Module, deep: bool = False, backward: bool = True):
        self.server, self.deep, self.backward = server, deep, backward
        self.records: list[Record] = []
        self.calls: Counter = Counter()
        self._handles: list = []

    def _modules(self) -> list[tuple[str, nn.Module]]:
        top = type(self.server).__name__
        if self.deep:
            return [(f"{top}.{name}" if name else top, m) for name, m in self.server.named_modules()]
        mods = [(top, self.server)]
        for i, block in enumerate(getattr(self.server, "blocks", [])):
            mods.append((f"{top}.blocks.{i}", block))
        if isinstance(getattr(self.server, "rotary_emb", None), nn.Module):
            mods.append((f"{top}.rotary_emb", self.server.rotary_emb))
        return mods

    def _record(self, where: str, args, kwargs=None) -> None:
        self.calls[where] += 1
        for path, t in _tensors(tuple(args), "args"):
            self.records.append(Record(where, path, t.detach().clone()))
        for path, t in _tensors(dict(kwargs or {}), "kwargs"):
            self.records.append(Record(where, path, t.detach().clone()))

    def __enter__(self) -> "ServerProbe":
        for name, module in self._modules():
            def pre_hook(mod, args, kwargs, where=f"{name}.forward"):
                self._record(where, args, kwargs)
            self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if self.backward:
            top = type(self.server).__name__
            def grad_hook(mod, grad_output, where=f"{top}.backward"):
                self._record(where, grad_output)
            self._handles.append(self.server.register_full_backward_pre_hook(grad_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def at(self, where: str) -> list[Record]:
        """The records of one module (``"ServerModule.forward"``, ``"ServerModule.blocks.0.forward"``, ...)."""
        return [r for r in self.records if r.where == where]

    def leaks(self, secrets: Mapping[str, torch.Tensor] = (), forbidden_sizes: Mapping[str, int] = (),
              allowed_ints: Sequence[torch.Tensor] = (), float_last_dims: Optional[Iterable[int]] = None,
              allow_bool: bool = True) -> list[str]:
        """Everything recorded that breaks one of the rules in the module docstring; [] means no leak."""
        secrets, forbidden_sizes = dict(secrets), dict(forbidden_sizes)
        float_dims = None if float_last_dims is None else set(float_last_dims)
        found = []
        for r in self.records:
            t, label = r.tensor, f"{r.where} {r.path} {tuple(r.tensor.shape)} {r.tensor.dtype}"
            for name, secret in secrets.items():
                if same_values(t, secret):
                    found.append(f"{label}: equals {name}")
            for name, size in forbidden_sizes.items():
                if size in t.shape:
                    found.append(f"{label}: has a dimension of size {size} ({name})")
            if t.dim() == 0:
                found.append(f"{label}: a scalar (loss-like) tensor")
            if t.dtype == torch.bool:
                if not allow_bool:
                    found.append(f"{label}: a bool tensor (allow_bool=False)")
            elif not t.is_floating_point() and not t.is_complex():
                if not any(same_values(t, ok) for ok in allowed_ints):
                    found.append(f"{label}: an integer tensor that is neither the mask nor the position ids")
            elif float_dims is not None and t.dim() > 0 and t.shape[-1] not in float_dims:
                found.append(f"{label}: a float tensor of unexpected width {t.shape[-1]}")
        return found


def same_values(t: torch.Tensor, other: torch.Tensor) -> bool:
    """Equal values after a cast to float64: same shape, or the same flattened values when the counts match."""
    if t.numel() != other.numel() or t.numel() == 0:
        return False
    a = t.detach().to("cpu", torch.float64)
    b = other.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        a, b = a.reshape(-1), b.reshape(-1)
    return bool(torch.equal(a, b))


def secrets_of(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What of a causal-LM batch must never reach the server: its token ids and labels."""
    return {"input_ids": batch["input_ids"], "labels": batch["labels"]}


def boundary_ints(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The only integer tensors the server may hold: the batch's 2D attention mask and the position ids made from it."""
    return [batch["attention_mask"], position_ids_from_mask(batch["attention_mask"])]
