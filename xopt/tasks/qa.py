"""Extractive QA (XQuAD, MLQA, TyDiQA-GoldP; SQuAD v1.1 for English training): F1 / EM.

API (stable):
- `features(examples, tokenizer, max_length=384, doc_stride=128, max_query_length=64, prefix="")
  -> list[dict]`: sliding windows over the context, XTREME/BERT style: question (after `prefix`,
  cut to `max_query_length` tokens) + a window of context tokens in the tokenizer's pair template;
  consecutive windows start `doc_stride` context tokens apart. Each feature: {"input_ids",
  "example": i, "offsets": [(char_start, char_end) | None], "start_position", "end_position"}:
  `offsets` is None outside the context; start/end positions are the token positions of the first
  answer in this window, 0 (the CLS position) when it is not wholly inside (SQuAD v1.1 training);
  "max_context": per position, whether this window is the one where that context token has the
  most context (`is_max_context`; False outside the context).
- `is_max_context(windows, w, pos) -> bool`: BERT's / XTREME's `_check_is_max_context`: of the
  windows [(start, length)] that hold context token `pos`, the one with the largest
  min(left, right context) + 0.01 x length; ties go to the earlier window.
- `decode(feats, start_logits, end_logits, examples, n_best=20, max_answer_length=30)
  -> list[str]`: per example the best span over all its windows (n-best start x end candidates,
  end >= start, at most `max_answer_length` tokens, both inside the context, the start token in
  its max-context window as XTREME's run_squad.py / BERT's squad post-processing, where a feature
  carries "max_context"; score = start + end logit), as the text slice of the context.
- `squad_normalize(s)`, `mlqa_normalize(s, lang)`, `scores(pred, answers, lang=None) -> (f1, em)`
  per example (max over gold answers; MLQA's language-specific normalisation when `lang` is given:
  punctuation of every Unicode P* category, the language's articles, zh segmented into
  characters). Task F1/EM = mean of the per-example values x 100.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

import numpy as np

from xopt.tasks.xtreme import special_template


def features(examples: list[dict], tokenizer, max_length: int = 384, doc_stride: int = 128,
             max_query_length: int = 64, prefix: str = "") -> list[dict]:
    template = special_template(tokenizer, pair=True)
    qpos, cpos = template.index(-1), template.index(-2)
    n_special = len(template) - 2
    questions = tokenizer([prefix + e["question"] for e in examples], add_special_tokens=False)["input_ids"]
    contexts = tokenizer([e["context"] for e in examples], add_special_tokens=False, return_offsets_mapping=True)
    feats = []
    for ei, e in enumerate(examples):
        q = questions[ei][:max_query_length]
        c_ids, c_off = contexts["input_ids"][ei], contexts["offset_mapping"][ei]
        span = max_length - len(q) - n_special
        if span < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the context")
        a_tok = None
        if e.get("answers"):
            a = e["answers"][0]
            s, t = a["answer_start"], a["answer_start"] + len(a["text"])
            toks = [i for i, (cs, ce) in enumerate(c_off) if ce > s and cs < t]
            if toks:
                a_tok = (toks[0], toks[-1])
        windows, start = [], 0
        while True:
            n = min(span, len(c_ids) - start)
            windows.append((start, n))
            if start + n >= len(c_ids):
                break
            start += min(doc_stride, n)
        off0 = cpos - 1 + len(q)   # position of the first context token
        for w, (start, n) in enumerate(windows):
            ids = template[:qpos] + q + template[qpos + 1:cpos] + c_ids[start:start + n] + template[cpos + 1:]
            offsets = [None] * len(ids)
            max_context = [False] * len(ids)
            for j in range(n):
                offsets[off0 + j] = tuple(c_off[start + j])
                max_context[off0 + j] = is_max_context(windows, w, start + j)
            sp = ep = 0
            if a_tok and a_tok[0] >= start and a_tok[1] < start + n:
                sp, ep = off0 + a_tok[0] - start, off0 + a_tok[1] - start
            feats.append({"input_ids": ids, "example": ei, "offsets": offsets, "start_position": sp,
                          "end_position": ep, "max_context": max_context})
    return feats


def is_max_context(windows: list[tuple[int, int]], w: int, pos: int) -> bool:
    """Whether window `w` is where context token `pos` has the most context: a token near a
    window's edge has little context on that side, so its logits there are less reliable."""
    best, best_w = None, None
    for i, (start, n) in enumerate(windows):
        if start <= pos < start + n:
            score = min(pos - start, start + n - 1 - pos) + 0.01 * n
            if best is None or score > best:
                best, best_w = score, i
    return best_w == w


def decode(feats: list[dict], start_logits, end_logits, examples: list[dict], n_best: int = 20,
           max_answer_length: int = 30) -> list[str]:
    best: list[tuple[float, str]] = [(-np.inf, "") for _ in examples]
    for f, sl, el in zip(feats, start_logits, end_logits):
        sl, el, off = np.asarray(sl), np.asarray(el), f["offsets"]
        n = len(off)
        sl, el = sl[:n], el[:n]
        starts = np.argsort(-sl, kind="stable")[:n_best]
        ends = np.argsort(-el, kind="stable")[:n_best]
        ctx = examples[f["example"]]["context"]
        max_context = f.get("max_context")
        for s in starts:
            if off[s] is None or (max_context is not None and not max_context[s]):
                continue
            for t in ends:
                if off[t] is None or t < s or t - s + 1 > max_answer_length:
                    continue
                score = float(sl[s] + el[t])
                if score > best[f["example"]][0]:
                    best[f["example"]] = (score, ctx[off[s][0]:off[t][1]])
    return [text.strip() for _, text in best]   # SentencePiece offsets include the leading space


# --------------------------------------------------------------------------- metrics

def squad_normalize(s: str) -> str:
    """SQuAD v1.1: lower case, ASCII punctuation removed, English articles removed, whitespace collapsed."""
    s = "".join(ch for ch in s.lower() if ch not in _ASCII_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_ASCII_PUNCT = set(string.punctuation)


class _Punct:
    """MLQA's PUNCT set (every Unicode P* character, plus ASCII punctuation) as a membership test;
    building the set itself walks all 1.1M code points (2 s)."""

    def __contains__(self, ch: str) -> bool:
        return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


_PUNCT = _Punct()


MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b", "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b", "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال", "hi": None, "zh": None,
}


def _mixed_segmentation(text: str, punct) -> list[str]:
    out, buf = [], ""
    for ch in text:
        if re.search(r"[\u4e00-\u9fa5]", ch) or ch in punct:
            if buf:
                out += buf.split()
                buf = ""
            out.append(ch)
        else:
            buf += ch
    if buf:
        out += buf.split()
    return out


def mlqa_normalize(s: str, lang: str) -> str:
    """MLQA's official normalisation (mlqa_evaluation_v1.py) for answer language `lang`."""
    if lang not in MLQA_ARTICLES:
        raise ValueError(f"MLQA has no normalisation for language {lang!r}")
    punct = _PUNCT
    s = "".join(ch for ch in s.lower() if ch not in punct)
    if MLQA_ARTICLES[lang]:
        s = re.sub(MLQA_ARTICLES[lang], " ", s)
    toks = _mixed_segmentation(s, punct) if lang == "zh" else s.split()
    return " ".join(t for t in toks if t.strip())


def _f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(gold_toks)
    return 2 * p * r / (p + r)


def scores(pred: str, answers: list[str], lang: str | None = None) -> tuple[float, float]:
    """(F1, EM) of one prediction in [0, 1], max over the gold answers; `lang` = MLQA normalisation."""
    norm = (lambda s: mlqa_normalize(s, lang)) if lang else squad_normalize
    p = norm(pred)
    f1 = max(_f1(p.split(), norm(a).split()) for a in answers)
    em = max(float(p == norm(a)) for a in answers)
    return f1, em
