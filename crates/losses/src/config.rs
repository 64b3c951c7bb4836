//! Building losses by name: [`LossConfig`].

use crate::{
    BalancedCe, CrossEntropy, Dice, Focal, LossBuilder, LossContext, LossError, Lovasz, Ohem,
    OhemSelection, PrecisionCe, RecallCe, SegLoss, SoftIou, Tversky, WeightedCe,
};
use serde::{Deserialize, Serialize};

/// How [`WeightedCe`] turns pixel counts into weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMode {
    /// `w_c = N / (C · N_c)`.
    InverseFrequency,
    /// `w_c = median(N_k) / N_c` (the paper's code).
    #[default]
    MedianFrequency,
}

/// Any loss of the crate with its parameters; serde-tagged by `name`.
///
/// In TOML: `name = "recall_ce"`, `name = "focal"` with `gamma = 2.0`,
/// `name = "weighted_ce"` with `mode = "inverse_frequency"`, … Unknown names and unknown fields
/// are errors. Defaults follow the paper: focal `gamma = 1`, OHEM `keep_ratio = 0.7`, Lovász over
/// present classes only, recall without moving average, Tversky `alpha = 0.3, beta = 0.7`
/// (Salehi et al. 2017), class-balanced `beta = (N-1)/N`, weighted CE median frequency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossConfig {
    /// [`CrossEntropy`].
    CrossEntropy {},
    /// [`WeightedCe`] (needs pixel counts).
    WeightedCe {
        /// Inverse or median frequency.
        #[serde(default)]
        mode: WeightMode,
    },
    /// [`BalancedCe`] (needs pixel counts).
    BalancedCe {
        /// β of the effective number; `None` = `(N-1)/N`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta: Option<f64>,
    },
    /// [`Focal`].
    Focal {
        /// Focusing parameter γ ≥ 0.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// [`Ohem`]: give `keep_ratio` or `threshold`, not both (default `keep_ratio = 0.7`).
    Ohem {
        /// Fraction of valid pixels kept, in `(0, 1]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_ratio: Option<f64>,
        /// Keep pixels whose ground-truth probability is below this, in `(0, 1]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
    },
    /// [`SoftIou`].
    SoftIou {},
    /// [`Lovasz`] (Lovász-Softmax).
    Lovasz {
        /// Average over classes present in the batch only (default) or over all classes.
        #[serde(default = "default_true")]
        present_only: bool,
    },
    /// [`Dice`].
    Dice {},
    /// [`Tversky`].
    Tversky {
        /// Weight of false positives.
        #[serde(default = "default_tversky_alpha")]
        alpha: f64,
        /// Weight of false negatives.
        #[serde(default = "default_tversky_beta")]
        beta: f64,
    },
    /// [`RecallCe`], the paper's loss.
    RecallCe {
        /// Momentum of a moving average of recall across steps; `None` = the paper's
        /// instantaneous recall.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ema: Option<f64>,
        /// `eq5` (default) or `paper_code` ([`crate::RecallVariant`]).
        #[serde(default, skip_serializing_if = "is_eq5")]
        variant: crate::RecallVariant,
    },
    /// [`PrecisionCe`], the paper's Eq. 9 counterexample.
    PrecisionCe {},
}

fn is_eq5(v: &crate::RecallVariant) -> bool {
    *v == crate::RecallVariant::Eq5
}

fn default_gamma() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_tversky_alpha() -> f64 {
    0.3
}
fn default_tversky_beta() -> f64 {
    0.7
}

/// A loss's names: the canonical one (the serde tag of [`LossConfig`]), the label the paper's
/// tables use, and the aliases [`LossConfig::from_name`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossName {
    /// Canonical name, e.g. `"recall_ce"`.
    pub name: &'static str,
    /// The paper's label, e.g. `"Recall"`.
    pub label: &'static str,
    /// Other accepted spellings (lower case, `_` for `-`).
    pub aliases: &'static [&'static str],
}

/// Every loss of the crate, in the order of [`LossConfig`]'s variants: the one table of loss
/// names.
pub const LOSS_NAMES: &[LossName] = &[
    LossName {
        name: "cross_entropy",
        label: "CE",
        aliases: &["ce", "crossentropy"],
    },
    LossName {
        name: "weighted_ce",
        label: "WeightedCE",
        aliases: &["wce", "weighted"],
    },
    LossName {
        name: "balanced_ce",
        label: "BalancedCE",
        aliases: &["balanced", "cb"],
    },
    LossName {
        name: "focal",
        label: "Focal",
        aliases: &[],
    },
    LossName {
        name: "ohem",
        label: "OHEM",
        aliases: &[],
    },
    LossName {
        name: "soft_iou",
        label: "SoftIoU",
        aliases: &["softiou", "iou"],
    },
    LossName {
        name: "lovasz",
        label: "Lovasz",
        aliases: &["lovasz_softmax"],
    },
    LossName {
        name: "dice",
        label: "Dice",
        aliases: &[],
    },
    LossName {
        name: "tversky",
        label: "Tversky",
        aliases: &[],
    },
    LossName {
        name: "recall_ce",
        label: "Recall",
        aliases: &["recall", "recallce"],
    },
    LossName {
        name: "precision_ce",
        label: "PrecisionCE",
        aliases: &["precision"],
    },
];

impl LossConfig {
    /// The loss of that name with default parameters. Case-insensitive; `-` and `_` are
    /// interchangeable; aliases: `ce`, `wce`, `weighted`, `balanced`, `cb`, `iou`, `softiou`,
    /// `lovasz_softmax`, `recall`, `recallce`, `precision`.
    pub fn from_name(name: &str) -> Result<Self, LossError> {
        let key = name.trim().to_ascii_lowercase().replace('-', "_");
        let canonical = LOSS_NAMES
            .iter()
            .find(|n| n.name == key || n.aliases.contains(&key.as_str()))
            .map(|n| n.name)
            .ok_or_else(|| LossError::UnknownLoss {
                name: name.to_string(),
                known: LOSS_NAMES
                    .iter()
                    .flat_map(|n| std::iter::once(&n.name).chain(n.aliases))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(match canonical {
            "cross_entropy" => LossConfig::CrossEntropy {},
            "weighted_ce" => LossConfig::WeightedCe {
                mode: WeightMode::default(),
            },
            "balanced_ce" => LossConfig::BalancedCe { beta: None },
            "focal" => LossConfig::Focal {
                gamma: default_gamma(),
            },
            "ohem" => LossConfig::Ohem {
                keep_ratio: None,
                threshold: None,
            },
            "soft_iou" => LossConfig::SoftIou {},
            "lovasz" => LossConfig::Lovasz { present_only: true },
            "dice" => LossConfig::Dice {},
            "tversky" => LossConfig::Tversky {
                alpha: default_tversky_alpha(),
                beta: default_tversky_beta(),
            },
            "recall_ce" => LossConfig::RecallCe {
                ema: None,
                variant: crate::RecallVariant::Eq5,
            },
            _ => LossConfig::PrecisionCe {},
        })
    }

    /// The canonical name (`"recall_ce"`), as in the serde tag.
    pub fn name(&self) -> &'static str {
        match self {
            LossConfig::CrossEntropy {} => "cross_entropy",
            LossConfig::WeightedCe { .. } => "weighted_ce",
            LossConfig::BalancedCe { .. } => "balanced_ce",
            LossConfig::Focal { .. } => "focal",
            LossConfig::Ohem { .. } => "ohem",
            LossConfig::SoftIou {} => "soft_iou",
            LossConfig::Lovasz { .. } => "lovasz",
            LossConfig::Dice {} => "dice",
            LossConfig::Tversky { .. } => "tversky",
            LossConfig::RecallCe { .. } => "recall_ce",
            LossConfig::PrecisionCe {} => "precision_ce",
        }
    }

    /// The label the paper's tables use (`"Recall"`, `"CE"`, …).
    pub fn label(&self) -> &'static str {
        let name = self.name();
        LOSS_NAMES
            .iter()
            .find(|n| n.name == name)
            .map_or(name, |n| n.label)
    }

    /// Whether building needs `LossContext::class_pixel_counts`.
    pub fn needs_pixel_counts(&self) -> bool {
        matches!(
            self,
            LossConfig::WeightedCe { .. } | LossConfig::BalancedCe { .. }
        )
    }

    fn ohem_selection(&self) -> Result<Option<OhemSelection>, LossError> {
        if let LossConfig::Ohem {
            keep_ratio,
            threshold,
        } = *self
        {
            let sel = match (keep_ratio, threshold) {
                (Some(_), Some(t)) => {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "threshold",
                        value: t.to_string(),
                        reason: "give either keep_ratio or threshold, not both".into(),
                    })
                }
                (Some(r), None) => OhemSelection::KeepRatio(r),
                (None, Some(t)) => OhemSelection::Threshold(t),
                (None, None) => OhemSelection::KeepRatio(0.7),
            };
            sel.validate()?;
            return Ok(Some(sel));
        }
        Ok(None)
    }

    /// Checks the parameters (ranges, exclusive options) without building.
    pub fn validate(&self) -> Result<(), LossError> {
        let bad = |loss, field, value: f64, reason: &str| {
            Err(LossError::InvalidParameter {
                loss,
                field,
                value: value.to_string(),
                reason: reason.into(),
            })
        };
        match *self {
            LossConfig::BalancedCe { beta: Some(b) } if !(0.0..1.0).contains(&b) => {
                bad("balanced_ce", "beta", b, "must be in [0, 1)")
            }
            LossConfig::Focal { gamma } if !(gamma.is_finite() && gamma >= 0.0) => {
                bad("focal", "gamma", gamma, "must be finite and >= 0")
            }
            LossConfig::Ohem { .. } => self.ohem_selection().map(|_| ()),
            LossConfig::Tversky { alpha, .. }
                if !(alpha.is_finite() && (0.0..=crate::Tversky::MAX_WEIGHT).contains(&alpha)) =>
            {
                bad("tversky", "alpha", alpha, "must be in [0, 1e6]")
            }
            LossConfig::Tversky { beta, .. }
                if !(beta.is_finite() && (0.0..=crate::Tversky::MAX_WEIGHT).contains(&beta)) =>
            {
                bad("tversky", "beta", beta, "must be in [0, 1e6]")
            }
            LossConfig::Tversky { alpha, beta } if alpha + beta <= 0.0 => {
                bad("tversky", "alpha", alpha, "alpha + beta must be > 0")
            }
            LossConfig::RecallCe {
                ema: Some(m),
                variant: crate::RecallVariant::PaperCode,
            } => bad(
                "recall_ce",
                "ema",
                m,
                "the paper code's variant (variant = \"paper_code\") has no moving average",
            ),
            LossConfig::RecallCe { ema: Some(m), .. } if !(0.0..1.0).contains(&m) => bad(
                "recall_ce",
                "ema",
                m,
                "the moving-average momentum must be in [0, 1)",
            ),
            _ => Ok(()),
        }
    }

    /// Builds the loss for a task. Validates the parameters and the context; [`WeightedCe`] and
    /// [`BalancedCe`] need `ctx.class_pixel_counts`. Static `ctx.class_weights` apply to every
    /// loss (multiplied onto the frequency weights of WeightedCE / BalancedCE).
    pub fn build(&self, ctx: &LossContext) -> Result<Box<dyn SegLoss>, LossError> {
        self.validate()?;
        ctx.validate()?;
        let c = ctx.n_classes;
        let counts = || {
            ctx.class_pixel_counts
                .as_deref()
                .ok_or(LossError::MissingPixelCounts { loss: self.name() })
        };
        match *self {
            LossConfig::CrossEntropy {} => finish(CrossEntropy::new(c), ctx),
            LossConfig::WeightedCe { mode } => {
                finish(WeightedCe::from_counts(counts()?, mode)?, ctx)
            }
            LossConfig::BalancedCe { beta } => {
                finish(BalancedCe::from_counts(counts()?, beta)?, ctx)
            }
            LossConfig::Focal { gamma } => finish(Focal::new(c, gamma)?, ctx),
            LossConfig::Ohem { .. } => {
                let sel = self
                    .ohem_selection()?
                    .unwrap_or(OhemSelection::KeepRatio(0.7));
                finish(Ohem::new(c, sel)?, ctx)
            }
            LossConfig::SoftIou {} => finish(SoftIou::new(c), ctx),
            LossConfig::Lovasz { present_only } => finish(Lovasz::new(c, present_only), ctx),
            LossConfig::Dice {} => finish(Dice::new(c), ctx),
            LossConfig::Tversky { alpha, beta } => finish(Tversky::new(c, alpha, beta)?, ctx),
            LossConfig::RecallCe { ema, variant } => match (ema, variant) {
                (Some(m), _) => finish(RecallCe::new(c).with_ema(m)?, ctx),
                (None, v) => finish(RecallCe::new(c).with_variant(v), ctx),
            },
            LossConfig::PrecisionCe {} => finish(PrecisionCe::new(c), ctx),
        }
    }
}

/// `loss` with the context's ignore index and static class weights, boxed.
fn finish<L: LossBuilder + SegLoss + 'static>(
    loss: L,
    ctx: &LossContext,
) -> Result<Box<dyn SegLoss>, LossError> {
    let mut l = loss.with_ignore_index(ctx.ignore_index);
    if let Some(w) = &ctx.class_weights {
        l = l.with_class_weights(w.clone())?;
    }
    Ok(Box::new(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_table_covers_every_loss_once() {
        for n in LOSS_NAMES {
            let c = LossConfig::from_name(n.name).unwrap();
            assert_eq!(c.name(), n.name);
            assert_eq!(c.label(), n.label);
            for a in n.aliases {
                assert_eq!(LossConfig::from_name(a).unwrap().name(), n.name, "{a}");
            }
        }
        let mut all: Vec<&str> = LOSS_NAMES
            .iter()
            .flat_map(|n| std::iter::once(&n.name).chain(n.aliases))
            .copied()
            .collect();
        let len = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), len, "a name or alias appears twice");
        assert!(LossConfig::from_name("Recall-CE").is_ok());
        assert!(LossConfig::from_name("nope").is_err());
    }
}
