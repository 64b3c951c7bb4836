//! Building losses by name: [`LossConfig`].

use crate::{
    BalancedCe, CombinedLoss, CrossEntropy, Dice, Focal, Jaccard, LossBuilder, LossContext,
    LossError, Lovasz, LovaszClasses, Ohem, OhemSelection, PrecisionCe, RecallCe, SegLoss, SoftIou,
    Tversky, WeightedCe,
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
/// present classes only and per batch, recall without moving average, Tversky
/// `alpha = 0.3, beta = 0.7` (Salehi et al. 2017), class-balanced `beta = (N-1)/N`, weighted CE
/// median frequency; every option added later (label smoothing, focal `alpha`, OHEM `min_kept`,
/// Dice/Tversky/Jaccard `smooth`, `log_loss`, `classes`, Lovász `per_image`, recall variants)
/// defaults to the behaviour without it.
///
/// A weighted sum of losses is `name = "combined"` with its terms, each a table with a
/// `weight` and the fields of one loss:
///
/// ```toml
/// name = "combined"
///
/// [[terms]]
/// weight = 0.5
/// name = "recall_ce"
///
/// [[terms]]
/// weight = 0.5
/// name = "lovasz"
/// per_image = true
/// ```
///
/// (inside a trainer config the tables are `[[loss.terms]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossConfig {
    /// [`CrossEntropy`].
    CrossEntropy {
        /// Label smoothing `ε ∈ [0, 1)` (smp's `smooth_factor`); 0 = none.
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// [`WeightedCe`] (needs pixel counts).
    WeightedCe {
        /// Inverse or median frequency.
        #[serde(default)]
        mode: WeightMode,
        /// Label smoothing `ε ∈ [0, 1)`; 0 = none.
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// [`BalancedCe`] (needs pixel counts).
    BalancedCe {
        /// β of the effective number; `None` = `(N-1)/N`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta: Option<f64>,
        /// Label smoothing `ε ∈ [0, 1)`; 0 = none.
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// [`Focal`].
    Focal {
        /// Focusing parameter γ ≥ 0.
        #[serde(default = "default_gamma")]
        gamma: f64,
        /// Per-class α (one per class, `>= 0`), multiplying each class's term; `None` = ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<Vec<f64>>,
    },
    /// [`Ohem`]: give one of `keep_ratio`, `keep_count` or `threshold` (default
    /// `keep_ratio = 0.7`); `min_kept` (with or without `threshold`) selects mmsegmentation's
    /// `OHEMPixelSampler` and its normalisation ([`OhemSelection::Mmseg`]).
    Ohem {
        /// Fraction of valid pixels kept, in `(0, 1]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_ratio: Option<f64>,
        /// Exactly this many valid pixels kept (all when fewer), `>= 1`
        /// ([`OhemSelection::KeepCount`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_count: Option<usize>,
        /// Keep pixels whose ground-truth probability is below this, in `(0, 1]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
        /// mmseg's `min_kept` (pixels per image kept at least).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_kept: Option<usize>,
        /// mmseg's `avg_non_ignore` (with `min_kept`): divide by the valid pixels instead of all
        /// pixels; default `false` as in mmseg.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avg_non_ignore: Option<bool>,
    },
    /// [`SoftIou`].
    SoftIou {},
    /// [`Lovasz`] (Lovász-Softmax).
    Lovasz {
        /// Average over classes present in the batch only (default) or over all classes.
        #[serde(default = "default_true")]
        present_only: bool,
        /// One loss per image, averaged (smp's `per_image = True`); default per batch.
        #[serde(default, skip_serializing_if = "is_false")]
        per_image: bool,
    },
    /// [`Dice`].
    Dice {
        /// smp's `smooth` (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        smooth: f64,
        /// smp's `log_loss`: `−ln(score)` per class.
        #[serde(default, skip_serializing_if = "is_false")]
        log_loss: bool,
        /// smp's `classes`: average over these class indices only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<usize>>,
    },
    /// [`Tversky`].
    Tversky {
        /// Weight of false positives.
        #[serde(default = "default_tversky_alpha")]
        alpha: f64,
        /// Weight of false negatives.
        #[serde(default = "default_tversky_beta")]
        beta: f64,
        /// smp's `smooth` (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        smooth: f64,
        /// smp's `log_loss`.
        #[serde(default, skip_serializing_if = "is_false")]
        log_loss: bool,
        /// smp's `classes`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<usize>>,
    },
    /// [`RecallCe`], the paper's loss.
    RecallCe {
        /// Momentum of a moving average of recall across steps; `None` = the paper's
        /// instantaneous recall.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ema: Option<f64>,
        /// `eq5` (default), `paper_code`, `per_image`, `paper_loss_py` or
        /// `paper_loss_py_blend` ([`crate::RecallVariant`]).
        #[serde(default, skip_serializing_if = "is_eq5")]
        variant: crate::RecallVariant,
        /// Label smoothing `ε ∈ [0, 1)`; 0 = none.
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// [`PrecisionCe`], the paper's Eq. 9 counterexample.
    PrecisionCe {
        /// Label smoothing `ε ∈ [0, 1)`; 0 = none.
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// [`Jaccard`] (smp's `JaccardLoss`, per batch).
    Jaccard {
        /// smp's `smooth` (default 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        smooth: f64,
        /// smp's `log_loss`.
        #[serde(default, skip_serializing_if = "is_false")]
        log_loss: bool,
        /// smp's `classes`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<usize>>,
    },
    /// [`CombinedLoss`]: `Σ weight × loss` over its terms.
    Combined {
        /// The terms (at least one; no nested `combined`).
        terms: Vec<CombinedTerm>,
    },
}

/// One term of `name = "combined"`: a weight and a loss with its fields, side by side in one
/// table (`weight = 0.5`, `name = "lovasz"`, `per_image = true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedTerm {
    /// The term's weight (finite, `> 0`).
    pub weight: f64,
    /// The loss.
    #[serde(flatten)]
    pub loss: LossConfig,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_false(v: &bool) -> bool {
    !*v
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
    LossName {
        name: "jaccard",
        label: "Jaccard",
        aliases: &["jaccard_batch"],
    },
];

impl LossConfig {
    /// The loss of that name with default parameters. Case-insensitive; `-` and `_` are
    /// interchangeable; aliases: `ce`, `wce`, `weighted`, `balanced`, `cb`, `iou`, `softiou`,
    /// `lovasz_softmax`, `recall`, `recallce`, `precision`.
    pub fn from_name(name: &str) -> Result<Self, LossError> {
        let key = name.trim().to_ascii_lowercase().replace('-', "_");
        if key == "combined" {
            return Err(LossError::InvalidParameter {
                loss: "combined",
                field: "name",
                value: name.to_string(),
                reason: "a combined loss has no defaults: write its [[terms]] in the config".into(),
            });
        }
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
            "cross_entropy" => LossConfig::CrossEntropy {
                label_smoothing: 0.0,
            },
            "weighted_ce" => LossConfig::WeightedCe {
                mode: WeightMode::default(),
                label_smoothing: 0.0,
            },
            "balanced_ce" => LossConfig::BalancedCe {
                beta: None,
                label_smoothing: 0.0,
            },
            "focal" => LossConfig::Focal {
                gamma: default_gamma(),
                alpha: None,
            },
            "ohem" => LossConfig::Ohem {
                keep_ratio: None,
                keep_count: None,
                threshold: None,
                min_kept: None,
                avg_non_ignore: None,
            },
            "soft_iou" => LossConfig::SoftIou {},
            "lovasz" => LossConfig::Lovasz {
                present_only: true,
                per_image: false,
            },
            "dice" => LossConfig::Dice {
                smooth: 0.0,
                log_loss: false,
                classes: None,
            },
            "tversky" => LossConfig::Tversky {
                alpha: default_tversky_alpha(),
                beta: default_tversky_beta(),
                smooth: 0.0,
                log_loss: false,
                classes: None,
            },
            "recall_ce" => LossConfig::RecallCe {
                ema: None,
                variant: crate::RecallVariant::Eq5,
                label_smoothing: 0.0,
            },
            "jaccard" => LossConfig::Jaccard {
                smooth: 0.0,
                log_loss: false,
                classes: None,
            },
            _ => LossConfig::PrecisionCe {
                label_smoothing: 0.0,
            },
        })
    }

    /// The canonical name (`"recall_ce"`), as in the serde tag.
    pub fn name(&self) -> &'static str {
        match self {
            LossConfig::CrossEntropy { .. } => "cross_entropy",
            LossConfig::WeightedCe { .. } => "weighted_ce",
            LossConfig::BalancedCe { .. } => "balanced_ce",
            LossConfig::Focal { .. } => "focal",
            LossConfig::Ohem { .. } => "ohem",
            LossConfig::SoftIou {} => "soft_iou",
            LossConfig::Lovasz { .. } => "lovasz",
            LossConfig::Dice { .. } => "dice",
            LossConfig::Tversky { .. } => "tversky",
            LossConfig::RecallCe { .. } => "recall_ce",
            LossConfig::PrecisionCe { .. } => "precision_ce",
            LossConfig::Jaccard { .. } => "jaccard",
            LossConfig::Combined { .. } => "combined",
        }
    }

    /// The label the paper's tables use (`"Recall"`, `"CE"`, …; `"combined"` for a sum).
    pub fn label(&self) -> &'static str {
        let name = self.name();
        LOSS_NAMES
            .iter()
            .find(|n| n.name == name)
            .map_or(name, |n| n.label)
    }

    /// Whether building needs `LossContext::class_pixel_counts` (also when a term of a
    /// combined loss does).
    pub fn needs_pixel_counts(&self) -> bool {
        match self {
            LossConfig::WeightedCe { .. } | LossConfig::BalancedCe { .. } => true,
            LossConfig::Combined { terms } => terms.iter().any(|t| t.loss.needs_pixel_counts()),
            _ => false,
        }
    }

    fn ohem_selection(&self) -> Result<Option<OhemSelection>, LossError> {
        if let LossConfig::Ohem {
            keep_ratio,
            keep_count,
            threshold,
            min_kept,
            avg_non_ignore,
        } = *self
        {
            if let Some(k) = keep_count {
                if keep_ratio.is_some()
                    || threshold.is_some()
                    || min_kept.is_some()
                    || avg_non_ignore.is_some()
                {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "keep_count",
                        value: k.to_string(),
                        reason: "give one of keep_ratio, keep_count, threshold (or mmseg's \
                                 min_kept), not several"
                            .into(),
                    });
                }
                let sel = OhemSelection::KeepCount(k);
                sel.validate()?;
                return Ok(Some(sel));
            }
            let sel = match (keep_ratio, threshold, min_kept) {
                (Some(_), Some(t), _) => {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "threshold",
                        value: t.to_string(),
                        reason: "give either keep_ratio or threshold, not both".into(),
                    })
                }
                (Some(_), None, Some(m)) => {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "min_kept",
                        value: m.to_string(),
                        reason: "min_kept is mmseg's sampler, which has no keep_ratio; give \
                                 threshold and/or min_kept, or keep_ratio alone"
                            .into(),
                    })
                }
                (_, threshold, Some(min_kept)) => OhemSelection::Mmseg {
                    threshold,
                    min_kept,
                    avg_non_ignore: avg_non_ignore.unwrap_or(false),
                },
                (_, _, None) if avg_non_ignore.is_some() => {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "avg_non_ignore",
                        value: format!("{avg_non_ignore:?}"),
                        reason: "avg_non_ignore belongs to mmseg's form: give min_kept too".into(),
                    })
                }
                (Some(r), None, None) => OhemSelection::KeepRatio(r),
                (None, Some(t), None) => OhemSelection::Threshold(t),
                (None, None, None) => OhemSelection::KeepRatio(0.7),
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
        let smoothing = match *self {
            LossConfig::CrossEntropy { label_smoothing }
            | LossConfig::WeightedCe {
                label_smoothing, ..
            }
            | LossConfig::BalancedCe {
                label_smoothing, ..
            }
            | LossConfig::RecallCe {
                label_smoothing, ..
            }
            | LossConfig::PrecisionCe { label_smoothing } => label_smoothing,
            _ => 0.0,
        };
        if !(smoothing.is_finite() && (0.0..1.0).contains(&smoothing)) {
            return bad(
                self.name(),
                "label_smoothing",
                smoothing,
                "must be in [0, 1)",
            );
        }
        match self {
            LossConfig::Dice { smooth, .. }
            | LossConfig::Tversky { smooth, .. }
            | LossConfig::Jaccard { smooth, .. }
                if !(smooth.is_finite() && *smooth >= 0.0) =>
            {
                return bad(self.name(), "smooth", *smooth, "must be finite and >= 0")
            }
            LossConfig::Focal { alpha: Some(a), .. } => {
                if let Some((i, v)) = a
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
                {
                    return Err(LossError::InvalidParameter {
                        loss: "focal",
                        field: "alpha",
                        value: v.to_string(),
                        reason: format!("alpha[{i}] must be finite and >= 0"),
                    });
                }
            }
            LossConfig::Combined { terms } => validate_terms(terms)?,
            _ => {}
        }
        match *self {
            LossConfig::BalancedCe { beta: Some(b), .. } if !(0.0..1.0).contains(&b) => {
                bad("balanced_ce", "beta", b, "must be in [0, 1)")
            }
            LossConfig::Focal { gamma, .. } if !(gamma.is_finite() && gamma >= 0.0) => {
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
            LossConfig::Tversky { alpha, beta, .. } if alpha + beta <= 0.0 => {
                bad("tversky", "alpha", alpha, "alpha + beta must be > 0")
            }
            LossConfig::RecallCe {
                ema: Some(m),
                variant,
                ..
            } if variant != crate::RecallVariant::Eq5 => Err(LossError::InvalidParameter {
                loss: "recall_ce",
                field: "ema",
                value: m.to_string(),
                reason: format!(
                    "only variant = \"eq5\" has a moving average (variant = \"{}\")",
                    variant.as_str()
                ),
            }),
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
    /// loss (multiplied onto the frequency weights of WeightedCE / BalancedCE), and to every
    /// term of a combined loss.
    pub fn build(&self, ctx: &LossContext) -> Result<Box<dyn SegLoss>, LossError> {
        self.validate()?;
        ctx.validate()?;
        let c = ctx.n_classes;
        let counts = || {
            ctx.class_pixel_counts
                .as_deref()
                .ok_or(LossError::MissingPixelCounts { loss: self.name() })
        };
        match self {
            LossConfig::CrossEntropy { label_smoothing } => finish(
                CrossEntropy::new(c).with_label_smoothing(*label_smoothing)?,
                ctx,
            ),
            LossConfig::WeightedCe {
                mode,
                label_smoothing,
            } => finish(
                WeightedCe::from_counts(counts()?, *mode)?
                    .with_label_smoothing(*label_smoothing)?,
                ctx,
            ),
            LossConfig::BalancedCe {
                beta,
                label_smoothing,
            } => finish(
                BalancedCe::from_counts(counts()?, *beta)?
                    .with_label_smoothing(*label_smoothing)?,
                ctx,
            ),
            LossConfig::Focal { gamma, alpha } => {
                let mut f = Focal::new(c).with_gamma(*gamma)?;
                if let Some(a) = alpha {
                    f = f.with_alpha(a.clone())?;
                }
                finish(f, ctx)
            }
            LossConfig::Ohem { .. } => {
                let sel = self
                    .ohem_selection()?
                    .unwrap_or(OhemSelection::KeepRatio(0.7));
                finish(Ohem::new(c).with_selection(sel)?, ctx)
            }
            LossConfig::SoftIou {} => finish(SoftIou::new(c), ctx),
            LossConfig::Lovasz {
                present_only,
                per_image,
            } => finish(
                Lovasz::new(c)
                    .with_classes(lovasz_classes(*present_only))
                    .with_per_image(*per_image),
                ctx,
            ),
            LossConfig::Dice {
                smooth,
                log_loss,
                classes,
            } => {
                let mut l = Dice::new(c).with_smooth(*smooth)?.with_log_loss(*log_loss);
                if let Some(cl) = classes {
                    l = l.with_classes(cl.clone())?;
                }
                finish(l, ctx)
            }
            LossConfig::Tversky {
                alpha,
                beta,
                smooth,
                log_loss,
                classes,
            } => {
                let mut l = Tversky::new(c)
                    .with_alpha_beta(*alpha, *beta)?
                    .with_smooth(*smooth)?
                    .with_log_loss(*log_loss);
                if let Some(cl) = classes {
                    l = l.with_classes(cl.clone())?;
                }
                finish(l, ctx)
            }
            LossConfig::Jaccard {
                smooth,
                log_loss,
                classes,
            } => {
                let mut l = Jaccard::new(c)
                    .with_smooth(*smooth)?
                    .with_log_loss(*log_loss);
                if let Some(cl) = classes {
                    l = l.with_classes(cl.clone())?;
                }
                finish(l, ctx)
            }
            LossConfig::RecallCe {
                ema,
                variant,
                label_smoothing,
            } => {
                let l = match ema {
                    Some(m) => RecallCe::new(c).with_ema(*m)?,
                    None => RecallCe::new(c).with_variant(*variant),
                };
                finish(l.with_label_smoothing(*label_smoothing)?, ctx)
            }
            LossConfig::PrecisionCe { label_smoothing } => finish(
                PrecisionCe::new(c).with_label_smoothing(*label_smoothing)?,
                ctx,
            ),
            LossConfig::Combined { terms } => {
                let mut l = CombinedLoss::new();
                for t in terms {
                    l.push(t.weight, t.loss.build(ctx)?)?;
                }
                Ok(Box::new(l))
            }
        }
    }
}

/// The classes Lovász averages over, from the configuration's `present_only`.
fn lovasz_classes(present_only: bool) -> LovaszClasses {
    if present_only {
        LovaszClasses::Present
    } else {
        LovaszClasses::All
    }
}

/// `loss` with the context's ignore index and static class weights, boxed.
fn finish<L: LossBuilder + SegLoss + 'static>(
    loss: L,
    ctx: &LossContext,
) -> Result<Box<dyn SegLoss>, LossError> {
    let mut l = loss
        .with_ignore_index(ctx.ignore_index)
        .with_kernel(ctx.kernel);
    if let Some(w) = &ctx.class_weights {
        l = l.with_class_weights(w.clone())?;
    }
    Ok(Box::new(l))
}

/// The terms of a combined loss: at least one, none itself combined, each weight finite and
/// positive, each term valid.
fn validate_terms(terms: &[CombinedTerm]) -> Result<(), LossError> {
    if terms.is_empty() {
        return Err(LossError::InvalidParameter {
            loss: "combined",
            field: "terms",
            value: "[]".into(),
            reason: "give at least one [[terms]] table".into(),
        });
    }
    for t in terms {
        if let LossConfig::Combined { .. } = t.loss {
            return Err(LossError::InvalidParameter {
                loss: "combined",
                field: "terms",
                value: "combined".into(),
                reason: "a term cannot itself be a combined loss".into(),
            });
        }
        if !(t.weight.is_finite() && t.weight > 0.0) {
            return Err(LossError::InvalidParameter {
                loss: "combined",
                field: "weight",
                value: t.weight.to_string(),
                reason: format!(
                    "the weight of term `{}` must be finite and > 0",
                    t.loss.name()
                ),
            });
        }
        t.loss.validate()?;
    }
    Ok(())
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
