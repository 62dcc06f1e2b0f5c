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

Each `Task` says as data where its files are (`files`, `hf`) and which reader reads them (`form`:
xopt.tasks.xtreme_files for the download layout, xopt.tasks.xtreme_hf for the hub's configs).

Errors a user can cause (missing file, malformed line as file:line, unknown task or language, a
label outside the label set, an empty split) raise one-line `XoptError`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xopt.errors import XoptError
from xopt.tasks import xtreme_files
from xopt.tasks.registry import TaskEntry, register_task
from xopt.tasks.xtreme_files import Bitext, read_squad  # noqa: F401  (part of this module's API)
from xopt.tasks.xtreme_hf import load_hf

SPLITS = ("train", "dev", "test")

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
    form: str = ""               # its file format: the reader of xtreme_files.READERS and xtreme_hf.READERS
    files: tuple[str, ...] = ()  # its files in the download layout under the data root ({lang}, {split}, {lang3})
    file_splits: tuple = ()      # (split, the split its files are named by) where they differ
    hf: str = ""                 # its google/xtreme config ({lang}, {name}: udpos's language name, {lang3})
    hf_label: str = ""           # the hub's label column (classify, tagging)
    hf_test: str = "test"        # the hub's split that holds XTREME's test set
    hf_select: Callable | None = None      # (rows, lang) -> one language's rows of a config shared by several
    threshold_split: str | None = None     # retrieval: pairs are mined above a threshold chosen on this split

    @property
    def kind(self) -> str:
        """The task family (xopt.tasks.registry) of this task's examples."""
        return KIND_OF[self.family]

    def hf_config(self, lang: str) -> str:
        return self.hf.format(lang=lang, name=UDPOS_NAMES.get(lang, lang), lang3=TATOEBA_LANG3.get(lang, lang))


def _langs(name: str) -> tuple[str, ...]:
    return tuple(LANGS[name].split())


def _by_language(rows: list, lang: str) -> list:
    """XNLI's hub config holds every language: its rows in `lang`."""
    return [r for r in rows if r["language"] == lang]


def _by_tydiqa_id(rows: list, lang: str) -> list:
    """TyDiQA's hub config holds every language: its rows whose id starts with `lang`'s name."""
    return [r for r in rows if str(r["id"]).split("-")[0] == TYDIQA_NAMES[lang]]


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("xnli", "classify", "accuracy", _langs("xnli"), XNLI_LABELS, head="sequence", form="pairs",
         files=("xnli/{split}-{lang}.tsv",), hf="XNLI", hf_label="gold_label", hf_select=_by_language),
    Task("pawsx", "classify", "accuracy", _langs("pawsx"), PAWSX_LABELS, head="sequence", form="pairs",
         files=("pawsx/{split}-{lang}.tsv",), hf="PAWS-X.{lang}", hf_label="label"),
    Task("udpos", "tagging", "f1", _langs("udpos"), UDPOS_LABELS, head="token", form="tags",
         files=("udpos/{split}-{lang}.tsv",), hf="udpos.{name}", hf_label="pos_tags"),
    Task("panx", "tagging", "f1", _langs("panx"), PANX_LABELS, head="token", form="tags",
         files=("panx/{split}-{lang}.tsv",), hf="PAN-X.{lang}", hf_label="ner_tags"),
    Task("xquad", "qa", "f1", _langs("xquad"), splits=("test",), head="span", form="squad",
         files=("xquad/xquad.{lang}.json",), hf="XQuAD.{lang}", hf_test="validation"),
    Task("mlqa", "qa", "f1", _langs("mlqa"), splits=("dev", "test"), head="span", form="squad",
         files=("mlqa/MLQA_V1/{split}/{split}-context-{lang}-question-{lang}.json",), hf="MLQA.{lang}.{lang}"),
    # XTREME evaluates TyDiQA-GoldP on its dev set
    Task("tydiqa", "qa", "f1", _langs("tydiqa"), splits=("train", "test"), head="span", form="squad",
         files=("tydiqa/tydiqa-goldp-v1.1-{split}/tydiqa.goldp.{lang}.{split}.json",), file_splits=(("test", "dev"),),
         hf="tydiqa", hf_test="validation", hf_select=_by_tydiqa_id),
    Task("bucc2018", "retrieval", "f1", _langs("bucc2018"), splits=("dev", "test"), form="bucc",
         files=("bucc2018/{lang}-en.{split}.{lang}", "bucc2018/{lang}-en.{split}.en", "bucc2018/{lang}-en.{split}.gold"),
         hf="bucc18.{lang}", threshold_split="dev"),
    Task("tatoeba", "retrieval", "accuracy", _langs("tatoeba"), splits=("test",), form="tatoeba",
         files=("tatoeba/tatoeba.{lang3}-eng.{lang3}", "tatoeba/tatoeba.{lang3}-eng.eng"), hf="tatoeba.{lang3}",
         hf_test="validation"),
    # English training data of the QA tasks (not evaluated): squad/{train,dev}-v1.1.json
    Task("squad", "qa", "f1", ("en",), splits=("train", "dev"), head="span", form="squad",
         files=("squad/{split}-v1.1.json",), hf="squad"),
)}

EVAL_TASKS = ("xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba")
# The English training data XTREME fine-tunes on for each target task (`xopt train` trains on these).
TRAIN_TASK = {"xnli": "xnli", "pawsx": "pawsx", "udpos": "udpos", "panx": "panx", "xquad": "squad",
              "mlqa": "squad", "tydiqa": "tydiqa"}


# XTREME's data forms -> task families (xopt.tasks.families)
KIND_OF = {"classify": "sequence", "tagging": "token", "qa": "span", "retrieval": "retrieval"}



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
    split = dict(task.file_splits).get(split, split)
    return [root / f.format(lang=lang, split=split, lang3=TATOEBA_LANG3.get(lang, lang)) for f in task.files]


def load_xtreme_layout(task: Task, lang: str, split: str, root: Path):
    return xtreme_files.READERS[task.form](xtreme_paths(task, lang, split, root), task, lang, split)


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
