"""XTREME's files in the layout of its `scripts/download_data.sh`: one reader per file format,
each returning the task family's internal example form (xopt.tasks.xtreme's module doc), and
`Bitext`, the form of the retrieval tasks. `READERS[Task.form]` reads one (task, lang, split)
from its files (`xtreme.xtreme_paths`).

Errors a user can cause (missing file, malformed line as file:line, a label outside the label
set, stripped test labels) raise one-line `XoptError`s. `task` is an xopt.tasks.xtreme.Task.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from xopt.errors import XoptError, parse_json


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



def _need(path: Path, task, lang: str, split: str) -> Path:
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


def _unlabelled(where: str, task) -> XoptError:
    return XoptError(f"{where}: no label ({task.name}'s split is unlabelled: XTREME's download script strips "
                     "test labels; evaluate a labelled split (--split dev) or use the original files / HF source)")


def _check_label(label: str, task, where: str) -> str:
    if label not in task.labels:
        raise XoptError(f"{where}: label {label!r} is not in {task.name}'s label set ({' '.join(task.labels)})")
    return label


def read_pair_tsv(path: Path, task) -> list[dict]:
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


def read_tag_tsv(path: Path, task) -> list[dict]:
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


def read_squad(path: Path, task, lang: str) -> list[dict]:
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


def check_qa(examples: list[dict], task, where: str) -> list[dict]:
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


def read_bucc(paths: list[Path], task, lang: str, split: str) -> Bitext:
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


def read_tatoeba(paths: list[Path], task, lang: str, split: str) -> Bitext:
    src_p, en_p = (_need(p, task, lang, split) for p in paths)
    src = [ln.rstrip("\r\n") for _, ln in _lines(src_p)]
    en = [ln.rstrip("\r\n") for _, ln in _lines(en_p)]
    if len(src) != len(en):
        raise XoptError(f"{src_p}: {len(src)} lines but {en_p} has {len(en)}; Tatoeba files must be line-aligned")
    ids = [str(i) for i in range(len(src))]
    return Bitext(lang, ids, src, list(ids), en, {(i, i) for i in ids})



def _single(read):
    """A reader of one file (its first path) in READERS' form."""
    def one(paths, task, lang, split):
        return read(_need(paths[0], task, lang, split), task, lang)
    return one


# Task.form -> (paths, task, lang, split) -> examples or Bitext
READERS = {
    "pairs": _single(lambda path, task, lang: read_pair_tsv(path, task)),
    "tags": _single(lambda path, task, lang: read_tag_tsv(path, task)),
    "squad": _single(lambda path, task, lang: check_qa(read_squad(path, task, lang), task, str(path))),
    "bucc": read_bucc,
    "tatoeba": read_tatoeba,
}
