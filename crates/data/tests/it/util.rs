//! Small fixtures shared by the tests.

use recallseg_data::{generate_synthia, GenerateReport, SyntheticConfig};
use std::path::Path;

/// A tiny synthetic Synthia dataset: `cams` cameras × 1 side × `frames` frames of 64×32.
pub(crate) fn tiny_synthia(root: &Path, cams: &[&str], frames: usize, seed: u64) -> GenerateReport {
    let cfg = SyntheticConfig {
        seed,
        width: 64,
        height: 32,
        cameras: cams.iter().map(|s| s.to_string()).collect(),
        sides: vec!["Stereo_Left".into()],
        frames_per_folder: frames,
        ..SyntheticConfig::default()
    };
    generate_synthia(root, &cfg).expect("generating the fixture")
}
