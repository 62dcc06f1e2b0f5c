"""What a training stage does at each step, decided up front: which task's batch (the step
schedule), which weights at which rate (the parameter groups) and the learning rate (warm-up
then linear decay).

The step schedule is a function of the seed alone: per task, epochs of length-grouped batches
(shuffle, sort within mega-batches of 50 batches, shuffle the batches); per step, which task
(mixing rule: `proportional`, `capped` at `cap` examples, or `temperature` n^(1/T)). So step k's
batch is a function of (seed, k): resuming and running on N processes see the same global batches.
"""

from __future__ import annotations

import math

import numpy as np

from xopt.errors import XoptError
from xopt.plan import MAX_STEPS


def epoch_batches(lengths: np.ndarray, batch: int, rng: np.random.RandomState, grouped: bool) -> list[np.ndarray]:
    perm = rng.permutation(len(lengths))
    if not grouped:
        return [perm[i:i + batch] for i in range(0, len(perm), batch)]
    mega = batch * 50
    out = []
    for i in range(0, len(perm), mega):
        chunk = perm[i:i + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        out += [chunk[j:j + batch] for j in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def mixture(sizes: dict[str, int], rule: str, cap: int | None, temperature: float) -> dict[str, float]:
    if rule == "proportional":
        w = {t: float(n) for t, n in sizes.items()}
    elif rule == "capped":
        w = {t: float(min(n, cap or n)) for t, n in sizes.items()}
    elif rule == "temperature":
        w = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    else:
        raise XoptError(f"unknown mixing rule {rule!r}; use proportional, capped or temperature")
    s = sum(w.values())
    return {t: v / s for t, v in w.items()}


def build_schedule(lengths: dict[str, np.ndarray], stage, seed: int) -> tuple[list[tuple[str, np.ndarray]], int]:
    """[(task, global batch indices)] for every step, and the steps per epoch."""
    names = list(lengths)
    sizes = {t: len(v) for t, v in lengths.items()}
    probs = mixture(sizes, stage.mixing, stage.cap, stage.temperature)
    per_epoch = sum(min(n, stage.cap or n) if stage.mixing == "capped" else n for n in sizes.values())
    epoch_steps = max(1, math.ceil(per_epoch / stage.batch_size))
    total = stage.steps or epoch_steps * stage.epochs
    if total > MAX_STEPS:      # each step's batch is listed here, up front
        raise XoptError(f"{stage.epochs} epochs of {epoch_steps} steps make {total} steps, more than {MAX_STEPS} (the "
                        "schedule is built before training): lower epochs or set steps")
    streams = {t: [] for t in names}
    epochs_seen = {t: 0 for t in names}
    pick = np.random.RandomState([seed, 7919])
    sched = []
    for _ in range(total):
        t = names[0] if len(names) == 1 else names[pick.choice(len(names), p=[probs[n] for n in names])]
        if not streams[t]:
            rng = np.random.RandomState([seed, names.index(t), epochs_seen[t]])
            streams[t] = epoch_batches(lengths[t], stage.batch_size, rng, stage.length_grouped)
            epochs_seen[t] += 1
        sched.append((t, streams[t].pop(0)))
    return sched, epoch_steps


def param_groups(named: dict, head_params, stage) -> list[dict]:
    """AdamW's parameter groups of the trained weights `named`: weight decay on matrices but not
    on biases and LayerNorms; in encoder stages with `head_lr`, the fresh heads (`head_params`,
    their parameters) at that rate and the encoder at `stage.lr`."""
    decay = [p for n, p in named.items() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in named.items() if not (p.ndim > 1 and "LayerNorm" not in n)]
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if stage.head_lr is not None and stage.train != "head":
        heads = {id(p) for p in head_params}
        groups = [{**g, "params": [p for p in g["params"] if (id(p) in heads) == is_head],
                   "lr": stage.head_lr if is_head else stage.lr} for is_head in (False, True) for g in groups]
        groups = [g for g in groups if g["params"]]
    return groups


def lr_schedule(opt, stage, total: int):
    """Linear warm-up over `stage.warmup` (a fraction of the `total` steps if < 1, else a number of
    steps), then linear decay to 0 at the last step."""
    import torch

    warm = int(stage.warmup * total) if stage.warmup < 1 else int(stage.warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(1, warm), max(0.0, (total - s) / max(1, total - warm))))
