"""Yume-1.5 curation and training pipeline.

Subpackages `yume.flows`, `yume.tasks`, `yume.models` and `yume.datasets` live in the repo-root
folders of the same names (see pyproject's package-dir).
"""

__version__ = "0.1.0"
