"""`xopt train` with plan files: intermediate-task formats, every head kind, carry-over,
resume equivalence, two-process DDP (gloo) and plan validation. Tiny 2-layer model, fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import HAVE_DEMO, make_tiny_checkpoint, needs_demo
from xopt.cli import app
from xopt.errors import XoptError
from xopt.tasks import intermediate as it

FIX = Path(__file__).parent / "fixtures" / "intermediate"
pytestmark = needs_demo


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 32-wide model gains nothing from intra-op threads, and their spin-waits slow every step
    down on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    from xopt.importers.e5 import e5_tokenizer

    return e5_tokenizer()


@pytest.fixture(scope="session")
def ckpt32(tmp_path_factory):
    if not HAVE_DEMO:
        pytest.skip("needs the e5 tokenizer from the `demo` extra")
    # encoder only (head "none"), as the imported e5-small the demo trains from
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt32") / "tiny32", [], hidden=32)


def _plan(path: Path, ckpt: Path, body: str, out: str = "run") -> Path:
    path.write_text(f'model = "{ckpt}"\nout = "{out}"\ndata = "{FIX}"\n' + body)
    return path


def _encoder(path: Path) -> dict:
    """The encoder's weights of a checkpoint as AutoModel names them: an HF task model's without
    its `bert.` prefix; BERT's pooler left out (HF's BERT heads read through it and train it)."""
    w = load_file(str(path / "model.safetensors"))
    if any(k.startswith("bert.") for k in w):
        w = {k[5:]: v for k, v in w.items() if k.startswith("bert.")}
    return {k: v for k, v in w.items() if not k.startswith("pooler.")}


def _head(path: Path) -> dict:
    """The head's weights: head.safetensors (xopt's linear head) or the task model's head modules."""
    if (path / "head.safetensors").is_file():
        return load_file(str(path / "head.safetensors"))
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items()
            if not k.startswith("bert.") or k.startswith("bert.pooler.")}


def test_every_intermediate_format_loads_and_featurizes(tok):
    sizes = {}
    for name in it.TASKS:
        t = it.load(name, FIX / name)
        assert t.train and t.dev and t.kind == it.SPECS[name].kind
        sizes[name] = len(t.train)
        feats = it.featurize(t, t.train, tok, "query: ", 96)
        assert feats and all(f["input_ids"] for f in feats)
        if t.kind == "token":       # first sub-token of every word tagged, the rest -100
            for f, e in zip(feats, t.train):
                tagged = [x for x in f["tags"] if x != -100]
                assert [t.labels[x] for x in tagged] == e["tags"]
        if t.kind == "span":        # the labelled tokens spell the answer
            for f, e in zip(feats, t.train):
                span = tok.decode(f["input_ids"][f["start"]:f["end"] + 1]).strip()
                assert span == e["answers"][0]["text"]
        if t.kind == "choice":
            assert len({len(f["input_ids"]) for f in feats}) == 1 and len(feats[0]["input_ids"]) >= 4
    assert sizes["mnli"] == 8            # the no-consensus "-" pair is skipped
    assert sizes["anli"] == 10           # R1 + R2 pooled, e/n/c labels mapped
    assert it.load("anli", FIX / "anli").train[5]["label"] == "contradiction"
    assert len(it.load("sst2", FIX / "sst2", translated=[FIX / "sst2-de.tsv"]).train) == sizes["sst2"] + 2
    assert len(it.load_text("mlm", [FIX / "mono" / "de.txt", FIX / "mono" / "hi.txt"]).train) == 6
    with pytest.raises(XoptError, match="no train file"):
        it.load("squad", FIX / "sst2")


def test_mixture_of_all_nine_carries_encoder_and_discards_heads(tmp_path, ckpt32):
    """All nine intermediate tasks + continued MLM + translated data in one mixture (bf16, grad
    accumulation), then a head-only target stage: the X-STILTs encoder is exactly the encoder
    after the intermediate stage, the baseline's is the original one, heads are the target's."""
    tasks = ", ".join(f'"{t}"' for t in it.TASKS)
    plan = _plan(tmp_path / "plan.toml", ckpt32, f"""
[intermediate]
tasks = [{tasks}]
mixing = "capped"
cap = 6
mlm = ["{FIX}/mono/de.txt", "{FIX}/mono/hi.txt"]
translated = {{sst2 = ["{FIX}/sst2-de.tsv"]}}
steps = 12
batch_size = 4
grad_accum = 2
lr = 1e-3
precision = "bf16"
max_length = 64
[target]
task = "sst2"
train = "head"
epochs = 3
batch_size = 8
lr = 1e-2
""")
    res = CliRunner().invoke(app, ["train", str(plan)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    base, xs = _encoder(run / "baseline"), _encoder(run / "xstilts")
    orig = _encoder(ckpt32)
    inter = load_file(str(run / ".state" / "xstilts-intermediate.done" / "encoder.safetensors"))
    assert all(torch.equal(orig[k], base[k]) for k in orig)                       # head-only target stage
    assert all(torch.equal(xs[k], inter[k]) for k in inter if k in xs)           # carried over as trained
    assert any(not torch.equal(orig[k], xs[k]) for k in inter)                   # ... and it did train
    assert torch.equal(orig["embeddings.word_embeddings.weight"], xs["embeddings.word_embeddings.weight"])
    man = json.loads((run / "xstilts" / "manifest.json").read_text())
    assert man["role"] == "xstilts" and len(man["source"]["stages"]) == 2
    assert man["model"]["labels"] == ["negative", "positive"] and man["model"]["head"] == "sequence"
    head = _head(run / "xstilts")
    assert head["classifier.weight"].shape == (2, 32)                            # target head, not an intermediate one
    hist = man["source"]["stages"][0]["history"]
    assert set(hist[-1]["dev"]) == set(it.TASKS)                                 # dev of every task with a dev split
    assert (run / "plan.toml").is_file() and json.loads((run / "resolved.json").read_text())["tasks"]["mlm"]
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {(r["model"], r["stage"]) for r in recs} == {("baseline", "target"), ("xstilts", "intermediate"),
                                                         ("xstilts", "target")}


def test_loss_decreases_and_retrieval_target_saves_encoder(tmp_path, ckpt32):
    from xopt.train import Stage, train

    # xopt's linear head on the mean: a random encoder's first token is nearly the same for
    # every input (its attention has learnt nothing), so HF's first-token heads cannot fit it fast
    out = train(ckpt32, "sst2", FIX, tmp_path / "b", head="mean-linear",
                target_stage=Stage("sst2", epochs=20, lr=1e-2, batch_size=8, dropout=0.0))
    hist = json.loads((out / "manifest.json").read_text())["source"]["stages"][-1]["history"]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"], hist
    assert not (tmp_path / ".b.state").exists()              # finished: no training state left behind
    # retrieval target: no target stage; the X-STILTs checkpoint is the intermediate encoder
    x = train(ckpt32, "tatoeba", FIX, tmp_path / "x", intermediate="qqp",
              intermediate_stage=Stage("qqp", steps=2, batch_size=4, lr=1e-3))
    man = json.loads((x / "manifest.json").read_text())
    assert man["role"] == "xstilts" and man["model"]["head"] == "none" and not (x / "head.safetensors").exists()
    assert len(man["source"]["stages"]) == 1


class Killed(Exception):
    pass


def test_resume_gives_the_same_weights(tmp_path, ckpt32):
    """8 steps straight vs killed after step 5 (last state at step 4) + --resume: identical."""
    from xopt.train import Stage, train

    st = Stage("sst2", steps=8, batch_size=4, lr=1e-3, checkpoint_every=2, warmup=2)   # dropout 0.1 stays on
    full = train(ckpt32, "sst2", FIX, tmp_path / "full", target_stage=st)

    def kill(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(ckpt32, "sst2", FIX, tmp_path / "cut", target_stage=st, on_step=kill)
    state = json.loads((tmp_path / ".cut.state" / "baseline-target" / "state.json").read_text())
    assert state["step"] == 4 and not (tmp_path / "cut").exists()
    with pytest.raises(XoptError, match="--resume"):
        train(ckpt32, "sst2", FIX, tmp_path / "cut", target_stage=st)
    steps = []
    cut = train(ckpt32, "sst2", FIX, tmp_path / "cut", target_stage=st, resume=True, on_step=steps.append)
    assert steps == [5, 6, 7, 8]
    a, b = _encoder(full), _encoder(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = _head(full), _head(cut)
    assert ha and all(torch.equal(ha[k], hb[k]) for k in ha)
    # X-STILTs killed in its target stage: resuming keeps the finished intermediate stage
    calls = []

    def kill_in_target(step):
        calls.append(step)
        if len(calls) == 3:          # intermediate steps 1, 2, then target step 1
            raise Killed

    inter = Stage("qqp", steps=2, batch_size=4, lr=1e-3)
    tgt = Stage("sst2", steps=2, batch_size=4, lr=1e-3, checkpoint_every=1)
    with pytest.raises(Killed):
        train(ckpt32, "sst2", FIX, tmp_path / "xs", intermediate="qqp", intermediate_stage=inter,
              target_stage=tgt, on_step=kill_in_target)
    steps = []
    xs = train(ckpt32, "sst2", FIX, tmp_path / "xs", intermediate="qqp", intermediate_stage=inter,
               target_stage=tgt, on_step=steps.append, resume=True)
    assert steps == [2] and len(json.loads((xs / "manifest.json").read_text())["source"]["stages"]) == 2


def test_a_resumed_run_writes_each_epoch_s_metrics_once(tmp_path, ckpt32, monkeypatch):
    """Killed right after epoch 1's record (step 3) with its last state at step 2: the resumed run
    replays step 3, and metrics.jsonl still holds epochs 1, 2, 3 once each."""
    import xopt.train
    from xopt.train import Stage, train

    real = xopt.train.shutil.rmtree
    monkeypatch.setattr(xopt.train.shutil, "rmtree", lambda p, *a, **kw: None if str(p).endswith(".state")
                        else real(p, *a, **kw))          # keep the finished run's state dir to read its metrics
    st = Stage("sst2", train="head", epochs=3, batch_size=4, max_examples=12, lr=1e-3, checkpoint_every=2)

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(ckpt32, "sst2", FIX, tmp_path / "cut", target_stage=st, on_step=kill)
    metrics = tmp_path / ".cut.state" / "metrics.jsonl"
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1]
    steps = []
    train(ckpt32, "sst2", FIX, tmp_path / "cut", target_stage=st, resume=True, on_step=steps.append)
    assert steps[0] == 3                                   # step 3 (the end of epoch 1) ran again
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2, 3]


def test_two_process_ddp_matches_one_process(tmp_path, ckpt32):
    body = """models = ["baseline"]
[target]
task = "sst2"
epochs = 2
batch_size = 8
grad_accum = 2
lr = 1e-3
dropout = 0.0
"""
    one = _plan(tmp_path / "one.toml", ckpt32, body, out="one")
    two = _plan(tmp_path / "two.toml", ckpt32, body, out="two")
    res = CliRunner().invoke(app, ["train", str(one)])
    assert res.exit_code == 0, res.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XOPT_PROGRESS": "0"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "xopt.cli", "train", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((tmp_path / "two" / "baseline" / "manifest.json").read_text())
    assert man["source"]["world_size"] == 2
    a, b = _encoder(tmp_path / "one" / "baseline"), _encoder(tmp_path / "two" / "baseline")
    orig = _encoder(ckpt32)
    assert any(not torch.equal(orig[k], a[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    ha, hb = _head(tmp_path / "one" / "baseline"), _head(tmp_path / "two" / "baseline")
    assert ha
    for k in ha:
        torch.testing.assert_close(ha[k], hb[k], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("body, message", [
    ('[target]\ntask = "xnlii"\n', "unknown task 'xnlii'"),
    ('data = {sst2 = "no/such/dir"}\n[target]\ntask = "sst2"\n', "data directory"),
    ('[target]\ntask = "squad"\nhead = "sequence"\n', "needs a 'span' head"),
    ('[target]\ntask = "ccg"\ntrain = "head"\n', "sequence tasks only"),
    ('[target]\ntask = "hellaswag"\n', "intermediate task only"),
    ('[intermediate]\ntasks = ["mnli", "nope"]\n[target]\ntask = "sst2"\n', "unknown task 'nope'"),
    ('[target]\ntask = "sst2"\nlearning_rate = 1e-3\n', "unknown key 'learning_rate'"),
])
def test_bad_plans_fail_before_training(tmp_path, ckpt32, body, message):
    if body.startswith("data ="):
        plan = tmp_path / "plan.toml"
        plan.write_text(f'model = "{ckpt32}"\nout = "run"\n' + body)
    else:
        plan = _plan(tmp_path / "plan.toml", ckpt32, body)
    res = CliRunner().invoke(app, ["train", str(plan)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xopt: error:") and message in lines[0], res.output
    assert not (tmp_path / "run").exists()


def test_a_plan_out_xopt_did_not_write_is_refused_with_or_without_force(tmp_path, ckpt32):
    """A plan whose `out` is someone's directory: its plan.toml and resolved.json stay theirs; a run
    directory xopt wrote is replaced with --force."""
    from conftest import one_line_error

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "plan.toml").write_text("my plan\n")
    (mine / "resolved.json").write_text("{}\n")
    body = '[target]\ntask = "sst2"\nsteps = 1\nbatch_size = 4\n'
    plan = _plan(tmp_path / "p.toml", ckpt32, body, out="mine")
    for flags in ([], ["--force"]):
        line = one_line_error(CliRunner().invoke(app, ["train", str(plan), *flags]))
        assert f"{mine} holds 2 entries not written by xopt (plan.toml, resolved.json)" in line
    assert sorted(p.name for p in mine.iterdir()) == ["plan.toml", "resolved.json"]
    assert (mine / "plan.toml").read_text() == "my plan\n" and (mine / "resolved.json").read_text() == "{}\n"
    plan = _plan(tmp_path / "p.toml", ckpt32, body, out="run")
    for flags in ([], ["--force"]):
        res = CliRunner().invoke(app, ["train", str(plan), *flags])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "baseline" / "manifest.json").is_file()


def test_a_second_run_into_one_out_is_refused_while_the_first_holds_it(tmp_path, ckpt32):
    from xopt import manifest as mf

    plan = _plan(tmp_path / "p.toml", ckpt32, '[target]\ntask = "sst2"\nsteps = 1\nbatch_size = 4\n')
    with mf.output_lock(tmp_path / "run"):      # as a first `xopt train` into run/ holds it
        res = subprocess.run([sys.executable, "-m", "xopt.cli", "train", str(plan)], capture_output=True,
                             text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"xopt: error: {tmp_path / 'run'} is being written by another xopt process (pid {os.getpid()}); wait "
        "for it to finish, or choose another output"], res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("target, head, metric_key", [("xnli", "sequence", "xnli"), ("udpos", "token", "udpos"),
                                                      ("xquad", "span", "xquad")])
def test_xtreme_target_families(tmp_path, ckpt32, target, head, metric_key):
    """Target stage on XTREME's English train/dev (download layout) for each trainable family,
    features and dev metric from xopt.tasks (accuracy, seqeval F1, SQuAD F1)."""
    from xopt.tasks import xtreme as X
    from xopt.train import Stage, train

    xfix = Path(__file__).parent / "fixtures" / "xtreme"
    out = train(ckpt32, target, xfix, tmp_path / target,
                target_stage=Stage(target, steps=2, batch_size=4, lr=1e-3, max_length=96))
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["head"] == head and man["model"]["task"] == target
    assert man["model"]["labels"] == (list(X.TASKS[target].labels) if head != "span" else ["start", "end"])
    hist = man["source"]["stages"][-1]["history"]
    assert metric_key in hist[-1]["dev"] and 0 <= hist[-1]["dev"][metric_key] <= 100
    from xopt.modeling import load_module, open_checkpoint

    names = open_checkpoint(out).output_names
    assert names[2:] == {"sequence": ("logits",), "token": ("token_logits",),
                         "span": ("start_logits", "end_logits")}[head]
    load_module(open_checkpoint(out))          # the head file loads into the contract's model


def _run_plan(tmp_path, ckpt32, run_extra: str = "") -> Path:
    """A two-step qqp -> xnli plan whose [run] compiles, evaluates and benches fp32 on en, de."""
    xfix = Path(__file__).parent / "fixtures" / "xtreme"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'''model = "{ckpt32}"
out = "run"
data = {{root = "{xfix}", qqp = "{FIX}/qqp"}}
[intermediate]
task = "qqp"
steps = 2
batch_size = 4
[target]
task = "xnli"
steps = 2
batch_size = 4
[run]
variants = ["fp32"]
langs = ["en", "de"]
bench = {{batch = [1], seq_len = [16], min_time = 0.02}}
''' + run_extra)
    return plan


def test_xopt_run_chains_train_compile_eval_bench_report(tmp_path, ckpt32):
    plan = _run_plan(tmp_path, ckpt32)
    res = CliRunner().invoke(app, ["run", str(plan)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    evals = {(r["model"], r["variant"], r["task"], r["lang"]) for r in recs if r["kind"] == "eval"}
    assert {(m, "fp32", "xnli", lang) for m in ("baseline", "xstilts") for lang in ("en", "de")} <= evals
    assert any(r["kind"] == "bench" and r["model"] == "xstilts" for r in recs)
    assert (tmp_path / "run" / "report" / "report.md").is_file()


def test_xopt_run_refuses_a_bad_run_section_before_training(tmp_path, ckpt32):
    plan = _plan(tmp_path / "plan.toml", ckpt32, '[target]\ntask = "sst2"\n[run]\nvariants = ["fp33"]\n')
    res = CliRunner().invoke(app, ["run", str(plan)])
    assert res.exit_code == 2 and "unknown variant 'fp33'" in res.output and not (tmp_path / "run").exists()


def test_hf_datasets_directories_open_offline(tmp_path):
    """`save_to_disk` directories with the Hub's columns (glue/mnli, commonsense_qa)."""
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (test extra) is not installed")
    nli = {"premise": ["A man plays.", "A dog runs."], "hypothesis": ["Someone plays.", "A cat sleeps."],
           "label": [0, 2], "idx": [0, 1]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(nli),
                          "validation_matched": datasets.Dataset.from_dict(nli)}).save_to_disk(str(tmp_path / "mnli"))
    t = it.load("mnli", tmp_path / "mnli")
    assert [e["label"] for e in t.train] == ["entailment", "contradiction"] and len(t.dev) == 2
    cq = {"id": ["a"], "question": ["Where do fish live?"], "question_concept": ["fish"],
          "choices": [{"label": ["A", "B", "C"], "text": ["desert", "water", "attic"]}], "answerKey": ["B"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(cq),
                          "validation": datasets.Dataset.from_dict(cq)}).save_to_disk(str(tmp_path / "csqa"))
    t = it.load("commonsenseqa", tmp_path / "csqa")
    assert t.train == [{"first": "Where do fish live?", "choices": ["desert", "water", "attic"], "label": 1}]


@pytest.mark.parametrize("value", ['"tight"', "-1", "true", "nan"])
def test_xopt_run_refuses_a_bad_quality_budget_before_training(tmp_path, ckpt32, value):
    plan = _plan(tmp_path / "plan.toml", ckpt32, f'[target]\ntask = "sst2"\n[run]\nmax_drop = {value}\n')
    res = CliRunner().invoke(app, ["run", str(plan)])
    assert res.exit_code == 2 and "max_drop" in res.output and "expected a number of points" in res.output
    assert not (tmp_path / "run").exists()


def test_xopt_run_picks_under_the_plan_budget_and_rebuilds_stale_variants(tmp_path, ckpt32):
    from conftest import write_manifest
    from xopt import manifest as mf
    from xopt.pipeline import DEFAULT_MAX_DROP, run_plan_file

    plan = _run_plan(tmp_path, ckpt32, "max_drop = 2.5\n")
    done = run_plan_file(plan)
    assert done["pick"]["constraints"]["max_drop"] == 2.5 and DEFAULT_MAX_DROP == 1.0
    run = tmp_path / "run"
    res, base, xs = run / "results.jsonl", run / "variants" / "baseline" / "fp32", run / "variants" / "xstilts" / "fp32"

    def make_stale(d):
        man = json.loads((d / "manifest.json").read_text())
        man["source"]["weights_sha256"] = "0" * 64
        write_manifest(d, man)

    def evals():
        return [(r["model"], r["task"], r["lang"]) for r in map(json.loads, res.read_text().splitlines())
                if r["kind"] == "eval"]

    make_stale(xs)
    base_inode = os.stat(base).st_ino
    r = CliRunner().invoke(app, ["run", str(plan), "--resume"])
    assert r.exit_code == 2 and "holds records of xstilts/fp32 built from other weights" in r.output
    weights = mf.read(run / "xstilts", kind="checkpoint")["files"]["model.safetensors"]
    assert mf.read(xs, kind="variant")["source"]["weights_sha256"] == weights     # rebuilt
    assert os.stat(base).st_ino == base_inode                                     # current: kept

    make_stale(xs)
    res.unlink()
    r = CliRunner().invoke(app, ["run", str(plan), "--resume"])
    assert r.exit_code == 0, r.output
    assert mf.read(xs, kind="variant")["source"]["weights_sha256"] == weights and os.stat(base).st_ino == base_inode
    first = evals()
    assert len(first) == len(set(first)) == 6          # 2 models x (en, de, avg), none twice
    r = CliRunner().invoke(app, ["run", str(plan), "--resume"])   # nothing left: evaluation skips every unit
    assert r.exit_code == 0 and evals() == first

    r = CliRunner().invoke(app, ["run", str(plan), "--force"])    # everything under the run dir is rebuilt
    assert r.exit_code == 0, r.output
    assert os.stat(base).st_ino != base_inode
    assert mf.read(xs, kind="variant")["source"]["weights_sha256"] == \
        mf.read(run / "xstilts", kind="checkpoint")["files"]["model.safetensors"]
    assert sorted(evals()) == sorted(first)


def test_jsonl_row_nested_past_the_parser_is_one_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(XoptError, match=r"train\.jsonl:2: malformed JSON \(nested too deeply.*one JSON object per line"):
        it._read_rows(p)


def test_a_schedule_past_the_step_bound_is_refused_before_it_is_built(monkeypatch):
    """Epochs within the plan's bound can still multiply into a schedule too long to list: refused
    in one line with the figures, before any step is listed."""
    import numpy as np

    from xopt import schedule
    from xopt.train import Stage

    monkeypatch.setattr(schedule, "MAX_STEPS", 1000, raising=False)
    stage = Stage("x", epochs=10, batch_size=1)
    with pytest.raises(XoptError, match=r"10 epochs of 200 steps make 2000 steps, more than 1000"):
        schedule.build_schedule({"x": np.arange(200)}, stage, 0)
    assert len(schedule.build_schedule({"x": np.arange(200)}, Stage("x", epochs=5, batch_size=1), 0)[0]) == 1000
