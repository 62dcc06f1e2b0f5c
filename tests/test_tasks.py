"""The task registry: every registered task resolves to a family, and each trainable family's
features -> collate -> decode -> score round-trips on the fixtures (gold outputs in, a perfect
score out); `texts` is what the model reads for length mixes and calibration."""

from pathlib import Path

import numpy as np
import pytest

from conftest import needs_demo
from xopt.errors import XoptError
from xopt.tasks import registry

FIX = Path(__file__).parent / "fixtures"
DATA = {"root": str(FIX / "intermediate")}
XDATA = {"root": str(FIX / "xtreme")}


def test_every_task_resolves_to_a_family():
    from xopt.modeling import HEADS
    from xopt.tasks import demo, intermediate, xtreme

    names = registry.names()
    assert len(names) == len(set(names))
    expected = set(intermediate.TASKS) | {"mlm", *demo.TASKS, demo.INTERMEDIATE} | (set(xtreme.TASKS) - {"squad"})
    assert set(names) == expected
    for n in names:
        fam = registry.family_of(n)
        assert isinstance(fam, registry.TaskFamily) and fam.head in HEADS, n
        assert registry.task(n).family == fam.name
    for n, t in xtreme.TASKS.items():          # the model head XTREME evaluates with is the family's
        assert registry.family(t.kind).head == t.head, n
    assert set(registry.names(trainable=False)) == {"bucc2018", "tatoeba", demo.RETRIEVAL}
    with pytest.raises(XoptError, match="unknown task 'nope'"):
        registry.family_of("nope")
    with pytest.raises(XoptError, match="unknown task family"):
        registry.family("ranker")


def test_every_family_implements_the_protocol_s_signatures():
    """`isinstance` on a runtime Protocol checks only that the names exist; this compares, for
    every registered family and every Protocol method, the implementation's parameters (names,
    kinds, order and defaults) with the Protocol's, as callers use them."""
    import inspect

    proto = {n: f for n, f in vars(registry.TaskFamily).items() if inspect.isfunction(f) and not n.startswith("_")}
    assert {"score", "decode", "features", "evaluate", "prepare", "scoring_note"} <= set(proto)

    def params(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    assert registry.FAMILIES
    wrong = [f"{fam.name}.{name}{inspect.signature(getattr(type(fam), name))} != Protocol{inspect.signature(f)}"
             for fam in registry.FAMILIES.values() for name, f in proto.items()
             if params(getattr(type(fam), name)) != params(f)]
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def tok():
    from xopt.importers.e5 import e5_tokenizer

    return e5_tokenizer()


def _gold_outputs(fam, task, feats):
    """Per feature, the head outputs a perfect model would give (one-hot on the targets)."""
    outs = []
    for f in feats:
        n = len(f["input_ids"])
        if fam.name == "choice":
            outs.append([np.eye(len(f["input_ids"]))[f["label"]]])
        elif "label" in f:
            outs.append([np.eye(len(task.labels))[f["label"]]])
        elif "tags" in f:
            logits = np.zeros((n, len(task.labels)))
            for i, t in enumerate(f["tags"]):
                if t != -100:
                    logits[i, t] = 1.0
            outs.append([logits])
        else:
            start, end = np.zeros(n), np.zeros(n)
            start[f["start"]], end[f["end"]] = 10.0, 10.0
            outs.append([start, end])
    return outs


def _stage():
    from xopt.train import Stage

    return Stage("x", mlm=[str(FIX / "intermediate" / "mono" / "de.txt")])


@needs_demo
@pytest.mark.parametrize("name", ["mnli", "sst2", "ccg", "squad", "hellaswag", "xnli", "udpos", "panx", "xquad"])
def test_family_round_trip(tok, name):
    entry = registry.task(name)
    task = entry.load(name, XDATA if entry.suite == "xtreme" else DATA, _stage())
    fam = registry.family(task.kind)
    examples = task.train[:6]
    feats = fam.features(task, examples, tok, "query: ", 128)
    batch = fam.collate(task, feats, np.arange(len(feats)), tok, 0, 0)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    rows = len(feats) * (len(feats[0]["input_ids"]) if fam.name == "choice" else 1)
    assert batch["input_ids"].shape[0] == rows
    assert [fam.length(f) for f in feats] and all(fam.length(f) > 0 for f in feats)
    preds = fam.decode(task, examples, feats, _gold_outputs(fam, task, feats))
    sums = fam.score(task, examples, feats, preds)
    if task.metric == "f1":                                    # [tp, fp, fn]
        assert sums[0] > 0 and sums[1] == sums[2] == 0
    else:                                                      # [correct, total] or [sum of F1, n]
        assert sums[1] > 0 and sums[0] == pytest.approx(sums[1])
    head = fam.head_for(task, vocab=len(tok))
    assert head.kind == fam.head


@needs_demo
def test_mlm_collate_masks_and_labels_real_tokens(tok):
    task = registry.task("mlm").load("mlm", DATA, _stage())
    fam = registry.family(task.kind)
    feats = fam.features(task, task.train, tok, "", 64)
    batch = fam.collate(task, feats, np.arange(len(feats)), tok, seed=3, step=1)
    pos = batch["mlm_positions"]
    assert pos.any() and len(batch["mlm_labels"]) == int(pos.sum())
    originals = [feats[r]["input_ids"][c] for r, c in pos.nonzero().tolist()]
    assert batch["mlm_labels"].tolist() == originals
    assert not (set(originals) & set(tok.all_special_ids))
    again = fam.collate(task, feats, np.arange(len(feats)), tok, seed=3, step=1)
    assert (again["input_ids"] == batch["input_ids"]).all()          # a function of (seed, step, example)


def test_texts_are_what_the_model_reads():
    """`family.texts(examples)`: the length-mix text of every XTREME task (a sentence pair stays a
    pair so it is tokenised with its separators); `joined=True`: one calibration string each."""
    from xopt.tasks import xtreme

    expect = {
        "sequence": lambda d: [(e["text_a"], e["text_b"]) if e.get("text_b") else e["text_a"] for e in d],
        "token": lambda d: [" ".join(e["tokens"]) for e in d],
        "span": lambda d: [(e["question"], e["context"]) for e in d],
        "retrieval": lambda d: list(d.src),
    }
    for name in xtreme.EVAL_TASKS:
        t = xtreme.TASKS[name]
        lang = "ar" if name == "tydiqa" else "de"
        data = xtreme.load(t, lang, "test", FIX / "xtreme")
        fam = registry.family_of(name)
        assert fam.texts(data) == expect[fam.name](data), name
        joined = fam.texts(data, joined=True, lang=lang)
        assert all(isinstance(x, str) for x in joined) and len(joined) == len(fam.texts(data))
        if fam.name != "retrieval":
            assert joined == [xtreme.example_text(t, e) for e in data]
