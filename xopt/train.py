"""`xopt train`: baseline and X-STILTs checkpoints.

X-STILTs = an English intermediate task first (encoder + that task's head), then the
English target task on the carried-over encoder with a fresh head; the baseline runs the
same target stage from the original encoder with the same seed. The intermediate head is
discarded. Each stage keeps the epoch that scores best on its English dev split (zero-shot
protocol: nothing in another language is seen before evaluation).

A stage trains either the encoder (its transformer layers; the 250k-row embedding matrix
stays frozen, which keeps the optimiser state small and the multilingual vocabulary
untouched) plus the head, or the head alone on frozen features (`train="head"`), which the
demo uses for its target stage: then the X-STILTs encoder is exactly the encoder right
after the intermediate stage, which is what the retrieval task evaluates.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.progress import bar


@dataclass
class Stage:
    task: str
    train: str = "encoder"     # "encoder" (layers + head) | "head" (frozen encoder)
    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1        # fraction of steps
    max_length: int = 128
    max_examples: int | None = None
    top_layers: int | None = None   # train only the top k transformer layers (None: all)


DEMO_INTERMEDIATE = Stage("demo-intermediate", train="encoder", epochs=1, lr=8e-5, top_layers=4)
DEMO_TARGET = Stage("demo-topic", train="head", epochs=100, lr=3e-3, batch_size=64)


def _task_data(suite: dict, task: str) -> dict:
    if task not in suite["tasks"]:
        raise XoptError(f"unknown training task {task!r}; the data has: {', '.join(suite['tasks'])}")
    t = suite["tasks"][task]
    if not t.get("train") or not t.get("dev"):
        raise XoptError(f"task {task}: empty train or dev split")
    return t


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _accuracy(logits, gold) -> float:
    return float((logits.argmax(1) == gold).float().mean()) * 100


def run_stage(model, tokenizer, prefix: str, suite: dict, stage: Stage, seed: int, progress=None) -> dict:
    """Train `model` (XoptModel with a fresh head for `stage.task`) in place; return history."""
    import torch

    from xopt.evaluate import pad, tokenize

    data = _task_data(suite, stage.task)
    labels = data["labels"]
    train = data["train"][:stage.max_examples] if stage.max_examples else data["train"]
    dev = data["dev"]
    y_train = torch.tensor([labels.index(e["label"]) for e in train])
    y_dev = torch.tensor([labels.index(e["label"]) for e in dev])
    x_train = tokenize(tokenizer, [e["text"] for e in train], prefix, stage.max_length)
    x_dev = tokenize(tokenizer, [e["text"] for e in dev], prefix, stage.max_length)
    _seed_all(seed)
    model.set_head("sequence", len(labels))
    rng = np.random.RandomState(seed)
    pad_id = tokenizer.pad_token_id

    def embed(seqs, grad: bool):
        outs = []
        for i in range(0, len(seqs), 64):
            ids, mask = pad(seqs[i:i + 64], pad_id)
            with torch.set_grad_enabled(grad):
                outs.append(model(torch.from_numpy(ids), torch.from_numpy(mask))[0])
        return torch.cat(outs)

    if stage.train == "head":
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        model.eval()
        with torch.inference_mode():
            f_train, f_dev = embed(x_train, False).clone(), embed(x_dev, False).clone()
        params = list(model.head.parameters())
    elif stage.train == "encoder":
        n_layers = model.encoder.config.num_hidden_layers
        first = n_layers - (stage.top_layers or n_layers)
        for name, p in model.encoder.named_parameters():
            layer = int(name.split(".")[2]) if name.startswith("encoder.layer.") else -1
            p.requires_grad_(layer >= first)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        raise XoptError(f"stage {stage.task}: train must be 'encoder' or 'head', not {stage.train!r}")

    steps_per_epoch = math.ceil(len(train) / stage.batch_size)
    total = steps_per_epoch * stage.epochs
    warm = max(1, int(stage.warmup * total))
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    history, best, best_state = [], -1.0, None
    task_id = progress.add_task(f"train {stage.task} ({stage.train})", total=total, rate="") if progress else None
    t0 = time.perf_counter()
    for epoch in range(stage.epochs):
        order = rng.permutation(len(train))
        model.train(stage.train == "encoder")
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * stage.batch_size:(b + 1) * stage.batch_size]
            if stage.train == "head":
                logits = model.head(f_train[idx])
            else:
                ids, mask = pad([x_train[i] for i in idx], pad_id)
                logits = model(torch.from_numpy(ids), torch.from_numpy(mask))[2]
            loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress:
                done = epoch * steps_per_epoch + b + 1
                progress.update(task_id, advance=1,
                                rate=f"loss {np.mean(losses[-20:]):.3f} {done / (time.perf_counter() - t0):.1f} step/s")
        model.eval()
        with torch.inference_mode():
            dev_logits = model.head(f_dev) if stage.train == "head" else model.head(embed(x_dev, False))
        acc = _accuracy(dev_logits, y_dev)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "dev_accuracy": acc})
        if acc > best:
            best = acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                          if stage.train == "encoder" or k.startswith("head.")}
    model.load_state_dict(best_state, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return {"stage": asdict(stage), "seed": seed, "labels": labels, "history": history, "best_dev_accuracy": best,
            "seconds": round(time.perf_counter() - t0, 2)}


def train(model_path: str | Path, target: str, data: str | Path, out: str | Path, intermediate: str | None = None,
          seed: int = 0, force: bool = False, target_stage: Stage | None = None,
          intermediate_stage: Stage | None = None, name: str | None = None) -> Path:
    """Baseline (no `intermediate`) or X-STILTs checkpoint at `out`."""
    import torch

    from xopt.models import ModelCard, load_module, load_tokenizer, open_checkpoint, save_checkpoint
    from xopt.tasks.demo import load_suite

    out = Path(out)
    if out.exists() and not force:
        raise XoptError(f"{out} already exists; pass --force to replace it")
    suite = load_suite(Path(data))
    tstage = target_stage or (DEMO_TARGET if target == DEMO_TARGET.task else Stage(target))
    istage = (intermediate_stage or (DEMO_INTERMEDIATE if intermediate == DEMO_INTERMEDIATE.task
                                     else Stage(intermediate))) if intermediate else None
    for st in filter(None, (istage, tstage)):      # fail before any training
        _task_data(suite, st.task)
    ckpt = open_checkpoint(model_path)
    tok = load_tokenizer(ckpt.path)
    torch.manual_seed(seed)
    model = load_module(ckpt)
    model.set_head("none")
    stages = []
    with bar() as progress:
        if istage:
            stages.append(run_stage(model, tok, ckpt.card.input_prefix, suite, istage, seed, progress))
        stages.append(run_stage(model, tok, ckpt.card.input_prefix, suite, tstage, seed, progress))
    card = ModelCard(pooling=ckpt.card.pooling, input_prefix=ckpt.card.input_prefix,
                     labels=stages[-1]["labels"], task=tstage.task, max_length=ckpt.card.max_length)
    src_files = ckpt.manifest.get("files", {})
    source = {"kind": "train", "from": str(ckpt.path.resolve()), "from_sha256": src_files.get("model.safetensors"),
              "data": str(Path(data).resolve()), "target": target, "intermediate": intermediate, "seed": seed,
              "stages": stages}
    role = "xstilts" if intermediate else "baseline"
    base_model = ckpt.manifest.get("base_model") or ckpt.manifest.get("source", {}).get("name") or ckpt.path.name
    return save_checkpoint(model, tok, card, out, source, force=force,
                           manifest_extra={"role": role, "name": name or out.name, "base_model": base_model})
