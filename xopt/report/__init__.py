"""`xopt report`: how much of the intermediate-task gain each variant keeps, against its cost.

Reads only result records (xopt.records) through xopt.analysis (record index, bootstrap,
retention, Pareto fronts; the definitions are in xopt.analysis.retention). This package
presents them:
- table: the document model (headings, paragraphs, `Table`s, images);
- render: that model rendered to the terminal (rich), Markdown and HTML;
- terminal: `xopt eval`/`xopt bench` tables and the demo's closing table;
- sections, calibration: the report's sections; plots: its figures, one function each;
- document: the whole report (`build`, `write`, `write_report`);
- closing: the closing paragraph in plain words (gain, what each variant keeps at what
  speed-up, the pick and why) and what each retrieval protocol label means.

The analysis names the CLI, the pipeline, pick and users' scripts call as `report.X` are
re-exported here.
"""

from xopt.analysis import (LANGS, PAPER, RESOURCE_GROUPS, Outcomes, RecordIndex, default_shape, device_matches,
                           fmt_ci, fmt_retention, gain_stats, lang_groups, load, pareto_front, shape_key, shape_label,
                           summary_rows, worst_language)
from xopt.report.calibration import calibration_section
from xopt.report.closing import closing_paragraph, protocol_notes, task_order
from xopt.report.document import build, write, write_report
from xopt.report.table import Column, Doc, Mark, Table
from xopt.report.terminal import print_bench, print_eval, summary_table

Tables = RecordIndex    # the name report.load's result had before xopt.analysis

__all__ = ["LANGS", "PAPER", "RESOURCE_GROUPS", "Column", "Doc", "Mark", "Outcomes", "RecordIndex", "Table", "Tables",
           "build", "calibration_section", "closing_paragraph", "default_shape", "device_matches", "fmt_ci",
           "fmt_retention", "gain_stats", "lang_groups", "load", "pareto_front", "print_bench", "print_eval",
           "protocol_notes", "shape_key", "shape_label", "summary_rows", "summary_table", "task_order",
           "worst_language", "write", "write_report"]
