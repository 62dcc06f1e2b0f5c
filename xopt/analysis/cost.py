"""Cost per language: tokens per sentence differ by language (tokenizer), and so does latency."""

from __future__ import annotations

import numpy as np

from xopt.analysis.index import RecordIndex


def length_dist(r: dict) -> dict:
    """A bench record's `length_dist` as a dict: a source string ("demo:de", see xopt.records)
    becomes {"source": ...}; the dict form is read as it is."""
    ld = r.get("length_dist") or {}
    return ld if isinstance(ld, dict) else {"source": ld}


def bench_lang(r: dict) -> str | None:
    """The language whose length mix a bench record measured, if any."""
    ld = length_dist(r)
    lang = r.get("lang") or ld.get("lang")
    if not lang and str(ld.get("source", "")).startswith("demo:"):
        lang = ld["source"].split(":", 1)[1]
    return lang


def per_language_cost(t: RecordIndex) -> list[dict]:
    """Per (model, variant, batch, language): mean tokens per sentence, the p50 of the bench record on
    the language's length mix, and the p50 implied by interpolating fixed-length benchmarks."""
    out = []
    for k, r in t.bench.items():
        lang = bench_lang(r)
        if not lang or not r.get("length_dist"):
            continue
        mean_tok = r.get("mean_tokens") or length_dist(r).get("mean_tokens")
        if mean_tok is None:
            continue
        fixed = sorted((int(k2.shape[1:]), rr["p50_ms"]) for k2, rr in t.bench.items()
                       if (k2.family, k2.variant, k2.batch) == (k.family, k.variant, k.batch)
                       and k2.shape.startswith("s"))
        implied = (float(np.interp(mean_tok, [x for x, _ in fixed], [y for _, y in fixed]))
                   if len(fixed) >= 2 else None)
        out.append({"family": k.family, "variant": k.variant, "batch": k.batch, "lang": lang,
                    "mean_tokens": float(mean_tok), "measured_ms": r["p50_ms"], "implied_ms": implied})
    return sorted(out, key=lambda r: (r["family"], r["variant"], r["batch"], r["lang"]))


def load_warnings(recs) -> list[str]:
    """One line per variant whose bench records were measured while the 1-minute load average
    exceeded the threads the measurement ran with (`env.loadavg`, `env.threads`, else the host's
    torch threads): other work shared the cores, and its times are slow by an unknown factor."""
    worst: dict[str, tuple[float, int]] = {}
    for r in recs:
        env = r.get("env") or {}
        load, threads = (env.get("loadavg") or [None])[0], env.get("threads") or (r.get("host") or {}).get(
            "torch_threads")
        if r.get("kind") == "bench" and load is not None and threads and load > threads:
            name = f"{r['model']}/{r['variant']}"
            if load > worst.get(name, (0.0, 0))[0]:
                worst[name] = (load, threads)
    return [f"{name}: measured at a 1-minute load average of {load:.2f} on {threads} threads: other processes "
            f"shared the cores, so its times are slow by an unknown factor; measure on an idle machine"
            for name, (load, threads) in worst.items()]
