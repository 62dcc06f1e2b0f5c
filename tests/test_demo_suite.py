import json
from collections import Counter

import pytest

from xopt.errors import XoptError
from xopt.tasks import demo


def test_norm_and_usable():
    assert demo.norm("_Open") == demo.norm("Open") == demo.norm("OPEN…")
    assert demo.clean("開く(_O)") == "開く"
    assert not demo.usable("%s: %s")
    assert not demo.usable("line one\nline two")
    assert demo.usable("Open file")


def test_split_is_stable_and_roughly_proportional():
    splits = Counter(demo.split_of("cat", f"message {i}") for i in range(5000))
    assert demo.split_of("cat", "message 1") == demo.split_of("cat", "message 1")
    assert 0.17 < splits["test"] / 5000 < 0.23 and 0.08 < splits["dev"] / 5000 < 0.12


def test_build_suite_from_written_catalogs(tiny_suite):
    s = json.loads(tiny_suite.read_text())
    assert set(s["languages"]) == {"de", "ru", "ja", "en"}
    topic = s["tasks"][demo.TARGET]
    assert topic["labels"] == sorted(set(demo.TARGET_LABELS.values()))
    # English splits are disjoint; test translations only come from test-split messages
    ids = {sp: {e["id"] for e in topic[sp]} for sp in ("train", "dev", "test")}
    assert not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    for lang in ("de", "ru", "ja"):
        assert not {e["id"] for e in s["test"][lang]} & (ids["train"] | ids["dev"])
        texts = [e["text"] for e in s["test"][lang]]
        assert len({demo.norm(t) for t in texts}) == len(texts)       # deduped on the target side
        assert all(e["label"] in topic["labels"] for e in s["test"][lang])
    # bare format strings and the "_Open"/"Open" near-duplicates are gone
    all_src = [e["text"] for sp in ("train", "dev", "test") for e in topic[sp]]
    assert "%s: %s" not in all_src
    assert sum(demo.norm(t) == "open" for t in all_src) <= 1
    # intermediate task uses the other catalogs only
    assert set(s["tasks"][demo.INTERMEDIATE]["labels"]) == set(demo.INTERMEDIATE_LABELS.values())
    # the shared set: the same English messages in every language of the group
    shared = s["shared"]
    assert len({tuple(e["id"] for e in v) for v in shared.values()}) == 1
    # calibration text is never test text
    test_texts = {e["text"] for lang in ("de", "ru", "ja") for e in s["test"][lang]}
    assert not test_texts & {t for lang in ("de", "ru", "ja") for t in s["calibration"][lang]}


def test_missing_catalogs_is_a_clear_error(tmp_path):
    with pytest.raises(XoptError, match="apt-get install"):
        demo.build_suite(tmp_path)


def test_corrupt_suite_file(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{not json")
    with pytest.raises(XoptError, match="corrupt demo suite"):
        demo.load_suite(p)


def test_suite_nested_past_the_parser_is_one_line(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(XoptError, match=r"corrupt demo suite: malformed JSON \(nested too deeply"):
        demo.load_suite(p)


@pytest.mark.parametrize("damage, words", [
    (lambda s: s["test"]["de"][1].pop("text"), "test.de[1] has no 'text'"),
    (lambda s: s["test"]["de"][2].__setitem__("text", "  "), "test.de[2] has no 'text' (a string that is not blank)"),
    (lambda s: s["shared"][next(iter(s["shared"]))].__setitem__(0, "just a string"), "[0] is not an example"),
    (lambda s: s["tasks"]["demo-topic"]["train"][2].__setitem__("label", "planet"), "label 'planet' is not one of"),
    (lambda s: s["calibration"].__setitem__("de", [1, 2]), "'calibration'"),
    (lambda s: s.__setitem__("test", []), "'test' is not a table"),
])
def test_suite_entry_the_tasks_cannot_read_is_one_line(tiny_suite, tmp_path, damage, words):
    """A suite example without `text` (or of another shape) is named at load, not a KeyError in
    the middle of an evaluation."""
    suite = json.loads(tiny_suite.read_text())
    damage(suite)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(suite))
    with pytest.raises(XoptError, match="rebuild it") as e:
        demo.load_suite(p)
    assert words in str(e.value)
