"""`xopt eval`: score a variant on a suite, per task and language, through its Runner only.

Every variant (eager, compiled, ONNX, int8, GPU) is evaluated by the same code: texts are
tokenised with the variant's tokenizer, sorted by length and padded per batch (little
padding waste), run, and put back in their original order, so results are deterministic
for a deterministic variant. Records keep per-example outcomes so that reports can
bootstrap confidence intervals on paired differences.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xopt import results
from xopt.errors import XoptError
from xopt.progress import bar
from xopt.tasks import demo


def tokenize(tokenizer, texts: list[str], prefix: str = "", max_length: int = 512) -> list[list[int]]:
    enc = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length,
                    add_special_tokens=True)
    return enc["input_ids"]


def pad(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def length_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first: memory peaks early)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_texts(loaded, texts: list[str], batch_size: int = 64, tokenizer=None, progress=None,
              description: str = "") -> dict[str, np.ndarray]:
    """Outputs of the variant for `texts`, in input order."""
    if not texts:
        raise XoptError("nothing to evaluate: empty text list")
    tok = tokenizer or loaded.tokenizer()
    card = loaded.card
    seqs = tokenize(tok, texts, card.input_prefix, card.max_length)
    batches = length_batches([len(s) for s in seqs], batch_size)
    out: dict[str, np.ndarray] = {}
    task = progress.add_task(description or loaded.runner.name, total=len(texts), rate="") if progress else None
    t0, done = time.perf_counter(), 0
    for idx in batches:
        ids, mask = pad([seqs[i] for i in idx], tok.pad_token_id)
        got = loaded.runner(ids, mask)
        for name, arr in got.items():
            if name not in out:
                out[name] = np.empty((len(texts),) + arr.shape[1:], dtype=np.float32)
            out[name][idx] = arr
        done += len(idx)
        if progress:
            progress.update(task, advance=len(idx), rate=f"{done / (time.perf_counter() - t0):.0f} ex/s")
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval_outcomes(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Tatoeba-style top-1 retrieval between aligned rows, both directions, by cosine.
    Outcome per pair: mean of (xx->en correct, en->xx correct)."""
    sim = normalize(tgt) @ normalize(src).T
    idx = np.arange(len(src))
    return ((sim.argmax(1) == idx).astype(np.float64) + (sim.argmax(0) == idx).astype(np.float64)) / 2


def eval_demo(loaded, suite: dict, tasks=demo.TASKS, langs=None, split: str = "test",
              batch_size: int = 64, max_examples: int | None = None) -> list[dict]:
    """Records for the demo suite's tasks on `langs` (default: all the suite has)."""
    unknown = [t for t in tasks if t not in demo.TASKS]
    if unknown:
        raise XoptError(f"unknown demo task(s) {', '.join(unknown)}; tasks: {', '.join(demo.TASKS)}")
    sets = suite["test"] if split == "test" else suite["shared"] if split == "shared" else None
    if sets is None:
        raise XoptError(f"unknown split {split!r} for the demo suite; use test or shared")
    langs = list(langs or sets)
    missing = [lang for lang in langs if lang not in sets]
    if missing:
        raise XoptError(f"language(s) {', '.join(missing)} not in the demo suite's {split} split; "
                        f"it has: {', '.join(sets)}")
    card = loaded.card
    target_labels = suite["tasks"][demo.TARGET]["labels"]
    if demo.TARGET in tasks and card.labels != target_labels:
        raise XoptError(f"{loaded.directory}: model has no {demo.TARGET} head (labels {card.labels or 'none'}); "
                        f"train one with `xopt train --target {demo.TARGET}` or evaluate --tasks {demo.RETRIEVAL}")
    examples = {lang: sets[lang][:max_examples] if max_examples else sets[lang] for lang in langs}
    # one pass over every distinct text (translations and English sources alike)
    texts = sorted({e[k] for lang in langs for e in examples[lang] for k in ("text", "source")})
    index = {t: i for i, t in enumerate(texts)}
    tok = loaded.tokenizer()
    t0 = time.perf_counter()
    with bar() as progress:
        out = run_texts(loaded, texts, batch_size, tok, progress, f"eval {loaded.model_name}/{loaded.runner.name}")
    seconds = time.perf_counter() - t0
    common = dict(model=loaded.model_name, variant=loaded.manifest["variant"], suite="demo", split=split,
                  base_model=card.to_json().get("base_model") or loaded.manifest["model"].get("base_model"),
                  role=loaded.manifest["model"].get("role"), variant_dir=str(loaded.directory),
                  **calibration_fields(loaded.manifest))
    recs = []
    for task in tasks:
        per_lang = []
        for lang in langs:
            exs = examples[lang]
            if task == demo.RETRIEVAL:
                if lang == "en":
                    continue   # English -> English retrieval is trivial
                src = out["sentence_embedding"][[index[e["source"]] for e in exs]]
                tgt = out["sentence_embedding"][[index[e["text"]] for e in exs]]
                outcomes = retrieval_outcomes(src, tgt)
                metric = "accuracy"
            else:
                logits = out["logits"][[index[e["text"]] for e in exs]]
                gold = np.array([target_labels.index(e["label"]) for e in exs])
                outcomes = (logits.argmax(1) == gold).astype(np.float64)
                metric = "accuracy"
            value = float(outcomes.mean() * 100)
            per_lang.append((lang, value, len(exs)))
            recs.append(results.record("eval", **common, task=task, lang=lang, metric=metric, value=value,
                                       n_examples=len(exs), outcomes=[round(float(o), 2) for o in outcomes],
                                       example_ids=_ids_digest(exs)))
        zs = [(v, n) for lang, v, n in per_lang if lang != "en"]
        if zs:
            recs.append(results.record("eval", **common, task=task, lang="avg", metric="accuracy",
                                       value=float(np.mean([v for v, _ in zs])), n_examples=sum(n for _, n in zs),
                                       n_langs=len(zs), note="mean over evaluated languages other than en"))
    for r in recs:
        r["eval_s"] = round(seconds, 3)
        r["examples_per_s"] = round(len(texts) / seconds, 2)
    return recs


def calibration_fields(manifest: dict) -> dict:
    """`calibration: {method, langs, samples}` for records of a calibrated variant (none otherwise)."""
    cal = manifest.get("calibration")
    if not cal:
        return {}
    return {"calibration": {"method": cal.get("method"), "langs": cal.get("languages"),
                            "samples": cal.get("samples"), "ids_sha256": cal.get("ids_sha256"),
                            "keep": cal.get("keep") or []}}


def _ids_digest(exs) -> str:
    import hashlib

    return hashlib.sha256("\n".join(e["id"] for e in exs).encode()).hexdigest()[:16]


def evaluate(variant_dir: str | Path, suite: str, data: str | Path | None = None, tasks=None, langs=None,
             split: str = "test", batch_size: int = 64, max_examples: int | None = None) -> list[dict]:
    from xopt.variants import load_variant

    if suite != "demo":
        raise XoptError(f"unknown suite {suite!r}; available: demo (XTREME arrives with its own issue)")
    suite_data = demo.load_suite(Path(data) if data else demo.ensure_suite())
    loaded = load_variant(variant_dir)
    return eval_demo(loaded, suite_data, tuple(tasks or demo.TASKS), langs, split, batch_size, max_examples)
