"""The training loop of `xopt train`: one stage (one task, or a mixture of tasks) on the one model.

- Model: `XoptModel` (xopt.modeling) with one head per task of the stage (xopt.trainee),
  composed with the shared encoder so the loss is computed on the contract's outputs (`logits`,
  `token_logits`, `start_logits`/`end_logits`). Multiple-choice tasks score each (context,
  choice) pair with HF's *ForMultipleChoice head (1 output) and take the softmax over the choices.
- Schedule: decided up front from the seed (xopt.schedule), so step k's batch is a function of
  (seed, k) alone. Dropout/masking randomness is re-seeded every step from (seed, step, rank),
  which is what makes `--resume` exact without pickled RNG objects.
- Data parallel: under `torchrun` (WORLD_SIZE > 1) the process group comes from
  `torch.distributed` (nccl on GPU, gloo on CPU) and the model is wrapped in
  DistributedDataParallel; each rank takes its slice of the global batch (batch_size is
  global), gradient accumulation splits that slice into micro-batches (DDP `no_sync` between).
- State: every `checkpoint_every` steps (and at each epoch end) rank 0 writes trainable
  weights, the best weights so far, AdamW moments (safetensors), scheduler/scaler/history
  (JSON) into a temp dir renamed into place; a killed run loses at most one interval.
- A stage, step by step: featurize the data, build the trainee and freeze what the stage does
  not train (xopt.trainee), the optimiser's parameter groups and learning-rate schedule
  (xopt.schedule), then each step (`_step`) and each epoch's end (`_end_of_epoch`: dev score,
  record, best weights), and last the best epoch's weights (`_finish`).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt.batching import pad
from xopt.errors import XoptError
from xopt.schedule import build_schedule, lr_schedule, param_groups
from xopt.tasks.registry import TaskData, family
from xopt.trainee import build_trainee, freeze, key

EVAL_BATCH = 64


def dist_info():
    """(rank, world size, device); initialises the process group under torchrun."""
    import torch
    import torch.distributed as dist

    from xopt.dist import launch

    run = launch()
    world, local = run.world_size, run.local_rank
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- batches -----------------------------------------------------------------------------------

def collate(task: TaskData, feats: list[dict], idx, tok, seed: int, step: int) -> dict:
    """One batch of features as tensors (xopt.tasks.families: each family's targets)."""
    return family(task.kind).collate(task, feats, idx, tok, seed, step)


def loss_of(trainee, task: TaskData, name: str, batch: dict, features=None):
    """Training loss of one batch (features: frozen sentence embeddings in head-only mode)."""
    import torch.nn.functional as F

    if features is not None:
        return F.cross_entropy(trainee.heads[key(name)](features, features), batch["label"])
    return family(task.kind).loss(lambda *a, **kw: trainee(name, *a, **kw), batch)


def dev_sums(trainee, task: TaskData, name: str, examples, feats, tok, device, features=None) -> list[float]:
    """Summable dev statistics of one shard of examples, by the task's family and metric:
    [correct, total] (accuracy; tagging: words), [tp, fp, fn] (seqeval F1, xopt.tasks.tagging) or
    [sum of F1, examples] (SQuAD F1 of the decoded answer, xopt.tasks.qa)."""
    import torch

    if not feats:
        return [0.0, 0.0, 0.0] if task.metric == "f1" else [0.0, 0.0]
    fam = family(task.kind)
    with torch.inference_mode():
        if features is not None:
            f = features.to(device)
            logits = trainee.heads[key(name)](f, f).float().cpu().numpy()
            outs = [[row] for row in logits]
        else:
            order = np.argsort([fam.length(f) for f in feats], kind="stable")
            outs = [None] * len(feats)
            for i in range(0, len(order), EVAL_BATCH):
                idx = order[i:i + EVAL_BATCH]
                b = {k: v.to(device) for k, v in collate(task, feats, idx, tok, 0, 0).items()}
                got = trainee(name, b["input_ids"], b["attention_mask"])
                out = fam.rows([getattr(got, n).float().cpu().numpy() for n in got._fields[2:]], len(idx))
                for r, j in enumerate(idx):
                    outs[j] = [o[r] for o in out]
    return fam.score(task, examples, feats, fam.decode(task, examples, feats, outs))


def metric_of(task: TaskData, sums) -> float:
    if task.metric == "f1":
        from xopt.tasks import tagging

        return tagging.f1(np.asarray(sums))
    return float(100 * sums[0] / max(1.0, sums[1]))


# --- state -------------------------------------------------------------------------------------

def save_state(path: Path, named: dict, opt, sched, scaler, meta: dict, best: dict | None) -> None:
    from safetensors.torch import save_file

    from xopt.manifest import atomic_dir

    osd = opt.state_dict()
    moments = {f"{pid}.{k}": v.detach().cpu().contiguous() for pid, st in osd["state"].items()
               for k, v in st.items()}
    with atomic_dir(path, force=True) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in named.items()}, str(tmp / "weights.safetensors"))
        if best:
            save_file(best, str(tmp / "best.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({
            **meta, "param_groups": osd["param_groups"], "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}, indent=1))


def load_state(path: Path, named: dict, opt, sched, scaler) -> tuple[dict, dict | None]:
    import torch
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "weights.safetensors"))
        moments = load_file(str(path / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError) as e:
        raise XoptError(f"{path}: unreadable training state ({e}); start over with --force") from None
    if set(weights) != set(named):
        raise XoptError(f"{path}: training state does not match this plan's model/stage; start over with --force")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(weights[n])
    state = {}
    for k, v in moments.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    sched.load_state_dict(meta.pop("scheduler"))
    sc = meta.pop("scaler")
    if sc and scaler is not None:
        scaler.load_state_dict(sc)
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
    return meta, best


# --- the stage ---------------------------------------------------------------------------------

@dataclass
class _Loop:
    """What the steps of one stage share: the data, the model being trained, its optimiser."""
    tasks: dict
    stage: object
    seed: int
    tok: object
    feats: dict          # task -> train features
    dev: dict            # task -> (this rank's dev examples, their features)
    frozen: dict         # head-only stages: task -> {"train", "dev"} -> frozen encoder features
    lengths: dict        # task -> token count of each train feature
    trainee: object
    net: object          # the trainee, or its DistributedDataParallel wrapper
    named: dict          # the trained parameters by name
    opt: object
    sched: object
    scaler: object
    amp: object          # autocast dtype (None: fp32)
    steps: list          # [(task, global batch indices)] of every step
    epoch_steps: int
    rank: int
    world: int
    device: object

    @property
    def head_only(self) -> bool:
        return self.stage.train == "head"


@dataclass
class _Clock:
    """Training time and tokens since `start` (the first step this process runs), evaluation apart."""
    start: int
    t0: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    eval_s: float = 0.0


def fit(model, tok, prefix: str, tasks: dict[str, TaskData], stage, seed: int, state_dir: Path | None = None,
        resume: bool = False, progress=None, records=None, label: str = "", on_step=None,
        features: dict | None = None, heads: dict | None = None, layout: str = "hf") -> dict:
    """Train `model` in place on `tasks` (one stage); the best dev state is loaded at the end.
    Head-only stages return the frozen sentence embeddings they trained on as `features`; passing
    them back (same model, tasks and stage) skips recomputing them. `heads`: the heads' starting
    weights (a state dict of the trainee's heads, e.g. a linear probe's) instead of fresh ones."""
    rank, world, device = dist_info()
    if stage.batch_size % (world * stage.grad_accum):
        raise XoptError(f"batch_size {stage.batch_size} is not divisible by {world} processes x grad_accum "
                        f"{stage.grad_accum}")
    feats, dev = _featurize(tasks, stage, tok, prefix, rank, world)
    trainee = build_trainee(model, tasks, layout, seed, device, heads, stage.dropout)
    freeze(model, trainee, tasks, stage)
    frozen = _frozen_features(model, trainee, tasks, feats, dev, tok, device, features) if stage.train == "head" else {}
    loop = _setup(trainee, tasks, stage, seed, tok, feats, dev, frozen, (rank, world, device))
    meta = {"step": 0, "best": None, "history": [], "losses": []}
    best = None
    if resume and state_dir is not None and (state_dir / "state.json").is_file():
        meta, best = load_state(state_dir, loop.named, loop.opt, loop.sched, loop.scaler)
    total = len(loop.steps)
    bar_id = progress.add_task(f"{label}{'+'.join(tasks)} ({stage.train})", total=total, completed=meta["step"],
                               rate="") if progress and rank == 0 else None
    clock = _Clock(start=meta["step"])
    for step in range(clock.start, total):
        clock.tokens += _step(loop, step, meta)
        meta["step"] = step + 1
        if bar_id is not None:
            rate = (step + 1 - clock.start) / (time.perf_counter() - clock.t0)
            progress.update(bar_id, advance=1, rate=f"loss {np.mean(meta['losses'][-20:]):.3f} {rate:.2f} step/s")
        end_of_epoch = (step + 1) % loop.epoch_steps == 0 or step + 1 == total
        if end_of_epoch and _end_of_epoch(loop, meta, step, clock, records):
            best = {n: p.detach().cpu().clone() for n, p in loop.named.items()}
        # head-only stages (seconds of work) save only when asked to
        if state_dir is not None and ((end_of_epoch and not loop.head_only) or (stage.checkpoint_every and
                                                            (step + 1) % stage.checkpoint_every == 0)):
            if rank == 0:
                save_state(state_dir, loop.named, loop.opt, loop.sched, loop.scaler, meta, best)
            barrier(world)
        if on_step:
            on_step(step + 1)
    return _finish(loop, model, meta, best)


def _featurize(tasks: dict[str, TaskData], stage, tok, prefix: str, rank: int, world: int) -> tuple[dict, dict]:
    """Every task's train features (its first `max_examples`), and this rank's shard of its dev
    examples with their features (tasks without a dev split have none)."""
    from xopt.tasks.intermediate import featurize

    feats = {n: featurize(t, t.train[:stage.max_examples] if stage.max_examples else t.train, tok, prefix,
                          stage.max_length, stage.doc_stride) for n, t in tasks.items()}
    dev = {}
    for n, t in tasks.items():
        if t.dev:
            shard = t.dev[rank::world]
            dev[n] = (shard, featurize(t, shard, tok, prefix, stage.max_length, stage.doc_stride))
    return feats, dev


def _frozen_features(model, trainee, tasks, feats, dev, tok, device, features: dict | None) -> dict:
    """What a head-only stage's heads read from the frozen encoder, per task and split (`features`
    when a previous run of the same stage computed them)."""
    import torch

    model.eval()
    if features is not None:
        return features
    frozen = {}
    with torch.inference_mode():
        for n in tasks:
            reads = trainee.heads[key(n)].reads
            frozen[n] = {s: _embed(model, fs, tok, device, reads)
                         for s, fs in (("train", feats[n]), ("dev", dev[n][1] if n in dev else None)) if fs}
    return frozen


def _setup(trainee, tasks, stage, seed: int, tok, feats, dev, frozen, where) -> _Loop:
    """The optimiser (AdamW over the trained weights), the step schedule and its learning rate,
    autocast and the gradient scaler, and the DDP wrapper for encoder stages on several processes."""
    import torch

    rank, world, device = where
    named = {n: p for n, p in trainee.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(param_groups(named, trainee.heads.parameters(), stage), lr=stage.lr)
    lengths = {n: np.array([family(t.kind).length(f) for f in feats[n]]) for n, t in tasks.items()}
    steps, epoch_steps = build_schedule(lengths, stage, seed)
    sched = lr_schedule(opt, stage, len(steps))
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[stage.precision]
    if amp is torch.float16 and device.type != "cuda":
        raise XoptError("precision fp16 needs a CUDA GPU; use bf16 (or fp32) on CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    net = trainee
    if world > 1 and stage.train != "head":
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=len(tasks) > 1)
    return _Loop(tasks, stage, seed, tok, feats, dev, frozen, lengths, trainee, net, named, opt, sched, scaler, amp,
                 steps, epoch_steps, rank, world, device)


def _step(loop: _Loop, step: int, meta: dict) -> int:
    """Step `step` of the schedule: this rank's slice of the global batch in `grad_accum`
    micro-batches, one clipped optimiser step; its loss goes to meta["losses"]. Returns the
    global batch's token count."""
    import torch

    name, idx = loop.steps[step]
    task = loop.tasks[name]
    torch.manual_seed(loop.seed * 1_000_003 + step * 1009 + loop.rank)    # dropout: a function of (seed, step, rank)
    loop.trainee.train(not loop.head_only)
    # head-only: every rank trains the same head on the whole batch (nothing to reduce)
    local = idx if loop.head_only else np.array_split(idx, loop.world)[loop.rank]
    micro = [m for m in np.array_split(local, loop.stage.grad_accum) if len(m)]
    step_loss = 0.0
    for j, m in enumerate(micro):
        b = {k: v.to(loop.device) for k, v in collate(task, loop.feats[name], m, loop.tok, loop.seed, step).items()}
        # DDP reduces the gradients once, after the last micro-batch
        ctx = loop.net.no_sync() if loop.net is not loop.trainee and j < len(micro) - 1 else nullcontext()
        with ctx, torch.autocast(loop.device.type, dtype=loop.amp or torch.float32, enabled=loop.amp is not None):
            loss = loss_of(loop.net, task, name, b, loop.frozen[name]["train"][m] if loop.head_only else None)
            scaled = loss * (len(m) / len(local))
        loop.scaler.scale(scaled).backward()
        step_loss += float(scaled.detach())
    loop.scaler.unscale_(loop.opt)
    torch.nn.utils.clip_grad_norm_(list(loop.named.values()), 1.0)
    loop.scaler.step(loop.opt)
    loop.scaler.update()
    loop.sched.step()
    loop.opt.zero_grad(set_to_none=True)
    meta["losses"].append(step_loss)
    return int(loop.lengths[name][idx].sum())


def _end_of_epoch(loop: _Loop, meta: dict, step: int, clock: _Clock, records) -> bool:
    """Score the dev splits, append the epoch's record to meta["history"] (and to `records` on
    rank 0); whether this epoch is the best so far (without a dev split: the last one is)."""
    dt = time.perf_counter() - clock.t0 - clock.eval_s          # training time only
    te = time.perf_counter()
    score, per_task = _evaluate(loop.trainee, loop.tasks, loop.dev, loop.tok, loop.device, loop.frozen, loop.world,
                                loop.rank, loop.amp)
    clock.eval_s += time.perf_counter() - te
    rec = {"epoch": math.ceil((step + 1) / loop.epoch_steps), "step": step + 1,
           "train_loss": float(np.mean(meta["losses"])), "dev": per_task, "dev_score": score,
           "lr": loop.sched.get_last_lr()[0], "steps_per_s": round((step + 1 - clock.start) / dt, 3),
           "tokens_per_s": round(clock.tokens / dt, 1), "eval_s": round(clock.eval_s, 2)}
    meta["history"].append(rec)
    meta["losses"] = []
    if records is not None and loop.rank == 0:
        records(rec)
    if score is None or meta["best"] is None or score > meta["best"]:
        meta["best"] = score
        return True
    return False


def _finish(loop: _Loop, model, meta: dict, best: dict | None) -> dict:
    """Load the best epoch's weights, freeze everything; what `fit` returns."""
    import torch

    if best:
        with torch.no_grad():
            for n, p in loop.named.items():
                p.copy_(best[n].to(p.device))
    for p in loop.trainee.parameters():
        p.requires_grad_(False)
    model.eval()
    return {"trainee": loop.trainee, "history": meta["history"], "best_dev": meta["best"], "steps": len(loop.steps),
            "epoch_steps": loop.epoch_steps, "world_size": loop.world,
            "train_examples": {n: len(f) for n, f in loop.feats.items()},
            **({"features": loop.frozen} if loop.head_only else {})}


def average_states(states: list[dict]) -> dict:
    """The element-wise mean of state dicts with the same keys and shapes (a "model soup" of
    runs that started from the same weights)."""
    import torch

    if not states or any(set(s) != set(states[0]) for s in states):
        raise XoptError("average_states: needs one or more state dicts with the same keys")
    return {k: torch.stack([s[k].detach().float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def _embed(model, feats, tok, device, reads: str = "mean"):
    """The frozen encoder's features that a sequence head reads: the mean-pooled embedding
    [N, H] (linear layout) or each sequence's first token [N, 1, H] (HF's first-token heads)."""
    import torch

    out = []
    for i in range(0, len(feats), EVAL_BATCH):
        ids, mask = pad([f["input_ids"] for f in feats[i:i + EVAL_BATCH]], tok.pad_token_id)
        hidden, emb, _ = model.encode(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out.append(emb.clone() if reads == "mean" else hidden[:, :1].clone())
    return torch.cat(out)


def _evaluate(trainee, tasks, dev, tok, device, frozen, world, rank, amp):
    """Mean dev metric (percent) over the tasks that have a dev split; each rank scores its
    shard of the dev examples, the summable statistics are all-reduced."""
    import torch

    trainee.eval()
    per_task = {}
    for n, (examples, feats) in dev.items():
        feat = frozen[n]["dev"] if n in frozen and "dev" in frozen[n] else None
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            c = torch.tensor(dev_sums(trainee, tasks[n], n, examples, feats, tok, device, feat), dtype=torch.float64)
        if world > 1:
            import torch.distributed as dist

            c = c.to(device)
            dist.all_reduce(c)
        per_task[n] = round(metric_of(tasks[n], c.cpu().tolist()), 4)
    return (float(np.mean(list(per_task.values()))) if per_task else None), per_task
