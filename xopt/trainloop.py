"""The training loop of `xopt train`: one stage (one task, or a mixture of tasks) on the one model.

- Model: `XoptModel` (xopt.modeling) with one head per task of the stage, composed with the
  shared encoder so the loss is computed on the contract's outputs (`logits`, `token_logits`,
  `start_logits`/`end_logits`). A head is Hugging Face's own task head (layout "hf": e.g.
  XLM-R's dense -> tanh -> out_proj on <s>, BERT's pooler -> classifier) or xopt's linear head
  ("linear": on the mean-pooled embedding, or on every token). Multiple-choice tasks score each
  (context, choice) pair with HF's *ForMultipleChoice head (1 output) and take the softmax over
  the choices. Continued MLM uses a token head whose weight is the (frozen) word-embedding
  matrix, applied to the masked positions only (a [B, T, 250k] logit tensor would not fit).
- Schedule: decided up front from the seed: per task, epochs of length-grouped batches
  (shuffle, sort within mega-batches of 50 batches, shuffle the batches); per step, which task
  (mixing rule: `proportional`, `capped` at `cap` examples, or `temperature` n^(1/T)). So
  step k's batch is a function of (seed, k) alone: resuming and running on N processes see
  the same global batches. Dropout/masking randomness is re-seeded every step from
  (seed, step, rank), which is what makes `--resume` exact without pickled RNG objects.
- Data parallel: under `torchrun` (WORLD_SIZE > 1) the process group comes from
  `torch.distributed` (nccl on GPU, gloo on CPU) and the model is wrapped in
  DistributedDataParallel; each rank takes its slice of the global batch (batch_size is
  global), gradient accumulation splits that slice into micro-batches (DDP `no_sync` between).
- State: every `checkpoint_every` steps (and at each epoch end) rank 0 writes trainable
  weights, the best weights so far, AdamW moments (safetensors), scheduler/scaler/history
  (JSON) into a temp dir renamed into place; a killed run loses at most one interval.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
import time
from pathlib import Path

import numpy as np

from xopt.batching import pad
from xopt.errors import XoptError
from xopt.tasks.registry import TaskData
from xopt.tasks.registry import family

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


def head_of(task: TaskData, vocab: int = 0):
    """The head class a task trains (xopt.modeling), with its number of outputs."""
    return family(task.kind).head_for(task, vocab)


def head_chain(model, head, layout: str, labels=None):
    """A fresh head for `model`'s encoder as one module: forward(hidden, embedding) -> scores,
    and `xopt_state()`, its weights under XoptModel's names (`XoptModel.load_head_state`)."""
    from torch import nn

    class Chain(nn.Module):
        def __init__(self, fresh):
            super().__init__()
            self.names, self.reads = fresh.chain, fresh.reads
            self.mods = nn.ModuleList(fresh.head_modules().values())

        def forward(self, hidden, embedding):
            x = embedding if self.reads == "mean" else hidden
            for m in self.mods:
                x = m(x)
            return x

        def xopt_state(self) -> dict:
            return {f"{n}.{k}": v.detach().cpu().contiguous() for n, m in zip(self.names, self.mods)
                    for k, v in m.state_dict().items()}

    return Chain(model.with_head(head, layout=layout, labels=labels))


def make_trainee(model, tasks: dict[str, TaskData], layout: str = "hf"):
    """The encoder of `model` composed with one head per task (`head_chain`, in `layout`):
    forward(task, ids, mask) -> that head's named outputs. `model`'s own head (if any) is unused;
    a head through BERT's pooler trains the encoder's pooler, as HF's task model does."""
    from torch import nn

    enc = model.encoder
    hidden, vocab = enc.config.hidden_size, enc.config.vocab_size

    class Trainee(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.heads = nn.ModuleDict()
            self.head_types = {}
            for name, t in tasks.items():
                head = head_of(t, vocab)
                if family(t.kind).ties_embeddings:
                    lin = nn.Linear(hidden, head.width)
                    lin.weight = enc.embeddings.word_embeddings.weight    # tied, as BERT's MLM decoder
                    self.heads[key(name)] = lin
                else:
                    self.heads[key(name)] = head_chain(model, head, layout, t.labels if head.needs_labels else None)
                self.head_types[name] = head

        def forward(self, task: str, input_ids, attention_mask, mlm_positions=None):
            lin = self.heads[key(task)]
            if mlm_positions is not None:     # hidden states of masked positions only
                hidden_states = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                return lin(hidden_states[mlm_positions])
            head = self.head_types[task]
            hidden, embedding, layer_embedding = self.model.encode(input_ids, attention_mask)
            return head.outputs(embedding, layer_embedding, lin(hidden, embedding))

    return Trainee()


def key(task: str) -> str:
    return task.replace(".", "_")


# --- schedule ----------------------------------------------------------------------------------

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


MAX_STEPS = 10**6     # build_schedule lists every step's batch up front


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

def fit(model, tok, prefix: str, tasks: dict[str, TaskData], stage, seed: int, state_dir: Path | None = None,
        resume: bool = False, progress=None, records=None, label: str = "", on_step=None,
        features: dict | None = None, heads: dict | None = None, layout: str = "hf") -> dict:
    """Train `model` in place on `tasks` (one stage); the best dev state is loaded at the end.
    Head-only stages return the frozen sentence embeddings they trained on as `features`; passing
    them back (same model, tasks and stage) skips recomputing them. `heads`: the heads' starting
    weights (a state dict of the trainee's heads, e.g. a linear probe's) instead of fresh ones."""
    import torch

    from xopt.tasks.intermediate import featurize

    rank, world, device = dist_info()
    if stage.batch_size % (world * stage.grad_accum):
        raise XoptError(f"batch_size {stage.batch_size} is not divisible by {world} processes x grad_accum "
                        f"{stage.grad_accum}")
    feats = {n: featurize(t, t.train[:stage.max_examples] if stage.max_examples else t.train, tok, prefix,
                          stage.max_length, stage.doc_stride) for n, t in tasks.items()}
    dev = {}
    for n, t in tasks.items():
        if t.dev:    # this rank's shard of the dev examples
            shard = t.dev[rank::world]
            dev[n] = (shard, featurize(t, shard, tok, prefix, stage.max_length, stage.doc_stride))
    torch.manual_seed(seed)
    trainee = make_trainee(model, tasks, layout).to(device)
    if heads is not None:
        trainee.heads.load_state_dict(heads)
    if stage.dropout is not None:      # the encoder's and the heads' (HF's heads have their own dropout)
        for m in trainee.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = stage.dropout
    head_only = stage.train == "head"
    frozen = {}
    for p in model.parameters():
        p.requires_grad_(False)
    if head_only and features is not None:
        model.eval()
        frozen = features
    elif head_only:
        model.eval()
        with torch.inference_mode():
            for n, t in tasks.items():
                reads = trainee.heads[key(n)].reads
                frozen[n] = {s: _embed(model, fs, tok, device, reads)
                             for s, fs in (("train", feats[n]), ("dev", dev[n][1] if n in dev else None)) if fs}
    else:
        n_layers = model.encoder.config.num_hidden_layers
        first = n_layers - (stage.top_layers or n_layers)
        for pname, p in model.encoder.named_parameters():
            layer = int(pname.split(".")[2]) if pname.startswith("encoder.layer.") else -1
            p.requires_grad_(layer >= first)
    tied = {key(n) for n, t in tasks.items() if family(t.kind).ties_embeddings}   # the frozen word embeddings
    for n, h in trainee.heads.items():
        for pname, p in h.named_parameters():
            p.requires_grad_(not (n in tied and pname == "weight"))
    named = {n: p for n, p in trainee.named_parameters() if p.requires_grad}
    decay = [p for n, p in named.items() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in named.items() if not (p.ndim > 1 and "LayerNorm" not in n)]
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if stage.head_lr is not None and not head_only:    # fresh heads at their own rate, the encoder at stage.lr
        heads = {id(p) for p in trainee.heads.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if (id(p) in heads) == is_head],
                   "lr": stage.head_lr if is_head else stage.lr} for is_head in (False, True) for g in groups]
        groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=stage.lr)
    lengths = {n: np.array([family(t.kind).length(f) for f in feats[n]]) for n, t in tasks.items()}
    sched_steps, epoch_steps = build_schedule(lengths, stage, seed)
    total = len(sched_steps)
    warm = int(stage.warmup * total) if stage.warmup < 1 else int(stage.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(1, warm), max(0.0, (total - s) / max(1, total - warm))))
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[stage.precision]
    if amp is torch.float16 and device.type != "cuda":
        raise XoptError("precision fp16 needs a CUDA GPU; use bf16 (or fp32) on CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    net = trainee
    if world > 1 and not head_only:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=len(tasks) > 1)
    meta = {"step": 0, "best": None, "history": [], "losses": []}
    best = None
    if resume and state_dir is not None and (state_dir / "state.json").is_file():
        meta, best = load_state(state_dir, named, opt, sched, scaler)
    start = meta["step"]
    bar_id = progress.add_task(f"{label}{'+'.join(tasks)} ({stage.train})", total=total, completed=start,
                               rate="") if progress and rank == 0 else None
    t0, tokens0, done_tokens, eval_s = time.perf_counter(), 0, 0, 0.0
    for step in range(start, total):
        name, idx = sched_steps[step]
        task = tasks[name]
        torch.manual_seed(seed * 1_000_003 + step * 1009 + rank)       # dropout: a function of (seed, step, rank)
        trainee.train(not head_only)
        # head-only: every rank trains the same head on the whole batch (nothing to reduce)
        local = idx if head_only else np.array_split(idx, world)[rank]
        micro = [m for m in np.array_split(local, stage.grad_accum) if len(m)]
        step_loss = 0.0
        for j, m in enumerate(micro):
            b = {k: v.to(device) for k, v in collate(task, feats[name], m, tok, seed, step).items()}
            ctx = net.no_sync() if world > 1 and net is not trainee and j < len(micro) - 1 else nullcontext()
            with ctx, torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_of(net, task, name, b, frozen[name]["train"][m] if head_only else None)
                scaled = loss * (len(m) / len(local))
            scaler.scale(scaled).backward()
            step_loss += float(scaled.detach())
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        meta["losses"].append(step_loss)
        done_tokens += int(lengths[name][idx].sum())
        meta["step"] = step + 1
        if bar_id is not None:
            rate = (step + 1 - start) / (time.perf_counter() - t0)
            progress.update(bar_id, advance=1, rate=f"loss {np.mean(meta['losses'][-20:]):.3f} {rate:.2f} step/s")
        end_of_epoch = (step + 1) % epoch_steps == 0 or step + 1 == total
        if end_of_epoch:
            dt = time.perf_counter() - t0 - eval_s          # training time only
            te = time.perf_counter()
            score, per_task = _evaluate(trainee, tasks, dev, tok, device, frozen, world, rank, amp)
            eval_s += time.perf_counter() - te
            rec = {"epoch": math.ceil((step + 1) / epoch_steps), "step": step + 1,
                   "train_loss": float(np.mean(meta["losses"])), "dev": per_task, "dev_score": score,
                   "lr": sched.get_last_lr()[0], "steps_per_s": round((step + 1 - start) / dt, 3),
                   "tokens_per_s": round((done_tokens - tokens0) / dt, 1), "eval_s": round(eval_s, 2)}
            meta["history"].append(rec)
            meta["losses"] = []
            if records is not None and rank == 0:
                records(rec)
            if score is None or meta["best"] is None or score > meta["best"]:   # no dev split: the last epoch
                meta["best"] = score
                best = {n: p.detach().cpu().clone() for n, p in named.items()}
        # head-only stages (seconds of work) save only when asked to
        if state_dir is not None and ((end_of_epoch and not head_only) or (stage.checkpoint_every and
                                                       (step + 1) % stage.checkpoint_every == 0)):
            if rank == 0:
                save_state(state_dir, named, opt, sched, scaler, meta, best)
            barrier(world)
        if on_step:
            on_step(step + 1)
    if best:
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(best[n].to(p.device))
    for p in trainee.parameters():
        p.requires_grad_(False)
    model.eval()
    return {"trainee": trainee, "history": meta["history"], "best_dev": meta["best"], "steps": total,
            "epoch_steps": epoch_steps, "world_size": world,
            "train_examples": {n: len(f) for n, f in feats.items()},
            **({"features": frozen} if head_only else {})}


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
