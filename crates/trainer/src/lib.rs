//! Training, evaluation and prediction for semantic segmentation with Recall loss.
