//! Cityscapes reader (fine annotations).
//!
//! Layout under `root`:
//!
//! ```text
//! <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
//! <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
//! ```
//!
//! `labelIds` maps (ids 0–33) are converted to the 19 official train ids with the table of
//! `cityscapesScripts/helpers/labels.py`; every id whose train id is 255 or −1 (void, ego
//! vehicle, parking, guard rail, caravan, trailer, …) becomes the ignore index 255. A value above
//! 33 is an error naming the file. With [`CityscapesLabels::TrainIds`] the reader takes the
//! `*_gtFine_labelTrainIds.png` maps made by `cityscapesScripts` instead (values 0–18 and 255).

use crate::common::paired_file_methods;
use crate::common::{fingerprint_items, list_pngs, require_dir, Item, LabelLut};
use crate::dataset::{ClassInfo, Normalize, SegDataset, Split, DEFAULT_IGNORE_INDEX};
use crate::error::DataError;
use std::path::{Path, PathBuf};

/// The 19 Cityscapes train classes.
pub const CITYSCAPES_CLASS_NAMES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// Official Cityscapes colours of the 19 train classes.
pub const CITYSCAPES_PALETTE: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

/// Train id of every Cityscapes label id 0–33 (255 = ignored), from `labels.py`.
pub const CITYSCAPES_ID_TO_TRAIN_ID: [u8; 34] = [
    255, 255, 255, 255, 255, 255, 255, // 0 unlabeled … 6 ground
    0, 1, // 7 road, 8 sidewalk
    255, 255, // 9 parking, 10 rail track
    2, 3, 4, // 11 building, 12 wall, 13 fence
    255, 255, 255, // 14 guard rail, 15 bridge, 16 tunnel
    5, 255, // 17 pole, 18 polegroup
    6, 7, 8, 9, 10, 11, 12, 13, 14, 15, // 19 traffic light … 28 bus
    255, 255, // 29 caravan, 30 trailer
    16, 17, 18, // 31 train, 32 motorcycle, 33 bicycle
];

/// Which label maps to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CityscapesLabels {
    /// `*_gtFine_labelIds.png` (as downloaded), converted to train ids.
    #[default]
    LabelIds,
    /// `*_gtFine_labelTrainIds.png` (made by `cityscapesScripts`), used as they are.
    TrainIds,
}

impl CityscapesLabels {
    fn suffix(&self) -> &'static str {
        match self {
            CityscapesLabels::LabelIds => "_gtFine_labelIds.png",
            CityscapesLabels::TrainIds => "_gtFine_labelTrainIds.png",
        }
    }
}

/// Options of [`CityscapesDataset::open`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CityscapesOptions {
    /// Which label maps to read.
    pub labels: CityscapesLabels,
}

/// The Cityscapes class table (19 classes, ignore index 255).
pub(crate) fn cityscapes_class_info() -> ClassInfo {
    ClassInfo {
        names: CITYSCAPES_CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        palette: CITYSCAPES_PALETTE.to_vec(),
        ignore_index: DEFAULT_IGNORE_INDEX,
    }
}

/// One split of Cityscapes.
#[derive(Debug)]
pub struct CityscapesDataset {
    root: PathBuf,
    name: String,
    split: Split,
    options: CityscapesOptions,
    items: Vec<Item>,
    classes: ClassInfo,
    lut: LabelLut,
}

const IMAGE_SUFFIX: &str = "_leftImg8bit.png";

impl CityscapesDataset {
    /// Lists the files of `split` (cities sorted, files sorted).
    ///
    /// Errors when a folder is missing, an image has no label file, or the split is empty.
    pub fn open(
        root: impl AsRef<Path>,
        split: Split,
        options: CityscapesOptions,
    ) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        require_dir(&root, "Cityscapes root")?;
        let img_root = root.join("leftImg8bit").join(split.as_str());
        let gt_root = root.join("gtFine").join(split.as_str());
        require_dir(&img_root, "Cityscapes image folder")?;
        require_dir(&gt_root, "Cityscapes gtFine folder")?;
        let mut cities = Vec::new();
        for e in std::fs::read_dir(&img_root).map_err(|e| DataError::io(&img_root, e))? {
            let e = e.map_err(|e| DataError::io(&img_root, e))?;
            if e.path().is_dir() {
                cities.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        cities.sort();
        let mut items = Vec::new();
        for city in &cities {
            for name in list_pngs(&img_root.join(city))? {
                let Some(base) = name.strip_suffix(IMAGE_SUFFIX) else {
                    continue;
                };
                let image = img_root.join(city).join(&name);
                let label = gt_root
                    .join(city)
                    .join(format!("{base}{}", options.labels.suffix()));
                if !label.is_file() {
                    return Err(DataError::unpaired(image, "label", label));
                }
                items.push(Item {
                    image,
                    label,
                    id: format!("{city}/{base}"),
                });
            }
        }
        if items.is_empty() {
            return Err(DataError::EmptySplit {
                dataset: "cityscapes".into(),
                split: split.to_string(),
                root,
                hint: format!("no *{IMAGE_SUFFIX} under {}", img_root.display()),
            });
        }
        let classes = cityscapes_class_info();
        let lut = match options.labels {
            CityscapesLabels::LabelIds => {
                let mut lut = LabelLut::new("Cityscapes label ids 0..=33");
                for (id, &t) in CITYSCAPES_ID_TO_TRAIN_ID.iter().enumerate() {
                    lut.set(id as u16, t);
                }
                lut
            }
            CityscapesLabels::TrainIds => {
                let mut lut = LabelLut::new("Cityscapes train ids 0..=18 and 255");
                for t in 0..19u8 {
                    lut.set(t as u16, t);
                }
                lut.set(255, 255);
                lut
            }
        };
        Ok(CityscapesDataset {
            name: format!("cityscapes-{split}"),
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

    /// Sample ids (`city/city_seq_frame`) in dataset order.
    pub fn ids(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.id.as_str()).collect()
    }
}

impl SegDataset for CityscapesDataset {
    paired_file_methods!();
    fn normalization(&self) -> Normalize {
        Normalize::IMAGENET
    }
    fn fingerprint(&self) -> u64 {
        fingerprint_items(
            &self.items,
            &format!("cityscapes split={} {:?}", self.split, self.options),
        )
    }
    fn cache_dir(&self) -> Option<PathBuf> {
        Some(self.root.join(".recallseg-cache"))
    }
}
