//! SYNTHIA-SEQS reader (the paper's main dataset, e.g. `SYNTHIA-SEQS-05-SUMMER`).
//!
//! Layout under `root` (either a folder of sequences or one sequence folder itself):
//!
//! ```text
//! <root>/<SEQUENCE>/RGB/Stereo_{Left,Right}/Omni_{B,F,L,R}/NNNNNN.png        8-bit RGB
//! <root>/<SEQUENCE>/GT/LABELS/Stereo_{Left,Right}/Omni_{B,F,L,R}/NNNNNN.png  16-bit, class id in
//!                                                                           the first channel
//! ```
//!
//! Classes follow the paper's code (`ptsemseg/loader/synthia_loader.py` of
//! PotatoTian/recall-semseg): the network has **16 outputs** and the raw Synthia ids 0–15 are the
//! train ids unchanged (no remapping). That code trains with `ignore_index: 255`, a value Synthia
//! labels never hold, so *void (0) is learnt and evaluated as a class*; ids 13 and 14 are unused
//! by Synthia and simply never occur. [`SynthiaOptions::ignore_void`] maps void to the ignore
//! index instead (the class table keeps 16 entries so ids do not move). Any raw value above 15
//! is an error naming the file and pixel.
//!
//! Split protocol (see [`crate::split`]): for every sequence, camera `Omni_{B,F,L,R}` and side
//! `Stereo_{Left,Right}` (the paper's loop order), the file names are sorted, shuffled with a
//! ChaCha8 RNG seeded with [`SynthiaOptions::seed`] (re-seeded per folder) and cut 70/10/20.

use crate::common::paired_file_methods;
use crate::common::{fingerprint_items, list_pngs, require_dir, Item, LabelLut};
use crate::dataset::{ClassInfo, Normalize, SegDataset, Split, DEFAULT_IGNORE_INDEX};
use crate::error::DataError;
use crate::split::{select_split, SplitFractions};
use std::path::{Path, PathBuf};

/// Synthia class names by raw id (0–15).
pub const SYNTHIA_CLASS_NAMES: [&str; 16] = [
    "void",
    "sky",
    "building",
    "road",
    "sidewalk",
    "fence",
    "vegetation",
    "pole",
    "car",
    "traffic sign",
    "pedestrian",
    "bicycle",
    "lanemarking",
    "reserved 13",
    "reserved 14",
    "traffic light",
];

/// Synthia's official display colours by raw id (the two reserved ids get dark greys).
pub const SYNTHIA_PALETTE: [[u8; 3]; 16] = [
    [0, 0, 0],
    [128, 128, 128],
    [128, 0, 0],
    [128, 64, 128],
    [0, 0, 192],
    [64, 64, 128],
    [128, 128, 0],
    [192, 192, 128],
    [64, 0, 128],
    [192, 128, 128],
    [64, 64, 0],
    [0, 128, 192],
    [0, 172, 0],
    [32, 32, 32],
    [48, 48, 48],
    [0, 128, 128],
];

/// Synthia class ids by name, for code that places classes (the generator, tests).
pub mod class {
    #![allow(missing_docs)]
    pub const VOID: u8 = 0;
    pub const SKY: u8 = 1;
    pub const BUILDING: u8 = 2;
    pub const ROAD: u8 = 3;
    pub const SIDEWALK: u8 = 4;
    pub const FENCE: u8 = 5;
    pub const VEGETATION: u8 = 6;
    pub const POLE: u8 = 7;
    pub const CAR: u8 = 8;
    pub const SIGN: u8 = 9;
    pub const PEDESTRIAN: u8 = 10;
    pub const BICYCLE: u8 = 11;
    pub const LANEMARKING: u8 = 12;
    pub const TRAFFIC_LIGHT: u8 = 15;
}

/// Camera folders, in the paper's loop order.
pub(crate) const CAMERAS: [&str; 4] = ["Omni_B", "Omni_F", "Omni_L", "Omni_R"];
/// Stereo sides, in the paper's loop order.
pub(crate) const SIDES: [&str; 2] = ["Stereo_Left", "Stereo_Right"];

/// The paper's Synthia-SEQS colour statistics, converted from its BGR order to RGB.
pub const SYNTHIA_NORMALIZE: Normalize = Normalize {
    mean: [71.23802, 62.203827, 55.09944],
    std: [55.363934, 51.497387, 49.56111],
};

/// Options of [`SynthiaDataset::open`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthiaOptions {
    /// Sequence folders to read (`["SYNTHIA-SEQS-05-SUMMER"]`); empty = every sub-folder of
    /// the root that has `RGB/` and `GT/LABELS/` (or the root itself if it has them).
    pub sequences: Vec<String>,
    /// Seed of the per-folder split shuffle (default 0).
    pub seed: u64,
    /// Split fractions (0.7 / 0.1 / rest).
    pub fractions: SplitFractions,
    /// Map void (raw id 0) to the ignore index instead of training it as class 0.
    pub ignore_void: bool,
}

/// The Synthia class table (16 classes, ignore index 255).
pub(crate) fn synthia_class_info() -> ClassInfo {
    ClassInfo {
        names: SYNTHIA_CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        palette: SYNTHIA_PALETTE.to_vec(),
        ignore_index: DEFAULT_IGNORE_INDEX,
    }
}

/// One split of a SYNTHIA-SEQS dataset.
#[derive(Debug)]
pub struct SynthiaDataset {
    root: PathBuf,
    name: String,
    split: Split,
    options: SynthiaOptions,
    items: Vec<Item>,
    classes: ClassInfo,
    lut: LabelLut,
}

fn is_sequence(dir: &Path) -> bool {
    dir.join("RGB").is_dir() && dir.join("GT").join("LABELS").is_dir()
}

impl SynthiaDataset {
    /// Lists the files of `split` under `root`.
    ///
    /// Errors when the root or a named sequence is missing, when an RGB image has no label
    /// file, or when the split is empty. Files are not decoded here.
    pub fn open(
        root: impl AsRef<Path>,
        split: Split,
        options: SynthiaOptions,
    ) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        require_dir(&root, "Synthia root")?;
        options.fractions.validate()?;
        let sequences: Vec<(String, PathBuf)> = if !options.sequences.is_empty() {
            let mut v = Vec::new();
            for s in &options.sequences {
                let dir = root.join(s);
                require_dir(&dir, "Synthia sequence")?;
                if !is_sequence(&dir) {
                    return Err(DataError::MissingPath {
                        what: "Synthia RGB/ and GT/LABELS/ folders".into(),
                        path: dir,
                    });
                }
                v.push((s.clone(), dir));
            }
            v
        } else if is_sequence(&root) {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sequence".into());
            vec![(name, root.clone())]
        } else {
            let mut v = Vec::new();
            let rd = std::fs::read_dir(&root).map_err(|e| DataError::io(&root, e))?;
            for e in rd {
                let e = e.map_err(|e| DataError::io(&root, e))?;
                let p = e.path();
                if is_sequence(&p) {
                    v.push((e.file_name().to_string_lossy().into_owned(), p));
                }
            }
            v.sort();
            v
        };
        let mut items = Vec::new();
        for (seq, dir) in &sequences {
            for cam in CAMERAS {
                for side in SIDES {
                    let img_dir = dir.join("RGB").join(side).join(cam);
                    if !img_dir.is_dir() {
                        continue;
                    }
                    let lbl_dir = dir.join("GT").join("LABELS").join(side).join(cam);
                    let names = list_pngs(&img_dir)?;
                    for name in select_split(&names, split, options.seed, &options.fractions) {
                        let label = lbl_dir.join(&name);
                        let image = img_dir.join(&name);
                        if !label.is_file() {
                            return Err(DataError::unpaired(image, "label", label));
                        }
                        let id = format!("{seq}/{side}/{cam}/{}", crate::common::stem(&name));
                        items.push(Item { image, label, id });
                    }
                }
            }
        }
        if items.is_empty() {
            return Err(DataError::EmptySplit {
                dataset: "synthia".into(),
                split: split.to_string(),
                root,
                hint: if sequences.is_empty() {
                    "no sequence folder with RGB/ and GT/LABELS/".into()
                } else {
                    format!(
                        "no PNG in RGB/Stereo_*/Omni_*/ of {} sequence(s) for this split",
                        sequences.len()
                    )
                },
            });
        }
        let classes = synthia_class_info();
        let mut lut = LabelLut::new("Synthia ids 0..=15");
        for id in 0..16u8 {
            lut.set(id as u16, id);
        }
        if options.ignore_void {
            lut.set(0, classes.ignore_index);
        }
        Ok(SynthiaDataset {
            name: format!("synthia-{split}"),
            root,
            split,
            options,
            items,
            classes,
            lut,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The split.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SynthiaOptions {
        &self.options
    }

    /// The sample ids (`SEQUENCE/side/camera/frame`) in dataset order.
    pub fn ids(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.id.as_str()).collect()
    }

    /// The label file of item `index`.
    pub fn label_path(&self, index: usize) -> Option<&Path> {
        self.items.get(index).map(|i| i.label.as_path())
    }
}

impl SegDataset for SynthiaDataset {
    paired_file_methods!();
    fn normalization(&self) -> Normalize {
        SYNTHIA_NORMALIZE
    }
    fn fingerprint(&self) -> u64 {
        let extra = format!(
            "synthia split={} seed={} fr={:?} ignore_void={}",
            self.split, self.options.seed, self.options.fractions, self.options.ignore_void
        );
        fingerprint_items(&self.items, &extra)
    }
    fn cache_dir(&self) -> Option<PathBuf> {
        Some(self.root.join(".recallseg-cache"))
    }
}
