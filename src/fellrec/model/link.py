"""The client-server boundary: the only way data crosses between the two halves of the split model.

Forward, the client sends the hidden states h_k, the 2D attention mask and the position ids up; the server returns
h_(n-m). Backward, the client sends dL/dh_(n-m) up; the server returns dL/dh_k. Each side has its own autograd
graph: the server starts from a detached copy of h_k and the client receives a detached copy of h_(n-m), and a
custom autograd Function joins the two graphs (its backward runs the server's graph, like reentrant checkpointing).
Every tensor that crosses is counted (nbytes) and can be recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

UP, DOWN = "up", "down"  # client -> server, server -> client


@dataclass
class LinkStats:
    """Bytes and messages that crossed the boundary since the last reset."""

    bytes_up: int = 0
    bytes_down: int = 0
    messages: int = 0

    def reset(self) -> None:
        self.bytes_up = self.bytes_down = self.messages = 0


@dataclass
class Message:
    """One tensor crossing the boundary (kept only while a recorder is attached)."""

    direction: str
    kind: str  # hidden, mask, positions, grad
    tensor: torch.Tensor


@dataclass(eq=False)
class BoundaryLink:
    """Carries tensors between a client and its server half; `server` is any callable (h, mask, pos) -> h.

    Deliberately not an nn.Module: the client module holds the link, and must not adopt the server's parameters.
    """

    server: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    stats: LinkStats = field(default_factory=LinkStats)
    recorder: Optional[Callable[[Message], None]] = None

    def send(self, tensor: torch.Tensor, direction: str, kind: str) -> torch.Tensor:
        """Copy `tensor` across: the receiver gets a fresh tensor with no autograd history."""
        copy = tensor.detach().clone()
        nbytes = copy.numel() * copy.element_size()
        if direction == UP:
            self.stats.bytes_up += nbytes
        else:
            self.stats.bytes_down += nbytes
        self.stats.messages += 1
        if self.recorder is not None:
            self.recorder(Message(direction, kind, copy))
        return copy

    def __call__(self, h: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Run the server half on h_k; returns h_(n-m) on the client side, differentiable when grad is on."""
        if not torch.is_grad_enabled():
            return self._forward_only(h, attention_mask, position_ids)
        if not h.requires_grad:
            # Nothing trainable before the boundary (k = 0): the server's adapters still need their backward.
            h = h.detach().requires_grad_()
        return _Boundary.apply(h, self, attention_mask, position_ids)

    def _forward_only(self, h, attention_mask, position_ids) -> torch.Tensor:
        out = self.server(self.send(h, UP, "hidden"), self.send(attention_mask, UP, "mask"),
                          self.send(position_ids, UP, "positions"))
        return self.send(out, DOWN, "hidden")


class _Boundary(torch.autograd.Function):
    """Joins the client graph to the server graph at the boundary; only the link's copies pass through."""

    @staticmethod
    def forward(ctx, h, link: BoundaryLink, attention_mask, position_ids):
        h_server = link.send(h, UP, "hidden").requires_grad_()  # the root of the server's own graph
        mask, positions = link.send(attention_mask, UP, "mask"), link.send(position_ids, UP, "positions")
        with torch.enable_grad():  # Function.forward runs without grad; the server needs its graph
            out = link.server(h_server, mask, positions)
        ctx.link, ctx.server_io = link, (h_server, out)
        return link.send(out, DOWN, "hidden")

    @staticmethod
    def backward(ctx, grad_out):
        link, (h_server, out) = ctx.link, ctx.server_io
        ctx.server_io = None  # free the server graph once it has been used
        grad = link.send(grad_out, UP, "grad")
        torch.autograd.backward(out, grad)  # server side: its adapters' grads and dL/dh_k
        grad_in = link.send(h_server.grad, DOWN, "grad")
        return grad_in, None, None, None
