"""The task families (xopt.tasks.registry.TaskFamily): one class per kind of task.

| family | head | examples (training form; XTREME form where it differs) |
|---|---|---|
| `sequence` | SequenceHead | {"text", "text_pair"?, "label"}; XTREME classify: {"text_a", "text_b", "label"} |
| `choice` | ChoiceHead (HF's *ForMultipleChoice), 1 output | {"first", "choices", "label"}: (first, choice) pairs scored, softmax over choices |
| `token` | TokenHead | {"tokens", "tags"}: first sub-token of each word tagged, other positions -100 |
| `span` | SpanHead | SQuAD v1.1: {"id", "question", "context", "answers"}: windows with doc stride |
| `mlm` | TokenHead tied to the word embeddings | {"text"}: masked at batch time (BERT's 80/10/10) |
| `retrieval` | none | xtreme.Bitext (BUCC mining, Tatoeba); demo: {"text", "source"} translation pairs |

Training (xopt.trainloop) uses `features`, `length`, `collate`, `loss`, `rows`, `decode` and
`score` (summable dev statistics); zero-shot evaluation (xopt.evaluate) uses `prepare` (what a
task's units need besides their data, before the model runs: BUCC's dev-chosen threshold),
`evaluate` (one XTREME task and language; the demo's retrieval task too, as Tatoeba) and
`demo_outcomes` (the demo's classification task); the report describes a retrieval protocol
with `scoring_note`; bench length mixes and calibration use `texts`.
"""

from __future__ import annotations

import numpy as np

from xopt.errors import XoptError
from xopt.tasks.registry import register_family

# XTREME's settings (run_classify.py / run_tag.py: 128 tokens; run_squad.py: 384, doc stride 128,
# 64 query tokens, 20-best, answers of at most 30 tokens; retrieval: the model's maximum)
QA_DOC_STRIDE = 128


def _padded(feats, idx, tok):
    from xopt.batching import pad

    return pad([feats[i]["input_ids"] for i in idx], tok.pad_token_id)


def _tensors(ids, mask) -> dict:
    import torch

    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


class Family:
    """Defaults shared by the families; each subclass sets the class attributes."""

    name = ""
    head = "none"
    metric = "accuracy"
    trainable = True
    target = True
    frozen_features = False
    ties_embeddings = False     # the head's weight is the encoder's word-embedding matrix (frozen)
    skips_english = False       # demo: English -> English has nothing to measure
    scores_embedding = False    # scored on the sentence embedding `--retrieval-layer` chooses (no head)
    xtreme_max_length = 128

    def head_for(self, task, vocab: int = 0):
        from xopt.modeling import HEAD_CLASSES

        return HEAD_CLASSES[self.head](len(task.labels))

    def label_summary(self, labels: list):
        """What a run's resolved.json shows of a task's labels."""
        return labels

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        raise XoptError(f"task {task.name}: a {self.name} task has no training features")

    def length(self, feature: dict) -> int:
        return len(feature["input_ids"])

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        return _tensors(*_padded(feats, idx, tok))

    def loss(self, forward, batch):
        raise XoptError(f"a {self.name} task has no training loss")

    def rows(self, outputs: list, n: int) -> list:
        """The head's output arrays of one batch, one row per example."""
        return outputs

    def decode(self, task, examples, feats, outs):
        raise XoptError(f"task {task.name}: a {self.name} task has no dev predictions")

    def score(self, task, examples, feats, preds) -> list[float]:
        raise XoptError(f"task {task.name}: a {self.name} task has no dev score")

    def texts(self, examples, joined: bool = False, lang: str | None = None) -> list:
        raise XoptError(f"task family {self.name!r} has no text for a length mix")

    def prepare(self, task, langs: list, ctx) -> dict:
        """What scoring `task` on `langs` needs besides their data, checked before the model runs:
        {lang: a function, called when that unit is scored, that returns `evaluate`'s `threshold`};
        `ctx` is the run's registry.EvalContext. Most tasks need nothing."""
        return {}

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        raise XoptError(f"{task.name}: a {self.name} task is not evaluated zero-shot")

    def scoring_note(self, task) -> str:
        """How a task's records are scored, in words (the report's protocol notes)."""
        return f"scored by {task.metric}"

    def demo_outcomes(self, out: dict, examples: list, index: dict, labels: list) -> np.ndarray:
        raise XoptError(f"a {self.name} task is not a demo task")


class SequenceFamily(Family):
    name, head, frozen_features = "sequence", "sequence", True

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        pairs = [e.get("text_pair") for e in examples]
        firsts = [prefix + e["text"] for e in examples]
        enc = tokenizer(firsts, pairs if any(pairs) else None, truncation=True, max_length=max_length)
        return [{"input_ids": ids, "label": task.labels.index(e["label"])}
                for ids, e in zip(enc["input_ids"], examples)]

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        import torch

        out = super().collate(task, feats, idx, tok, seed, step)
        out["label"] = torch.tensor([feats[i]["label"] for i in idx])
        return out

    def loss(self, forward, batch):
        import torch.nn.functional as F

        return F.cross_entropy(forward(batch["input_ids"], batch["attention_mask"]).logits, batch["label"])

    def decode(self, task, examples, feats, outs):
        return np.array([o[0].reshape(-1).argmax() for o in outs])

    def score(self, task, examples, feats, preds) -> list[float]:
        gold = np.array([f["label"] for f in feats])
        return [float((preds == gold).sum()), float(len(gold))]

    def texts(self, examples, joined=False, lang=None) -> list:
        """Sentence pairs as (text, text) so that they are tokenised with their separators;
        `joined`: one string per example."""
        out = []
        for e in examples:
            a, b = e.get("text_a", e.get("text")), e.get("text_b", e.get("text_pair"))
            out.append(f"{a} {b or ''}".strip() if joined else (a, b) if b else a)
        return out

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        from xopt.tasks import classify

        f = classify.features(data, tokenizer, task.labels, min(self.xtreme_max_length, card.max_length),
                              card.input_prefix)
        oc = classify.outcomes(classify.predict(run(f["input_ids"])["logits"]), f["label_ids"])
        return classify.accuracy(oc), len(data), {"outcomes": oc.tolist(), "outcome_kind": "mean"}, len(data)

    def demo_outcomes(self, out, examples, index, labels) -> np.ndarray:
        logits = out["logits"][[index[e["text"]] for e in examples]]
        gold = np.array([labels.index(e["label"]) for e in examples])
        return (logits.argmax(1) == gold).astype(np.float64)


class ChoiceFamily(SequenceFamily):
    name, head, target, frozen_features = "choice", "choice", False, False

    def head_for(self, task, vocab: int = 0):
        from xopt.modeling import ChoiceHead

        return ChoiceHead()

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        feats = []
        for e in examples:
            enc = tokenizer([prefix + e["first"]] * len(e["choices"]), e["choices"], truncation=True,
                            max_length=max_length)
            feats.append({"input_ids": enc["input_ids"], "label": e["label"]})
        if len({len(f["input_ids"]) for f in feats}) > 1:
            raise XoptError(f"task {task.name}: examples have different numbers of choices")
        return feats

    def length(self, feature: dict) -> int:
        return len(feature["input_ids"][0])

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        import torch

        from xopt.batching import pad

        b = [feats[i] for i in idx]
        out = _tensors(*pad([s for f in b for s in f["input_ids"]], tok.pad_token_id))
        out["label"] = torch.tensor([f["label"] for f in b])
        return out

    def loss(self, forward, batch):
        import torch.nn.functional as F

        logits = forward(batch["input_ids"], batch["attention_mask"]).logits
        return F.cross_entropy(logits.view(len(batch["label"]), -1), batch["label"])

    def rows(self, outputs, n):
        return [outputs[0].reshape(n, -1)]

    def texts(self, examples, joined=False, lang=None) -> list:
        return [f"{e['first']} {c}" if joined else (e["first"], c) for e in examples for c in e["choices"]]

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        return Family.evaluate(self, task, lang, data, tokenizer, card, run, threshold, output)

    def demo_outcomes(self, out, examples, index, labels):
        return Family.demo_outcomes(self, out, examples, index, labels)


class TokenFamily(Family):
    name, head, metric = "token", "token", "f1"

    def label_summary(self, labels: list):
        return len(labels)     # tag sets (CCG supertags) run into the hundreds

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        from xopt.tasks import tagging   # XTREME's tagging features: first sub-token of each word, chunks

        return [{"input_ids": f["input_ids"], "tags": f["label_ids"], "example": f["example"], "first": f["first"]}
                for f in tagging.features(examples, tokenizer, task.labels, max_length, prefix)]

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        import torch

        ids, mask = _padded(feats, idx, tok)
        out = _tensors(ids, mask)
        tags = np.full(ids.shape, -100, dtype=np.int64)
        for r, i in enumerate(idx):
            tags[r, :len(feats[i]["tags"])] = feats[i]["tags"]
        out["tags"] = torch.from_numpy(tags)
        return out

    def loss(self, forward, batch):
        import torch.nn.functional as F

        out = forward(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(out.token_logits.flatten(0, 1), batch["tags"].flatten(), ignore_index=-100)

    def decode(self, task, examples, feats, outs):
        from xopt.tasks import tagging

        return tagging.decode(feats, [o[0] for o in outs], len(examples), task.labels)

    def score(self, task, examples, feats, preds) -> list[float]:
        """[tp, fp, fn] (seqeval F1) or [correct, total] words (accuracy), by the task's metric."""
        from xopt.tasks import tagging

        gold = [e["tags"] for e in examples]
        if task.metric == "f1":
            return [float(x) for x in tagging.sentence_counts(gold, preds).reshape(-1, 3).sum(0)]
        return [float(sum(p == g for ps, gs in zip(preds, gold) for p, g in zip(ps, gs))),
                float(sum(len(g) for g in gold))]

    def texts(self, examples, joined=False, lang=None) -> list:
        return [" ".join(e["tokens"]) for e in examples]

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        from xopt.tasks import tagging

        feats = tagging.features(data, tokenizer, task.labels, min(self.xtreme_max_length, card.max_length),
                                 card.input_prefix)
        out = run([f["input_ids"] for f in feats])
        pred = tagging.decode(feats, out["token_logits"], len(data), task.labels)
        counts = tagging.sentence_counts([e["tags"] for e in data], pred)
        return tagging.f1(counts), len(data), {"counts": counts.tolist(), "outcome_kind": "counts"}, len(feats)


class SpanFamily(Family):
    name, head, metric = "span", "span", "qa_f1"
    xtreme_max_length = 384

    def head_for(self, task, vocab: int = 0):
        from xopt.modeling import SpanHead

        return SpanHead(2)

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        from xopt.tasks import qa   # XTREME's QA features: question + context windows, doc stride

        return [{"input_ids": f["input_ids"], "start": f["start_position"], "end": f["end_position"],
                 "example": f["example"], "offsets": f["offsets"], "max_context": f["max_context"]}
                for f in qa.features(examples, tokenizer, max_length, min(doc_stride, max_length // 2), 64, prefix)]

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        import torch

        out = super().collate(task, feats, idx, tok, seed, step)
        out["start"] = torch.tensor([feats[i]["start"] for i in idx])
        out["end"] = torch.tensor([feats[i]["end"] for i in idx])
        return out

    def loss(self, forward, batch):
        import torch.nn.functional as F

        out = forward(batch["input_ids"], batch["attention_mask"])
        return (F.cross_entropy(out.start_logits, batch["start"]) + F.cross_entropy(out.end_logits, batch["end"])) / 2

    def decode(self, task, examples, feats, outs):
        from xopt.tasks import qa

        return qa.decode(feats, [o[0] for o in outs], [o[1] for o in outs], examples)

    def score(self, task, examples, feats, preds) -> list[float]:
        """[sum of SQuAD F1 of the decoded answers, questions]."""
        from xopt.tasks import qa

        f1 = [qa.scores(p, [a["text"] for a in e["answers"]])[0] for p, e in zip(preds, examples) if e["answers"]]
        return [float(sum(f1)), float(len(f1))]

    def texts(self, examples, joined=False, lang=None) -> list:
        return [f"{e['question']} {e['context']}" if joined else (e["question"], e["context"]) for e in examples]

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        from xopt.tasks import qa

        feats = qa.features(data, tokenizer, min(self.xtreme_max_length, card.max_length), QA_DOC_STRIDE, 64,
                            card.input_prefix)
        out = run([f["input_ids"] for f in feats])
        preds = qa.decode(feats, out["start_logits"], out["end_logits"], data)
        norm_lang = lang if task.name == "mlqa" else None
        sc = np.array([qa.scores(p, [a["text"] for a in e["answers"]], norm_lang) for p, e in zip(preds, data)])
        return (float(sc[:, 0].mean() * 100), len(data),
                {"outcomes": sc[:, 0].tolist(), "em_outcomes": sc[:, 1].tolist(),
                 "exact_match": float(sc[:, 1].mean() * 100), "outcome_kind": "mean",
                 "normalisation": "mlqa" if norm_lang else "squad-v1.1"}, len(feats))


class MlmFamily(Family):
    """Continued masked-language modelling on unlabelled text (intermediate stages only)."""

    name, head, target, ties_embeddings = "mlm", "token", False, True

    def head_for(self, task, vocab: int = 0):
        from xopt.modeling import TokenHead

        return TokenHead(vocab)

    def features(self, task, examples, tokenizer, prefix, max_length, doc_stride=64):
        enc = tokenizer([prefix + e["text"] for e in examples], truncation=True, max_length=max_length)
        return [{"input_ids": ids} for ids in enc["input_ids"]]

    def collate(self, task, feats, idx, tok, seed, step) -> dict:
        """BERT masking: 15% of real tokens; 80% <mask>, 10% random, 10% kept."""
        import torch

        ids, mask = _padded(feats, idx, tok)
        special = set(tok.all_special_ids)
        labels = np.full(ids.shape, -100, dtype=np.int64)
        for r, i in enumerate(idx):
            rng = np.random.RandomState([seed, step, int(i)])     # same masks on any number of ranks
            cand = [j for j, t in enumerate(feats[i]["input_ids"]) if t not in special]
            pick = [j for j in cand if rng.rand() < 0.15] or cand[:1]
            for j in pick:
                labels[r, j] = ids[r, j]
                u = rng.rand()
                ids[r, j] = tok.mask_token_id if u < 0.8 else rng.randint(len(tok)) if u < 0.9 else ids[r, j]
        lab = torch.from_numpy(labels)
        out = _tensors(ids, mask)
        out["mlm_positions"] = lab != -100
        out["mlm_labels"] = lab[lab != -100]
        return out

    def loss(self, forward, batch):
        import torch.nn.functional as F

        logits = forward(batch["input_ids"], batch["attention_mask"], mlm_positions=batch["mlm_positions"])
        return F.cross_entropy(logits, batch["mlm_labels"])

    def texts(self, examples, joined=False, lang=None) -> list:
        return [e["text"] for e in examples]


class RetrievalFamily(Family):
    """Sentence retrieval on the encoder's embeddings: no head, nothing to train."""

    name, trainable, skips_english, scores_embedding = "retrieval", False, True, True
    xtreme_max_length = None     # the model's maximum

    def texts(self, examples, joined=False, lang=None) -> list:
        """Bitext: the non-English side (and, for English calibration, the English side too)."""
        if hasattr(examples, "src"):
            return list(examples.src) + (list(examples.en) if joined and lang == "en" else [])
        return [e["text"] for e in examples]

    def prepare(self, task, langs, ctx) -> dict:
        """BUCC's threshold (XTREME's protocol): chosen on the task's `threshold_split` (dev) by the
        reference variant and read back from its records (`ctx.choices_from`) by every other
        variant; a variant without one is refused before the model runs. Tatoeba needs nothing."""
        split = task.threshold_split
        if split is None or not langs:
            return {}
        given = _reference_thresholds(task, ctx) if ctx.choices_from else {}
        src = "records:" + ",".join(map(str, ctx.choices_from or ()))
        out = {}
        for lang in langs:
            if lang in given:
                out[lang] = lambda v=given[lang]: {"value": v, "from": src}
            elif ctx.variant != ctx.reference:
                raise XoptError(f"{task.name} {lang}: variant {ctx.variant} is scored with the threshold the "
                                f"{ctx.reference} variant of model {ctx.model!r} chose on {split}; evaluate that "
                                "first and pass --bucc-threshold-from ITS_RESULTS.jsonl")
            else:
                ctx.load(task, lang, split)   # fail before running if the dev gold is missing
                out[lang] = lambda lang=lang: self._choose_threshold(task, lang, ctx)
        return out

    def _choose_threshold(self, task, lang, ctx) -> dict:
        """XTREME's bucc_optimize: mine the threshold split, pick the F1-optimal threshold on its gold pairs."""
        from xopt.tasks import retrieval

        dev = ctx.load(task, lang, task.threshold_split)
        emb = ctx.run(dev.src + dev.en, f"{task.name} {lang} {task.threshold_split} threshold")[ctx.output]
        cands = retrieval.mine(emb[:len(dev.src)], emb[len(dev.src):], k=4)
        return {"value": retrieval.optimal_threshold(cands, _gold_rows(dev)),
                "from": f"{ctx.variant} {task.threshold_split}"}

    def evaluate(self, task, lang, data, tokenizer, card, run, threshold=None, output=None) -> tuple:
        """BUCC (a task with a `threshold_split`: margin mining, F1 at `threshold`) or Tatoeba (xx ->
        en top-1 accuracy by cosine) on the variant's `output` embedding of both sides of the Bitext
        `data`: "layer_embedding" (None: the default; mean-pooled hidden states of the card's
        retrieval layer, by default the middle one: XTREME's protocol) or "sentence_embedding" (the
        last layer). The demo's retrieval task is scored by this same method, as Tatoeba."""
        from xopt.batching import tokenize
        from xopt.tasks import retrieval

        texts = data.src + data.en    # embeddings of both sides in one bucketed pass
        emb = run(tokenize(tokenizer, texts, card.input_prefix, card.max_length))[output or "layer_embedding"]
        src, en = emb[:len(data.src)], emb[len(data.src):]
        if task.threshold_split is None:
            oc = retrieval.tatoeba_outcomes(src, en)
            return float(oc.mean() * 100), len(oc), {"outcomes": oc.tolist(), "outcome_kind": "mean"}, len(texts)
        cands = retrieval.mine(src, en, k=4)
        counts = retrieval.bucc_counts(cands, threshold["value"], _gold_rows(data), len(data.src))
        nz = np.flatnonzero(counts.any(1))
        return (retrieval.f1(counts), len(data.gold),
                {"counts": counts[nz].tolist(), "count_units": nz.tolist(), "n_units": len(data.src),
                 "outcome_kind": "counts", "threshold": threshold["value"], "threshold_from": threshold["from"],
                 "margin": "ratio", "k": 4, "distractors": data.distractors}, len(texts))

    def scoring_note(self, task) -> str:
        if getattr(task, "threshold_split", None):
            return "mined as XTREME's BUCC"
        return "scored as XTREME's Tatoeba (xx -> en top-1 by cosine)"


def _gold_rows(data) -> set:
    """A Bitext's gold pairs as (src row, en row) indices."""
    s_index, e_index = {i: n for n, i in enumerate(data.src_ids)}, {i: n for n, i in enumerate(data.en_ids)}
    return {(s_index[s], e_index[e]) for s, e in data.gold}


def _reference_thresholds(task, ctx) -> dict[str, float]:
    """{lang: threshold} of the reference variant's `task` records of `ctx.model` in
    `ctx.choices_from`, measured under retrieval `ctx.protocol` (records that carry none, written
    before schema 2, count as any)."""
    from xopt import records

    recs, _ = records.read(ctx.choices_from, strict=True)
    out = {}
    for r in recs:
        if (r["kind"] == "eval" and r.get("suite") == ctx.suite and r["task"] == task.name and r["model"] == ctx.model
                and r["variant"] == ctx.reference and "threshold" in r
                and records.retrieval_protocol(r) in (None, ctx.protocol)):
            out[r["lang"]] = float(r["threshold"])
    return out


for _fam in (SequenceFamily(), ChoiceFamily(), TokenFamily(), SpanFamily(), MlmFamily(), RetrievalFamily()):
    register_family(_fam)
