"""The training/eval features of the XTREME families (training and evaluation share them): first-sub-token
labels, QA windows with answer positions, pair encoding; decoding inverts them."""

from pathlib import Path

import numpy as np
import pytest

from conftest import HAVE_DEMO
from xopt.tasks import classify, qa, tagging
from xopt.tasks import xtreme as X

FIX = Path(__file__).parent / "fixtures" / "xtreme"
pytestmark = pytest.mark.skipif(not HAVE_DEMO, reason="needs the e5 tokenizer from the `demo` extra")


@pytest.fixture(scope="module")
def tok():
    from xopt.importers.e5 import e5_tokenizer

    return e5_tokenizer()


@pytest.mark.parametrize("max_length", [128, 9])   # 9: sentences cut into chunks of whole words
def test_tagging_first_subtoken_labels_round_trip(tok, max_length):
    labels = X.PANX_LABELS
    for lang in ("de", "ru", "ja"):
        exs = X.load("panx", lang, "test", FIX)
        feats = tagging.features(exs, tok, labels, max_length, "query: ")
        assert all(len(f["input_ids"]) <= max_length for f in feats)
        for f in feats:
            labelled = [i for i, lab in enumerate(f["label_ids"]) if lab != -100]
            assert labelled == f["first"] and len(f["first"]) == len(f["words"])
            assert [labels[f["label_ids"][i]] for i in f["first"]] == [exs[f["example"]]["tags"][w] for w in f["words"]]
        if max_length == 9:
            assert len(feats) > len(exs)
        logits = [np.eye(len(labels))[np.maximum(f["label_ids"], 0)] for f in feats]   # one-hot gold
        assert tagging.decode(feats, logits, len(exs), labels) == [e["tags"] for e in exs]


def test_qa_windows_and_answer_positions(tok):
    ctx = ("".join(f"Filler sentence number {i}. " for i in range(20)) + "The tower was completed in 1889 by "
           "Gustave Eiffel. " + "".join(f"Filler sentence number {i}. " for i in range(20, 40)))
    ex = [{"id": "q", "question": "Who completed the tower?", "context": ctx,
           "answers": [{"text": "Gustave Eiffel", "answer_start": ctx.index("Gustave Eiffel")}]}]
    feats = qa.features(ex, tok, max_length=48, doc_stride=16, prefix="query: ")
    assert len(feats) > 3 and all(len(f["input_ids"]) <= 48 for f in feats)
    inside = [f for f in feats if f["start_position"]]
    assert inside and any(f["start_position"] == 0 == f["end_position"] for f in feats)
    for f in inside:
        s, e = f["offsets"][f["start_position"]], f["offsets"][f["end_position"]]
        assert ctx[s[0]:e[1]].strip() == "Gustave Eiffel"
    # consecutive windows start doc_stride context tokens apart and cover the whole context
    firsts = [next(i for i, o in enumerate(f["offsets"]) if o) for f in feats]
    starts = [f["offsets"][i][0] for f, i in zip(feats, firsts)]
    assert starts == sorted(starts) and feats[-1]["offsets"][-2][1] >= len(ctx.rstrip())
    start_logits = [np.zeros(len(f["input_ids"])) for f in feats]
    end_logits = [np.zeros(len(f["input_ids"])) for f in feats]
    # the window where the answer's first token has the most context (only there can it start an answer)
    f0 = next(feats.index(f) for f in inside if f["max_context"][f["start_position"]])
    start_logits[f0][feats[f0]["start_position"]] = 9
    end_logits[f0][feats[f0]["end_position"]] = 9
    assert qa.decode(feats, start_logits, end_logits, ex) == ["Gustave Eiffel"]
    # an answer longer than max_answer_length tokens is never proposed
    assert qa.decode(feats, start_logits, end_logits, ex, max_answer_length=1) != ["Gustave Eiffel"]


def test_qa_max_context_as_bert_reference():
    """BERT's own example (run_squad.py): "the man went to the store and bought a gallon of milk" in
    spans A = tokens 0-4, B = 3-7, C = 6-10: 'bought' (7) has 4 left, 0 right context in B and 1 left,
    3 right in C, so C is its max-context span; equal scores go to the earlier span."""
    spans = [(0, 5), (3, 5), (6, 5)]
    assert [qa.is_max_context(spans, w, 7) for w in range(3)] == [False, False, True]
    assert [qa.is_max_context(spans, w, 4) for w in range(3)] == [False, True, False]
    assert [qa.is_max_context(spans, w, 0) for w in range(3)] == [True, False, False]
    assert [qa.is_max_context([(0, 4), (2, 4)], w, 3) for w in range(2)] == [False, True]
    assert [qa.is_max_context([(0, 4), (1, 6)], w, 2) for w in range(2)] == [False, True]   # min 1 each: 0.01 x length
    assert [qa.is_max_context([(0, 5), (2, 5)], w, 3) for w in range(2)] == [True, False]   # equal scores: earlier


def test_qa_decode_uses_only_max_context_starts(tok):
    """A long context in overlapping windows: a start token near the edge of one window (little
    context on that side) is not an answer there, only in the window where it has the most context
    (XTREME's run_squad.py: `token_is_max_context`). Here the edge window's span scores higher, so
    ignoring the rule gives a different answer."""
    ctx = ("".join(f"Filler sentence number {i}. " for i in range(20)) + "The tower was completed in 1889 by "
           "Gustave Eiffel. " + "".join(f"Filler sentence number {i}. " for i in range(20, 40)))
    ex = [{"id": "q", "question": "Who completed the tower?", "context": ctx,
           "answers": [{"text": "Gustave Eiffel", "answer_start": ctx.index("Gustave Eiffel")}]}]
    feats = qa.features(ex, tok, max_length=48, doc_stride=16, prefix="query: ")
    assert len(feats) > 5
    # every context token is max-context in exactly one window
    starts = {}
    for w, f in enumerate(feats):
        for pos, (o, m) in enumerate(zip(f["offsets"], f["max_context"])):
            assert m is False or o is not None
            if o is not None:
                starts.setdefault(o, []).append((w, pos, m))
    assert all(sum(m for _, _, m in v) == 1 for v in starts.values())
    # the answer's windows; in one of them its first token is not max-context (near that window's edge)
    inside = [(w, f) for w, f in enumerate(feats) if f["start_position"]]
    edge = [(w, f) for w, f in inside if not f["max_context"][f["start_position"]]]
    best = [(w, f) for w, f in inside if f["max_context"][f["start_position"]]]
    assert edge and len(best) == 1
    (we, fe), (wb, fb) = edge[0], best[0]
    start_logits = [np.zeros(len(f["input_ids"])) for f in feats]
    end_logits = [np.zeros(len(f["input_ids"])) for f in feats]
    # edge window: a confident span starting at the answer's first token, one token short
    start_logits[we][fe["start_position"]], end_logits[we][fe["start_position"]] = 12, 12
    # max-context window: the whole answer, less confident
    start_logits[wb][fb["start_position"]], end_logits[wb][fb["end_position"]] = 9, 9
    assert qa.decode(feats, start_logits, end_logits, ex) == ["Gustave Eiffel"]
    without = [{k: v for k, v in f.items() if k != "max_context"} for f in feats]
    short = qa.decode(without, start_logits, end_logits, ex)
    assert short != ["Gustave Eiffel"] and "Gustave Eiffel".startswith(short[0])


def test_pair_classification_features(tok):
    exs = X.load("xnli", "ar", "test", FIX)
    f = classify.features(exs, tok, X.XNLI_LABELS, 128, "query: ")
    assert f["label_ids"] == [X.XNLI_LABELS.index(e["label"]) for e in exs]
    text = tok.decode(f["input_ids"][0])
    assert text.startswith("<s> query:") and exs[0]["text_b"] in text and text.count("</s>") == 3
