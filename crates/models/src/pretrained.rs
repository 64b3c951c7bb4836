//! Pretrained weights: resolving a [`PretrainedSource`] to a local safetensors file (through the
//! Hugging Face hub cache when needed) and loading it into a model's variables.
//!
//! Two checkpoint layouts are recognised by their tensor names:
//!
//! * **ResNet** (ImageNet classification: torchvision, timm's `*.tv_in1k` ports): `conv1.weight`,
//!   `bn1.*`, `layer{1..4}.{i}.…`, `fc.*`. Loaded into `backbone.*`; `fc.*` and
//!   `num_batches_tracked` are ignored; the head keeps its initialisation.
//! * **DeepLab** (a full model, e.g. a recallseg checkpoint or torchvision's DeepLabV3): the
//!   model's own names (`backbone.…`, `classifier.…`, `aspp.…`, `decoder.…`). When only the
//!   classifier's shape differs (another class count), everything else loads and the classifier
//!   is re-initialised, as the report says.
//!
//! Every tensor the target needs must be present with the right shape, or nothing is changed and
//! the error names the tensor. Tensors are converted to the model's dtype and device.

use crate::config::{Backbone, PretrainedSource};
use crate::init::{init_tensor, NamedVar};
use crate::ModelError;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Which layout a checkpoint had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// An ImageNet ResNet: only the backbone was loaded.
    ResNet,
    /// A full DeepLab model.
    DeepLab,
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The safetensors file read.
    pub path: PathBuf,
    /// Its layout.
    pub layout: CheckpointLayout,
    /// Model parameters set from the file (model names).
    pub loaded: Vec<String>,
    /// Model parameters re-initialised because the checkpoint's class count differs.
    pub reinitialised: Vec<String>,
    /// Tensors of the file not used (`fc.*`, `num_batches_tracked`, auxiliary heads, …).
    pub ignored: Vec<String>,
    /// Model parameters left at their initialisation because the layout does not cover them
    /// (the head, for a ResNet checkpoint).
    pub kept_initialisation: Vec<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = match self.layout {
            CheckpointLayout::ResNet => "ImageNet ResNet backbone",
            CheckpointLayout::DeepLab => "DeepLab model",
        };
        write!(
            f,
            "loaded {} tensors ({layout}) from {}",
            self.loaded.len(),
            self.path.display()
        )?;
        if !self.kept_initialisation.is_empty() {
            write!(
                f,
                "; {} head tensors keep their initialisation",
                self.kept_initialisation.len()
            )?;
        }
        if !self.reinitialised.is_empty() {
            write!(
                f,
                "; class count differs: re-initialised {}",
                self.reinitialised.join(", ")
            )?;
        }
        if !self.ignored.is_empty() {
            write!(f, "; ignored {} tensors of the file", self.ignored.len())?;
        }
        Ok(())
    }
}

impl PretrainedSource {
    /// The local safetensors file this source names for `backbone`, without loading it: a
    /// [`PretrainedSource::Path`] as given, the hub sources from the Hugging Face cache
    /// (`HF_HOME`), downloaded first unless `HF_HUB_OFFLINE` is set. Useful to fetch weights
    /// before an offline run; [`crate::DeepLab::from_pretrained`] calls it.
    ///
    /// # Errors
    /// [`ModelError::WeightFile`] when a local path is not a file; [`ModelError::Hub`] when the
    /// hub file is neither cached nor downloadable (offline, network or HTTP error, or the crate
    /// built without its `hub` feature).
    pub fn resolve(&self, backbone: Backbone) -> Result<PathBuf, ModelError> {
        resolve(self, backbone)
    }
}

/// Resolves `source` to a local safetensors path (downloading through the hub cache if needed).
pub(crate) fn resolve(
    source: &PretrainedSource,
    backbone: Backbone,
) -> Result<PathBuf, ModelError> {
    match source {
        PretrainedSource::Path(p) => {
            if p.is_file() {
                Ok(p.clone())
            } else {
                Err(ModelError::WeightFile {
                    path: p.clone(),
                    message: "no such file".into(),
                })
            }
        }
        PretrainedSource::Imagenet => {
            hub_file(&backbone.default_hub_repo(), "model.safetensors", None)
        }
        PretrainedSource::Hub(h) => hub_file(&h.repo, &h.file, h.revision.as_deref()),
    }
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only resolution.
pub(crate) fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Returns the local path of `file` in hub repository `repo`: from the cache (`HF_HOME`), else
/// downloaded, unless `HF_HUB_OFFLINE` is set.
#[cfg(feature = "hub")]
pub(crate) fn hub_file(
    repo: &str,
    file: &str,
    revision: Option<&str>,
) -> Result<PathBuf, ModelError> {
    use hf_hub::{Cache, Repo, RepoType};
    let err = |message: String| ModelError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        message,
    };
    let hub_repo = Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let cache = Cache::from_env();
    if let Some(p) = cache.repo(hub_repo.clone()).get(file) {
        return Ok(p);
    }
    if hub_offline() {
        return Err(err(format!(
            "not in the local cache {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .map_err(|e| err(e.to_string()))?;
    api.repo(hub_repo).get(file).map_err(|e| err(e.to_string()))
}

/// Without the `hub` feature only local files load.
#[cfg(not(feature = "hub"))]
pub(crate) fn hub_file(
    repo: &str,
    file: &str,
    _revision: Option<&str>,
) -> Result<PathBuf, ModelError> {
    Err(ModelError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        message: "built without the `hub` feature: download the file and give its local path"
            .into(),
    })
}

/// Reads every tensor of a safetensors file onto the CPU.
pub(crate) fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::WeightFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Loads `path` into `vars` (see the module docs). `classifier` names the class-count-dependent
/// parameters; `seed` re-initialises them if needed.
pub(crate) fn load_into(
    vars: &[NamedVar],
    classifier: &[&str],
    path: &Path,
    seed: u64,
) -> Result<LoadReport, ModelError> {
    let tensors = read_safetensors(path)?;
    let layout = if tensors.contains_key("backbone.conv1.weight") {
        CheckpointLayout::DeepLab
    } else if tensors.contains_key("conv1.weight") {
        CheckpointLayout::ResNet
    } else {
        return Err(ModelError::UnknownLayout {
            path: path.to_path_buf(),
        });
    };
    let mut plan: Vec<(&NamedVar, Tensor)> = Vec::new();
    let mut used: Vec<&str> = Vec::new();
    let mut reinit: Vec<&NamedVar> = Vec::new();
    let mut kept = Vec::new();
    for nv in vars {
        let file_name = match layout {
            CheckpointLayout::DeepLab => nv.name.as_str(),
            CheckpointLayout::ResNet => match nv.name.strip_prefix("backbone.") {
                Some(rest) => rest,
                None => {
                    kept.push(nv.name.clone());
                    continue;
                }
            },
        };
        let expected = nv.var.dims().to_vec();
        // A DeepLab file without an auxiliary head (it only trains) leaves the model's own
        // auxiliary head as initialised.
        if layout == CheckpointLayout::DeepLab
            && nv.name.starts_with("aux_classifier.")
            && !tensors.contains_key(file_name)
        {
            kept.push(nv.name.clone());
            continue;
        }
        let Some(t) = tensors.get(file_name) else {
            return Err(ModelError::MissingTensor {
                path: path.to_path_buf(),
                name: file_name.to_string(),
                expected,
            });
        };
        used.push(file_name);
        if t.dims() != expected.as_slice() {
            if layout == CheckpointLayout::DeepLab && classifier.contains(&nv.name.as_str()) {
                reinit.push(nv);
                continue;
            }
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: file_name.to_string(),
                expected,
                found: t.dims().to_vec(),
            });
        }
        let t = t.to_dtype(nv.var.dtype())?.to_device(nv.var.device())?;
        plan.push((nv, t));
    }
    // A partial classifier mismatch (weight fits, bias does not, …) re-initialises both.
    if !reinit.is_empty() {
        plan.retain(|(nv, _)| !classifier.contains(&nv.name.as_str()));
        reinit = vars
            .iter()
            .filter(|nv| classifier.contains(&nv.name.as_str()))
            .collect();
    }
    for (nv, t) in &plan {
        nv.var.set(t)?;
    }
    for nv in &reinit {
        let t = init_tensor(
            &nv.name,
            nv.var.dims(),
            nv.init,
            seed,
            nv.var.dtype(),
            nv.var.device(),
        )?;
        nv.var.set(&t)?;
    }
    let mut ignored: Vec<String> = tensors
        .keys()
        .filter(|k| !used.contains(&k.as_str()))
        .cloned()
        .collect();
    ignored.sort();
    Ok(LoadReport {
        path: path.to_path_buf(),
        layout,
        loaded: plan.iter().map(|(nv, _)| nv.name.clone()).collect(),
        reinitialised: reinit.iter().map(|nv| nv.name.clone()).collect(),
        ignored,
        kept_initialisation: kept,
    })
}
