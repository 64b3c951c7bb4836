//! Confusion matrices and segmentation scores for semantic segmentation.
