"""Analysis of result records, shared by `xopt report` and `xopt pick` (layer below both).

- index: the typed record index (EvalKey, BenchKey, RecordIndex, load, shape_key);
- bootstrap: per-example outcomes and the one paired resampling over examples;
- retention: score, gain, retention and their intervals; summary: one row per variant;
- cost: cost per language; pareto: Pareto fronts; langs: language metadata.

Nothing here imports xopt.report, xopt.pick or xopt.cli.
"""

from xopt.analysis.bootstrap import Outcomes, percentile_ci, replicate_means, resample_weights
from xopt.comparison import Comparison
from xopt.analysis.cost import bench_lang, length_dist, load_warnings, per_language_cost
from xopt.analysis.index import (BenchKey, EvalKey, RecordIndex, device_matches, host_id, host_label, host_matches,
                                 load, shape_key, shape_label, split_label, task_label)
from xopt.analysis.langs import LANGS, PAPER, RESOURCE_GROUPS, is_xlmr_large, lang_groups, paper_task
from xopt.analysis.pareto import pareto_front
from xopt.analysis.retention import (ROLES, fmt_ci, fmt_retention, gain_stats, lang_replicates, lang_scores,
                                     retention_is_point, retention_na, worst_language)
from xopt.analysis.summary import default_shape, invariance_cell, invariance_text, summary_rows

__all__ = ["BenchKey", "Comparison", "EvalKey", "LANGS", "Outcomes", "PAPER", "RESOURCE_GROUPS", "ROLES", "RecordIndex",
           "bench_lang", "default_shape", "device_matches", "host_id", "host_label", "host_matches", "fmt_ci",
           "fmt_retention", "gain_stats", "invariance_cell", "invariance_text",
           "is_xlmr_large", "lang_groups", "load_warnings", "lang_replicates", "lang_scores", "length_dist", "load",
           "paper_task", "pareto_front", "per_language_cost", "percentile_ci", "replicate_means",
           "resample_weights", "retention_is_point", "retention_na", "shape_key", "shape_label", "split_label",
           "summary_rows",
           "task_label", "worst_language"]
