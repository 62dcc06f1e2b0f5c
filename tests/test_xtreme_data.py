"""XTREME loaders: the fixtures (XTREME's download layout), google/xtreme HF dirs opened offline,
and one-line errors for bad input."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from xopt.errors import XoptError
from xopt.tasks import xtreme as X

FIX = Path(__file__).parent / "fixtures" / "xtreme"
_spec = importlib.util.spec_from_file_location("write_fixtures", FIX / "write_fixtures.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.mark.parametrize("task,table", [("xnli", W.NLI), ("pawsx", W.PAWS)])
def test_pair_tsv_round_trip(task, table):
    for lang, rows in table.items():
        for split in ("dev", "test"):
            got = X.load(task, lang, split, FIX)
            assert [(e["text_a"], e["text_b"], e["label"]) for e in got] == rows
    assert len(X.load(task, "en", "train", FIX)) == len(table["en"])


@pytest.mark.parametrize("task,table", [("udpos", W.POS), ("panx", W.NER)])
def test_tag_tsv_round_trip(task, table):
    for lang, sents in table.items():
        got = X.load(task, lang, "test", FIX)
        assert [list(zip(e["tokens"], e["tags"])) for e in got] == [list(s) for s in sents]


def test_squad_json_round_trip():
    cases = {"xquad": ("en", "de", "ar", "zh", "ru"), "mlqa": ("en", "de", "ar", "zh"), "tydiqa": ("en", "ar", "ko", "ru")}
    for task, langs in cases.items():
        for lang in langs:
            got = X.load(task, lang, "test", FIX)
            want = [(q, a) for _, qas in W.QA[lang] for q, a in qas]
            assert [(e["question"], e["answers"][0]["text"]) for e in got] == want
            for e in got:   # spans point into the context
                a = e["answers"][0]
                assert e["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    assert len(X.load("squad", "en", "train", FIX)) == 3


def test_retrieval_round_trip():
    for lang in ("de", "ru", "zh"):
        b = X.load("bucc2018", lang, "test", FIX)
        pairs, extra_src, extra_en = W.BITEXT[lang]
        assert len(b.src) == len(pairs) + len(extra_src) and len(b.en) == len(pairs) + len(extra_en)
        src, en = dict(zip(b.src_ids, b.src)), dict(zip(b.en_ids, b.en))
        assert sorted((src[s], en[e]) for s, e in b.gold) == sorted(pairs)
    for lang in ("de", "ar", "zh", "ru"):
        t = X.load("tatoeba", lang, "test", FIX)
        assert list(zip(t.src, t.en)) == W.BITEXT[lang][0]


def test_registry_lists_xtreme_languages():
    assert len(X.TASKS["panx"].langs) == 40 and len(X.TASKS["udpos"].langs) == 33
    assert len(X.TASKS["tatoeba"].langs) == 36 and len(X.TASKS["xnli"].langs) == 15
    assert set(X.EVAL_TASKS) == {"xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba"}
    for t in X.EVAL_TASKS:   # every task's fixture has >= 3 languages, one of them in a non-Latin script
        langs = [lang for lang in X.TASKS[t].langs
                 if all(p.is_file() for p in X.xtreme_paths(X.TASKS[t], lang, "test", FIX))]
        assert len(langs) >= 3 and set(langs) & {"ar", "zh", "ru", "ja", "ko"}, (t, langs)


def test_hf_sources_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hub_ner = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]   # the hub's ClassLabel order
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=hub_ner)),
                               "langs": datasets.Sequence(datasets.Value("string"))})
    ner = W.NER["ru"]
    ds = datasets.Dataset.from_dict({"tokens": [[w for w, _ in s] for s in ner],
                                     "ner_tags": [[hub_ner.index(t) for _, t in s] for s in ner],
                                     "langs": [["ru"] * len(s) for s in ner]}, features=feats)
    datasets.DatasetDict({"test": ds, "validation": ds}).save_to_disk(str(tmp_path / "PAN-X.ru"))
    got = X.load("panx", "ru", "test", tmp_path)
    assert [list(zip(e["tokens"], e["tags"])) for e in got] == [list(s) for s in ner]
    # parquet written by datasets keeps the ClassLabel names in its metadata
    pos = W.POS["zh"]
    pos_feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                   "pos_tags": datasets.Sequence(datasets.ClassLabel(names=list(X.UDPOS_LABELS)))})
    (tmp_path / "udpos.Chinese").mkdir()
    datasets.Dataset.from_dict({"tokens": [[w for w, _ in s] for s in pos],
                                "pos_tags": [[X.UDPOS_LABELS.index(t) for _, t in s] for s in pos]},
                               features=pos_feats).to_parquet(str(tmp_path / "udpos.Chinese" / "test-00000-of-00001.parquet"))
    got = X.load("udpos", "zh", "test", tmp_path)
    assert [list(zip(e["tokens"], e["tags"])) for e in got] == [list(s) for s in pos]
    # XNLI: one config for all languages; XQuAD and Tatoeba: the hub's "validation" is the test set
    rows = [(lang, a, b, lab) for lang in ("de", "ar") for a, b, lab in W.NLI[lang]]
    datasets.Dataset.from_dict({"language": [r[0] for r in rows], "sentence1": [r[1] for r in rows],
                                "sentence2": [r[2] for r in rows], "gold_label": [r[3] for r in rows]}
                               ).save_to_disk(str(tmp_path / "XNLI"))
    assert [(e["text_a"], e["label"]) for e in X.load("xnli", "ar", "test", tmp_path)] == \
        [(a, lab) for a, _, lab in W.NLI["ar"]]
    qa = X.load("xquad", "zh", "test", FIX)
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({
        "id": [e["id"] for e in qa], "context": [e["context"] for e in qa], "question": [e["question"] for e in qa],
        "answers": [{"text": [a["text"] for a in e["answers"]], "answer_start": [a["answer_start"] for a in e["answers"]]}
                    for e in qa]})}).save_to_disk(str(tmp_path / "XQuAD.zh"))
    assert X.load("xquad", "zh", "test", tmp_path) == qa
    tat = W.BITEXT["ar"][0]
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({
        "source_sentence": [p[0] for p in tat], "target_sentence": [p[1] for p in tat],
        "source_lang": ["ara"] * len(tat), "target_lang": ["eng"] * len(tat)})}).save_to_disk(str(tmp_path / "tatoeba.ara"))
    t = X.load("tatoeba", "ar", "test", tmp_path)
    assert list(zip(t.src, t.en)) == tat and len(t.gold) == len(tat)


def _copy(tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIX, root)
    return root


def test_bad_input_is_one_clear_error(tmp_path):
    root = _copy(tmp_path)
    with pytest.raises(XoptError, match=r"xnli/test-hi\.tsv: missing xnli test file for language 'hi'"):
        X.load("xnli", "hi", "test", root)
    with pytest.raises(XoptError, match="unknown XTREME task 'xnli2'"):
        X.load("xnli2", "de", "test", root)
    with pytest.raises(XoptError, match="language 'xx' is not one of panx's languages"):
        X.load("panx", "xx", "test", root)
    with pytest.raises(XoptError, match="unknown split 'valid'"):
        X.load("panx", "de", "valid", root)
    with pytest.raises(XoptError, match="xquad has no dev split"):
        X.load("xquad", "de", "dev", root)
    # malformed lines name file:line
    p = root / "panx" / "test-de.tsv"
    lines = p.read_text().splitlines()
    lines[2] = "Merkel\tI-PER\textra"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(XoptError, match=r"panx/test-de\.tsv:3: malformed line"):
        X.load("panx", "de", "test", root)
    p = root / "xnli" / "test-de.tsv"
    p.write_text(p.read_text() + "only one field\n")
    with pytest.raises(XoptError, match=r"xnli/test-de\.tsv:4: malformed line"):
        X.load("xnli", "de", "test", root)
    # a label outside the label set
    p = root / "udpos" / "test-ar.tsv"
    p.write_text(p.read_text().replace("\tADJ\n", "\tADJECTIVE\n", 1))
    with pytest.raises(XoptError, match=r"udpos/test-ar\.tsv:2: label 'ADJECTIVE' is not in udpos's label set"):
        X.load("udpos", "ar", "test", root)
    p = root / "pawsx" / "test-ja.tsv"
    p.write_text(p.read_text().replace("\t1\n", "\tyes\n", 1))
    with pytest.raises(XoptError, match=r"pawsx/test-ja\.tsv:1: label 'yes'"):
        X.load("pawsx", "ja", "test", root)
    # an empty split
    (root / "xnli" / "test-zh.tsv").write_text("")
    with pytest.raises(XoptError, match="xnli zh test .*empty split"):
        X.load("xnli", "zh", "test", root)
    # XTREME's download script strips test labels: refused, not scored as if labelled
    (root / "panx" / "test-ja.tsv").write_text("東京\nは\n\n")
    with pytest.raises(XoptError, match=r"panx/test-ja\.tsv:1: no label .*strips test labels"):
        X.load("panx", "ja", "test", root)
    doc = json.loads((root / "xquad" / "xquad.de.json").read_text())
    for d in doc["data"]:
        for par in d["paragraphs"]:
            for qa in par["qas"]:
                qa["answers"] = [{"answer_start": 0, "text": ""}]
    (root / "xquad" / "xquad.de.json").write_text(json.dumps(doc))
    with pytest.raises(XoptError, match="xquad.de.json .*no label"):
        X.load("xquad", "de", "test", root)
    (root / "mlqa" / "MLQA_V1" / "test" / "test-context-ar-question-ar.json").write_text('{"data": [\n{oops}')
    with pytest.raises(XoptError, match=r"test-context-ar-question-ar\.json:2: malformed JSON"):
        X.load("mlqa", "ar", "test", root)
    os.remove(root / "bucc2018" / "ru-en.test.gold")
    with pytest.raises(XoptError, match="ru-en.test.gold: missing BUCC gold file"):
        X.load("bucc2018", "ru", "test", root)
    with open(root / "bucc2018" / "de-en.test.gold", "a") as f:
        f.write("de-test-000000099\ten-test-000000001\n")
    with pytest.raises(XoptError, match=r"de-en\.test\.gold:5: malformed gold line"):
        X.load("bucc2018", "de", "test", root)
    with open(root / "tatoeba" / "tatoeba.deu-eng.eng", "a") as f:
        f.write("one more\n")
    with pytest.raises(XoptError, match="must be line-aligned"):
        X.load("tatoeba", "de", "test", root)


def test_blank_retrieval_lines_are_not_sentences(tmp_path):
    """Blank lines in Tatoeba's aligned files drop their pair (line i of each side is still a
    pair); a BUCC sentence that is blank is no candidate, and its gold pair goes with it."""
    root = _copy(tmp_path)
    pairs = W.BITEXT["de"][0]
    src = [pairs[0][0], "", pairs[1][0], "   ", pairs[2][0], pairs[3][0], ""]
    en = [pairs[0][1], "", pairs[1][1], pairs[2][1], pairs[2][1], "\t", ""]
    (root / "tatoeba" / "tatoeba.deu-eng.deu").write_text("".join(f"{s}\n" for s in src), encoding="utf-8")
    (root / "tatoeba" / "tatoeba.deu-eng.eng").write_text("".join(f"{s}\n" for s in en), encoding="utf-8")
    t = X.load("tatoeba", "de", "test", root)
    assert list(zip(t.src, t.en)) == [pairs[0], pairs[1], (pairs[2][0], pairs[2][1])]
    assert t.gold == {(i, i) for i in t.src_ids}
    p = root / "bucc2018" / "de-en.test.de"
    lines = p.read_text(encoding="utf-8").splitlines()
    blank_id = lines[0].split("\t")[0]
    lines[0] = f"{blank_id}\t  "
    p.write_text("\n".join(lines) + "\n   \n", encoding="utf-8")
    b = X.load("bucc2018", "de", "test", root)
    assert blank_id not in b.src_ids and all(s.strip() for s in b.src + b.en)
    assert len(b.gold) == len(W.BITEXT["de"][0]) - 1 and all(s != blank_id for s, _ in b.gold)


def test_json_nested_past_the_parser_is_one_line(tmp_path):
    root = _copy(tmp_path)
    (root / "xquad" / "xquad.de.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(XoptError, match=r"xquad\.de\.json: malformed JSON \(nested too deeply"):
        X.load("xquad", "de", "test", root)
