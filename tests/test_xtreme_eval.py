"""`xopt eval --suite xtreme` end to end on tiny models (from config) and the fixtures: all 9
tasks, records, length bucketing, the BUCC threshold protocol, bad input, 2-process sharding."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HAVE_DEMO, one_line_error
from xopt import records
from xopt.cli import app
from xopt.tasks import xtreme as X

FIX = Path(__file__).parent / "fixtures" / "xtreme"
LANGS = {"xnli": "en,de,ar,zh", "pawsx": "en,de,ja,ko", "udpos": "en,de,ar,zh", "panx": "en,de,ru,ja",
         "xquad": "en,de,ar,zh,ru", "mlqa": "en,de,ar,zh", "tydiqa": "en,ar,ko,ru", "bucc2018": "de,ru,zh",
         "tatoeba": "de,ar,zh,ru"}
MODELS = {"enc": ("none", (), None, ("bucc2018", "tatoeba")),
          "xnli": ("sequence", X.XNLI_LABELS, "xnli", ("xnli",)),
          "pawsx": ("sequence", X.PAWSX_LABELS, "pawsx", ("pawsx",)),
          "udpos": ("token", X.UDPOS_LABELS, "udpos", ("udpos",)),
          "panx": ("token", X.PANX_LABELS, "panx", ("panx",)),
          "qa": ("span", (), "squad", ("xquad", "mlqa", "tydiqa"))}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def variants(tmp_path_factory) -> dict[str, Path]:
    """fp32 variants of one tiny encoder (2 layers, hidden 16: the 250k-row embedding of the real e5
    tokenizer dominates the files) with each head."""
    if not HAVE_DEMO:
        pytest.skip("needs the e5 tokenizer from the `demo` extra")
    import torch
    from transformers import BertConfig, BertModel

    from xopt.importers.e5 import e5_tokenizer
    from xopt.modeling import ModelCard, build_module, save_checkpoint
    from xopt.variants import compile_variant

    root = tmp_path_factory.mktemp("xtreme-models")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=250037, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=512, type_vocab_size=2, pad_token_id=1)
    enc = BertModel(cfg, add_pooling_layer=False).eval()
    tok = e5_tokenizer()
    out = {}
    for name, (head, labels, task, _) in MODELS.items():
        card = ModelCard(input_prefix="query: ", labels=list(labels), task=task, head=head, max_length=512)
        ckpt = save_checkpoint(build_module(enc, card), tok, card, root / "ckpt" / name, {"kind": "test"},
                               manifest_extra={"name": f"tiny-{name}", "base_model": "tiny"})
        compile_variant(ckpt, "fp32", root / name)
        out[name] = root / name
    compile_variant(root / "ckpt" / "enc", "int8-dynamic", root / "enc-int8")
    out["enc-int8"] = root / "enc-int8"
    return out


@pytest.fixture(scope="session")
def all_records(variants, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("xtreme-results") / "r.jsonl"
    for name, (_, _, _, tasks) in MODELS.items():
        langs = ",".join(dict.fromkeys(lang for t in tasks for lang in LANGS[t].split(",")))
        res = run("eval", variants[name], "--suite", "xtreme", "--data", FIX, "--tasks", ",".join(tasks),
                  "--langs", langs, "--out", out)
        assert res.exit_code == 0, res.output
    recs, _ = records.read([out], strict=True)
    return out, recs


def test_all_nine_tasks_write_valid_records(all_records):
    _, recs = all_records
    assert {r["task"] for r in recs} == set(X.EVAL_TASKS)
    for task in X.EVAL_TASKS:
        rows = [r for r in recs if r["task"] == task and r["lang"] != "avg"]
        assert sorted(r["lang"] for r in rows) == sorted(LANGS[task].split(",")), task
        for r in rows:
            data = X.load(task, r["lang"], "test", FIX)
            n = len(data.gold) if task == "bucc2018" else len(data)
            assert r["n_examples"] == n and r["metric"] == X.TASKS[task].metric and r["suite"] == "xtreme"
            assert 0 <= r["value"] <= 100 and r["examples_per_s"] > 0
            if r["outcome_kind"] == "mean":   # the report's bootstrap resamples these
                assert len(r["outcomes"]) == n and np.mean(r["outcomes"]) * 100 == pytest.approx(r["value"])
            else:
                from xopt.tasks.tagging import f1

                assert f1(np.array(r["counts"])) == pytest.approx(r["value"])
        avg = [r for r in recs if r["task"] == task and r["lang"] == "avg"]
        assert len(avg) == 1 and avg[0]["value"] == pytest.approx(np.mean([r["value"] for r in rows]))
        assert avg[0]["n_examples"] == sum(r["n_examples"] for r in rows)
    bucc = [r for r in recs if r["task"] == "bucc2018" and r["lang"] != "avg"]
    assert all(r["threshold_from"] == "fp32 dev" for r in bucc)
    # retrieval: XTREME's protocol by default (mean of the middle layer, 1 of 2), said in every record
    for r in recs:
        got = (r.get("retrieval_layer"), r.get("num_layers"), r.get("pooling"))
        assert got == ((1, 2, "mean") if r["task"] in ("bucc2018", "tatoeba") else (None, None, None)), r["task"]
    qa = [r for r in recs if r["task"] == "mlqa" and r["lang"] != "avg"]
    assert all(r["normalisation"] == "mlqa" and len(r["em_outcomes"]) == r["n_examples"] for r in qa)


def test_every_head_is_measured_batch_invariant_in_fp32(all_records):
    """Every record of an XTREME eval carries the batch-invariance probe of its run (on the first
    task's sequences); fp32 of every head, per-token outputs included, is invariant."""
    _, recs = all_records
    heads = {}
    for r in recs:
        bi = r["batch_invariance"]
        heads.setdefault(r["model"], set()).update(bi["outputs"])
        assert bi["invariant"] and bi["activation_scales"] is None and bi["batch"] >= 2, (r["model"], r["task"])
        assert max(o["max_abs_diff"] for o in bi["outputs"].values()) <= 1e-5
    outputs = set().union(*heads.values())
    assert {"logits", "token_logits", "start_logits", "end_logits", "sentence_embedding"} <= outputs


def test_retrieval_layer_last_scores_the_last_layer(variants, tmp_path, monkeypatch):
    from xopt.tasks.families import RetrievalFamily

    seen = []
    real = RetrievalFamily.evaluate

    def spy(self, task, *a, **kw):
        seen.append((task.name, kw.get("output")))
        return real(self, task, *a, **kw)

    monkeypatch.setattr(RetrievalFamily, "evaluate", spy)
    out = tmp_path / "r.jsonl"
    res = run("eval", variants["enc"], "--suite", "xtreme", "--data", FIX, "--tasks", "tatoeba", "--langs", "de",
              "--retrieval-layer", "last", "--out", out)
    assert res.exit_code == 0, res.output
    recs, _ = records.read([out], strict=True)
    assert {(r["lang"], r["retrieval_layer"], r["num_layers"]) for r in recs} == {("de", 2, 2), ("avg", 2, 2)}
    assert seen == [("tatoeba", "sentence_embedding")]
    assert "outputs the mean-pooled layers 1 and 2 only" in one_line_error(
        run("eval", variants["enc"], "--suite", "xtreme", "--data", FIX, "--tasks", "tatoeba", "--langs", "de",
            "--retrieval-layer", "0"))


def test_bucketing_restores_order(variants):
    from xopt.evaluate import evaluate_xtreme

    def outcomes(bs):
        recs = evaluate_xtreme(variants["panx"], FIX, ["panx"], ["de", "ja"], batch_size=bs)
        return [(r["lang"], r.get("counts")) for r in recs]

    assert outcomes(1) == outcomes(64)


def test_bucc_threshold_comes_from_the_reference(variants, all_records, tmp_path):
    ref_file, recs = all_records
    out = tmp_path / "int8.jsonl"
    msg = one_line_error(run("eval", variants["enc-int8"], "--suite", "xtreme", "--data", FIX, "--tasks", "bucc2018",
                             "--langs", "de", "--out", out))
    assert "--bucc-threshold-from" in msg and not out.exists()
    ref = [r for r in recs if r["task"] == "bucc2018" and r["lang"] == "de"][0]
    assert ref["model"] == "tiny-enc" and ref["variant"] == "fp32"
    res = run("eval", variants["enc-int8"], "--suite", "xtreme", "--data", FIX, "--tasks", "bucc2018", "--langs", "de",
              "--bucc-threshold-from", ref_file, "--out", out)
    assert res.exit_code == 0, res.output
    got = [json.loads(x) for x in out.read_text().splitlines()][0]
    assert got["threshold"] == ref["threshold"] and got["threshold_from"].startswith("records:")


def test_bad_input_one_line_and_no_results_file(variants, tmp_path):
    out = tmp_path / "r.jsonl"
    ev = ("eval", "--suite", "xtreme", "--out", out)
    assert "xnli needs a 'sequence' head" in one_line_error(run(ev[0], variants["enc"], *ev[1:], "--data", FIX,
                                                                "--tasks", "xnli"))
    assert "needs a head over its labels" in one_line_error(run(ev[0], variants["xnli"], *ev[1:], "--data", FIX,
                                                                "--tasks", "pawsx"))
    assert "unknown XTREME task 'nli'" in one_line_error(run(ev[0], variants["xnli"], *ev[1:], "--data", FIX,
                                                              "--tasks", "nli"))
    assert "language code(s) xx" in one_line_error(run(ev[0], variants["xnli"], *ev[1:], "--data", FIX,
                                                        "--langs", "de,xx"))
    assert "xnli/test-hi.tsv: missing xnli test file" in one_line_error(
        run(ev[0], variants["xnli"], *ev[1:], "--data", FIX, "--langs", "de,hi"))
    bad = tmp_path / "data"
    shutil.copytree(FIX / "xnli", bad / "xnli")
    with open(bad / "xnli" / "test-zh.tsv", "a") as f:
        f.write("孩子们在睡觉。\t孩子们在跑步。\tmaybe\n")
    assert "xnli/test-zh.tsv:4: label 'maybe'" in one_line_error(
        run(ev[0], variants["xnli"], *ev[1:], "--data", bad, "--langs", "de,zh"))
    assert "--suite xtreme needs --data" in one_line_error(run("eval", variants["xnli"], "--suite", "xtreme"))
    assert not out.exists()


def test_sharded_over_two_processes(variants, all_records, tmp_path):
    _, recs = all_records
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "XOPT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "xopt.cli", "eval", str(variants["enc"]), "--suite", "xtreme", "--data", str(FIX),
                           "--tasks", "tatoeba", "--langs", LANGS["tatoeba"], "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(tmp_path.glob("r.rank*-of-2.jsonl"))
    assert [f.name for f in files] == ["r.rank0-of-2.jsonl", "r.rank1-of-2.jsonl"] and not out.exists()
    parts = [records.read([f], strict=True)[0] for f in files]
    langs = [{r["lang"] for r in p if r["lang"] != "avg"} for p in parts]
    assert langs[0] and langs[1] and not langs[0] & langs[1]
    merged = {r["lang"]: r["value"] for p in parts for r in p}
    single = {r["lang"]: r["value"] for r in recs if r["task"] == "tatoeba"}
    assert merged == pytest.approx(single)          # same numbers as one process, avg included
    assert any(r["lang"] == "avg" for r in parts[0]) and all(r["lang"] != "avg" for r in parts[1])


def test_killed_eval_keeps_finished_units_and_resume_runs_only_the_rest(variants, tmp_path, monkeypatch):
    from xopt import evaluate as E

    args = ("eval", variants["xnli"], "--suite", "xtreme", "--data", FIX, "--tasks", "xnli", "--langs", "en,de,zh")
    full = tmp_path / "full.jsonl"
    assert run(*args, "--out", full).exit_code == 0
    real, ran = E._score_unit, []

    def killed_after_one_unit(loaded, tok, task, lang, *a):
        if ran:
            raise RuntimeError("killed")
        ran.append(lang)
        return real(loaded, tok, task, lang, *a)

    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(E, "_score_unit", killed_after_one_unit)
    res = run(*args, "--out", out)
    assert isinstance(res.exception, RuntimeError)
    kept, _ = records.read([out], strict=True)
    first = ran[0]
    assert [(r["task"], r["lang"]) for r in kept] == [("xnli", first)]     # the finished unit is on disk

    def counted(loaded, tok, task, lang, *a):
        ran.append(lang)
        return real(loaded, tok, task, lang, *a)

    ran.clear()
    monkeypatch.setattr(E, "_score_unit", counted)
    res = run(*args, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert sorted(ran) == sorted({"en", "de", "zh"} - {first})
    assert (f"resume: {out} already holds 1 of 3 units of tiny-xnli/fp32 (xnli:{first}); skipping them, "
            "evaluating 2") in " ".join(res.output.split())

    def units(path):
        return sorted((r["task"], r["lang"], r["split"], r["suite"], round(r["value"], 6))
                      for r in records.read([path], strict=True)[0])

    assert units(out) == units(full)
    ran.clear()
    res = run(*args, "--out", out, "--resume")          # nothing left: no model run, nothing appended
    assert res.exit_code == 0 and ran == [] and units(out) == units(full)
    assert "already holds 3 of 3 units" in res.output
    assert "--resume needs --out" in one_line_error(run(*args, "--resume"))
