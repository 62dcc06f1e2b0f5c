"""XTREME task registry and data loading: one internal example form per task family.

API (stable; evaluation, training and calibration build on it):

- `TASKS[name] -> Task`: family (XTREME's data form: "classify" | "tagging" | "qa" | "retrieval"),
  `kind` (its task family in xopt.tasks.registry, where every task here is registered), XTREME's
  language list, label set, metric, where the files live in each source.
- `load(task, lang, split, data_dir) -> list[dict]` (classify / tagging / qa) or `Bitext` (retrieval):
  the examples of one language and split, labels checked against the task's label set.
  Internal forms:
    classify:  {"id", "text_a", "text_b", "label"}            label: one of Task.labels
    tagging:   {"id", "tokens": [str], "tags": [str]}         tags: Task.labels
    qa:        {"id", "context", "question", "answers": [{"text", "answer_start"}]}   (SQuAD v1.1)
    retrieval: Bitext(src ids/sentences, en ids/sentences, gold pairs)  (BUCC: mining; Tatoeba: aligned)
- `source_of(task, data_dir)`: which of the three sources `data_dir` holds for a task.
- splits: "train" | "dev" | "test". XTREME's zero-shot protocol trains on English "train",
  selects on English "dev", evaluates every language's "test".

Sources (`data_dir` may hold any mix; per task the first that exists wins):
1. Hugging Face `datasets` for the `google/xtreme` configs: `data_dir/<config>/` written by
   `save_to_disk` (a DatasetDict or a Dataset), or holding parquet files `<split>-*.parquet` or
   `<split>/*.parquet`; opened offline (`datasets.load_from_disk`, `pyarrow.parquet`), nothing
   downloaded. Config names as on the hub: XNLI, PAWS-X.de, udpos.German, PAN-X.de, XQuAD.de,
   MLQA.de.de, tydiqa, bucc18.de, tatoeba.deu; split "dev" is the hub's "validation".
2. The layout of XTREME's `scripts/download_data.sh`: xnli/ pawsx/ udpos/ panx/ ({split}-{lang}.tsv),
   xquad/xquad.{lang}.json, mlqa/MLQA_V1/{split}/{split}-context-{l}-question-{l}.json,
   tydiqa/tydiqa-goldp-v1.1-{dev,train}/tydiqa.goldp.{lang}.{split}.json,
   bucc2018/{l}-en.{split}.{l|en|gold}, tatoeba/tatoeba.{l3}-eng.{l3|eng} (LASER's aligned files).
   That script strips the test labels of xnli/pawsx/udpos/panx/xquad/mlqa/tydiqa and BUCC's test
   gold: an unlabelled split is refused with a message (use the original files or the HF source).
3. tests/fixtures/xtreme/: a few examples per task in exactly the layout of 2.

Errors a user can cause (missing file, malformed line as file:line, unknown task or language, a
label outside the label set, an empty split) raise one-line `XoptError`s.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from xopt.errors import XoptError, parse_json
from xopt.tasks.registry import TaskEntry, register_task

SPLITS = ("train", "dev", "test")
HF_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
HF_TEST_IS_VALIDATION = ("xquad", "tydiqa", "tatoeba")   # the hub has only these tasks' "validation"

XNLI_LABELS = ("contradiction", "entailment", "neutral")
PAWSX_LABELS = ("0", "1")
UDPOS_LABELS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
                "PUNCT", "SCONJ", "SYM", "VERB", "X")
PANX_LABELS = ("B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O")

# XTREME's language lists (google-research/xtreme: README table, utils_preprocess.py, scripts).
LANGS = {
    "xnli": "ar bg de el en es fr hi ru sw th tr ur vi zh",
    "pawsx": "de en es fr ja ko zh",
    "udpos": "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur vi yo zh",
    "panx": "ar he vi id jv ms tl eu ml ta te af nl en de el bn hi mr ur fa fr it pt es bg ru ja ka ko th sw yo "
            "my zh kk tr et fi hu",
    "xquad": "ar de el en es hi ru th tr vi zh",
    "mlqa": "ar de en es hi vi zh",
    "tydiqa": "ar bn en fi id ko ru sw te",
    "bucc2018": "de fr ru zh",
    "tatoeba": "af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr nl pt ru sw ta te th tl tr "
               "ur vi zh",
}
TATOEBA_LANG3 = {"af": "afr", "ar": "ara", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "es": "spa",
                 "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin",
                 "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz",
                 "ko": "kor", "ml": "mal", "mr": "mar", "nl": "nld", "pt": "por", "ru": "rus", "sw": "swh",
                 "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "ur": "urd", "vi": "vie",
                 "zh": "cmn"}
UDPOS_NAMES = {"af": "Afrikaans", "ar": "Arabic", "bg": "Bulgarian", "de": "German", "el": "Greek",
               "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
               "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
               "id": "Indonesian", "it": "Italian", "ja": "Japanese", "kk": "Kazakh", "ko": "Korean",
               "mr": "Marathi", "nl": "Dutch", "pt": "Portuguese", "ru": "Russian", "ta": "Tamil",
               "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "ur": "Urdu", "vi": "Vietnamese",
               "yo": "Yoruba", "zh": "Chinese"}
TYDIQA_NAMES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian",
                "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu"}


@dataclass(frozen=True)
class Task:
    name: str
    family: str                  # classify | tagging | qa | retrieval
    metric: str                  # accuracy | f1
    langs: tuple[str, ...]
    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] = SPLITS      # splits XTREME distributes (train: English only)
    head: str = "none"           # ModelCard.head the task needs

    @property
    def kind(self) -> str:
        """The task family (xopt.tasks.registry) of this task's examples."""
        return KIND_OF[self.family]

    def hf_config(self, lang: str) -> str:
        return {"xnli": "XNLI", "pawsx": f"PAWS-X.{lang}", "udpos": f"udpos.{UDPOS_NAMES.get(lang, lang)}",
                "panx": f"PAN-X.{lang}", "xquad": f"XQuAD.{lang}", "mlqa": f"MLQA.{lang}.{lang}",
                "tydiqa": "tydiqa", "bucc2018": f"bucc18.{lang}",
                "tatoeba": f"tatoeba.{TATOEBA_LANG3.get(lang, lang)}", "squad": "squad"}[self.name]


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("xnli", "classify", "accuracy", tuple(LANGS["xnli"].split()), XNLI_LABELS, head="sequence"),
    Task("pawsx", "classify", "accuracy", tuple(LANGS["pawsx"].split()), PAWSX_LABELS, head="sequence"),
    Task("udpos", "tagging", "f1", tuple(LANGS["udpos"].split()), UDPOS_LABELS, head="token"),
    Task("panx", "tagging", "f1", tuple(LANGS["panx"].split()), PANX_LABELS, head="token"),
    Task("xquad", "qa", "f1", tuple(LANGS["xquad"].split()), splits=("test",), head="span"),
    Task("mlqa", "qa", "f1", tuple(LANGS["mlqa"].split()), splits=("dev", "test"), head="span"),
    Task("tydiqa", "qa", "f1", tuple(LANGS["tydiqa"].split()), splits=("train", "test"), head="span"),
    Task("bucc2018", "retrieval", "f1", tuple(LANGS["bucc2018"].split()), splits=("dev", "test")),
    Task("tatoeba", "retrieval", "accuracy", tuple(LANGS["tatoeba"].split()), splits=("test",)),
    # English training data of the QA tasks (not evaluated): squad/{train,dev}-v1.1.json
    Task("squad", "qa", "f1", ("en",), splits=("train", "dev"), head="span"),
)}
EVAL_TASKS = ("xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba")
# The English training data XTREME fine-tunes on for each target task (`xopt train` trains on these).
TRAIN_TASK = {"xnli": "xnli", "pawsx": "pawsx", "udpos": "udpos", "panx": "panx", "xquad": "squad",
              "mlqa": "squad", "tydiqa": "tydiqa"}


# XTREME's data forms -> task families (xopt.tasks.families)
KIND_OF = {"classify": "sequence", "tagging": "token", "qa": "span", "retrieval": "retrieval"}


@dataclass
class Bitext:
    """Retrieval data of one language: sentences in `lang` (src) and English, and the gold pairs.
    Tatoeba: src[i] and en[i] are translations (gold = i <-> i); BUCC: gold is a set of id pairs.
    `distractors`: the sides hold sentences without a translation too (BUCC's own files); false
    where the source keeps only the gold pairs (the hub's bucc18), which makes mining easier."""
    lang: str
    src_ids: list[str]
    src: list[str]
    en_ids: list[str]
    en: list[str]
    gold: set = field(default_factory=set)   # {(src_id, en_id)}
    distractors: bool = True

    def __len__(self) -> int:
        return len(self.src)

    def without_blanks(self) -> "Bitext":
        """The Bitext without its blank (empty or whitespace) sentences, which no retrieval can
        score: Tatoeba's line-aligned sides (the same ids on both) lose the pair; otherwise each
        side loses the sentence and the gold its pairs."""
        src = [i for i, t in enumerate(self.src) if t.strip()]
        en = [i for i, t in enumerate(self.en) if t.strip()]
        if self.src_ids == self.en_ids:
            src = en = sorted(set(src) & set(en))
        src_ids, en_ids = [self.src_ids[i] for i in src], [self.en_ids[i] for i in en]
        keep_s, keep_e = set(src_ids), set(en_ids)
        return Bitext(self.lang, src_ids, [self.src[i] for i in src], en_ids, [self.en[i] for i in en],
                      {(s, e) for s, e in self.gold if s in keep_s and e in keep_e}, self.distractors)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise XoptError(f"unknown XTREME task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def check_lang(task: Task, lang: str) -> None:
    if lang not in task.langs:
        raise XoptError(f"language {lang!r} is not one of {task.name}'s languages ({' '.join(task.langs)})")


def check_split(task: Task, split: str) -> None:
    if split not in SPLITS:
        raise XoptError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split not in task.splits:
        raise XoptError(f"{task.name} has no {split} split (XTREME distributes: {', '.join(task.splits)})")


# --------------------------------------------------------------------------- download-script layout

def xtreme_paths(task: Task, lang: str, split: str, root: Path) -> list[Path]:
    """Files of XTREME's download layout for (task, lang, split) under `root`."""
    n = task.name
    if n in ("xnli", "pawsx", "udpos", "panx"):
        return [root / n / f"{split}-{lang}.tsv"]
    if n == "xquad":
        return [root / "xquad" / f"xquad.{lang}.json"]
    if n == "squad":
        return [root / "squad" / f"{split}-v1.1.json"]
    if n == "mlqa":
        return [root / "mlqa" / "MLQA_V1" / split / f"{split}-context-{lang}-question-{lang}.json"]
    if n == "tydiqa":   # XTREME evaluates TyDiQA-GoldP on its dev set
        s = "train" if split == "train" else "dev"
        return [root / "tydiqa" / f"tydiqa-goldp-v1.1-{s}" / f"tydiqa.goldp.{lang}.{s}.json"]
    if n == "bucc2018":
        base = root / "bucc2018" / f"{lang}-en.{split}"
        return [Path(f"{base}.{lang}"), Path(f"{base}.en"), Path(f"{base}.gold")]
    if n == "tatoeba":
        l3 = TATOEBA_LANG3[lang]
        return [root / "tatoeba" / f"tatoeba.{l3}-eng.{l3}", root / "tatoeba" / f"tatoeba.{l3}-eng.eng"]
    raise AssertionError(n)


def _need(path: Path, task: Task, lang: str, split: str) -> Path:
    if not path.is_file():
        raise XoptError(f"{path}: missing {task.name} {split} file for language {lang!r} "
                        f"(expected XTREME's download layout or a google/xtreme HF directory under --data; or restrict --langs)")
    return path


def _lines(path: Path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError as e:
        raise XoptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _unlabelled(where: str, task: Task) -> XoptError:
    return XoptError(f"{where}: no label ({task.name}'s split is unlabelled: XTREME's download script strips "
                     "test labels; evaluate a labelled split (--split dev) or use the original files / HF source)")


def _check_label(label: str, task: Task, where: str) -> str:
    if label not in task.labels:
        raise XoptError(f"{where}: label {label!r} is not in {task.name}'s label set ({' '.join(task.labels)})")
    return label


def read_pair_tsv(path: Path, task: Task) -> list[dict]:
    """xnli/pawsx `{split}-{lang}.tsv`: sentence1 TAB sentence2 TAB label (csv-quoted, as XTREME writes)."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or row == [""]:
                    continue
                if len(row) == 2:
                    raise _unlabelled(where, task)
                if len(row) != 3:
                    raise XoptError(f"{where}: malformed line: expected sentence1<TAB>sentence2<TAB>label, "
                                    f"got {len(row)} field(s)")
                label = "contradiction" if row[2].strip() == "contradictory" else row[2].strip()
                out.append({"id": f"{path.stem}:{reader.line_num}", "text_a": row[0], "text_b": row[1],
                            "label": _check_label(label, task, where)})
        except csv.Error as e:
            raise XoptError(f"{path}:{reader.line_num}: malformed line ({e})") from None
        except UnicodeDecodeError as e:
            raise XoptError(f"{path}: not UTF-8 text ({e.reason})") from None
    return out


def read_tag_tsv(path: Path, task: Task) -> list[dict]:
    """udpos/panx `{split}-{lang}.tsv`: one `token TAB tag` per line, a blank line between sentences."""
    out, tokens, tags, start = [], [], [], 1

    def flush():
        if tokens:
            out.append({"id": f"{path.stem}:{start}", "tokens": list(tokens), "tags": list(tags)})
        tokens.clear(); tags.clear()

    for i, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            flush()
            start = i + 1
            continue
        items = line.split("\t")
        if len(items) == 1:
            raise _unlabelled(f"{path}:{i}", task)
        if len(items) != 2 or not items[0].strip():
            raise XoptError(f"{path}:{i}: malformed line: expected token<TAB>tag, got {line[:60]!r}")
        tokens.append(items[0].strip())
        tags.append(_check_label(items[1].strip(), task, f"{path}:{i}"))
    flush()
    return out


def read_squad(path: Path, task: Task, lang: str) -> list[dict]:
    """SQuAD v1.1 json (XQuAD, MLQA, TyDiQA-GoldP): data[].paragraphs[].{context, qas[]}."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XoptError(f"{path}: not UTF-8 text ({e.reason})") from None
    data = parse_json(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise XoptError(f"{path}: not a SQuAD-format file (no top-level 'data' list)")
    out = []
    try:
        for doc in data["data"]:
            for par in doc["paragraphs"]:
                ctx = par["context"]
                for qa in par["qas"]:
                    answers = [{"text": a["text"], "answer_start": int(a["answer_start"])} for a in qa["answers"]]
                    out.append({"id": str(qa["id"]), "context": ctx, "question": qa["question"],
                                "answers": answers})
    except (KeyError, TypeError, ValueError) as e:
        raise XoptError(f"{path}: malformed SQuAD entry ({type(e).__name__}: {e})") from None
    return out


def check_qa(examples: list[dict], task: Task, where: str) -> list[dict]:
    """Every answer must be a span of its context; an all-empty answer set means stripped labels."""
    for e in examples:
        if not e["answers"] or all(a["text"] == "" for a in e["answers"]):
            raise _unlabelled(f"{where} (question {e['id']})", task)
        for a in e["answers"]:
            s = a["answer_start"]
            if e["context"][s:s + len(a["text"])] != a["text"]:
                raise XoptError(f"{where}: question {e['id']}: answer {a['text']!r} is not at offset {s} of its "
                                "context")
    return examples


def read_sentences(path: Path) -> tuple[list[str], list[str]]:
    """BUCC `.sentences` files: `id TAB sentence` per line."""
    ids, sents = [], []
    for i, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        items = line.split("\t")
        if len(items) != 2 or not items[0]:
            raise XoptError(f"{path}:{i}: malformed line: expected id<TAB>sentence")
        ids.append(items[0]); sents.append(items[1])
    return ids, sents


def read_bucc(paths: list[Path], task: Task, lang: str, split: str) -> Bitext:
    src_p, en_p, gold_p = paths
    src_ids, src = read_sentences(_need(src_p, task, lang, split))
    en_ids, en = read_sentences(_need(en_p, task, lang, split))
    if not gold_p.is_file():
        raise XoptError(f"{gold_p}: missing BUCC gold file (XTREME's download script deletes the test gold; "
                        "evaluate --split dev or restore the original bucc2018 training-gold files)")
    known_s, known_e = set(src_ids), set(en_ids)
    gold = set()
    for i, line in _lines(gold_p):
        line = line.strip()
        if not line:
            continue
        items = line.split("\t")
        if len(items) != 2 or items[0] not in known_s or items[1] not in known_e:
            raise XoptError(f"{gold_p}:{i}: malformed gold line: expected {lang}-id<TAB>en-id of the sentence files")
        gold.add((items[0], items[1]))
    return Bitext(lang, src_ids, src, en_ids, en, gold)


def read_tatoeba(paths: list[Path], task: Task, lang: str, split: str) -> Bitext:
    src_p, en_p = (_need(p, task, lang, split) for p in paths)
    src = [ln.rstrip("\r\n") for _, ln in _lines(src_p)]
    en = [ln.rstrip("\r\n") for _, ln in _lines(en_p)]
    if len(src) != len(en):
        raise XoptError(f"{src_p}: {len(src)} lines but {en_p} has {len(en)}; Tatoeba files must be line-aligned")
    ids = [str(i) for i in range(len(src))]
    return Bitext(lang, ids, src, list(ids), en, {(i, i) for i in ids})


def load_xtreme_layout(task: Task, lang: str, split: str, root: Path):
    paths = xtreme_paths(task, lang, split, root)
    if task.family == "retrieval":
        return (read_bucc if task.name == "bucc2018" else read_tatoeba)(paths, task, lang, split)
    path = _need(paths[0], task, lang, split)
    if task.family == "classify":
        return read_pair_tsv(path, task)
    if task.family == "tagging":
        return read_tag_tsv(path, task)
    return check_qa(read_squad(path, task, lang), task, str(path))


# --------------------------------------------------------------------------- Hugging Face datasets

def _need_module(name: str, where: Path):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise XoptError(f"{where}: reading Hugging Face dataset directories needs `datasets`: "
                        "pip install 'xopt[xtreme]'") from None


def hf_split(task: Task, split: str) -> str:
    return "validation" if split == "test" and task.name in HF_TEST_IS_VALIDATION else HF_SPLIT[split]


def _hf_rows(cfg_dir: Path, split: str, task: Task, lang: str):
    """(rows as a list of dicts, {column: ClassLabel names}) of one split of a google/xtreme config dir."""
    name = hf_split(task, split)
    if (cfg_dir / "dataset_dict.json").is_file() or (cfg_dir / "state.json").is_file():
        datasets = _need_module("datasets", cfg_dir)

        datasets.disable_progress_bars()
        ds = datasets.load_from_disk(str(cfg_dir))
        if isinstance(ds, datasets.DatasetDict):
            if name not in ds:
                raise XoptError(f"{cfg_dir}: no {name!r} split (it has: {', '.join(ds)})")
            ds = ds[name]
        names = {k: f.feature.names if hasattr(f, "feature") and hasattr(f.feature, "names") else
                 getattr(f, "names", None) for k, f in ds.features.items()}
        return ds.to_list(), {k: v for k, v in names.items() if v}
    files = sorted(cfg_dir.glob(f"{name}-*.parquet")) + sorted((cfg_dir / name).glob("*.parquet"))
    if not files:
        raise XoptError(f"{cfg_dir}: no {name} split (expected save_to_disk output or {name}-*.parquet)")
    pq = _need_module("pyarrow.parquet", cfg_dir)
    rows, names = [], {}
    for f in files:
        table = pq.read_table(f)
        meta = (table.schema.metadata or {}).get(b"huggingface")
        if meta:   # datasets stores the features (ClassLabel names) in the parquet metadata
            feats = json.loads(meta).get("info", {}).get("features", {})
            for k, v in feats.items():
                inner = v.get("feature", v) if isinstance(v, dict) else {}
                if isinstance(inner, dict) and inner.get("names"):
                    names[k] = inner["names"]
                elif isinstance(v, list) and v and isinstance(v[0], dict) and v[0].get("names"):
                    names[k] = v[0]["names"]
        rows += table.to_pylist()
    return rows, names


def load_hf(task: Task, lang: str, split: str, cfg_dir: Path):
    rows, names = _hf_rows(cfg_dir, split, task, lang)
    where = f"{cfg_dir}[{hf_split(task, split)}]"

    def lab(value, column, i):
        if isinstance(value, int) and column in names:
            value = names[column][value]
        return _check_label(str(value), task, f"{where}:{i}")

    n = task.name
    try:
        if n == "xnli":
            rows = [r for r in rows if r["language"] == lang]
            return [{"id": f"{lang}-{i}", "text_a": r["sentence1"], "text_b": r["sentence2"],
                     "label": lab(r["gold_label"], "gold_label", i)} for i, r in enumerate(rows)]
        if n == "pawsx":
            return [{"id": f"{lang}-{i}", "text_a": r["sentence1"], "text_b": r["sentence2"],
                     "label": lab(r["label"], "label", i)} for i, r in enumerate(rows)]
        if task.family == "tagging":
            col = "pos_tags" if n == "udpos" else "ner_tags"
            return [{"id": f"{lang}-{i}", "tokens": list(r["tokens"]),
                     "tags": [lab(t, col, i) for t in r[col]]} for i, r in enumerate(rows)]
        if task.family == "qa":
            if n == "tydiqa":
                rows = [r for r in rows if str(r["id"]).split("-")[0] == TYDIQA_NAMES[lang]]
            exs = [{"id": str(r["id"]), "context": r["context"], "question": r["question"],
                    "answers": [{"text": t, "answer_start": int(s)} for t, s in
                                zip(r["answers"]["text"], r["answers"]["answer_start"])]} for r in rows]
            return check_qa(exs, task, where)
        if n == "bucc2018":   # the hub's bucc18 keeps only the gold pairs: mining among them
            src_ids = [f"{lang}-{i}" for i in range(len(rows))]
            en_ids = [f"en-{i}" for i in range(len(rows))]
            return Bitext(lang, src_ids, [r["source_sentence"] for r in rows], en_ids,
                          [r["target_sentence"] for r in rows], set(zip(src_ids, en_ids)), distractors=False)
        if n == "tatoeba":
            ids = [str(i) for i in range(len(rows))]
            return Bitext(lang, ids, [r["source_sentence"] for r in rows], list(ids),
                          [r["target_sentence"] for r in rows], {(i, i) for i in ids})
    except KeyError as e:
        raise XoptError(f"{where}: column {e} missing: not the google/xtreme {task.hf_config(lang)} config") from None
    raise AssertionError(n)


# --------------------------------------------------------------------------- entry point

def source_of(task: Task, lang: str, data_dir: Path) -> tuple[str, Path]:
    """("hf", config dir) or ("xtreme", root) for (task, lang) under data_dir."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise XoptError(f"--data {data_dir}: not a directory")
    cfg = data_dir / task.hf_config(lang)
    # "tydiqa" and "squad" name both a hub config and a folder of XTREME's layout: look inside
    if cfg.is_dir() and ((cfg / "dataset_dict.json").is_file() or (cfg / "state.json").is_file()
                         or any(cfg.glob("*.parquet")) or any(cfg.glob("*/*.parquet"))):
        return "hf", cfg
    return "xtreme", data_dir


def load(task: str | Task, lang: str, split: str, data_dir: str | Path):
    """Examples of (task, lang, split) in the family's internal form (module doc); never empty."""
    t = task if isinstance(task, Task) else get_task(task)
    check_lang(t, lang)
    check_split(t, split)
    kind, where = source_of(t, lang, Path(data_dir))
    data = load_hf(t, lang, split, where) if kind == "hf" else load_xtreme_layout(t, lang, split, where)
    if isinstance(data, Bitext):
        data = data.without_blanks()
    if len(data) == 0:
        raise XoptError(f"{t.name} {lang} {split} ({where}): empty split, no examples")
    return data


def special_template(tokenizer, pair: bool = False) -> list[int]:
    """The tokenizer's special-token template with -1 (first text) and -2 (second text) as
    placeholders, e.g. XLM-R: [0, -1, 2] and [0, -1, 2, 2, -2, 2]; learnt from the tokenizer itself
    (transformers 5 dropped `build_inputs_with_special_tokens` from generic fast tokenizers)."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", "b")["input_ids"] if pair else tokenizer("a")["input_ids"]

    def find(seq, sub, start=0):
        for i in range(start, len(seq) - len(sub) + 1):
            if seq[i:i + len(sub)] == sub:
                return i
        raise ValueError("cannot find the text in its encoding")

    i = find(full, a)
    out = full[:i] + [-1]
    rest = full[i + len(a):]
    if pair:
        j = find(rest, b)
        out += rest[:j] + [-2] + rest[j + len(b):]
    else:
        out += rest
    return out


# --------------------------------------------------------------------------- calibration text

def example_text(task: Task, ex) -> str:
    """One calibration text of an example: what the model reads, as one string."""
    from xopt.tasks.registry import family

    return family(task.kind).texts([ex], joined=True)[0]


def calibration_pools(spec: str) -> dict[str, list[str]]:
    """`--calib-data xtreme:TASK:DIR` (xopt.calibration's registered source): texts per language,
    English from the task's English training set, every other language from its dev split (or
    test when the task has no dev; calibration needs no labels, but never draw it from the split
    you evaluate on if you can avoid it). Languages without data under DIR are left out."""
    from xopt.tasks.registry import family

    name, sep, data_dir = spec.partition(":")
    if not sep or not data_dir:
        raise XoptError(f"calibration source xtreme:{spec}: expected xtreme:TASK:DATA_DIR")
    task = get_task(name)
    train = get_task(TRAIN_TASK.get(task.name, task.name))
    pools: dict[str, list[str]] = {}
    for lang in task.langs:
        src, split = (train, "train") if lang == "en" and "train" in train.splits else (
            task, "dev" if "dev" in task.splits else "test")
        try:
            data = load(src, lang, split, data_dir)
        except XoptError as e:
            if "not a directory" in str(e):
                raise
            continue   # no file for this language: the caller checks the languages it asked for
        pools[lang] = family(src.kind).texts(data, joined=True, lang=lang)
    if not pools:
        raise XoptError(f"calibration source xtreme:{spec}: no {task.name} data under {data_dir}")
    return pools


# --- registration ------------------------------------------------------------------------------

def _load_entry(name: str, data: dict, stage):
    """An XTREME target's English training data (the download layout or google/xtreme HF
    directories), English dev when XTREME has one (TyDiQA-GoldP has none: the last epoch is kept)."""
    from xopt.tasks.registry import TaskData
    from xopt.tasks.registry import family

    t = TASKS[TRAIN_TASK.get(name, name)]
    root = data.get(name) or data.get("root")
    if not root:
        raise XoptError(f"task {name}: no data location (pass --data DIR: XTREME's download layout)")

    def rows(split):
        return TRAINING_FORM.get(t.family, list)(load(t, "en", split, root))
    return TaskData(name, t.kind, list(t.labels), rows("train"), rows("dev") if "dev" in t.splits else [],
                    metric=family(t.kind).metric)


def _pairs(examples) -> list[dict]:
    return [{"text": e["text_a"], "text_pair": e["text_b"], "label": e["label"]} for e in examples]


TRAINING_FORM = {"classify": _pairs}     # XTREME form -> the family's training form, where they differ

for _t in TASKS.values():
    if _t.name != "squad":     # SQuAD is the intermediate task of that name; here only XQuAD/MLQA's training data
        register_task(TaskEntry(_t.name, _t.kind, "xtreme", _load_entry, _t))
