"""The offline demo suite, built from the human translations in Debian's gettext catalogs.

Every English msgid and its translations form a parallel corpus in dozens of languages.
From a fixed list of catalogs (those of `catalogs.DEBIAN_PACKAGES`) we build:

- `demo-topic` (target task): what a message is, from the catalog it comes from: a country,
  a language, a file type, a GUI label, a widget property or an image-loader message. The
  head is trained on English only and evaluated on every language's translations
  (zero-shot cross-lingual transfer, as XNLI or PAWS-X in XTREME).
- `demo-intermediate` (English intermediate task): the same kind of question on *other*
  catalogs (language names and families of ISO 639-3/-5, subdivisions, currencies, writing
  systems, command-line messages, PAM, GLib), so that baseline (target only) vs X-STILTs
  (intermediate, then target) is a real comparison, whatever its outcome. As in the X-STILTs
  setting where intermediate training pays off, the target task has little English training
  data (30 examples per label) and the intermediate task many examples (250 per label) of a
  related decision.
- `demo-retrieval` (Tatoeba's protocol, scored by the same code as XTREME's Tatoeba,
  `RetrievalFamily.evaluate`): for each language, each test translation retrieves its English
  source among all the language's test sources (xx -> en), top-1 by cosine of the mean-pooled
  hidden states of the encoder's middle layer, as XTREME; `--retrieval-layer` chooses another
  layer (the demo also scores the last layer, e5's own pooling), and records say which.
- a `shared` set: the same English test messages translated in every one of a group of
  languages (at least the non-Latin scripts ar, hi, ja, ko, ru, th, zh, ka, ta, my), for
  comparisons across languages on identical content (e.g. tokens per sentence).

Splits are decided by a hash of (catalog, msgid), so a message is in the same split on
every machine whatever languages it has. Messages that are only format strings, multi-line
help texts and untranslated entries are dropped; duplicates are removed on normalised text
on both sides (mnemonics, case, punctuation and digits ignored: "_Open"/"Open" collide); an
English text found in a target catalog and in intermediate ones stays the target's (its
intermediate copies are dropped, so the intermediate task never trains on a target text).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

from xopt.errors import XoptError, read_json
from xopt.tasks import xtreme
from xopt.tasks.catalogs import APT_LINE, LOCALE_DIR, locale_catalogs, read_mo
from xopt.tasks.registry import TaskEntry, register_task

FORMAT = "xopt-demo-suite/4"

TARGET = "demo-topic"
INTERMEDIATE = "demo-intermediate"
RETRIEVAL = "demo-retrieval"
TASKS = (TARGET, RETRIEVAL)

# catalog -> label, per task. Catalogs of the two tasks are disjoint.
TARGET_LABELS = {
    "iso_3166-1": "country", "iso_639-2": "language", "shared-mime-info": "file type",
    "gtk20": "GUI label", "gtk20-properties": "widget property", "gdk-pixbuf": "image loader",
}
INTERMEDIATE_LABELS = {
    "iso_639-3": "language name", "iso_639-5": "language family", "iso_3166-2": "subdivision",
    "iso_4217": "currency", "iso_15924": "writing system", "coreutils": "command-line tool",
    "Linux-PAM": "authentication", "glib20": "system library",
}

# XTREME's 40 languages (English included) and the locale folder that holds each.
XTREME_LANGS = ("af ar bg bn de el en es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr ms my nl pt ru "
                "sw ta te th tl tr ur vi yo zh").split()
LOCALE_OF = {"zh": "zh_CN"}
NON_LATIN_REQUIRED = ("ar", "hi", "ja", "ko", "ru", "th", "zh", "ka", "ta", "my")
QUICK_LANGS = ("de", "ar", "hi", "ja")
SCRIPTS = {  # language -> script, for per-script groups in reports
    **{lang: "Latin" for lang in "af de en es et eu fi fr hu id it jv ms nl pt sw tl tr vi yo".split()},
    "ar": "Arabic", "fa": "Arabic", "ur": "Arabic", "bg": "Cyrillic", "kk": "Cyrillic", "ru": "Cyrillic",
    "bn": "Bengali", "el": "Greek", "he": "Hebrew", "hi": "Devanagari", "mr": "Devanagari",
    "ja": "Japanese", "ka": "Georgian", "ko": "Hangul", "ml": "Malayalam", "my": "Myanmar",
    "ta": "Tamil", "te": "Telugu", "th": "Thai", "zh": "Han",
}

_FMT = re.compile(r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.\d+)?(hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcsSpn%]"
                  r"|%\([^)]*\)[a-z]|\{[^{}]*\}|\$\{?\w+\}?|<[^>]+>")
_MNEMONIC = re.compile(r"\(_[^\s)]\)|_(?=\w)|&(?=\w)")


def clean(text: str) -> str:
    """Display text: mnemonic markers removed, whitespace collapsed."""
    return re.sub(r"\s+", " ", _MNEMONIC.sub("", text)).strip()


def norm(text: str) -> str:
    """Key for near-duplicate detection: case, punctuation, digits and format specifiers ignored."""
    t = unicodedata.normalize("NFKC", _FMT.sub(" ", clean(text))).casefold()
    return " ".join(re.sub(r"[\W\d_]+", " ", t).split())


def usable(text: str, max_chars: int = 160) -> bool:
    """Not a bare format string, not a multi-line help text, not too long."""
    if "\n" in text.strip() or len(text) > max_chars:
        return False
    return len(norm(text).replace(" ", "")) >= 2


def split_of(catalog: str, msgid: str) -> str:
    """Stable split by hash: 20% test, 10% dev, 70% train."""
    u = int.from_bytes(hashlib.sha1(f"{catalog}\x00{msgid}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < 0.2 else "dev" if u < 0.3 else "train"


def _example_id(catalog: str, msgid: str) -> str:
    return hashlib.sha1(f"{catalog}\x00{msgid}".encode()).hexdigest()[:12]


def build_suite(locale_dir: Path = LOCALE_DIR, seed: int = 0, per_label: int = 20, train_per_label: int = 30,
                intermediate_per_label: int = 250, calib_per_lang: int = 64, min_pairs: int = 200,
                min_shared: int = 100, progress=None) -> dict:
    """Read the catalogs and build the suite (a JSON-able dict). See the module doc."""
    found = locale_catalogs(Path(locale_dir), tuple(TARGET_LABELS) + tuple(INTERMEDIATE_LABELS))
    if not found:
        raise XoptError(f"no gettext catalogs under {locale_dir}; install them: {APT_LINE}")
    pairs_by_lang, english = _read_pairs(found, progress)
    keep = _kept_keys(english)
    rng = random.Random(seed)   # one generator through every step, in this order: the splits depend on it
    tasks = _english_tasks(keep, english, rng, per_label, train_per_label, intermediate_per_label)
    counts, test, calib, test_pools = _language_sets(pairs_by_lang, keep, english, rng, per_label, calib_per_lang,
                                                     min_pairs)
    # English: its own test set (source side) for in-language scores and calibration text
    test["en"] = [{"id": e["id"], "source": e["text"], "text": e["text"], "label": e["label"]}
                  for e in tasks[TARGET]["test"]]
    en_train = [e["text"] for t in (TARGET, INTERMEDIATE) for e in tasks[t]["train"]]
    rng.shuffle(en_train)
    calib["en"] = en_train[:calib_per_lang]
    label_of = {**TARGET_LABELS, **INTERMEDIATE_LABELS}
    shared_langs, shared_ids = _shared_set(test_pools, min_shared)
    shared = {lang: sorted(({"id": i, "source": english[(test_pools[lang][i][0], test_pools[lang][i][1])],
                             "text": test_pools[lang][i][2], "label": label_of[test_pools[lang][i][0]]}
                            for i in shared_ids), key=lambda e: e["id"]) for lang in shared_langs}
    return {"format": FORMAT, "seed": seed, "locale_dir": str(locale_dir),
            "catalogs": {"target": TARGET_LABELS, "intermediate": INTERMEDIATE_LABELS},
            "languages": sorted(test), "pair_counts": counts, "tasks": tasks,
            "test": test, "shared": shared, "calibration": calib,
            "params": {"per_label": per_label, "train_per_label": train_per_label,
                       "intermediate_per_label": intermediate_per_label, "min_pairs": min_pairs}}


def _read_pairs(found: dict, progress) -> tuple[dict[str, list], dict[tuple[str, str], str]]:
    """Step 1: every usable (catalog, msgid, translation) of every locale we may use, per
    language, and {(catalog, msgid): cleaned English}."""
    pairs_by_lang: dict[str, list] = {}
    english: dict[tuple[str, str], str] = {}
    wanted = {lang: LOCALE_OF.get(lang, lang) for lang in XTREME_LANGS if lang != "en"}
    items = [(lang, loc) for lang, loc in wanted.items() if loc in found]
    for lang, loc in (progress(items, "reading catalogs") if progress else items):
        prs = []
        for cat, path in found[loc].items():
            try:
                entries = read_mo(path)
            except XoptError:
                continue   # one broken catalog must not sink the suite; it is simply absent
            for p in entries:
                src, tgt = clean(p.source), clean(p.target)
                if not (usable(p.source) and usable(p.target)) or norm(src) == norm(tgt):
                    continue
                english[(cat, p.source)] = src
                prs.append((cat, p.source, tgt))
        pairs_by_lang[lang] = prs
    return pairs_by_lang, english


def _kept_keys(english: dict) -> set:
    """Step 2, the English pool: normalised duplicates dropped (across catalogs too: ambiguous
    labels); a text of a target catalog stays the target's, its intermediate copies are dropped."""
    by_norm = defaultdict(list)
    for key, src in english.items():
        by_norm[norm(src)].append(key)
    keep = set()
    for keys in by_norm.values():
        pool = [k for k in keys if k[0] in TARGET_LABELS] or keys
        if len({c for c, _ in pool}) == 1:
            keep.add(min(pool))
    return keep


def _english_tasks(keep: set, english: dict, rng, per_label: int, train_per_label: int,
                   intermediate_per_label: int) -> dict:
    """Step 3: the English train/dev/test splits of the target and intermediate tasks (the
    intermediate task has no test split: its test messages train it)."""
    tasks = {}
    for task, labels in ((TARGET, TARGET_LABELS), (INTERMEDIATE, INTERMEDIATE_LABELS)):
        cap = train_per_label if task == TARGET else intermediate_per_label
        splits = {"train": [], "dev": [], "test": []}
        for cat, label in labels.items():
            keys = sorted(k for k in keep if k[0] == cat)
            for split in splits:
                ks = [k for k in keys if (split_of(*k) if task == TARGET else
                                          ("dev" if split_of(*k) == "dev" else "train")) == split]
                rng.shuffle(ks)
                limit = cap if split == "train" else per_label
                splits[split] += [{"id": _example_id(*k), "text": english[k], "label": label}
                                  for k in ks[:limit]]
        for split in splits.values():
            split.sort(key=lambda e: e["id"])
        tasks[task] = {"labels": sorted(set(labels.values())), "catalogs": labels,
                       **{k: v for k, v in splits.items() if v}}
    return tasks


def _language_sets(pairs_by_lang: dict, keep: set, english: dict, rng, per_label: int, calib_per_lang: int,
                   min_pairs: int) -> tuple[dict, dict, dict, dict]:
    """Step 4, per language with at least `min_pairs` kept pairs: its test set (translations of
    English test messages, `per_label` per label), calibration text (from train messages) and test
    pool {example id: (catalog, msgid, translation)}; and every language's kept pair count."""
    label_of = {**TARGET_LABELS, **INTERMEDIATE_LABELS}
    counts, test, calib, test_pools = {}, {}, {}, {}
    for lang, prs in sorted(pairs_by_lang.items()):
        seen, pool = set(), []
        for cat, msgid, tgt in sorted(prs, key=lambda p: _example_id(p[0], p[1])):
            n = norm(tgt)
            if (cat, msgid) not in keep or n in seen:
                continue
            seen.add(n)
            pool.append((cat, msgid, tgt))
        counts[lang] = len(pool)
        if len(pool) < min_pairs:
            continue
        tp = [p for p in pool if p[0] in TARGET_LABELS and split_of(p[0], p[1]) == "test"]
        test_pools[lang] = {_example_id(c, m): (c, m, t) for c, m, t in tp}
        by_label = defaultdict(list)
        for p in tp:
            by_label[label_of[p[0]]].append(p)
        chosen = []
        for label in sorted(by_label):
            ps = by_label[label]
            rng.shuffle(ps)
            chosen += ps[:per_label]
        test[lang] = sorted(({"id": _example_id(c, m), "source": english[(c, m)], "text": t,
                              "label": label_of[c]} for c, m, t in chosen), key=lambda e: e["id"])
        cp = [t for c, m, t in pool if split_of(c, m) == "train"]
        rng.shuffle(cp)
        calib[lang] = cp[:calib_per_lang]
    return counts, test, calib, test_pools


def _shared_set(pools: dict[str, dict], min_shared: int) -> tuple[list[str], list[str]]:
    """Largest group of languages (the required non-Latin ones always in) whose test pools
    share at least `min_shared` English messages; drop the worst-covered language first."""
    langs = sorted(pools)
    while True:
        ids = set.intersection(*(set(pools[lang]) for lang in langs)) if langs else set()
        if len(ids) >= min_shared or len(langs) <= len(NON_LATIN_REQUIRED):
            return langs, sorted(ids)
        droppable = [lang for lang in langs if lang not in NON_LATIN_REQUIRED]
        if not droppable:
            return langs, sorted(ids)
        best = max(droppable, key=lambda d: len(set.intersection(*(set(pools[x]) for x in langs if x != d))))
        langs.remove(best)


def save_suite(suite: dict, path: Path) -> Path:
    from xopt.manifest import atomic_write

    return atomic_write(path, json.dumps(suite, ensure_ascii=False, separators=(",", ":")))


def load_suite(path: Path) -> dict:
    path = Path(path)
    suite = read_json(path, "demo suite", "omit --data to build and use the cached one (delete a corrupt one first)")
    if not isinstance(suite, dict) or suite.get("format") != FORMAT:
        raise XoptError(f"{path}: not a demo suite (format {suite.get('format') if isinstance(suite, dict) else None!r})")
    if problem := _suite_problem(suite):
        raise XoptError(f"{path}: {problem}; rebuild it (`xopt demo` builds the cached one) or fix that entry")
    return suite


def _suite_problem(suite: dict) -> str | None:
    """What in a demo suite is not what the tasks read (None: nothing): every example of every
    task split, language and the shared set a table with string `id` and `text` and a label of
    its task, the calibration texts strings; a missing or mistyped entry is named, index included."""
    tasks = suite.get("tasks")
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        return "'tasks' is not a table of tasks"
    sets = {f"tasks.{n}.{split}": (t[split], set(t.get("labels") or ())) for n, t in tasks.items()
            for split in ("train", "dev", "test") if split in t}
    labels = set(tasks.get(TARGET, {}).get("labels") or ())
    for key in ("test", "shared"):
        if not isinstance(suite.get(key), dict):
            return f"{key!r} is not a table of languages"
        sets.update({f"{key}.{lang}": (exs, labels) for lang, exs in suite[key].items()})
    for where, (exs, known) in sets.items():
        if not isinstance(exs, list):
            return f"{where} is not a list of examples"
        for i, e in enumerate(exs):
            if not isinstance(e, dict):
                return f"{where}[{i}] is not an example (a table)"
            bad = [k for k in ("id", "text") if not isinstance(e.get(k), str) or not e[k].strip()]
            if bad:
                return f"{where}[{i}] has no {bad[0]!r} (a string that is not blank)"
            if e.get("label") not in known:
                return f"{where}[{i}] ({e['id']}): label {e.get('label')!r} is not one of {sorted(known)}"
    calib = suite.get("calibration", {})
    if not isinstance(calib, dict) or not all(isinstance(ts, list) and all(isinstance(t, str) for t in ts)
                                              for ts in calib.values()):
        return "'calibration' is not a table of languages to lists of texts"
    return None


def summary(suite: dict) -> list[tuple[str, int, int, str]]:
    """(language, catalog pairs, test examples, script) per language, for printing."""
    return [(lang, suite["pair_counts"].get(lang, 0), len(suite["test"][lang]), SCRIPTS.get(lang, "?"))
            for lang in suite["languages"]]


def ensure_suite(path: Path | None = None, locale_dir: Path = LOCALE_DIR, force: bool = False) -> Path:
    """The demo suite at `path` (default: in the cache), built from the catalogs if missing."""
    from xopt.cache import cache_dir
    from xopt.progress import track

    path = Path(path) if path else cache_dir() / "demo-suite.json"
    if not force and path.is_file():
        try:
            load_suite(path)
        except XoptError:
            force = True   # an older format or a damaged file: rebuild it
    if force or not path.is_file():
        save_suite(build_suite(locale_dir, progress=lambda items, desc: track(items, desc)), path)
    return path


# --- registration ------------------------------------------------------------------------------

def _load_entry(name: str, data: dict, stage):
    """English train/dev of a demo classification task from the suite file."""
    from xopt.tasks.intermediate import data_path
    from xopt.tasks.registry import TaskData

    path = data_path(name, data)
    t = load_suite(path)["tasks"].get(name)
    if not t or not t.get("train") or not t.get("dev"):
        raise XoptError(f"task {name}: empty train or dev split in {path}")
    return TaskData(name, "sequence", t["labels"], t["train"], t["dev"])


def bitext(lang: str, examples: list[dict]) -> xtreme.Bitext:
    """One language's test examples as a Tatoeba bitext: each translation (`text`) and its English `source`."""
    ids = [e["id"] for e in examples]
    return xtreme.Bitext(lang, ids, [e["text"] for e in examples], list(ids), [e["source"] for e in examples])


register_task(TaskEntry(TARGET, "sequence", "demo", _load_entry))
register_task(TaskEntry(INTERMEDIATE, "sequence", "demo", _load_entry))
# the retrieval task is scored as XTREME's Tatoeba: its spec is Tatoeba's
register_task(TaskEntry(RETRIEVAL, "retrieval", "demo", spec=xtreme.TASKS["tatoeba"]))
