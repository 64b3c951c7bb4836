//! Per-image IoU (torchmetrics' `MeanIoU` / `mean_iou` with per-sample output): for datasets
//! whose images differ a lot, where one dataset-wide confusion matrix lets the large images
//! decide.

use crate::confusion::ConfusionMatrix;
use crate::error::MetricsError;
use crate::label::Label;
use crate::scores::Mean;
use serde::{Deserialize, Serialize};

/// Collects the per-class IoU of each image. Classes are compared per image: a class absent
/// from both an image's ground truth and its prediction has no IoU in that image (it is not 0).
#[derive(Clone, Debug, PartialEq)]
pub struct PerImageIou {
    n: usize,
    ignore: Option<u32>,
    /// Per image, per class `TP / (TP + FP + FN)` where the union is non-zero.
    images: Vec<Vec<Option<f64>>>,
}

/// What [`PerImageIou::scores`] returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerImageScores {
    /// Images seen.
    pub images: usize,
    /// Mean over images of each image's mean IoU (the mean of torchmetrics'
    /// `mean_iou(..., per_class=False)` per-sample output); `classes` counts the images with a
    /// defined mean IoU (at least one counted pixel).
    pub mean_of_images: Mean,
    /// torchmetrics' `MeanIoU(per_class=False).compute()`: the mean of every (image, class)
    /// IoU with a non-zero union, pooled over images and classes; `classes` counts the pairs.
    pub pooled: Mean,
    /// torchmetrics' `MeanIoU(per_class=True).compute()`: per class, its mean IoU over the
    /// images where it is present (in ground truth or prediction); `None` where it never is
    /// (torchmetrics returns −1 there).
    pub per_class: Vec<Option<f64>>,
    /// Each image's mean IoU (`None` for an image without any counted pixel), in the order
    /// added.
    pub per_image: Vec<Option<f64>>,
}

impl PerImageIou {
    /// An empty collector for `n_classes` classes and an ignore index (as
    /// [`ConfusionMatrix::try_new`]: errors for 0 or too many classes).
    pub fn new(n_classes: usize, ignore_index: Option<u32>) -> Result<Self, MetricsError> {
        ConfusionMatrix::try_new(n_classes, ignore_index)?;
        Ok(PerImageIou {
            n: n_classes,
            ignore: ignore_index,
            images: Vec::new(),
        })
    }

    /// Adds one image given by its own confusion matrix (same number of classes, else
    /// [`MetricsError::Incompatible`]).
    pub fn push_matrix(&mut self, m: &ConfusionMatrix) -> Result<(), MetricsError> {
        if m.n_classes() != self.n {
            return Err(MetricsError::Incompatible(format!(
                "a {}-class image matrix for {} classes",
                m.n_classes(),
                self.n
            )));
        }
        let (gt, pred, tp) = (m.gt_pixels(), m.pred_pixels(), m.true_positives());
        self.images.push(
            (0..self.n)
                .map(|c| {
                    let union = gt[c] + pred[c] - tp[c];
                    (union > 0).then(|| tp[c] as f64 / union as f64)
                })
                .collect(),
        );
        Ok(())
    }

    /// Counts `gt` / `pred` (equal lengths, several images of `pixels_per_image` pixels each,
    /// one after the other) image by image with the rules of [`ConfusionMatrix::update`], adds
    /// each image and returns their summed confusion matrix (the dataset-wide one).
    ///
    /// Errors: those of `update` (nothing is added then), and [`MetricsError::InvalidData`] if
    /// `pixels_per_image` is 0 or does not divide the length.
    pub fn update<L: Label>(
        &mut self,
        gt: &[L],
        pred: &[L],
        pixels_per_image: usize,
    ) -> Result<ConfusionMatrix, MetricsError> {
        if gt.len() != pred.len() {
            return Err(MetricsError::LengthMismatch {
                gt: gt.len(),
                pred: pred.len(),
            });
        }
        if pixels_per_image == 0 || gt.len() % pixels_per_image != 0 {
            return Err(MetricsError::InvalidData(format!(
                "{} labels are not a whole number of images of {pixels_per_image} pixels",
                gt.len()
            )));
        }
        let mut total = ConfusionMatrix::try_new(self.n, self.ignore)?;
        let mut added = Vec::new();
        for (g, p) in gt
            .chunks(pixels_per_image)
            .zip(pred.chunks(pixels_per_image))
        {
            let mut m = ConfusionMatrix::try_new(self.n, self.ignore)?;
            m.update(g, p)?;
            total.merge(&m)?;
            added.push(m);
        }
        for m in &added {
            self.push_matrix(m)?;
        }
        Ok(total)
    }

    /// Number of images added.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether no image was added.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The per-class IoU of image `i` (`None` where the class is absent from both maps).
    pub fn image(&self, i: usize) -> Option<&[Option<f64>]> {
        self.images.get(i).map(|v| v.as_slice())
    }

    /// The scores over the images added so far (`docs/metrics.md` has the definitions).
    pub fn scores(&self) -> PerImageScores {
        let per_image: Vec<Option<f64>> = self
            .images
            .iter()
            .map(|v| Mean::of(v.iter().copied()).value)
            .collect();
        let pooled = Mean::of(self.images.iter().flatten().copied());
        let per_class = (0..self.n)
            .map(|c| Mean::of(self.images.iter().map(|v| v[c])).value)
            .collect();
        PerImageScores {
            images: self.images.len(),
            mean_of_images: Mean::of(per_image.iter().copied()),
            pooled,
            per_class,
            per_image,
        }
    }
}
