"""Language metadata: resource class and script of XTREME's languages, the groups the report
averages over, and the X-STILTs paper's figures the fp32 reproduction is compared with."""

from __future__ import annotations

import re

# Resource class: Joshi et al. 2020, "The State and Fate of Linguistic Diversity and Inclusion
# in the NLP World" (ACL 2020), taxonomy file lang2tax.txt (microsoft.github.io/linguisticdiversity):
# 5 "winners" ... 0 "left-behinds". Script: ISO 15924. Codes: XTREME's 40 languages.
LANGS = {
    "af": (3, "Latn"), "ar": (5, "Arab"), "bg": (3, "Cyrl"), "bn": (3, "Beng"), "de": (5, "Latn"),
    "el": (3, "Grek"), "en": (5, "Latn"), "es": (5, "Latn"), "et": (3, "Latn"), "eu": (4, "Latn"),
    "fa": (4, "Arab"), "fi": (4, "Latn"), "fr": (5, "Latn"), "he": (3, "Hebr"), "hi": (4, "Deva"),
    "hu": (4, "Latn"), "id": (3, "Latn"), "it": (4, "Latn"), "ja": (5, "Jpan"), "jv": (1, "Latn"),
    "ka": (3, "Geor"), "kk": (3, "Cyrl"), "ko": (4, "Hang"), "ml": (1, "Mlym"), "mr": (2, "Deva"),
    "ms": (3, "Latn"), "my": (1, "Mymr"), "nl": (4, "Latn"), "pt": (4, "Latn"), "ru": (4, "Cyrl"),
    "sw": (2, "Latn"), "ta": (3, "Taml"), "te": (1, "Telu"), "th": (3, "Thai"), "tl": (3, "Latn"),
    "tr": (4, "Latn"), "ur": (3, "Arab"), "vi": (4, "Latn"), "yo": (2, "Latn"), "zh": (5, "Hani"),
}
RESOURCE_GROUPS = (("high resource (Joshi class 4-5)", (4, 5)), ("mid resource (class 3)", (3,)),
                   ("low resource (class 0-2)", (0, 1, 2)))


def lang_groups(langs) -> list[tuple[str, list[str]]]:
    """(group name, its languages among `langs`) for resource classes and scripts."""
    out = []
    for name, classes in RESOURCE_GROUPS:
        members = [la for la in langs if la in LANGS and LANGS[la][0] in classes]
        if members:
            out.append((name, members))
    scripts = sorted({LANGS[la][1] for la in langs if la in LANGS})
    for s in scripts:
        out.append((f"script {s}", [la for la in langs if la in LANGS and LANGS[la][1] == s]))
    if len(scripts) > 1 and "Latn" in scripts:
        out.append(("non-Latin scripts", [la for la in langs if la in LANGS and LANGS[la][1] != "Latn"]))
    unknown = [la for la in langs if la not in LANGS]
    if unknown:
        out.append(("not classified", unknown))
    return out


# X-STILTs paper (Phang et al. 2020, "English intermediate-task training improves zero-shot
# cross-lingual transfer too", AACL), XLM-R large, test, averaged over languages:
# task -> (metric, baseline, best X-STILTs).
PAPER = {"xnli": ("accuracy", 79.2, 80.4), "pawsx": ("accuracy", 86.4, 87.7), "panx": ("F1", 65.4, 64.7),
         "xquad": ("F1", 76.6, 77.2), "mlqa": ("F1", 71.6, 72.3), "tydiqa": ("F1", 65.1, 76.0)}


def paper_task(task: str) -> str | None:
    """The PAPER key of a task name (xtreme-xnli, wikiann, ...), or None when the paper has no figure."""
    key = re.sub(r"[^a-z]", "", task.lower()).removeprefix("xtreme")
    key = {"wikiann": "panx", "ner": "panx", "tydiqagoldp": "tydiqa"}.get(key, key)
    return key if key in PAPER else None


def is_xlmr_large(family: str) -> bool:
    """Whether the paper's figures apply: they are XLM-R large's."""
    return bool(re.search(r"xlm[-_]?r(oberta)?[-_]?large", family.lower()))
