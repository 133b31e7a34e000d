"""Evaluation metrics: recall@K, macro mAP, accuracy, grounding, pixels, gathering across workers (plain torch).

Every metric is reported in percent.
"""
from .accuracy import accuracy, accuracy_sum
from .average_precision import average_precision, mean_average_precision
from .retrieval import first_match_rank, recall_at_k, recall_counts, retrieval_metrics

__all__ = ["accuracy", "accuracy_sum", "average_precision", "mean_average_precision", "first_match_rank",
           "recall_at_k", "recall_counts", "retrieval_metrics"]
