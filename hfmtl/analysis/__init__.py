"""How tasks relate: transferability estimates, gradient similarity, affinity and transfer matrices, plots.

- `transferability`: LogME and H-score of frozen features, and the ranking of candidate source tasks
  for a target by them.
- `features`: the frozen features of a task's examples from an encoder, with aligned labels.
- `gradients`: per-task gradients on the shared parameters, their cosine matrix, and a tracker that
  records it during training.
- `affinity`: the measured transfer matrix (gains of B after a stage on A) and TAG's lookahead affinity.
- `plots`: labelled heatmaps of any task x task matrix (needs matplotlib).

Example:
    >>> from hfmtl.analysis import GradientSimilarityTracker, heatmap, logme  # doctest: +SKIP
"""

from .affinity import TaskMatrix, lookahead_affinity, transfer_matrix
from .features import TaskFeatures, extract_features
from .gradients import GradientSimilarityTracker, gradient_cosine_matrix, shared_parameters, task_gradients
from .plots import heatmap
from .ranking import rank_source_encoders, rank_sources
from .transferability import LogMEResult, fit_logme, h_score, logme

__all__ = [
    "GradientSimilarityTracker",
    "LogMEResult",
    "TaskFeatures",
    "TaskMatrix",
    "extract_features",
    "fit_logme",
    "gradient_cosine_matrix",
    "h_score",
    "heatmap",
    "logme",
    "lookahead_affinity",
    "rank_source_encoders",
    "rank_sources",
    "shared_parameters",
    "task_gradients",
    "transfer_matrix",
]
