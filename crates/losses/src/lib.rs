//! Recall loss and the segmentation loss baselines, differentiable in candle.
