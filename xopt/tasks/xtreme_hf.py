"""XTREME from Hugging Face `datasets` directories of the `google/xtreme` configs, opened offline
(`datasets.load_from_disk` or `pyarrow.parquet`; nothing downloaded): `load_hf` reads one
(task, lang, split) of a config directory into the task family's internal example form, by the
converter `READERS[Task.form]`; the task's `hf_label` names its label column and `hf_select`
picks one language's rows of a config that holds several.
"""

from __future__ import annotations

import json
from pathlib import Path

from xopt.errors import XoptError
from xopt.tasks.xtreme_files import Bitext, _check_label, check_qa

HF_SPLIT = {"train": "train", "dev": "validation", "test": "test"}


def _need_module(name: str, where: Path):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise XoptError(f"{where}: reading Hugging Face dataset directories needs `datasets`: "
                        "pip install 'xopt[xtreme]'") from None


def hf_split(task, split: str) -> str:
    """The hub's name of `split` (its test set is "validation" for the tasks whose `hf_test` says so)."""
    return task.hf_test if split == "test" else HF_SPLIT[split]


def _hf_rows(cfg_dir: Path, split: str, task, lang: str):
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



def _pairs(task, lang, rows, lab, where):
    col = task.hf_label
    return [{"id": f"{lang}-{i}", "text_a": r["sentence1"], "text_b": r["sentence2"], "label": lab(r[col], col, i)}
            for i, r in enumerate(rows)]


def _tags(task, lang, rows, lab, where):
    col = task.hf_label
    return [{"id": f"{lang}-{i}", "tokens": list(r["tokens"]), "tags": [lab(t, col, i) for t in r[col]]}
            for i, r in enumerate(rows)]


def _squad(task, lang, rows, lab, where):
    exs = [{"id": str(r["id"]), "context": r["context"], "question": r["question"],
            "answers": [{"text": t, "answer_start": int(s)} for t, s in
                        zip(r["answers"]["text"], r["answers"]["answer_start"])]} for r in rows]
    return check_qa(exs, task, where)


def _bucc(task, lang, rows, lab, where):
    """The hub's bucc18 keeps only the gold pairs: mining among them."""
    src_ids = [f"{lang}-{i}" for i in range(len(rows))]
    en_ids = [f"en-{i}" for i in range(len(rows))]
    return Bitext(lang, src_ids, [r["source_sentence"] for r in rows], en_ids,
                  [r["target_sentence"] for r in rows], set(zip(src_ids, en_ids)), distractors=False)


def _tatoeba(task, lang, rows, lab, where):
    ids = [str(i) for i in range(len(rows))]
    return Bitext(lang, ids, [r["source_sentence"] for r in rows], list(ids),
                  [r["target_sentence"] for r in rows], {(i, i) for i in ids})


# Task.form -> (task, lang, rows, label reader, where) -> examples or Bitext
READERS = {"pairs": _pairs, "tags": _tags, "squad": _squad, "bucc": _bucc, "tatoeba": _tatoeba}


def load_hf(task, lang: str, split: str, cfg_dir: Path):
    rows, names = _hf_rows(cfg_dir, split, task, lang)
    where = f"{cfg_dir}[{hf_split(task, split)}]"

    def lab(value, column, i):
        if isinstance(value, int) and column in names:
            value = names[column][value]
        return _check_label(str(value), task, f"{where}:{i}")

    try:
        if task.hf_select is not None:
            rows = task.hf_select(rows, lang)
        return READERS[task.form](task, lang, rows, lab, where)
    except KeyError as e:
        raise XoptError(f"{where}: column {e} missing: not the google/xtreme {task.hf_config(lang)} config") from None
