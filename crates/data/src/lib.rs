//! Semantic segmentation datasets, a synthetic Synthia-format generator and a parallel loader.
