//! A user's own data: an image folder and a mask folder, matched by file stem, described by a
//! small TOML or JSON file.
//!
//! ```toml
//! # dataset.toml (paths are relative to this file)
//! ignore_index = 255                     # optional, default 255
//! classes = [
//!   { name = "background", color = [0, 0, 0] },
//!   { name = "crack" },                  # colour optional
//! ]
//!
//! # Either one pair of folders, split like Synthia (sorted, shuffled with `seed`, 70/10/20):
//! images = "images"
//! masks = "masks"
//! seed = 0                               # optional
//! fractions = { train = 0.7, val = 0.1 } # optional
//!
//! # … or one pair per split (then `images`/`masks` above are left out; opening a split
//! # without its section is an error naming it):
//! # [train]
//! # images = "train/img"
//! # masks = "train/mask"
//! # [val]
//! # images = "val/img"
//! # masks = "val/mask"
//! # [test]
//! # images = "test/img"
//! # masks = "test/mask"
//!
//! # Optional colour statistics (0–255 scale); default ImageNet.
//! # normalize = { mean = [120.0, 115.0, 105.0], std = [58.0, 57.0, 57.0] }
//! ```
//!
//! Images are PNG or JPEG (`.png`, `.jpg`, `.jpeg`); masks are PNGs whose pixel values (grey
//! level, first channel, or palette index) are class ids `0..n` or the ignore index. Any other
//! value is an error naming the mask and the pixel.

use crate::common::paired_file_methods;
use crate::common::{fingerprint_items, require_dir, Item, LabelLut};
use crate::dataset::{ClassInfo, Normalize, SegDataset, Split, DEFAULT_IGNORE_INDEX};
use crate::error::DataError;
use crate::split::{select_split, SplitFractions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One class in a folder dataset description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// Class name.
    pub name: String,
    /// Display colour; a default palette colour when absent.
    #[serde(default)]
    pub color: Option<[u8; 3]>,
}

/// An image folder and its mask folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderPair {
    /// Image folder.
    pub images: PathBuf,
    /// Mask folder.
    pub masks: PathBuf,
}

/// The description file of a folder dataset (see the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    /// Classes, in train-id order.
    pub classes: Vec<ClassSpec>,
    /// Mask value of ignored pixels.
    #[serde(default = "default_ignore")]
    pub ignore_index: u8,
    /// Image folder split by the shuffle protocol (with `masks`).
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// Mask folder split by the shuffle protocol (with `images`).
    #[serde(default)]
    pub masks: Option<PathBuf>,
    /// Seed of the split shuffle.
    #[serde(default)]
    pub seed: u64,
    /// Split fractions.
    #[serde(default)]
    pub fractions: SplitFractions,
    /// Explicit training folders.
    #[serde(default)]
    pub train: Option<FolderPair>,
    /// Explicit validation folders.
    #[serde(default)]
    pub val: Option<FolderPair>,
    /// Explicit test folders.
    #[serde(default)]
    pub test: Option<FolderPair>,
    /// Colour statistics.
    #[serde(default)]
    pub normalize: Option<Normalize>,
}

fn default_ignore() -> u8 {
    DEFAULT_IGNORE_INDEX
}

/// The PASCAL VOC colour map (bit-interleaved), used for classes without a colour.
pub(crate) fn default_color(index: usize) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = index;
    for j in 0..8 {
        r |= ((c & 1) as u8) << (7 - j);
        g |= (((c >> 1) & 1) as u8) << (7 - j);
        b |= (((c >> 2) & 1) as u8) << (7 - j);
        c >>= 3;
    }
    [r, g, b]
}

impl FolderSpec {
    /// Reads a `.toml` or `.json` description.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let parse_err = |reason: String| DataError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        match ext.as_str() {
            "json" => serde_json::from_str(&text).map_err(|e| parse_err(e.to_string())),
            "toml" => toml::from_str(&text).map_err(|e| parse_err(e.to_string())),
            other => Err(parse_err(format!(
                "unknown description format `.{other}` (use .toml or .json)"
            ))),
        }
    }

    /// The class table this description defines (validated).
    pub fn class_info(&self, source: Option<&Path>) -> Result<ClassInfo, DataError> {
        let info = ClassInfo {
            names: self.classes.iter().map(|c| c.name.clone()).collect(),
            palette: self
                .classes
                .iter()
                .enumerate()
                .map(|(i, c)| c.color.unwrap_or_else(|| default_color(i)))
                .collect(),
            ignore_index: self.ignore_index,
        };
        info.validate(source)?;
        Ok(info)
    }
}

/// One split of a folder dataset.
///
/// ```
/// use recallseg_data::png_io::{write_gray8, write_rgb8, PngSpeed};
/// use recallseg_data::{FolderDataset, SegDataset, Split};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// std::fs::write(
///     dir.path().join("cracks.toml"),
///     "classes = [{ name = \"background\" }, { name = \"crack\" }]\n\
///      [train]\nimages = \"img\"\nmasks = \"mask\"\n",
/// )?;
/// // One 4×2 image and its mask (grey levels = class ids; 255 = ignore).
/// write_rgb8(&dir.path().join("img/a.png"), 4, 2, &[90; 4 * 2 * 3], PngSpeed::Fast)?;
/// write_gray8(&dir.path().join("mask/a.png"), 4, 2, &[0, 0, 1, 1, 0, 255, 1, 0], PngSpeed::Fast)?;
///
/// let train = FolderDataset::open(dir.path().join("cracks.toml"), Split::Train)?;
/// assert_eq!(train.len(), 1);
/// assert_eq!(train.class_info().names, ["background", "crack"]);
/// let sample = train.get(0)?;
/// assert_eq!(sample.label, [0, 0, 1, 1, 0, 255, 1, 0]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FolderDataset {
    skipped: Vec<SkippedFile>,
    name: String,
    base: PathBuf,
    split: Split,
    items: Vec<Item>,
    classes: ClassInfo,
    lut: LabelLut,
    normalize: Normalize,
    options_text: String,
}

const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A file a folder dataset left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was left out ("a mask without an image", "a broken or looping symbolic link
    /// (…)", …).
    pub reason: String,
}

/// A file name's stem (up to the last dot) as raw OS text: files are paired on their exact
/// names, so two names that differ only in bytes that are not UTF-8 stay apart.
fn os_stem(name: &std::ffi::OsStr) -> std::ffi::OsString {
    Path::new(name)
        .file_stem()
        .map_or_else(|| name.to_os_string(), |s| s.to_os_string())
}

/// Files of `dir` with one of `exts`, by their raw stem (sorted); duplicated stems are an error.
/// Entries with such an extension that are not readable regular files (a broken or looping
/// symbolic link, a folder) are added to `skipped`.
fn files_by_stem(
    dir: &Path,
    exts: &[&str],
    skipped: &mut Vec<SkippedFile>,
) -> Result<BTreeMap<std::ffi::OsString, PathBuf>, DataError> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let p = e.path();
        let ext = p
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !exts.contains(&ext.as_str()) {
            continue;
        }
        // Followed through links: a broken or looping link fails here.
        let reason = match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some("not a regular file (a folder or a device)".to_string()),
            Err(err) => Some(match std::fs::symlink_metadata(&p) {
                Ok(l) if l.file_type().is_symlink() => {
                    format!("a broken or looping symbolic link ({err})")
                }
                _ => format!("unreadable ({err})"),
            }),
        };
        if let Some(reason) = reason {
            skipped.push(SkippedFile { path: p, reason });
            continue;
        }
        let key = os_stem(&e.file_name());
        if let Some(prev) = out.insert(key.clone(), p.clone()) {
            return Err(DataError::config(
                "file stem",
                key.to_string_lossy(),
                format!("two files share it: {} and {}", prev.display(), p.display()),
            ));
        }
    }
    Ok(out)
}

fn pair_items(
    images: &Path,
    masks: &Path,
    skipped: &mut Vec<SkippedFile>,
) -> Result<Vec<Item>, DataError> {
    require_dir(images, "image folder")?;
    require_dir(masks, "mask folder")?;
    let imgs = files_by_stem(images, &IMAGE_EXTS, skipped)?;
    let msks = files_by_stem(masks, &["png"], skipped)?;
    let mut items = Vec::with_capacity(imgs.len());
    for (s, image) in &imgs {
        let Some(label) = msks.get(s) else {
            let mut expected = s.clone();
            expected.push(".png");
            return Err(DataError::unpaired(
                image.clone(),
                "mask",
                masks.join(expected),
            ));
        };
        items.push(Item {
            image: image.clone(),
            label: label.clone(),
            id: s.to_string_lossy().into_owned(),
        });
    }
    for (s, mask) in &msks {
        if !imgs.contains_key(s) {
            skipped.push(SkippedFile {
                path: mask.clone(),
                reason: "a mask without an image".into(),
            });
        }
    }
    Ok(items)
}

/// One line saying how many files were left out and why (with the first few), or `None`.
pub fn skipped_summary(skipped: &[SkippedFile]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut reasons: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for s in skipped {
        reasons.entry(&s.reason).or_default().push(&s.path);
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|(r, ps)| {
            let shown: Vec<String> = ps.iter().take(3).map(|p| p.display().to_string()).collect();
            format!(
                "{} {r} ({}{})",
                ps.len(),
                shown.join(", "),
                if ps.len() > 3 { ", …" } else { "" }
            )
        })
        .collect();
    Some(format!(
        "folder dataset: skipped {} file(s): {}",
        skipped.len(),
        parts.join("; ")
    ))
}

impl FolderDataset {
    /// The files of the dataset's folders that were left out, and why ([`skipped_summary`]
    /// makes them one line for a warning; the library prints nothing).
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// Opens `split` of the dataset described by the `.toml`/`.json` file `spec_path`
    /// (relative folders are resolved against the file's folder).
    pub fn open(spec_path: impl AsRef<Path>, split: Split) -> Result<Self, DataError> {
        let spec_path = spec_path.as_ref();
        if spec_path.is_dir() {
            return Err(DataError::Parse {
                path: spec_path.to_path_buf(),
                reason: folder_given_hint(spec_path),
            });
        }
        if !spec_path.is_file() {
            return Err(DataError::MissingPath {
                what: "folder dataset description".into(),
                path: spec_path.to_path_buf(),
            });
        }
        let spec = FolderSpec::load(spec_path)?;
        let base = spec_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::from_spec(&spec, &base, split, Some(spec_path))
    }

    /// Opens `split` of a description already in memory; relative folders are resolved
    /// against `base`. `source` names the description in errors.
    pub fn from_spec(
        spec: &FolderSpec,
        base: &Path,
        split: Split,
        source: Option<&Path>,
    ) -> Result<Self, DataError> {
        let classes = spec.class_info(source)?;
        spec.fractions.validate()?;
        let normalize = spec.normalize.unwrap_or(Normalize::IMAGENET);
        normalize.validate()?;
        let explicit = match split {
            Split::Train => &spec.train,
            Split::Val => &spec.val,
            Split::Test => &spec.test,
        };
        let any_explicit = spec.train.is_some() || spec.val.is_some() || spec.test.is_some();
        let mut skipped = Vec::new();
        let items = match (explicit, &spec.images, &spec.masks) {
            (Some(pair), _, _) => pair_items(
                &base.join(&pair.images),
                &base.join(&pair.masks),
                &mut skipped,
            )?,
            (None, Some(i), Some(m)) if !any_explicit => {
                let all = pair_items(&base.join(i), &base.join(m), &mut skipped)?;
                select_split(&all, split, spec.seed, &spec.fractions)
            }
            _ => {
                return Err(DataError::Classes {
                    source_file: source.map(Path::to_path_buf),
                    reason: format!(
                        "no folders for split `{split}`: give `images` and `masks`, or a [{split}] section"
                    ),
                })
            }
        };
        if items.is_empty() {
            return Err(DataError::EmptySplit {
                dataset: "folder".into(),
                split: split.to_string(),
                root: base.to_path_buf(),
                hint: "no image with a matching mask".into(),
            });
        }
        let n = classes.n_classes();
        let mut lut = LabelLut::new(format!(
            "class ids 0..={} and ignore index {}",
            n - 1,
            classes.ignore_index
        ));
        for c in 0..n as u8 {
            lut.set(c as u16, c);
        }
        lut.set(classes.ignore_index as u16, classes.ignore_index);
        let name = match source.and_then(|p| p.file_stem()) {
            Some(s) => format!("{}-{split}", s.to_string_lossy()),
            None => format!("folder-{split}"),
        };
        let options_text = serde_json::to_string(spec).unwrap_or_default();
        Ok(FolderDataset {
            skipped,
            name,
            base: base.to_path_buf(),
            split,
            items,
            classes,
            lut,
            normalize,
            options_text,
        })
    }

    /// The split.
    pub fn split(&self) -> Split {
        self.split
    }

    /// Sample ids (file stems) in dataset order.
    pub fn ids(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.id.as_str()).collect()
    }
}

impl SegDataset for FolderDataset {
    paired_file_methods!();
    fn normalization(&self) -> Normalize {
        self.normalize
    }
    fn fingerprint(&self) -> u64 {
        fingerprint_items(
            &self.items,
            &format!("folder split={} {}", self.split, self.options_text),
        )
    }
    fn cache_dir(&self) -> Option<PathBuf> {
        Some(self.base.join(".recallseg-cache"))
    }
}

/// The hint for a folder given where the description file is expected: the folder dataset is
/// named by its `.toml` / `.json` description, and the candidates inside the folder are listed.
fn folder_given_hint(dir: &Path) -> String {
    let mut candidates: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|x| {
                            x.eq_ignore_ascii_case("toml") || x.eq_ignore_ascii_case("json")
                        })
                })
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    let mut reason = "is a folder, but a folder dataset is named by its description file (the \
                      `.toml` or `.json` listing the classes and the image and mask folders; in a \
                      training config, `data.root` points at that file)"
        .to_string();
    match candidates.len() {
        0 => reason.push_str("; none was found in this folder (docs/data.md shows one)"),
        1 => reason.push_str(&format!("; did you mean {}?", candidates[0])),
        _ => reason.push_str(&format!("; candidates here: {}", candidates.join(", "))),
    }
    reason
}
