"""Token tagging (UD-POS, PAN-X): first-sub-token labelling, F1 as XTREME computes it (seqeval).

API (stable):
- `features(examples, tokenizer, labels, max_length=128, prefix="") -> list[dict]`, one feature
  per chunk of a sentence: {"input_ids": [int], "label_ids": [int], "example": i, "words": [w],
  "first": [position of each word's first sub-token]}.
  Each word is tokenised on its own (as `is_split_into_words`; a word with no sub-token becomes
  the unknown token, as XTREME's preprocessing does; the prefix is encoded without its trailing space); `label_ids` holds the word's tag id on its
  first sub-token and -100 on the other sub-tokens, the specials and the prefix; `words` lists the
  word index of each `first` position in order. Sentences longer than `max_length` are cut into
  consecutive chunks of whole words (as XTREME's `*_tokenize_preprocess`), so every word is
  predicted.
- `decode(feats, token_logits, n_examples, labels) -> list[list[str]]`: the tag of each word from
  the logits at its first sub-token.
- `entities(tags)`: chunks as seqeval's default (non-strict) mode finds them: for PAN-X the
  IOB2 entities; for UD-POS tags without a B-/I- prefix, runs of one tag (XTREME reports POS with
  seqeval's f1_score too).
- `sentence_counts(gold, pred) -> [tp, fp, fn]` per sentence; `f1(counts)` micro F1 in percent:
  the sums over sentences give exactly seqeval's corpus-level F1, and resampling sentences gives a
  bootstrap.
"""

from __future__ import annotations

import numpy as np

from xopt.tasks.xtreme import special_template


def features(examples: list[dict], tokenizer, labels, max_length: int = 128, prefix: str = "") -> list[dict]:
    index = {lab: i for i, lab in enumerate(labels)}
    words = [w for e in examples for w in e["tokens"]]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    prefix_ids = tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"] if prefix else []
    template = special_template(tokenizer)
    head, tail = template[:template.index(-1)], template[template.index(-1) + 1:]
    budget = max_length - len(head) - len(tail) - len(prefix_ids)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for words")
    off = len(head) + len(prefix_ids)
    feats, k = [], 0
    for ei, e in enumerate(examples):
        tags = e.get("tags")
        chunks = [[[], [], [], []]]   # per chunk: ids, label ids, word indices, first positions
        for wi in range(len(e["tokens"])):
            p = (pieces[k] or [tokenizer.unk_token_id])[:budget]
            k += 1
            if len(chunks[-1][0]) + len(p) > budget:
                chunks.append([[], [], [], []])
            ids, labs, words, first = chunks[-1]
            first.append(off + len(ids))
            ids += p
            labs += [index.get(tags[wi], -100) if tags else -100] + [-100] * (len(p) - 1)
            words.append(wi)
        for ids, labs, words, first in chunks:
            if words:
                feats.append({"input_ids": head + prefix_ids + ids + tail,
                              "label_ids": [-100] * off + labs + [-100] * len(tail),
                              "example": ei, "words": words, "first": first})
    return feats


def decode(feats: list[dict], token_logits: list[np.ndarray], n_examples: int, labels) -> list[list[str]]:
    out: list[list] = [[] for _ in range(n_examples)]
    for f, logits in zip(feats, token_logits):
        ids = np.asarray(logits)[f["first"]].argmax(-1)
        out[f["example"]] += [labels[i] for i in ids]
    return out


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) chunks as seqeval 1.x `get_entities` (default, prefix mode) finds them."""
    chunks, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.add((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag == "B" and tag in ("B", "S", "O"))
            or (prev_tag == "I" and tag in ("B", "S", "O"))
            or (prev_tag != "O" and prev_tag != "." and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S") and tag in ("E", "I"))
            or (prev_tag == "O" and tag in ("E", "I"))
            or (tag != "O" and tag != "." and prev_type != type_))


def sentence_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """[n_sentences, 3] int: true positives, false positives, false negatives per sentence."""
    out = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred)):
        ge, pe = entities(g), entities(p)
        tp = len(ge & pe)
        out[i] = (tp, len(pe) - tp, len(ge) - tp)
    return out


def f1(counts: np.ndarray) -> float:
    tp, fp, fn = np.asarray(counts).reshape(-1, 3).sum(0)
    if tp == 0:
        return 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return float(2 * p * r / (p + r) * 100)
