"""One client's local training for one round, and its validation loss, through the split model and its link."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fellrec.config import TrainArgs
from fellrec.model.split import SplitSides


@dataclass
class LocalResult:
    train_loss: float
    """Mean training loss of the round (over micro-batches, weighted by their samples)."""
    steps: int
    bytes_up: int
    bytes_down: int
    diverged: bool = False
    """A NaN or infinite loss was met: the update must be discarded."""
    update_norm: float = 0.0
    """L2 norm of the adapter update of the round, before any clipping (set by the orchestrator)."""


def round_seed(seed: int, round_idx: int, client: int) -> int:
    """One seed per (round, client): a client trains the same way on whichever rank and in whichever order."""
    return (seed * 1_000_003 + round_idx * 10_007 + client) % (2 ** 63)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up then linear decay to 0 over the round's optimizer steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def micro_batches(samples: list, args: TrainArgs, generator: torch.Generator):
    """Shuffled samples grouped as optimizer steps, each a list of micro-batches. With `group_by_length`, a step's
    samples are sorted by length before they are cut into micro-batches: less padding, the same step."""
    order = torch.randperm(len(samples), generator=generator).tolist()
    for start in range(0, len(order), args.batch_size):
        step = order[start:start + args.batch_size]
        if args.group_by_length:
            step = sorted(step, key=lambda i: len(samples[i].input_ids))
        yield [[samples[i] for i in step[j:j + args.micro_batch_size]]
               for j in range(0, len(step), args.micro_batch_size)]


SIDES = ("client", "server")


@dataclass
class SideOptimizer:
    """One side's own AdamW and scheduler over the trainable tensors that side holds, and its gradient clipping."""
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    def step(self, max_grad_norm: float) -> None:
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()


def side_of(sides: SplitSides) -> Callable[[torch.Tensor], str]:
    """"server" for a tensor of the ServerModule (its blocks' LoRA), "client" for every other (head, tail, the score
    objective's item table)."""
    server = {id(p) for p in sides.server.parameters()}
    return lambda tensor: "server" if id(tensor) in server else "client"


def side_optimizers(sides: SplitSides, param_groups: list[dict], args: TrainArgs, total_steps: int,
                    warmup_steps: int, state: Optional[dict] = None) -> dict[str, SideOptimizer]:
    """Each side's optimizer over its share of `param_groups` (a group keeps its learning rate on both sides);
    `state` is what `optimizer_states` returned for keep_optimizer_state."""
    side, out = side_of(sides), {}
    for name in SIDES:
        groups = [{**g, "params": [p for p in g["params"] if side(p) == name]} for g in param_groups]
        groups = [g for g in groups if g["params"]]
        if not groups:
            continue
        optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
        if state and name in state:
            optimizer.load_state_dict(state[name])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup_steps))
        out[name] = SideOptimizer([p for g in groups for p in g["params"]], optimizer, scheduler)
    return out


def proximal_term(strategy, sides: SplitSides, live: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
                  ) -> Callable[[str], torch.Tensor]:
    """`proximal(side)` for train_client: the strategy's local loss term (FedProx's) over that side's own tensors,
    anchored at the adapter the round started from."""
    side = side_of(sides)
    own = {name: [n for n, p in live.items() if side(p) == name] for name in SIDES}
    anchor = {n: t.to(live[n].device) for n, t in start.items()}
    return lambda name: strategy.local_loss_term({n: live[n] for n in own[name]}, {n: anchor[n] for n in own[name]})


def train_client(sides: SplitSides, objective, param_groups: list[dict], samples: list, args: TrainArgs,
                 round_idx: int, client: int, device: torch.device, autocast,
                 proximal: Optional[Callable[[str], torch.Tensor]] = None,
                 optimizer_state: Optional[dict] = None, progress=None) -> tuple[LocalResult, dict]:
    """Train the active adapter (the tensors of `param_groups`) on `samples`, encoded by `objective`, for
    `args.local_epochs` epochs. Client and server each step their own optimizer, scheduler and gradient clipping.
    `proximal(side)` is a side's own loss term over its own tensors (FedProx): the client's joins its loss, the
    server's is backpropagated on the server once per step, never seen by the client. Returns the result and the
    optimizers' states (for keep_optimizer_state)."""
    seed = round_seed(args.seed, round_idx, client)
    torch.manual_seed(seed)  # LoRA dropout
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(samples) / args.batch_size)
    warmup = args.warmup_steps if round_idx == 0 else 0
    optimizers = side_optimizers(sides, param_groups, args, steps_per_epoch * args.local_epochs, warmup,
                                 optimizer_state)
    sides.train()
    sides.link.stats.reset()
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(args.local_epochs):
        for step in micro_batches(samples, args, generator):
            for side in optimizers.values():
                side.optimizer.zero_grad(set_to_none=True)
            n_step = sum(len(mb) for mb in step)
            for mb in step:
                batch = {k: v.to(device) for k, v in objective.collate(mb).items()}
                with autocast():
                    loss = objective.loss(sides, batch)
                    if proximal is not None:
                        loss = loss + proximal("client")
                if not torch.isfinite(loss):
                    sides.eval()
                    return LocalResult(float("nan"), steps, sides.link.stats.bytes_up,
                                       sides.link.stats.bytes_down, diverged=True), {}
                (loss * len(mb) / n_step).backward()
                loss_sum += loss.item() * len(mb)
                seen += len(mb)
            if proximal is not None and "server" in optimizers:
                proximal("server").backward()  # the server's own term, on its own tensors
            for side in optimizers.values():
                side.step(args.max_grad_norm)
            steps += 1
            if progress is not None:
                progress.update(1)
    sides.eval()
    state = {name: side.optimizer.state_dict() for name, side in optimizers.items()} if args.keep_optimizer_state else {}
    return LocalResult(loss_sum / max(seen, 1), steps, sides.link.stats.bytes_up, sides.link.stats.bytes_down), state


@torch.no_grad()
def validation_loss(sides: SplitSides, objective, samples: list, micro_batch_size: int, device: torch.device,
                    autocast) -> float:
    """Mean loss of `objective` over `samples` (eval mode, no dropout); NaN for a client without validation data."""
    if not samples:
        return float("nan")
    sides.eval()
    total = 0.0
    for start in range(0, len(samples), micro_batch_size):
        mb = samples[start:start + micro_batch_size]
        batch = {k: v.to(device) for k, v in objective.collate(mb).items()}
        with autocast():
            total += objective.loss(sides, batch).item() * len(mb)
    return total / len(samples)
