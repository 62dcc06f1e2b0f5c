"""Length sources: real token-count mixes for bench shapes (`--lengths`).

`demo` (every language of the demo suite mixed), `demo:LANG[,LANG..]` / `demo:each` (one mix
per language), `xtreme:TASK:LANG[,LANG..]` (an XTREME task's test split, from `--data`), or a
text file with one token count per line. Per-language mixes make the per-language cost of the
same content visible: the same sentence is more tokens in some languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xopt.errors import XoptError


@dataclass
class Lengths:
    """A length mix; `rows`, when the source has texts, holds their token ids (one list per
    sentence, aligned with `lengths`), so that benchmarks run on real ids: a variant whose cost
    depends on the values (outlier handling of int8 matmuls) is timed on real activations."""
    lengths: list[int]
    source: str
    lang: str | None = None
    split: str | None = None
    rows: list[list[int]] | None = None


def _token_rows(tokenizer, texts: list[str], prefix: str, max_length: int = 512) -> list[list[int]]:
    from xopt.batching import tokenize

    return [list(s) for s in tokenize(tokenizer, texts, prefix, max_length)]


def _token_counts(tokenizer, texts: list[str], prefix: str, max_length: int = 512) -> list[int]:
    return [len(s) for s in _token_rows(tokenizer, texts, prefix, max_length)]


def _mix(rows: list[list[int]], source: str, lang: str | None = None, split: str | None = None) -> Lengths:
    return Lengths([len(r) for r in rows], source, lang, split, rows)


def demo_lengths(tokenizer, suite: dict, lang: str | None, prefix: str) -> list[int]:
    """Token counts of the demo suite's test texts (one language, or all)."""
    langs = [lang] if lang else list(suite["test"])
    return _token_counts(tokenizer, [e["text"] for la in langs for e in suite["test"][la]], prefix)


def _demo_sources(spec: str, tokenizer, prefix: str) -> list[Lengths]:
    """`demo`: every language's test texts mixed; `demo:LANG[,LANG..]`: one length mix per
    language; `demo:each`: one per language of the suite. A language of the suite's shared
    set uses it (the same messages in every language: differences are the tokenizer's)."""
    from xopt.tasks import demo

    suite = demo.load_suite(demo.ensure_suite())
    if spec == "demo":
        texts = [e["text"] for la in suite["test"] for e in suite["test"][la]]
        return [_mix(_token_rows(tokenizer, texts, prefix), "demo")]
    arg = spec.split(":", 1)[1]
    shared = suite.get("shared") or {}
    langs = (list(shared) or list(suite["test"])) if arg == "each" else [x.strip() for x in arg.split(",") if x.strip()]
    bad = [la for la in langs if la not in suite["test"]]
    if bad or not langs:
        raise XoptError(f"--lengths {spec}: language {', '.join(bad) or '(none)'} not in the demo suite "
                        f"(have: {', '.join(suite['test'])})")
    out = []
    for la in langs:
        split = "shared" if la in shared else "test"
        texts = [e["text"] for e in (shared[la] if split == "shared" else suite["test"][la])]
        out.append(_mix(_token_rows(tokenizer, texts, prefix), f"demo:{la}", la, split))
    return out


def _xtreme_sources(spec: str, tokenizer, prefix: str, data_dir, max_length: int, n: int = 1000) -> list[Lengths]:
    """`xtreme:TASK:LANG[,LANG..]`: the test split of an XTREME task (xopt.tasks.xtreme.load,
    from `--data`), at most `n` examples per language, tokenised as the evaluation does."""
    check_lengths_spec(spec)
    from xopt.tasks import registry, xtreme

    if data_dir is None:
        raise XoptError(f"--lengths {spec}: give --data, the directory of the XTREME data (see `xopt eval --help`)")
    _, task, langs = spec.split(":")
    family = registry.family_of(task)
    out = []
    for la in [x.strip() for x in langs.split(",") if x.strip()]:
        texts = family.texts(xtreme.load(task, la, "test", data_dir))[:n]
        singles = [t for t in texts if isinstance(t, str)]
        pairs = [t for t in texts if not isinstance(t, str)]
        rows = _token_rows(tokenizer, singles, prefix, max_length) if singles else []
        if pairs:
            enc = tokenizer([prefix + a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                            max_length=max_length)
            rows += [list(x) for x in enc["input_ids"]]
        out.append(_mix(rows, f"xtreme:{task}:{la}", la, "test"))
    return out


def length_sources(spec: str, tokenizer, prefix: str, data_dir=None, max_length: int = 512) -> list[Lengths]:
    """The length mixes named by `--lengths`: demo, demo:LANG[,LANG..], demo:each,
    xtreme:TASK:LANG[,LANG..] (with `data_dir`), or a text file with one token count per line
    (counts only: its batches get random ids)."""
    if spec == "demo" or spec.startswith("demo:"):
        return _demo_sources(spec, tokenizer, prefix)
    if spec.startswith("xtreme:"):
        return _xtreme_sources(spec, tokenizer, prefix, data_dir, max_length)
    path = Path(spec)
    if not path.is_file():
        raise XoptError(f"--lengths {spec}: not demo, demo:LANG, demo:each, xtreme:TASK:LANG or an existing file")
    try:
        vals = [int(x) for x in path.read_text().split()]
    except ValueError:
        raise XoptError(f"--lengths {spec}: expected one integer token count per line") from None
    if not vals or min(vals) < 1:
        raise XoptError(f"--lengths {spec}: empty or non-positive lengths")
    return [Lengths(vals, str(path))]


def check_lengths_spec(spec: str) -> None:
    """Refuse a malformed --lengths before any variant is loaded."""
    if spec == "demo" or spec.startswith("demo:"):
        return
    if spec.startswith("xtreme:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise XoptError(f"--lengths {spec}: expected xtreme:TASK:LANG, e.g. xtreme:xnli:de")
        try:
            from xopt.tasks import xtreme
        except ImportError:
            raise XoptError(f"--lengths {spec}: this xopt has no XTREME loaders (xopt.tasks.xtreme); "
                            "use --lengths demo:LANG or a file of token counts") from None
        if not (callable(getattr(xtreme, "load", None)) and callable(getattr(xtreme, "get_task", None))):
            raise XoptError(f"--lengths {spec}: xopt.tasks.xtreme has no load()/get_task(); "
                            "use --lengths demo:LANG or a file of token counts")
        xtreme.get_task(parts[1])        # an unknown task name: its own one-line error
        return
    if not Path(spec).is_file():
        raise XoptError(f"--lengths {spec}: not demo, demo:LANG, demo:each, xtreme:TASK:LANG or an existing file")
