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


def train_client(sides: SplitSides, objective, param_groups: list[dict], samples: list, args: TrainArgs,
                 round_idx: int, client: int, device: torch.device, autocast,
                 extra_loss: Optional[Callable[[], torch.Tensor]] = None,
                 optimizer_state: Optional[dict] = None, progress=None) -> tuple[LocalResult, dict]:
    """Train the active adapter (the tensors of `param_groups`) on `samples`, encoded by `objective`, for
    `args.local_epochs` epochs. Returns the result and the optimizer state (for keep_optimizer_state)."""
    seed = round_seed(args.seed, round_idx, client)
    torch.manual_seed(seed)  # LoRA dropout
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(samples) / args.batch_size)
    total = steps_per_epoch * args.local_epochs
    params = [p for group in param_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr, weight_decay=args.weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    warmup = args.warmup_steps if round_idx == 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup))
    sides.train()
    sides.link.stats.reset()
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(args.local_epochs):
        for step in micro_batches(samples, args, generator):
            optimizer.zero_grad(set_to_none=True)
            n_step = sum(len(mb) for mb in step)
            for mb in step:
                batch = {k: v.to(device) for k, v in objective.collate(mb).items()}
                with autocast():
                    loss = objective.loss(sides, batch)
                    if extra_loss is not None:
                        loss = loss + extra_loss()
                if not torch.isfinite(loss):
                    sides.eval()
                    return LocalResult(float("nan"), steps, sides.link.stats.bytes_up,
                                       sides.link.stats.bytes_down, diverged=True), {}
                (loss * len(mb) / n_step).backward()
                loss_sum += loss.item() * len(mb)
                seen += len(mb)
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            steps += 1
            if progress is not None:
                progress.update(1)
    sides.eval()
    state = optimizer.state_dict() if args.keep_optimizer_state else {}
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
