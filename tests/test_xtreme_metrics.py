"""XTREME metrics against independent references: seqeval (NER/POS F1), torchmetrics' SQuAD
(QA F1/EM), hand-computed MLQA cases, hand-made embeddings for BUCC and Tatoeba."""

import numpy as np
import pytest

from xopt.tasks import qa, retrieval, tagging
from xopt.tasks.xtreme import PANX_LABELS, UDPOS_LABELS


def _random_tags(rng, labels, n_sent=60):
    gold, pred = [], []
    for _ in range(n_sent):
        n = int(rng.integers(1, 12))
        g = list(rng.choice(labels, n))
        p = [t if rng.random() < 0.6 else str(rng.choice(labels)) for t in g]
        gold.append([str(t) for t in g]); pred.append(p)
    return gold, pred


@pytest.mark.parametrize("labels", [PANX_LABELS, UDPOS_LABELS], ids=["panx", "udpos"])
def test_tagging_f1_matches_seqeval(labels):
    import warnings

    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        gold, pred = _random_tags(rng, labels)
        counts = tagging.sentence_counts(gold, pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # seqeval warns that POS tags are not IOB tags
            want = seqeval.f1_score(gold, pred) * 100
            p, r = seqeval.precision_score(gold, pred), seqeval.recall_score(gold, pred)
        assert tagging.f1(counts) == pytest.approx(want, abs=1e-9)
        tp, fp, fn = counts.sum(0)
        assert tp / (tp + fp) == pytest.approx(p) and tp / (tp + fn) == pytest.approx(r)
    assert tagging.f1(tagging.sentence_counts([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])) == 100.0


def test_qa_f1_em_match_torchmetrics_squad():
    from torchmetrics.text import SQuAD

    cases = [("1889", ["1889", "in 1889"]), ("The Eiffel Tower", ["Eiffel Tower"]), ("Gustave Eiffel's company", ["Gustave Eiffel"]),
             ("100 degrees", ["100 degrees Celsius"]), ("", ["Paris"]), ("paris!", ["Paris"]), ("a b c d", ["b c e"]),
             ("an apple", ["the apple", "apple pie"]), ("Rome", ["Paris"])]
    ours = np.array([qa.scores(p, golds) for p, golds in cases])
    metric = SQuAD()
    ref = metric(preds=[{"prediction_text": p, "id": str(i)} for i, (p, _) in enumerate(cases)],
                 target=[{"answers": {"answer_start": [0] * len(g), "text": g}, "id": str(i)}
                         for i, (_, g) in enumerate(cases)])
    assert ours[:, 0].mean() * 100 == pytest.approx(float(ref["f1"]), abs=1e-4)
    assert ours[:, 1].mean() * 100 == pytest.approx(float(ref["exact_match"]), abs=1e-4)


def test_mlqa_normalisation_hand_computed():
    # Chinese: characters are tokens (mixed segmentation), the middle dot is punctuation
    f1, em = qa.scores("古斯塔夫埃菲尔", ["古斯塔夫·埃菲尔的公司"], "zh")
    assert em == 0 and f1 == pytest.approx(2 * 1 * 0.7 / 1.7)            # 7 of 10 characters, all 7 predicted right
    assert qa.scores("在1889年", ["1889年"], "zh") == pytest.approx((0.8, 0.0))   # [在, 1889, 年] vs [1889, 年]
    assert qa.scores("在1889年", ["1889年"]) == (0.0, 0.0)                # SQuAD's whitespace tokens: no overlap
    # article languages: the language's own articles go, Unicode punctuation goes
    assert qa.scores("der Turm", ["Turm"], "de") == (1.0, 1.0)
    assert qa.scores("der Turm", ["Turm"]) == pytest.approx((2 / 3, 0.0))   # SQuAD keeps German articles
    assert qa.scores("«Berlin»", ["Berlin"], "de") == (1.0, 1.0)
    assert qa.scores("«Berlin»", ["Berlin"]) == (0.0, 0.0)
    assert qa.scores("la casa blanca", ["casa blanca"], "es") == (1.0, 1.0)
    assert qa.scores("البرج", ["برج"], "ar") == (1.0, 1.0)
    assert qa.mlqa_normalize("The Tower", "en") == "tower"


def _brute_force_mine(x, y, k):
    """LASER's ratio margin written out pair by pair (independent of retrieval.mine)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True); y = y / np.linalg.norm(y, axis=1, keepdims=True)
    cos = x @ y.T
    fx = [np.mean(sorted(cos[i], reverse=True)[:k]) for i in range(len(x))]
    fy = [np.mean(sorted(cos[:, j], reverse=True)[:k]) for j in range(len(y))]
    score = lambda i, j: cos[i, j] / ((fx[i] + fy[j]) / 2)  # noqa: E731
    props = []
    for i in range(len(x)):
        cands = sorted(range(len(y)), key=lambda j: -cos[i, j])[:k]
        j = max(cands, key=lambda j: score(i, j)); props.append((score(i, j), i, j))
    for j in range(len(y)):
        cands = sorted(range(len(x)), key=lambda i: -cos[i, j])[:k]
        i = max(cands, key=lambda i: score(i, j)); props.append((score(i, j), i, j))
    seen_i, seen_j, out = set(), set(), []
    for s, i, j in sorted(props, key=lambda p: -p[0]):
        if i not in seen_i and j not in seen_j:
            seen_i.add(i); seen_j.add(j); out.append((s, i, j))
    return out


def test_bucc_mining_threshold_and_f1():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 6)), rng.normal(size=(11, 6))
    got = retrieval.mine(x, y, k=4)
    want = _brute_force_mine(x, y, 4)
    assert [(i, j) for _, i, j in got] == [(i, j) for _, i, j in want]
    assert [s for s, _, _ in got] == pytest.approx([s for s, _, _ in want], rel=1e-5)
    # known answer: 3 translations among 4 source and 5 English sentences; source 3 has none
    e = np.eye(8)
    common = 0.5 * e[7]
    src = np.stack([e[0], e[1], e[2], e[3]]) + common
    en = np.stack([e[5], e[2] + 0.1 * e[6], e[0] + 0.1 * e[4], e[1] + 0.1 * e[6], 0.6 * e[3] + e[4]]) + common
    gold = {(0, 2), (1, 3), (2, 1)}
    cands = retrieval.mine(src, en, k=4)
    assert {(i, j) for _, i, j in cands} >= gold | {(3, 4)}
    t = retrieval.optimal_threshold(cands, gold)
    assert retrieval.f1(retrieval.bucc_counts(cands, t, gold, 4)) == pytest.approx(100.0)
    everything = retrieval.bucc_counts(cands, -np.inf, gold, 4)   # the spurious pair (3, 4) kept too
    assert everything[3].tolist() == [0, 1, 0] and everything.sum(0).tolist() == [3, 1, 0]
    assert retrieval.f1(everything) == pytest.approx(2 * 0.75 / 1.75 * 100)
    # XTREME's bucc_optimize on a hand-made candidate list: best F1 after the third candidate
    hand = [(5.0, 0, 0), (4.0, 1, 9), (3.0, 2, 2), (2.0, 3, 9)]
    assert retrieval.optimal_threshold(hand, {(0, 0), (2, 2), (4, 4)}) == pytest.approx(2.5)


def test_tatoeba_accuracy():
    en = np.eye(3)
    src = np.stack([en[0] + 0.1, en[1] + 0.2, en[0] + 0.05 * en[2]])   # the third one retrieves en[0]: wrong
    assert retrieval.tatoeba_outcomes(src, en).tolist() == [1.0, 1.0, 0.0]
