"""dampit.metrics: speaker-verification scoring and error rates.

- ``error_rates``: exact, sort-based EER, minDCF and DET curves;
- ``embedding_store``: memory-mappable on-disk embedding cache;
- ``multicrop``: closed-form multi-crop (and full-utterance) trial scoring;
- ``asnorm``: adaptive symmetric score normalisation with a cohort;
- ``plots``: DET curve and score histogram PNGs, and a metrics report.
"""

from dampit.metrics.asnorm import as_norm, cohort_statistics
from dampit.metrics.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    UnknownUtteranceError,
    read_trial_indices,
    save_embeddings,
)
from dampit.metrics.error_rates import compute_eer, compute_min_dcf, det_curve
from dampit.metrics.multicrop import (
    CropStats,
    ScoringVectors,
    as_scoring_vectors,
    cosine_scores,
    crop_statistics,
    explicit_pair_scores,
    read_scores,
    score_from_stats,
    score_trial_list,
    score_trials,
    write_scores,
)
from dampit.metrics.plots import plot_det, plot_score_histogram, write_report

__all__ = [
    "CropStats",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "ScoringVectors",
    "UnknownUtteranceError",
    "as_norm",
    "as_scoring_vectors",
    "cohort_statistics",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "crop_statistics",
    "det_curve",
    "explicit_pair_scores",
    "plot_det",
    "plot_score_histogram",
    "read_scores",
    "read_trial_indices",
    "save_embeddings",
    "score_from_stats",
    "score_trial_list",
    "score_trials",
    "write_report",
    "write_scores",
]
