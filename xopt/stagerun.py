"""One stage of a training plan: its training run(s) through `fit` (xopt.trainloop) and what the
stage keeps of them.

Around the stage's own run, a stage may
- start from a linear probe (`probe_epochs`): its fresh heads first trained alone on the frozen
  encoder (LP-FT, Kumar et al. 2022: a trained head distorts the encoder less);
- train `average` runs from the same weights with seeds seed, seed+1, ... and keep the mean of
  their weights (a model soup, Wortsman et al. 2022): whole encoders and heads in encoder
  stages, heads on the same frozen features in head-only stages;
- keep only the fraction `interpolate` of the stage's change of the encoder (WiSE-FT).
A finished stage's result (trainable encoder weights, target head, summary) is saved in
`<state_dir>.done/`; a resumed run loads it instead of training the stage again. Each epoch's
record goes to the run's metrics.jsonl once (`metrics_writer`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from xopt.plan import jsonable
from xopt.tasks.registry import family
from xopt.trainloop import average_states, barrier, dist_info, fit
from xopt.trainee import key


@dataclass
class StageJob:
    """What every run of one stage trains and on what: the model (trained in place), the
    stage's tasks and settings, the base seed, the progress display and the epoch records."""
    model: object
    tok: object
    prefix: str
    tasks: dict          # the stage's tasks: name -> TaskData
    stage: object
    seed: int
    progress: object
    records: object      # the callback that writes an epoch's record (`metrics_writer`)
    layout: str          # head layout: "hf" or "linear"

    def fit(self, stage=None, seed: int | None = None, **kw) -> dict:
        """`fit` of this job's model and tasks; `stage`, `seed`: another run's (None: the job's)."""
        return fit(self.model, self.tok, self.prefix, self.tasks, self.stage if stage is None else stage,
                   self.seed if seed is None else seed, progress=self.progress, layout=self.layout, **kw)


def run_stage(job: StageJob, state_dir: Path, resume: bool, on_step, keep_encoder: bool = False) -> dict:
    """One stage, or its saved result when a resumed run already finished it: {"encoder": the
    trainable encoder tensors, "summary": what the manifest records of the stage, "head": the
    target head's weights (None with `keep_encoder`: an intermediate stage's heads are dropped)}."""
    rank, world, _ = dist_info()
    done = state_dir.with_name(state_dir.name + ".done")
    if resume and (done / "result.json").is_file():
        return _saved_result(job.model, done)
    stage, model = job.stage, job.model
    soup = stage.average > 1 and stage.train == "encoder"
    start = ({n: p.detach().clone() for n, p in model.encoder.named_parameters() if not n.startswith("embeddings.")}
             if stage.interpolate < 1 or soup else None)
    probed = None    # a resumed run's saved state holds its heads already
    if stage.probe_epochs and not (resume and (state_dir / "state.json").is_file()):
        probed = _probe(job)
    res = job.fit(state_dir=state_dir, resume=resume, records=job.records, label="", on_step=on_step, heads=probed)
    trainee = res.pop("trainee")
    features = res.pop("features", None)
    if soup:
        _encoder_soup(job, trainee, start, probed)
    if stage.interpolate < 1:
        _interpolate(model, start, stage.interpolate)
    if stage.average > 1 and not soup:
        _head_soup(job, trainee, features)
    if stage.average > 1:
        res["average"] = {"seeds": list(range(job.seed, job.seed + stage.average))}
    summary = {"stage": jsonable(stage), "seed": job.seed, "labels": {n: t.labels for n, t in job.tasks.items()
                                                                     if not family(t.kind).ties_embeddings}, **res}
    enc = {n: p.detach().cpu().contiguous() for n, p in model.encoder.named_parameters()
           if not n.startswith("embeddings.")}
    head = None if keep_encoder else trainee.heads[key(stage.tasks[0])].xopt_state()
    if rank == 0:
        _save_result(done, summary, enc, head)
        shutil.rmtree(state_dir, ignore_errors=True)
    barrier(world)
    return {"encoder": enc, "summary": summary, "head": head}


def _saved_result(model, done: Path) -> dict:
    """A finished stage's saved result, its encoder weights loaded into `model`."""
    from safetensors.torch import load_file

    summary = json.loads((done / "result.json").read_text())
    enc = load_file(str(done / "encoder.safetensors"))
    load_encoder(model, enc)
    return {"encoder": enc, "summary": summary, "head": load_file(str(done / "head.safetensors"))
            if (done / "head.safetensors").is_file() else None}


def _save_result(done: Path, summary: dict, enc: dict, head: dict | None) -> None:
    from safetensors.torch import save_file

    from xopt.manifest import atomic_dir

    with atomic_dir(done, force=True) as tmp:
        (tmp / "result.json").write_text(json.dumps(summary, default=str))
        save_file(enc, str(tmp / "encoder.safetensors"))
        if head:
            save_file(head, str(tmp / "head.safetensors"))


def _probe(job: StageJob) -> dict:
    """The heads' weights after a linear probe: the fresh heads alone on the frozen encoder for
    `probe_epochs` at `probe_lr`, batch 64."""
    st = job.stage
    probe = replace(st, train="head", epochs=st.probe_epochs, steps=None, lr=st.probe_lr, batch_size=64,
                    grad_accum=1, head_lr=None, length_grouped=False, probe_epochs=0)
    return job.fit(probe, records=job.records, label="probe ")["trainee"].heads.state_dict()


def _encoder_soup(job: StageJob, trainee, start: dict, probed: dict | None) -> None:
    """A soup of encoder runs (Wortsman et al. 2022): each further run starts from the same weights
    `start` with another seed (head init, batch order); the model's encoder and `trainee`'s heads
    become the mean of all runs' weights, which keeps what the runs learned in common and averages
    out much of each run's own drift."""
    model, st = job.model, job.stage

    def weights():
        return {n: p.detach().clone() for n, p in model.encoder.named_parameters() if n in start}

    runs, heads = [weights()], [trainee.heads.state_dict()]
    for j in range(1, st.average):
        load_encoder(model, start)
        heads.append(job.fit(seed=job.seed + j, records=job.records, label=f"{j + 1}/{st.average} ",
                             heads=probed)["trainee"].heads.state_dict())
        runs.append(weights())
    load_encoder(model, average_states(runs))
    trainee.heads.load_state_dict(average_states(heads))


def _interpolate(model, start: dict, fraction: float) -> None:
    """WiSE-FT (Wortsman et al. 2022): part of the way back to the starting weights keeps more of
    what the encoder knew before the stage (here: its cross-lingual alignment)."""
    import torch

    with torch.no_grad():
        for n, p in model.encoder.named_parameters():
            if n in start:
                p.copy_(start[n] + fraction * (p - start[n]))


def _head_soup(job: StageJob, trainee, features) -> None:
    """A soup of head-only runs: the same frozen `features`, other seeds (head init, batch order,
    best epoch); `trainee`'s heads become the mean of the runs' heads, one head that depends less
    on any one seed."""
    heads = [trainee.heads]
    for j in range(1, job.stage.average):
        heads.append(job.fit(seed=job.seed + j, label=f"{j + 1}/{job.stage.average} ",
                             features=features)["trainee"].heads)
    trainee.heads.load_state_dict(average_states([h.state_dict() for h in heads]))


def load_encoder(model, tensors: dict) -> None:
    """Copy `tensors` (encoder weights by name) into `model`'s encoder."""
    import torch

    with torch.no_grad():
        for n, p in model.encoder.named_parameters():
            if n in tensors:
                p.copy_(tensors[n])


def metrics_writer(metrics: Path, role: str, stage: str, resume: bool):
    """The callback that appends a stage's epoch records to metrics.jsonl. A resumed stage
    replays the epochs after its last saved state, whose records were written before the state
    was: each epoch is written once."""
    from xopt.records import append as append_records

    held = _epochs_held(metrics, role, stage) if resume else set()

    def write(rec):
        if rec["epoch"] not in held:
            held.add(rec["epoch"])
            append_records(metrics, [{"kind": "train", "model": role, "stage": stage, **rec}])
    return write


def _epochs_held(metrics: Path, role: str, stage: str) -> set:
    """The epochs of (role, stage) that metrics.jsonl already records (unreadable lines skipped)."""
    held = set()
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("model") == role and r.get("stage") == stage:
                held.add(r.get("epoch"))
    return held
