//! Checkpoints: one safetensors file holding the model, the optimiser state, extra state (the
//! loss's moving averages, if any) and, as JSON metadata, the step, the RNG state and the config.
//!
//! Tensor names carry a prefix: `model.<VarMap name>`, `optim.<state name>`, `extra.<name>`.
//! The safetensors metadata holds one key, `recallseg`, whose value is [`CheckpointMeta`] as JSON.
//!
//! Files are written atomically ([`recallseg_files::write_atomic`]): the bytes go to a temporary file in the same
//! folder, which is flushed to disk and then renamed over the target, so a reader (or a crash)
//! sees either the old checkpoint or the new one, never a partial file.
//!
//! Integrity: a second metadata key, `recallseg_integrity`, holds the CRC-32 of the `recallseg`
//! metadata text and of every tensor's bytes. [`Checkpoint::load`] verifies all of them and
//! refuses model or optimiser tensors that hold NaN or infinite values, naming the tensor;
//! [`Checkpoint::save`] refuses to write such tensors in the first place.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use recallseg_files::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout, checked on load. Version 2 added the integrity key
/// (checksums); version 1 files still load, without verification.
pub const FORMAT_VERSION: u32 = 2;

/// Oldest layout [`Checkpoint::load`] reads (version 1: no checksums).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Metadata key of [`CheckpointMeta`] (JSON).
pub const META_KEY: &str = "recallseg";

/// Metadata key of the checksums ([`Integrity`], JSON).
pub const INTEGRITY_KEY: &str = "recallseg_integrity";

/// Checksums stored beside the metadata: CRC-32 (IEEE) of the metadata text and of every
/// tensor's little-endian bytes, as 8 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// CRC-32 of the `recallseg` metadata value.
    pub meta_crc32: String,
    /// CRC-32 of each tensor's bytes, by full tensor name (`model.conv1.weight`).
    pub tensors: std::collections::BTreeMap<String, String>,
}

fn crc_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Number of NaN or infinite values in a tensor's little-endian bytes (floating dtypes; 0 for
/// integer dtypes).
fn non_finite_count(dtype: safetensors::Dtype, bytes: &[u8]) -> usize {
    use safetensors::Dtype as D;
    match dtype {
        D::F32 => bytes
            .chunks_exact(4)
            .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            .count(),
        D::F64 => bytes
            .chunks_exact(8)
            .filter(|b| {
                let a: [u8; 8] = (*b).try_into().unwrap_or([0; 8]);
                !f64::from_le_bytes(a).is_finite()
            })
            .count(),
        // Exponent bits all ones: NaN or infinite.
        D::F16 => bytes
            .chunks_exact(2)
            .filter(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00)
            .count(),
        D::BF16 => bytes
            .chunks_exact(2)
            .filter(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80)
            .count(),
        _ => 0,
    }
}

/// Whether a stored tensor must hold finite values (model parameters and statistics, optimiser
/// moments). `extra.*` state may use NaN as "not yet seen".
fn must_be_finite(name: &str) -> bool {
    name.starts_with("model.") || name.starts_with("optim.")
}

/// A tensor's bytes ready for serialisation.
struct RawTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Errors of checkpoint reading and writing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint file could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The checkpoint file could not be written (nothing was changed at its path).
    #[error(transparent)]
    Write(#[from] recallseg_files::WriteError),
    /// The file is not a recallseg checkpoint or is damaged.
    #[error("{path}: not a valid recallseg checkpoint: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint does not fit the model it is loaded into.
    #[error("{path}: {message}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Which tensor does not fit.
        message: String,
    },
    /// The stored checksum does not match the bytes: the file was damaged after it was written.
    #[error(
        "{path}: {what} does not match its checksum: the file is damaged (restore it from a \
         copy, or start the run again)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed the check (`the metadata`, `` tensor `model.conv1.weight` ``).
        what: String,
    },
    /// A model or optimiser tensor holds NaN or infinite values.
    #[error("{path}: tensor `{tensor}` holds {count} NaN or infinite values")]
    NonFinite {
        /// The file (`<memory>` when writing).
        path: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// How many values are not finite.
        count: usize,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CheckpointError {
    /// The same error about `path` instead of `<memory>` (errors of serialisation in memory).
    fn at(self, path: &Path) -> Self {
        match self {
            CheckpointError::Format { message, .. } => CheckpointError::Format {
                path: path.to_path_buf(),
                message,
            },
            CheckpointError::NonFinite { tensor, count, .. } => CheckpointError::NonFinite {
                path: path.to_path_buf(),
                tensor,
                count,
            },
            e => e,
        }
    }
}

/// State of the trainer's random number generator (`rand_chacha::ChaCha8Rng`), as stored in
/// checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex encoded.
    pub seed_hex: String,
    /// Stream number.
    pub stream: u64,
    /// Position in the stream, in 32-bit words (decimal string: it is a u128).
    pub word_pos: String,
}

impl RngState {
    /// Captures the state of a generator.
    pub fn capture(rng: &rand_chacha::ChaCha8Rng) -> Self {
        Self {
            seed_hex: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// Rebuilds the generator.
    pub fn restore(&self) -> Result<rand_chacha::ChaCha8Rng, String> {
        use rand::SeedableRng;
        let hex = self.seed_hex.as_bytes();
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("rng seed {:?} is not 64 hex digits", self.seed_hex));
        }
        let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]);
        }
        let pos: u128 = self
            .word_pos
            .parse()
            .map_err(|_| format!("rng word_pos `{}` is not a number", self.word_pos))?;
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// What early stopping (`train::EarlyStop`) carries across a resume (stored in the checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EarlyStopState {
    /// The best value of the watched figure so far.
    pub best: f64,
    /// The step it was reached at.
    pub best_step: u64,
    /// Validations since then that did not improve on it.
    pub since_best: usize,
}

/// Everything in a checkpoint besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Optimiser steps completed.
    pub step: u64,
    /// Steps the optimiser itself counted (its bias corrections use it).
    pub optim_steps: u64,
    /// The trainer's RNG after `step` steps.
    pub rng: RngState,
    /// The run's configuration as TOML text.
    pub config_toml: String,
    /// Best validation mean IoU so far, and the step it was reached at.
    pub best: Option<(f64, u64)>,
    /// Class names of the dataset the model was trained on.
    pub class_names: Vec<String>,
    /// Palette (RGB per class) of that dataset.
    pub palette: Vec<[u8; 3]>,
    /// Ignore index of that dataset.
    pub ignore_index: u8,
    /// Sum and count of the losses since the last log line (so a resumed run logs the same
    /// means as an uninterrupted one).
    #[serde(default)]
    pub loss_acc: (f64, u64),
    /// Colour normalisation the model was trained with (what prediction must apply).
    #[serde(default)]
    pub normalize: Option<recallseg_data::Normalize>,
    /// Seconds spent in training steps up to `step`, over every invocation of the run.
    #[serde(default)]
    pub train_seconds: f64,
    /// Early stopping's state (`train.early_stop`): the best watched figure, its step and the
    /// validations since it, so a resumed run counts on (and one that stopped stays stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopState>,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Model tensors by `VarMap` name (parameters and BatchNorm statistics).
    pub model: HashMap<String, Tensor>,
    /// Optimiser state tensors by their optimiser name (`m.<var>`, `v.<var>`, `buf.<var>`).
    pub optim: HashMap<String, Tensor>,
    /// Further state (`loss.<name>` for stateful losses).
    pub extra: HashMap<String, Tensor>,
    /// Step, RNG, config and dataset description.
    pub meta: CheckpointMeta,
}

impl Checkpoint {
    /// Collects a `VarMap`'s tensors (copies, so later updates do not change the checkpoint).
    pub fn model_from_varmap(varmap: &VarMap) -> candle_core::Result<HashMap<String, Tensor>> {
        let data = varmap.data().lock().expect("VarMap mutex poisoned");
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Serialises to safetensors bytes, with the checksums of [`Integrity`]. Fails, naming the
    /// tensor, when a model or optimiser tensor holds NaN or infinite values: a checkpoint never
    /// stores a diverged state.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        use rayon::prelude::*;
        let mut all: Vec<(String, &Tensor)> = Vec::new();
        for (prefix, map) in [
            ("model.", &self.model),
            ("optim.", &self.optim),
            ("extra.", &self.extra),
        ] {
            for (k, t) in map {
                all.push((format!("{prefix}{k}"), t));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let memory = |message: String| CheckpointError::Format {
            path: PathBuf::from("<memory>"),
            message,
        };
        // One conversion to bytes per tensor (in parallel); the checksum and the finiteness check
        // read those bytes, and serialisation borrows them.
        let raw: Vec<(String, RawTensor, String, usize)> = all
            .par_iter()
            .map(|(name, t)| {
                use safetensors::View;
                let raw = RawTensor {
                    dtype: t.dtype(),
                    shape: t.dims().to_vec(),
                    bytes: t.data().into_owned(),
                };
                let crc = crc_hex(&raw.bytes);
                let bad = if must_be_finite(name) {
                    non_finite_count(raw.dtype, &raw.bytes)
                } else {
                    0
                };
                (name.clone(), raw, crc, bad)
            })
            .collect();
        if let Some((name, _, _, bad)) = raw.iter().find(|r| r.3 > 0) {
            return Err(CheckpointError::NonFinite {
                path: PathBuf::from("<memory>"),
                tensor: name.clone(),
                count: *bad,
            });
        }
        let meta = serde_json::to_string(&self.meta)
            .map_err(|e| memory(format!("metadata does not serialise: {e}")))?;
        let integrity = Integrity {
            meta_crc32: crc_hex(meta.as_bytes()),
            tensors: raw
                .iter()
                .map(|(n, _, crc, _)| (n.clone(), crc.clone()))
                .collect(),
        };
        let integrity = serde_json::to_string(&integrity)
            .map_err(|e| memory(format!("checksums do not serialise: {e}")))?;
        let info = HashMap::from([
            (META_KEY.to_string(), meta),
            (INTEGRITY_KEY.to_string(), integrity),
        ]);
        safetensors::serialize(raw.iter().map(|(n, r, _, _)| (n.as_str(), r)), Some(info))
            .map_err(|e| memory(e.to_string()))
    }

    /// Writes the checkpoint atomically to `path` (see [`Checkpoint::to_bytes`] for what is
    /// refused).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes = self.to_bytes().map_err(|e| e.at(path))?;
        Ok(write_atomic(path, |f| f.write_all(&bytes))?)
    }

    /// Reads a checkpoint, putting its tensors on `device`. Verifies the checksums (format
    /// version 2 and later) and that every model and optimiser tensor is finite; the error names
    /// the file and the first tensor that fails.
    pub fn load(path: &Path, device: &Device) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |message: String| CheckpointError::Format {
            path: path.to_path_buf(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
        let metadata = header.metadata().as_ref();
        let meta_json = metadata.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
            format("no `recallseg` metadata (is it a plain weights file?)".into())
        })?;
        let meta: CheckpointMeta =
            serde_json::from_str(meta_json).map_err(|e| format(format!("metadata: {e}")))?;
        // What prediction applies is checked as strictly as a configuration: a zero standard
        // deviation would feed ±inf to the network.
        if let Some(n) = &meta.normalize {
            n.validate().map_err(|e| format(format!("metadata: {e}")))?;
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&meta.format_version) {
            return Err(format(format!(
                "format version {} (this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
                meta.format_version
            )));
        }
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        if meta.format_version >= 2 {
            let text = metadata
                .and_then(|m| m.get(INTEGRITY_KEY))
                .ok_or_else(|| format(format!("the `{INTEGRITY_KEY}` checksums are missing")))?;
            let integrity: Integrity = serde_json::from_str(text)
                .map_err(|e| format(format!("checksums unreadable: {e}")))?;
            if integrity.meta_crc32 != crc_hex(meta_json.as_bytes()) {
                return Err(CheckpointError::Corrupt {
                    path: path.to_path_buf(),
                    what: "the metadata".into(),
                });
            }
            let stored: Vec<&String> = integrity.tensors.keys().collect();
            if names.iter().collect::<Vec<_>>() != stored {
                return Err(format(format!(
                    "the file holds {} tensors, its checksums list {}",
                    names.len(),
                    stored.len()
                )));
            }
            for name in &names {
                let view = st.tensor(name).map_err(|e| format(e.to_string()))?;
                if integrity.tensors[name] != crc_hex(view.data()) {
                    return Err(CheckpointError::Corrupt {
                        path: path.to_path_buf(),
                        what: format!("tensor `{name}`"),
                    });
                }
            }
        }
        for name in names.iter().filter(|n| must_be_finite(n)) {
            let view = st.tensor(name).map_err(|e| format(e.to_string()))?;
            let bad = non_finite_count(view.dtype(), view.data());
            if bad > 0 {
                return Err(CheckpointError::NonFinite {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    count: bad,
                });
            }
        }
        drop(st);
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        let mut ck = Checkpoint {
            model: HashMap::new(),
            optim: HashMap::new(),
            extra: HashMap::new(),
            meta,
        };
        for (name, t) in tensors {
            if let Some(k) = name.strip_prefix("model.") {
                ck.model.insert(k.to_string(), t);
            } else if let Some(k) = name.strip_prefix("optim.") {
                ck.optim.insert(k.to_string(), t);
            } else if let Some(k) = name.strip_prefix("extra.") {
                ck.extra.insert(k.to_string(), t);
            } else {
                return Err(format(format!("unexpected tensor `{name}`")));
            }
        }
        Ok(ck)
    }

    /// Copies the model tensors into a `VarMap` built for the same model. Every variable of the
    /// map must be present with the same shape; the error names the first one that is not.
    pub fn restore_varmap(&self, varmap: &VarMap, path: &Path) -> Result<(), CheckpointError> {
        let data = varmap.data().lock().expect("VarMap mutex poisoned");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let t = self
                .model
                .get(name)
                .ok_or_else(|| CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    message: format!("model tensor `{name}` is missing (different model config?)"),
                })?;
            if t.dims() != var.dims() {
                return Err(CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    message: format!(
                        "model tensor `{name}` has shape {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use rand::{RngCore, SeedableRng};

    fn sample() -> Checkpoint {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        for _ in 0..13 {
            rng.next_u32();
        }
        Checkpoint {
            model: HashMap::from([
                (
                    "conv.weight".to_string(),
                    Tensor::arange(0f32, 24.0, &dev)
                        .unwrap()
                        .reshape((2, 3, 2, 2))
                        .unwrap(),
                ),
                (
                    "bn.running_mean".to_string(),
                    Tensor::new(&[0.5f32, -1.5], &dev).unwrap(),
                ),
            ]),
            optim: HashMap::from([(
                "m.conv.weight".to_string(),
                Tensor::ones((2, 3, 2, 2), DType::F32, &dev).unwrap(),
            )]),
            extra: HashMap::from([(
                "loss.recall_ema".to_string(),
                Tensor::new(&[0.25f32, 0.75], &dev).unwrap(),
            )]),
            meta: CheckpointMeta {
                format_version: FORMAT_VERSION,
                step: 17,
                optim_steps: 17,
                rng: RngState::capture(&rng),
                config_toml: "[train]\niters = 3\n".into(),
                best: Some((0.42, 10)),
                class_names: vec!["a".into(), "b".into()],
                palette: vec![[1, 2, 3], [4, 5, 6]],
                ignore_index: 255,
                loss_acc: (1.5, 2),
                normalize: Some(recallseg_data::Normalize::IMAGENET),
                train_seconds: 12.5,
                early_stop: None,
            },
        }
    }

    fn vec_of(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let ck = sample();
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.meta, ck.meta);
        for (a, b) in [
            (&ck.model, &back.model),
            (&ck.optim, &back.optim),
            (&ck.extra, &back.extra),
        ] {
            assert_eq!(a.len(), b.len());
            for (k, t) in a {
                assert_eq!(vec_of(t), vec_of(&b[k]), "{k}");
                assert_eq!(t.dims(), b[k].dims());
            }
        }
        // The RNG continues where it stopped.
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        for _ in 0..13 {
            r1.next_u32();
        }
        let mut r2 = back.meta.rng.restore().unwrap();
        assert_eq!(r1.next_u64(), r2.next_u64());
    }

    #[test]
    fn varmap_restore_checks_names_and_shapes() {
        let dev = Device::Cpu;
        let ck = sample();
        let vm = VarMap::new();
        vm.get(
            (2, 3, 2, 2),
            "conv.weight",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &dev,
        )
        .unwrap();
        ck.restore_varmap(&vm, Path::new("x")).unwrap();
        let w = vm.data().lock().unwrap()["conv.weight"].as_tensor().clone();
        assert_eq!(vec_of(&w), (0..24).map(|i| i as f32).collect::<Vec<_>>());
        // A variable the checkpoint lacks.
        vm.get(
            3,
            "head.bias",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &dev,
        )
        .unwrap();
        let e = ck
            .restore_varmap(&vm, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`head.bias` is missing"), "{e}");
        // A shape mismatch.
        let vm2 = VarMap::new();
        vm2.get(
            5,
            "bn.running_mean",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &dev,
        )
        .unwrap();
        let e = ck
            .restore_varmap(&vm2, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bn.running_mean` has shape [2]"), "{e}");
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"garbage").unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.safetensors") && e.contains("not a valid"),
            "{e}"
        );
        // A truncated checkpoint.
        let good = sample().to_bytes().unwrap();
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid"), "{e}");
        // Plain weights without metadata.
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        t.save_safetensors("w", &path).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `recallseg` metadata"), "{e}");
        let e = Checkpoint::load(&dir.path().join("absent"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent"), "{e}");
    }

    /// 200 random single-bit flips anywhere in a checkpoint (header, metadata, checksums,
    /// tensor bytes): every one is refused on load, none loads as a different checkpoint.
    #[test]
    fn every_bit_flip_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let good = sample().to_bytes().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut detected = 0;
        for trial in 0..200 {
            let mut bytes = good.clone();
            let bit = (rng.next_u64() % (8 * bytes.len() as u64)) as usize;
            bytes[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bytes).unwrap();
            match Checkpoint::load(&path, &Device::Cpu) {
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains("ck.safetensors"), "trial {trial}: {e}");
                    detected += 1;
                }
                Ok(_) => panic!("trial {trial}: flipping bit {bit} went unnoticed"),
            }
        }
        assert_eq!(detected, 200);
        // The tensor data is most of the file: a flip there names the tensor.
        let mut bytes = good.clone();
        let n = bytes.len();
        bytes[n - 3] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not match its checksum") && e.contains("tensor `"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_tensors_are_neither_written_nor_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let mut ck = sample();
        ck.model.insert(
            "conv1.weight".into(),
            Tensor::new(&[1.0f32, f32::NAN, f32::INFINITY], &Device::Cpu).unwrap(),
        );
        let e = ck.save(&path).unwrap_err().to_string();
        assert!(
            e.contains("ck.safetensors")
                && e.contains("model.conv1.weight")
                && e.contains("2 NaN or infinite"),
            "{e}"
        );
        assert!(!path.exists());
        // A file whose tensor bytes were replaced by NaN and whose checksums were recomputed
        // (what a buggy external tool could write): refused, naming the tensor.
        let ok = sample();
        ok.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, RawTensor)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let mut raw = RawTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                };
                if n == "model.bn.running_mean" {
                    raw.bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
                (n, raw)
            })
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = serde_json::to_string(&ok.meta).unwrap();
        let integrity = Integrity {
            meta_crc32: crc_hex(meta.as_bytes()),
            tensors: tensors
                .iter()
                .map(|(n, r)| (n.clone(), crc_hex(&r.bytes)))
                .collect(),
        };
        let info = HashMap::from([
            (META_KEY.to_string(), meta),
            (
                INTEGRITY_KEY.to_string(),
                serde_json::to_string(&integrity).unwrap(),
            ),
        ]);
        let forged =
            safetensors::serialize(tensors.iter().map(|(n, r)| (n.as_str(), r)), Some(info))
                .unwrap();
        std::fs::write(&path, forged).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`model.bn.running_mean` holds 1 NaN or infinite"),
            "{e}"
        );
    }

    #[test]
    fn a_version_1_checkpoint_without_checksums_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.safetensors");
        let mut ck = sample();
        ck.meta.format_version = 1;
        let mut all: Vec<(String, &Tensor)> = ck
            .model
            .iter()
            .map(|(k, t)| (format!("model.{k}"), t))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let info = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&ck.meta).unwrap(),
        )]);
        std::fs::write(&path, safetensors::serialize(all, Some(info)).unwrap()).unwrap();
        let back = Checkpoint::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.meta.format_version, 1);
        assert_eq!(back.model.len(), 2);
        // Version 2 without its checksums is damaged, not old.
        ck.meta.format_version = 2;
        let all: Vec<(String, &Tensor)> = Vec::new();
        let info = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&ck.meta).unwrap(),
        )]);
        std::fs::write(&path, safetensors::serialize(all, Some(info)).unwrap()).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksums are missing"), "{e}");
    }

    #[test]
    fn metadata_is_validated_on_load_as_strictly_as_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero-std.safetensors");
        let mut ck = sample();
        ck.meta.normalize = Some(recallseg_data::Normalize {
            mean: [0.0; 3],
            std: [0.0; 3],
        });
        // Saved with valid checksums: only the value is wrong.
        ck.save(&path).unwrap();
        let e = Checkpoint::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zero-std.safetensors") && e.contains("normalize.std[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_rng_seed_is_an_error_not_a_panic() {
        let mut state = RngState::capture(&rand_chacha::ChaCha8Rng::seed_from_u64(1));
        // 64 bytes, but a two-byte character straddles a digit pair (used to panic slicing).
        state.seed_hex = format!("é{}", &state.seed_hex[2..]);
        assert_eq!(state.seed_hex.len(), 64);
        let e = state.restore().unwrap_err();
        assert!(e.contains("not 64 hex digits"), "{e}");
        state.seed_hex = "zz".repeat(32);
        assert!(state.restore().is_err());
    }
}
