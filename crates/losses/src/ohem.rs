//! Online hard example mining cross entropy (Shrivastava et al. 2016, as used for segmentation).

use crate::ce_family::CeEngine;
use crate::ce_mode::CeMode;
use crate::ohem_selection::OhemSelection;
use crate::options::LossOptions;
use crate::LossError;

/// OHEM cross entropy: the mean cross entropy over the hardest valid pixels only.
///
/// ```text
/// L = Σ_{n ∈ K} s_{y_n} CE_n / Σ_{n ∈ K} s_{y_n}
/// ```
///
/// with `K` the kept pixels ([`OhemSelection`]) and `s` the optional static class weights. The
/// selection carries no gradient: kept pixels get the (weighted) CE gradient over `|K|`, the
/// others none. The paper keeps 70 % (`keep_ratio = 0.7`). The paper's code selects among *all*
/// pixels (ignored ones count, with loss 0) and keeps `⌊0.7 · N·H·W⌋`; here only valid pixels
/// compete. `last_class_weights` reports, per class, the fraction of its pixels that were kept
/// (`NaN` for classes absent from the batch).
#[derive(Debug, Clone)]
pub struct Ohem {
    pub(crate) engine: CeEngine,
}

impl Ohem {
    /// The paper's selection: the hardest 70 % of the valid pixels.
    pub const DEFAULT_SELECTION: OhemSelection = OhemSelection::KeepRatio(0.7);

    /// OHEM over `n_classes` classes keeping the hardest 70 % of the valid pixels
    /// ([`Ohem::with_selection`] changes the rule).
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new(
                "ohem",
                LossOptions::new(n_classes),
                CeMode::Ohem(Self::DEFAULT_SELECTION),
            ),
        }
    }

    /// Sets which pixels are kept ([`OhemSelection`]: a ratio, exactly `k` pixels, a
    /// probability threshold, or mmsegmentation's sampler); its parameter is checked.
    pub fn with_selection(mut self, selection: OhemSelection) -> Result<Self, LossError> {
        selection.validate()?;
        self.engine.mode = CeMode::Ohem(selection);
        Ok(self)
    }

    /// The selection rule.
    pub fn selection(&self) -> OhemSelection {
        match self.engine.mode {
            CeMode::Ohem(s) => s,
            _ => Self::DEFAULT_SELECTION,
        }
    }
}

crate::options::engine_loss!(Ohem, CeEngine);
