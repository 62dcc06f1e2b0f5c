"""Tasks: data loading, features, metrics, and ONE registry (xopt.tasks.registry).

- registry.py: the `TaskFamily` protocol, the family and task registries, lookups.
- families.py: the families (sequence, choice, token, span, mlm, retrieval).
- xtreme.py, intermediate.py, demo.py: their tasks' data, each registering its tasks.
- xtreme_files.py, xtreme_hf.py: XTREME's readers, per file format of the download layout and of the hub.
- classify.py, tagging.py, qa.py, retrieval.py: XTREME's features and metrics, used by the families.
"""

# Importing the package registers every family and task, so any lookup in the registry sees them all.
from xopt.tasks import families, xtreme, intermediate, demo  # noqa: E402, F401
