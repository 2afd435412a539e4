"""Same-sample matching of embeddings, the building block of Team 1's metric learning (docs/teams.md §1.7) and of
the leak audit (`hpa_zoo.analysis.leaks`): per-set standardisation, cosine nearest neighbours and a cut-off.

NumPy only; the defaults are Team 1's.
"""
from __future__ import annotations

import numpy as np

#: teams.md §1.7: a match is a best cosine above 0.65 between per-set standardised embeddings.
MATCH_THRESHOLD = 0.65
#: bestfitting/src/post_processing/s2_modify_result.py: the five tags Team 1's label replacement leaves alone
#: (Peroxisomes, Endosomes, Lysosomes, Lipid droplets, Cytoplasmic bodies);
#: `hpa_zoo.infer.ensemble.metric_learning_replace`.
KEEP_CLASSES = (8, 9, 10, 20, 26)


def standardise(embeddings: np.ndarray) -> np.ndarray:
    """Per-set standardisation (``sklearn.preprocessing.scale``: each dimension to mean 0, std 1), float64."""
    x = np.asarray(embeddings, np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def match(query: np.ndarray, reference: np.ndarray, *, threshold: float = MATCH_THRESHOLD):
    """Best cosine match of every query embedding among the reference embeddings (teams.md §1.7).

    Both sets are standardised separately (`standardise`), then L2-normalised.

    Args:
        query: (N, D); reference: (M, D).
        threshold: a match needs a best cosine above it (Team 1: 0.65).

    Returns:
        (best index (N,) int64, best cosine (N,) float64, matched (N,) bool = cosine > threshold).
    """
    q, r = standardise(query), standardise(reference)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sims = q @ r.T
    best = sims.argmax(axis=1)
    score = sims[np.arange(len(q)), best]
    return best, score, score > threshold
