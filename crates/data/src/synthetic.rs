//! A procedural street-scene dataset written in the SYNTHIA-SEQS on-disk format.
//!
//! [`generate_synthia`] renders perspective street scenes (road trapezoid towards a vanishing
//! point, sidewalks, facades with windows, skyline, trees, fences, lane markings, cars, poles
//! with signs and traffic lights, pedestrians, rare bicycles, unlabelled clutter) and writes
//!
//! ```text
//! <root>/<sequence>/RGB/<side>/<camera>/NNNNNN.png        8-bit RGB
//! <root>/<sequence>/GT/LABELS/<side>/<camera>/NNNNNN.png  16-bit RGB, class id in channel 1,
//!                                                        instance id in channel 2
//! ```
//!
//! so [`SynthiaDataset`](crate::SynthiaDataset) reads it like the real data. Class ids are
//! Synthia's ([`crate::synthia::class`]). Objects are sized in metres and scaled by their
//! distance, so pixel shares follow street scenes: sky, building, road and vegetation large;
//! sidewalk, car, fence and lane marking medium; pole, sign, light and pedestrian small; bicycle
//! tiny and rare. Colours of different classes overlap (grey cars, poles, facades, road and
//! sidewalk; green fences and trees; red/blue/white cars and signs; white clouds and facades),
//! and every surface gets per-object colour jitter, low-frequency shading and per-pixel noise,
//! so small classes must be recognised by shape and context.
//!
//! Every image is rendered from its own RNG, `ChaCha8Rng::seed_from_u64(mix_seed(seed,
//! folder, frame))`, in parallel with rayon: the output is identical for a given seed and
//! configuration whatever the thread count.
//!
//! Rendering lives in submodules: `canvas` (noise, materials, the label-writing raster),
//! `painter` (per-scene state: RNG, camera geometry, light, street layout), and one module per
//! group of scene parts: `backdrop` (sky, skyline, facades), `ground` (road, lane markings,
//! sidewalks, grass) and `objects` (fences, trees, poles with signs and traffic lights, cars,
//! pedestrians, bicycles, clutter).

mod backdrop;
mod canvas;
mod ground;
mod objects;
mod painter;

use crate::error::DataError;
use crate::loader::mix_seed;
use crate::png_io::{write_label_rgb16, write_rgb8, PngSpeed};
use crate::synthia::{CAMERAS, SIDES};
use painter::{Painter, Street};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Settings of [`generate_synthia`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Image width in pixels (at least 32).
    pub width: usize,
    /// Image height in pixels (at least 16).
    pub height: usize,
    /// Sequence folder name.
    pub sequence: String,
    /// Camera folders to write (subset of `Omni_{B,F,L,R}`).
    pub cameras: Vec<String>,
    /// Stereo sides to write (subset of `Stereo_{Left,Right}`).
    pub sides: Vec<String>,
    /// Frames per (side, camera) folder.
    pub frames_per_folder: usize,
    /// PNG compression.
    #[serde(skip)]
    pub png: PngSpeed,
}

impl Default for SyntheticConfig {
    /// 8 folders × 40 frames = 320 images of 384×192 in `SYNTHIA-SEQS-05-SUMMER`.
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            width: 384,
            height: 192,
            sequence: "SYNTHIA-SEQS-05-SUMMER".into(),
            cameras: CAMERAS.iter().map(|s| s.to_string()).collect(),
            sides: SIDES.iter().map(|s| s.to_string()).collect(),
            frames_per_folder: 40,
            png: PngSpeed::Fast,
        }
    }
}

impl SyntheticConfig {
    /// Checks sizes and folder names.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.width < 32 || self.height < 16 || self.width > 8192 || self.height > 8192 {
            return Err(DataError::config(
                "synthetic size",
                format!("{}x{}", self.width, self.height),
                "width must be 32..=8192 and height 16..=8192",
            ));
        }
        if self.frames_per_folder == 0 {
            return Err(DataError::config("frames_per_folder", 0, "must be > 0"));
        }
        if self.sequence.is_empty()
            || self.sequence.contains(['/', '\\'])
            || self.sequence.starts_with('.')
        {
            return Err(DataError::config(
                "sequence",
                &self.sequence,
                "must be a plain folder name",
            ));
        }
        for c in &self.cameras {
            if !CAMERAS.contains(&c.as_str()) {
                return Err(DataError::config(
                    "cameras",
                    c,
                    "expected one of Omni_B, Omni_F, Omni_L, Omni_R",
                ));
            }
        }
        for s in &self.sides {
            if !SIDES.contains(&s.as_str()) {
                return Err(DataError::config(
                    "sides",
                    s,
                    "expected Stereo_Left or Stereo_Right",
                ));
            }
        }
        if self.cameras.is_empty() || self.sides.is_empty() {
            return Err(DataError::config(
                "cameras/sides",
                "[]",
                "need at least one camera and one side",
            ));
        }
        Ok(())
    }
}

/// What [`generate_synthia`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenerateReport {
    /// The sequence folder (`<root>/<sequence>`).
    pub sequence_dir: PathBuf,
    /// Images written.
    pub images: usize,
    /// Pixels per Synthia class id (16 entries) over all images.
    pub class_pixels: Vec<u64>,
    /// Images in which each class appears.
    pub class_images: Vec<u64>,
}

impl GenerateReport {
    /// Share of all pixels per class id.
    pub fn class_fractions(&self) -> Vec<f64> {
        let total: u64 = self.class_pixels.iter().sum();
        self.class_pixels
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect()
    }
}

/// Writes a synthetic dataset in the SYNTHIA-SEQS layout under `root` (see the module docs).
///
/// When `<root>/<sequence>` does not exist yet, the dataset is written to a hidden temporary
/// folder beside it (`<root>/.<sequence>.partial-<pid>-<n>`) and renamed into place when
/// complete, so that the sequence folder, once there, is whole: a process killed while
/// generating leaves only the temporary folder, and of two processes generating at once the
/// first to finish publishes and the second discards its copy. When the sequence folder
/// already exists, its files with the same names are overwritten in place. Returns per-class
/// pixel statistics.
pub fn generate_synthia(root: &Path, cfg: &SyntheticConfig) -> Result<GenerateReport, DataError> {
    cfg.validate()?;
    let target = root.join(&cfg.sequence);
    if target.exists() {
        return generate_into(&target, cfg);
    }
    std::fs::create_dir_all(root).map_err(|e| DataError::io(root, e))?;
    static PARTIAL_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let partial = root.join(format!(
        ".{}.partial-{}-{}",
        cfg.sequence,
        std::process::id(),
        PARTIAL_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = generate_into(&partial, cfg).and_then(|mut report| {
        match std::fs::rename(&partial, &target) {
            Ok(()) => {}
            // Another process published the same folder first: keep theirs.
            Err(_) if target.join("RGB").is_dir() => {
                let _ = std::fs::remove_dir_all(&partial);
            }
            Err(e) => return Err(DataError::io(&target, e)),
        }
        report.sequence_dir = target.clone();
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

/// [`generate_synthia`]'s work: every image and label of `cfg` under `seq_dir`.
fn generate_into(seq_dir: &Path, cfg: &SyntheticConfig) -> Result<GenerateReport, DataError> {
    let seq_dir = seq_dir.to_path_buf();
    let mut jobs = Vec::new();
    for (fi, (side, cam)) in SIDES
        .iter()
        .flat_map(|s| CAMERAS.iter().map(move |c| (*s, *c)))
        .enumerate()
    {
        if !cfg.sides.iter().any(|s| s == side) || !cfg.cameras.iter().any(|c| c == cam) {
            continue;
        }
        let rgb = seq_dir.join("RGB").join(side).join(cam);
        let lbl = seq_dir.join("GT").join("LABELS").join(side).join(cam);
        for d in [&rgb, &lbl] {
            std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
        }
        for frame in 0..cfg.frames_per_folder {
            jobs.push((fi as u64, frame, rgb.clone(), lbl.clone()));
        }
    }
    let stats = jobs
        .par_iter()
        .map(|(fi, frame, rgb_dir, lbl_dir)| {
            let scene = render_scene(
                cfg.width,
                cfg.height,
                mix_seed(cfg.seed, *fi, *frame as u64),
            );
            let name = format!("{frame:06}.png");
            write_rgb8(
                &rgb_dir.join(&name),
                cfg.width,
                cfg.height,
                &scene.rgb,
                cfg.png,
            )?;
            write_label_rgb16(
                &lbl_dir.join(&name),
                cfg.width,
                cfg.height,
                &scene.label,
                Some(&scene.instance),
                cfg.png,
            )?;
            let mut px = vec![0u64; 16];
            for &l in &scene.label {
                px[l as usize] += 1;
            }
            Ok(px)
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let mut class_pixels = vec![0u64; 16];
    let mut class_images = vec![0u64; 16];
    for px in &stats {
        for c in 0..16 {
            class_pixels[c] += px[c];
            class_images[c] += (px[c] > 0) as u64;
        }
    }
    Ok(GenerateReport {
        sequence_dir: seq_dir,
        images: stats.len(),
        class_pixels,
        class_images,
    })
}

/// One rendered scene.
#[derive(Debug, Clone)]
pub struct Scene {
    /// H×W×3 RGB.
    pub rgb: Vec<u8>,
    /// H×W Synthia class ids.
    pub label: Vec<u16>,
    /// H×W instance ids (0 for stuff).
    pub instance: Vec<u16>,
}

/// Renders one scene (exposed for tests and custom generators).
///
/// The parts are drawn back to front from one RNG seeded with `seed`, in this order: sky,
/// distant skyline, street layout, near facades, ground (road, lane markings, sidewalks,
/// grass), then the street objects far to near, then camera noise.
pub fn render_scene(w: usize, h: usize, seed: u64) -> Scene {
    let mut p = Painter::new(w, h, seed);
    p.sky();
    p.skyline();
    let street = Street::sample(&mut p.rng);
    p.facades(&street);
    p.ground(&street);
    for o in objects::place(&mut p.rng, &street) {
        p.object(o, &street);
    }
    p.finish()
}
