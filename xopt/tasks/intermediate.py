"""Intermediate tasks of X-STILTs (Phang et al. 2020), read offline in the formats users have.

| task | kind | files (first found in the task's directory) |
|---|---|---|
| `mnli` | NLI, 3 labels | GLUE `train.tsv` / `dev_matched.tsv`, or MultiNLI `multinli_1.0_{train,dev_matched}.jsonl` |
| `anli` | NLI, 3 labels | `train.jsonl` / `dev.jsonl`, or the release's `R1/ R2/ R3/` folders (all rounds pooled) |
| `qqp` | paraphrase, 2 labels | GLUE `train.tsv` / `dev.tsv` (question1, question2, is_duplicate) |
| `sst2` | sentiment, 2 labels | GLUE `train.tsv` / `dev.tsv` (sentence, label) |
| `ccg` | supertagging | `train.stagged` / `dev.stagged` (or `.txt`, `.ccg`): one sentence per line, tokens separated by spaces, each token `word|tag` or C&C's `word|POS|tag` (the tag is the last field) |
| `squad` | extractive QA | SQuAD v1.1 `train-v1.1.json` / `dev-v1.1.json` |
| `hellaswag` | multiple choice (4) | `hellaswag_train.jsonl` / `hellaswag_val.jsonl` |
| `commonsenseqa` | multiple choice (5) | `train_rand_split.jsonl` / `dev_rand_split.jsonl` |
| `cosmosqa` | multiple choice (4) | `train.csv` / `valid.csv` (or `.jsonl`) |

A directory written by Hugging Face `datasets` (`save_to_disk`, with `dataset_dict.json`) is
opened offline with `datasets.load_from_disk` (`pip install datasets`), columns as on the Hub
(glue/mnli, glue/qqp, glue/sst2, anli, squad, hellaswag, commonsense_qa, cosmos_qa).
Machine-translated intermediate data (the paper's alternative) is the same formats in other
languages: list the files under the task's `translated` option and they join its training set.

Examples are plain dicts; `featurize` turns them into token ids for the one model's heads:
`sequence` (text[, pair] -> label id), `token` and `span` through the XTREME families'
features (xopt.tasks.tagging: first sub-token of each word -> tag id, other positions -100;
xopt.tasks.qa: question + context windows with doc stride -> start/end token, 0/0 when the
answer is outside the window), `choice` ((context, choice) pairs scored by a
1-output head, softmax over choices), `mlm` (unlabelled text; masked at batch time).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from xopt.errors import XoptError, parse_json
from xopt.tasks.registry import TaskData, TaskEntry, register_task

NLI_LABELS = ["entailment", "neutral", "contradiction"]


def _read_tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                rows.append(parse_json(line, f"{path}:{i}", "expected one JSON object per line"))
    return rows


def _read_rows(path: Path) -> list[dict]:
    return {".tsv": _read_tsv, ".csv": _read_csv}.get(path.suffix, _read_jsonl)(path)


def _find(root: Path, names: tuple[str, ...], task: str, split: str) -> list[Path]:
    for n in names:
        hits = sorted(root.glob(n))
        if hits:
            return hits
    raise XoptError(f"task {task}: no {split} file in {root} (looked for {', '.join(names)})")


def _get(row: dict, key: str, path: Path):
    if key not in row:
        raise XoptError(f"{path}: column/field {key!r} missing (has {', '.join(map(str, row))})")
    return row[key]


# --- per-task row readers: (rows, path) -> examples --------------------------------------------

def _nli(rows, path, premise="sentence1", hyp="sentence2", label="gold_label"):
    short = {"e": "entailment", "n": "neutral", "c": "contradiction"}
    out = []
    for r in rows:
        y = _get(r, label, path)
        y = NLI_LABELS[int(y)] if isinstance(y, int) or str(y).isdigit() else short.get(y, y)
        if y in NLI_LABELS:              # MNLI marks no-consensus pairs "-": skipped
            out.append({"text": _get(r, premise, path), "text_pair": _get(r, hyp, path), "label": y})
    return out


def _qqp(rows, path, label="is_duplicate"):
    return [{"text": _get(r, "question1", path), "text_pair": _get(r, "question2", path),
             "label": ("not_duplicate", "duplicate")[int(_get(r, label, path))]}
            for r in rows if str(r.get(label, "")).strip() in ("0", "1")]


def _sst2(rows, path):
    return [{"text": _get(r, "sentence", path), "label": ("negative", "positive")[int(_get(r, "label", path))]}
            for r in rows]


def _squad_json(path: Path) -> list[dict]:
    from xopt.tasks import xtreme

    return xtreme.read_squad(path, xtreme.TASKS["squad"], "en")


def _squad_hf(rows, path):
    return [{"id": r["id"], "question": r["question"], "context": r["context"],
             "answers": [{"text": t, "answer_start": s} for t, s in
                         zip(r["answers"]["text"], r["answers"]["answer_start"])]} for r in rows]


def _hellaswag(rows, path):
    return [{"first": _get(r, "ctx", path), "choices": list(_get(r, "endings", path)), "label": int(r["label"])}
            for r in rows if str(r.get("label", "")).strip() != ""]


def _csqa(rows, path):
    out = []
    for r in rows:
        q = _get(r, "question", path)
        if isinstance(q, dict):        # the release's jsonl
            choices, stem = q["choices"], q["stem"]
            labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
        else:                          # HF columns
            stem, labels, texts = q, r["choices"]["label"], r["choices"]["text"]
        key = r.get("answerKey")
        if key:
            out.append({"first": stem, "choices": texts, "label": labels.index(key)})
    return out


def _cosmos(rows, path):
    return [{"first": _get(r, "context", path),
             "choices": [f"{r['question']} {r[f'answer{i}']}" for i in range(4)], "label": int(r["label"])}
            for r in rows if str(r.get("label", "")).strip() != ""]


def _ccg_file(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        words, tags = [], []
        for tok in line.split():
            if "|" not in tok:
                raise XoptError(f"{path}:{i}: token {tok!r} is not word|tag (or word|POS|tag)")
            parts = tok.split("|")
            words.append(parts[0])
            tags.append(parts[-1])
        out.append({"tokens": words, "tags": tags})
    return out


@dataclass(frozen=True)
class Spec:
    kind: str
    train: tuple[str, ...]
    dev: tuple[str, ...]
    rows: object                     # (rows, path) -> examples; None: `file` reads whole files
    file: object = None              # path -> examples
    hf_rows: object = None           # rows of the HF datasets columns -> examples
    hf_splits: tuple[str, str] = ("train", "validation")
    labels: tuple[str, ...] = ()
    labels_from_tags: bool = False   # the tag set is read from the data (train and dev)
    metric: str = "accuracy"         # dev metric for choosing the epoch


SPECS = {
    "mnli": Spec("sequence", ("train.tsv", "multinli_1.0_train.jsonl", "train.jsonl"),
                 ("dev_matched.tsv", "multinli_1.0_dev_matched.jsonl", "dev_matched.jsonl", "dev.jsonl"),
                 _nli, hf_rows=lambda r, p: _nli(r, p, "premise", "hypothesis", "label"),
                 hf_splits=("train", "validation_matched"), labels=tuple(NLI_LABELS)),
    "anli": Spec("sequence", ("train.jsonl", "R*/train.jsonl"), ("dev.jsonl", "R*/dev.jsonl"),
                 lambda r, p: _nli(r, p, "context", "hypothesis", "label"),
                 hf_rows=lambda r, p: _nli(r, p, "premise", "hypothesis", "label"),
                 hf_splits=("train_r*", "dev_r*"), labels=tuple(NLI_LABELS)),
    "qqp": Spec("sequence", ("train.tsv",), ("dev.tsv",), _qqp, hf_rows=lambda r, p: _qqp(r, p, "label"),
                labels=("not_duplicate", "duplicate")),
    "sst2": Spec("sequence", ("train.tsv",), ("dev.tsv",), _sst2, hf_rows=_sst2, labels=("negative", "positive")),
    "ccg": Spec("token", ("train.stagged", "train.txt", "train.ccg"), ("dev.stagged", "dev.txt", "dev.ccg"),
                None, file=_ccg_file, labels_from_tags=True),
    "squad": Spec("span", ("train-v1.1.json", "train.json"), ("dev-v1.1.json", "dev.json"), None,
                  file=_squad_json, hf_rows=_squad_hf, metric="qa_f1"),
    "hellaswag": Spec("choice", ("hellaswag_train.jsonl", "train.jsonl"), ("hellaswag_val.jsonl", "val.jsonl"),
                      _hellaswag, hf_rows=_hellaswag),
    "commonsenseqa": Spec("choice", ("train_rand_split.jsonl", "train.jsonl"),
                          ("dev_rand_split.jsonl", "dev.jsonl"), _csqa, hf_rows=_csqa),
    "cosmosqa": Spec("choice", ("train.csv", "train.jsonl"), ("valid.csv", "valid.jsonl", "dev.jsonl"),
                     _cosmos, hf_rows=_cosmos),
}
TASKS = tuple(SPECS)


def _read_split(spec: Spec, files: list[Path]) -> list[dict]:
    out = []
    for p in files:
        try:
            out += spec.file(p) if spec.file else spec.rows(_read_rows(p), p)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise XoptError(f"{p}: not in the expected format ({type(e).__name__}: {e})") from None
    return out


def _load_hf(name: str, spec: Spec, root: Path) -> tuple[list[dict], list[dict]]:
    try:
        import datasets
    except ImportError:
        raise XoptError(f"{root} is a Hugging Face `datasets` directory: pip install datasets to read it") from None
    if spec.hf_rows is None:
        raise XoptError(f"task {name}: no Hugging Face `datasets` layout known; use the file format in "
                        "xopt/tasks/intermediate.py")
    dd = datasets.load_from_disk(str(root))
    import fnmatch

    def rows(pattern):
        keys = sorted(k for k in dd if fnmatch.fnmatch(k, pattern))
        if not keys:
            raise XoptError(f"{root}: no split matching {pattern!r} (has {', '.join(dd)})")
        return [r for k in keys for r in dd[k]]
    return spec.hf_rows(rows(spec.hf_splits[0]), root), spec.hf_rows(rows(spec.hf_splits[1]), root)


def load(name: str, root: str | Path, translated: list[str | Path] = ()) -> TaskData:
    """Train and dev examples of intermediate task `name` from `root` (see module doc)."""
    if name not in SPECS:
        raise XoptError(f"unknown intermediate task {name!r}; known: {', '.join(TASKS)}")
    spec, root = SPECS[name], Path(root)
    if root.is_file():
        raise XoptError(f"task {name}: {root} is a file; {name} needs the directory that holds its files "
                        f"(--data DIR with DIR/{name}/, or data.{name} in the plan)")
    if not root.is_dir():
        raise XoptError(f"task {name}: data directory {root} not found")
    if (root / "dataset_dict.json").is_file():
        train, dev = _load_hf(name, spec, root)
    else:
        train = _read_split(spec, _find(root, spec.train, name, "train"))
        dev = _read_split(spec, _find(root, spec.dev, name, "dev"))
    for t in translated:
        t = Path(t)
        if not t.is_file():
            raise XoptError(f"task {name}: translated file {t} not found")
        train += _read_split(spec, [t])
    if not train:
        raise XoptError(f"task {name}: no training examples in {root}")
    labels = list(spec.labels)
    if spec.labels_from_tags:     # supertags seen only in dev get an output too (never trained)
        labels = sorted({t for e in train + dev for t in e["tags"]})
    return TaskData(name, spec.kind, labels, train, dev, metric=spec.metric)


def load_text(name: str, files: list[str | Path]) -> TaskData:
    """Unlabelled text (one text per line) for continued MLM; dev is empty."""
    texts = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise XoptError(f"task {name}: text file {f} not found")
        texts += [{"text": t.strip()} for t in f.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise XoptError(f"task {name}: no text in {', '.join(map(str, files))}")
    return TaskData(name, "mlm", [], texts, [])


# --- features ---------------------------------------------------------------------------------

def featurize(task: TaskData, examples: list[dict], tokenizer, prefix: str, max_length: int,
              doc_stride: int = 64) -> list[dict]:
    """Examples -> features: dicts with `input_ids` (list, or list of lists for `choice`) and the
    target (`label`, `tags`, `start`/`end`), by the task's family (xopt.tasks.families)."""
    from xopt.tasks.registry import family

    return family(task.kind).features(task, examples, tokenizer, prefix, max_length, doc_stride)


# --- registration ------------------------------------------------------------------------------

def data_path(name: str, data: dict) -> Path:
    """Where task `name`'s files are: `data[name]`, else the child of `data["root"]` whose name
    matches the task's (MNLI, SST-2, mnli, ...), else the root itself."""
    if name in data:
        return Path(data[name])
    if "root" not in data:
        raise XoptError(f"task {name}: no data location (pass --data DIR or set data.{name} in the plan)")
    root = Path(data["root"])
    if root.is_dir():
        for child in sorted(root.iterdir()):      # <root>/MNLI, <root>/SST-2, <root>/mnli ...
            if child.is_dir() and _norm(child.name) == _norm(name):
                return child
    return root


def _norm(s: str) -> str:
    return "".join(c for c in s.lower() if c.isalnum())


def _load_entry(name: str, data: dict, stage) -> TaskData:
    return load(name, data_path(name, data), stage.translated.get(name, []))


def _load_mlm(name: str, data: dict, stage) -> TaskData:
    return load_text(name, stage.mlm)


for _name, _spec in SPECS.items():
    register_task(TaskEntry(_name, _spec.kind, "intermediate", _load_entry, _spec))
register_task(TaskEntry("mlm", "mlm", "text", _load_mlm))
