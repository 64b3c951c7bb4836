//! `DeepLab`: a ResNet backbone with a DeepLabV3 or DeepLabV3+ head.

use crate::aux_head::AuxHead;
use crate::config::{Head, ModelConfig, PretrainedSource};
use crate::deeplabv3::DeepLabV3Head;
use crate::deeplabv3plus::DeepLabV3PlusHead;
use crate::init::{splitmix64, NamedVar, ParamBuilder, ParamKind};
use crate::ops::resize::resize_bilinear;
use crate::pretrained::{self, LoadReport};
use crate::resnet::{ResNet, ResNetFeatures};
use crate::ModelError;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarBuilder;
use recallseg_distributed::SharedCommunicator;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone)]
enum HeadImpl {
    V3(Box<DeepLabV3Head>),
    V3Plus(Box<DeepLabV3PlusHead>),
}

/// How a model is built beyond its [`ModelConfig`]: run-time choices that change neither the
/// parameters nor the checkpoints. The default is today's plain build.
///
/// ```
/// use recallseg_models::BuildOptions;
///
/// let comm = recallseg_distributed::single_process();
/// let opts = BuildOptions::default().with_sync_batch_norm(Some(comm));
/// assert!(opts.sync_batch_norm.is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// SyncBatchNorm: every BatchNorm layer of the model (backbone, head, auxiliary head)
    /// normalises with the statistics of the global batch over this communicator's ranks in
    /// training mode (see [`crate::batch_norm::BatchNorm2d::with_communicator`]). `None` (the
    /// default), a single rank, evaluation and frozen BatchNorm: per-process statistics.
    pub sync_batch_norm: Option<SharedCommunicator>,
}

impl BuildOptions {
    /// These options with [`BuildOptions::sync_batch_norm`] set to `comm`.
    pub fn with_sync_batch_norm(mut self, comm: Option<SharedCommunicator>) -> Self {
        self.sync_batch_norm = comm;
        self
    }
}

/// A DeepLabV3 / DeepLabV3+ segmentation model.
///
/// Built on a `VarMap`-backed `VarBuilder`: the `VarMap` holds every tensor to checkpoint
/// (BatchNorm running statistics included), so `varmap.save` / `varmap.load` round-trip the model.
/// [`DeepLab::trainable_vars`] lists what the optimiser updates.
#[derive(Debug)]
pub struct DeepLab {
    config: ModelConfig,
    backbone: ResNet,
    head: HeadImpl,
    aux: Option<AuxHead>,
    vars: Vec<NamedVar>,
    options: BuildOptions,
    dropout_seed: AtomicU64,
    dropout_calls: AtomicU64,
}

impl DeepLab {
    /// Builds the model described by `config` (validated first), creating its parameters in the
    /// `VarMap` behind `vb` with seeded initialisation (`config.init`, `config.init_seed`).
    /// Pretrained weights are not loaded: see [`DeepLab::from_pretrained`].
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        Self::new_with(config, vb, &BuildOptions::default())
    }

    /// [`DeepLab::new`] with build `options` (e.g. SyncBatchNorm). The parameters are the same
    /// as `new`'s.
    pub fn new_with(
        config: &ModelConfig,
        vb: VarBuilder,
        options: &BuildOptions,
    ) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let pb = ParamBuilder::new(vb, config.init_seed)
            .with_sync_batch_norm(options.sync_batch_norm.clone());
        let backbone = ResNet::new(&pb.pp("backbone"), config)?;
        let [low, _, mid, high] = backbone.channels();
        let hb = pb.clone().with_conv_init(config.init.head_conv());
        let head = match config.head {
            Head::DeepLabV3 => HeadImpl::V3(Box::new(DeepLabV3Head::new(&hb, config, high)?)),
            Head::DeepLabV3Plus => {
                HeadImpl::V3Plus(Box::new(DeepLabV3PlusHead::new(&hb, config, low, high)?))
            }
        };
        let aux = match &config.aux_head {
            Some(a) => Some(AuxHead::new(&hb, config, a, mid, config.init)?),
            None => None,
        };
        let vars = pb.take_registry();
        Ok(Self {
            config: config.clone(),
            backbone,
            head,
            aux,
            vars,
            options: options.clone(),
            dropout_seed: AtomicU64::new(config.init_seed),
            dropout_calls: AtomicU64::new(0),
        })
    }

    /// Builds the model and, when `config.pretrained` is set, loads those weights.
    pub fn from_pretrained(
        config: &ModelConfig,
        vb: VarBuilder,
    ) -> std::result::Result<(Self, Option<LoadReport>), ModelError> {
        Self::from_pretrained_with(config, vb, &BuildOptions::default())
    }

    /// [`DeepLab::from_pretrained`] with build `options` (e.g. SyncBatchNorm).
    pub fn from_pretrained_with(
        config: &ModelConfig,
        vb: VarBuilder,
        options: &BuildOptions,
    ) -> std::result::Result<(Self, Option<LoadReport>), ModelError> {
        let model = Self::new_with(config, vb, options)?;
        let report = match &config.pretrained {
            Some(source) => Some(model.load_pretrained(source)?),
            None => None,
        };
        Ok((model, report))
    }

    /// Resolves `source` (local path or hub, [`PretrainedSource::resolve`]) and loads it
    /// ([`DeepLab::load_safetensors`]).
    ///
    /// # Errors
    /// Those of [`PretrainedSource::resolve`] and of [`DeepLab::load_safetensors`].
    pub fn load_pretrained(
        &self,
        source: &PretrainedSource,
    ) -> std::result::Result<LoadReport, ModelError> {
        let path = pretrained::resolve(source, self.config.backbone)?;
        self.load_safetensors(&path)
    }

    /// Loads an ImageNet ResNet or a full DeepLab safetensors file, told apart by their tensor
    /// names ([`crate::CheckpointLayout`]):
    ///
    /// * an ImageNet ResNet (torchvision / timm `*.tv_in1k` names: `conv1.weight`, `bn1.*`,
    ///   `layer{1..4}.{i}.…`, `fc.*`) loads into `backbone.*`; `fc.*` and `num_batches_tracked`
    ///   are ignored and the head keeps its initialisation;
    /// * a full DeepLab model (the model's own names, e.g. a recallseg checkpoint or torchvision's
    ///   DeepLabV3) loads everything; when only the classifier's shape differs (another class
    ///   count) the classifier is re-initialised instead.
    ///
    /// Tensors (any float dtype) are converted to the model's dtype and device. The report's
    /// `Display` is one line.
    ///
    /// # Errors
    /// [`ModelError::WeightFile`] when the file cannot be read or parsed,
    /// [`ModelError::UnknownLayout`] when it is neither layout, [`ModelError::MissingTensor`] /
    /// [`ModelError::ShapeMismatch`] naming a tensor the model needs; nothing is changed then.
    pub fn load_safetensors(&self, path: &Path) -> std::result::Result<LoadReport, ModelError> {
        let mut classifier = self.classifier_param_names().to_vec();
        if self.aux.is_some() {
            classifier.extend(AuxHead::CLASSIFIER_PARAMS);
        }
        pretrained::load_into(&self.vars, &classifier, path, self.config.init_seed)
    }

    /// Whether the model has the auxiliary head ([`ModelConfig::aux_head`]).
    pub fn has_aux_head(&self) -> bool {
        self.aux.is_some()
    }

    /// The build options the model was built with.
    pub fn build_options(&self) -> &BuildOptions {
        &self.options
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every parameter with its name and role, in construction order.
    pub fn named_vars(&self) -> &[NamedVar] {
        &self.vars
    }

    /// Names of the class-count-dependent parameters (the final 1×1 classifier).
    pub fn classifier_param_names(&self) -> [&'static str; 2] {
        match self.head {
            HeadImpl::V3(_) => DeepLabV3Head::CLASSIFIER_PARAMS,
            HeadImpl::V3Plus(_) => DeepLabV3PlusHead::CLASSIFIER_PARAMS,
        }
    }

    /// The variables the optimiser updates: conv weights and biases, and BatchNorm scale and
    /// shift unless BN is frozen. Never the running statistics.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.vars
            .iter()
            .filter(|nv| match nv.kind {
                ParamKind::Weight => true,
                ParamKind::BnAffine => !self.config.freeze_bn,
                ParamKind::BnStat => false,
            })
            .map(|nv| nv.var.clone())
            .collect()
    }

    /// Sets the base seed of the dropout masks and restarts the per-call counter used by
    /// [`DeepLab::forward_t`]. A trainer that wants resumable runs calls it with a hash of
    /// `(run seed, step)` before each step, or uses [`DeepLab::forward_t_with`].
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.store(seed, Ordering::SeqCst);
        self.dropout_calls.store(0, Ordering::SeqCst);
    }

    /// Maps `(N, 3, H, W)` images to logits `(N, n_classes, H, W)`. In training, BatchNorm uses
    /// (and updates) batch statistics and dropout is active with masks seeded by
    /// `(dropout seed, number of training calls since it was set)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let seed = if train {
            let call = self.dropout_calls.fetch_add(1, Ordering::SeqCst);
            splitmix64(self.dropout_seed.load(Ordering::SeqCst) ^ splitmix64(call))
        } else {
            0
        };
        self.forward_t_with(x, train, seed)
    }

    /// The backbone's layer1 and layer4 features of `(N, 3, H, W)` images.
    pub fn backbone_features(&self, x: &Tensor, train: bool) -> Result<ResNetFeatures> {
        self.backbone.forward_t(x, train)
    }

    /// Like [`DeepLab::forward_t`] with an explicit dropout seed: the masks are a pure function
    /// of `dropout_seed` (the call counter is untouched). The auxiliary head, if any, is not run.
    pub fn forward_t_with(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        Ok(self.forward_impl(x, train, dropout_seed, false)?.0)
    }

    /// [`DeepLab::forward_t_with`] plus the auxiliary head's logits (upsampled to the input size
    /// as the main logits are) when the model has one: what a training step needs. The main
    /// logits are bitwise those of `forward_t_with` (the auxiliary head draws its own dropout
    /// masks and reads layer3 without changing it).
    pub fn forward_t_with_aux(
        &self,
        x: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.forward_impl(x, train, dropout_seed, true)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        dropout_seed: u64,
        with_aux: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 {
            candle_core::bail!(
                "DeepLab expects (N, 3, H, W) images, got shape {:?}",
                x.dims()
            )
        }
        let feats = self.backbone.forward_t(x, train)?;
        let logits = match &self.head {
            HeadImpl::V3(head) => head.forward_t(&feats.out, train, dropout_seed)?,
            HeadImpl::V3Plus(head) => {
                head.forward_t(&feats.low_level, &feats.out, train, dropout_seed)?
            }
        };
        let logits = resize_bilinear(&logits, h, w, self.config.align_corners)?;
        let aux = match (&self.aux, with_aux) {
            (Some(aux), true) => {
                let a = aux.forward_t(&feats.layer3, train, dropout_seed)?;
                Some(resize_bilinear(&a, h, w, self.config.align_corners)?)
            }
            _ => None,
        };
        Ok((logits, aux))
    }
}

impl candle_nn::ModuleT for DeepLab {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        DeepLab::forward_t(self, xs, train)
    }
}
