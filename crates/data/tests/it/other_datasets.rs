//! Cityscapes and folder datasets on small trees built in the test, and the pixel-count cache.

use recallseg_data::png_io::{write_gray8, write_rgb8, PngSpeed};
use recallseg_data::stats::{cache_path, PixelCountCache};
use recallseg_data::{
    CityscapesDataset, CityscapesOptions, DataError, FolderDataset, SegDataset, Split,
};
use recallseg_data::{CityscapesLabels, CITYSCAPES_ID_TO_TRAIN_ID};
use std::path::Path;

fn city_tree(root: &Path, split: &str, cities: &[&str], per_city: usize) {
    for city in cities {
        for i in 0..per_city {
            let base = format!("{city}_000000_{i:06}");
            let img = root.join(format!("leftImg8bit/{split}/{city}/{base}_leftImg8bit.png"));
            let lbl = root.join(format!("gtFine/{split}/{city}/{base}_gtFine_labelIds.png"));
            write_rgb8(&img, 6, 6, &[50; 6 * 6 * 3], PngSpeed::Fast).unwrap();
            // Every label id 0..=33 plus two repeats, row-major.
            let ids: Vec<u8> = (0..36).map(|k| (k % 34) as u8).collect();
            write_gray8(&lbl, 6, 6, &ids, PngSpeed::Fast).unwrap();
            // A file that is not an image of the set must be ignored.
            let other = root.join(format!("gtFine/{split}/{city}/{base}_gtFine_polygons.json"));
            std::fs::write(other, "{}").unwrap();
        }
    }
}

#[test]
fn cityscapes_maps_label_ids_to_the_19_train_ids() {
    let dir = tempfile::tempdir().unwrap();
    city_tree(dir.path(), "val", &["lindau", "frankfurt"], 2);
    let ds = CityscapesDataset::open(dir.path(), Split::Val, CityscapesOptions::default()).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.ids()[0], "frankfurt/frankfurt_000000_000000");
    assert_eq!(ds.class_info().n_classes(), 19);
    assert_eq!(ds.class_info().names[13], "car");
    let s = ds.get(0).unwrap();
    // Spot checks from cityscapesScripts' labels.py.
    for (id, train) in [
        (0, 255),
        (4, 255),
        (7, 0),
        (8, 1),
        (9, 255),
        (11, 2),
        (17, 5),
        (23, 10),
        (24, 11),
        (26, 13),
        (29, 255),
        (31, 16),
        (33, 18),
    ] {
        assert_eq!(s.label[id], train, "label id {id}");
        assert_eq!(CITYSCAPES_ID_TO_TRAIN_ID[id], train);
    }
    // Train ids 0..18 each appear once per image (ids 34, 35 wrap to 0, 1: ignored).
    let counts = recallseg_data::stats::class_pixel_counts(&ds).unwrap();
    assert_eq!(counts, vec![4u64; 19]);
    // A label id outside 0..=33 is an error naming the file.
    let lbl = dir
        .path()
        .join("gtFine/val/lindau/lindau_000000_000001_gtFine_labelIds.png");
    write_gray8(&lbl, 6, 6, &[40; 36], PngSpeed::Fast).unwrap();
    let e = ds.get(3).unwrap_err();
    assert!(matches!(e, DataError::BadLabel { value: 40, .. }), "{e}");
    assert!(e
        .to_string()
        .contains("lindau_000000_000001_gtFine_labelIds.png"));
    // Missing split folder.
    let e = CityscapesDataset::open(dir.path(), Split::Train, CityscapesOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("leftImg8bit/train"), "{e}");
    // labelTrainIds maps are required when asked for.
    let e = CityscapesDataset::open(
        dir.path(),
        Split::Val,
        CityscapesOptions {
            labels: CityscapesLabels::TrainIds,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("labelTrainIds"), "{e}");
}

fn folder_tree(root: &Path) {
    for i in 0..10 {
        let v = i as u8;
        write_rgb8(
            &root.join(format!("img/f{i}.png")),
            4,
            2,
            &[v * 20; 24],
            PngSpeed::Fast,
        )
        .unwrap();
        write_gray8(
            &root.join(format!("mask/f{i}.png")),
            4,
            2,
            &[0, 1, 2, 255, 1, 1, 0, 0],
            PngSpeed::Fast,
        )
        .unwrap();
    }
}

#[test]
fn folder_dataset_from_toml_with_a_shuffled_split() {
    let dir = tempfile::tempdir().unwrap();
    folder_tree(dir.path());
    let spec = dir.path().join("cracks.toml");
    std::fs::write(
        &spec,
        r#"
classes = [ { name = "background", color = [0, 0, 0] }, { name = "crack" }, { name = "stain" } ]
images = "img"
masks = "mask"
normalize = { mean = [100.0, 100.0, 100.0], std = [50.0, 50.0, 50.0] }
"#,
    )
    .unwrap();
    let tr = FolderDataset::open(&spec, Split::Train).unwrap();
    let va = FolderDataset::open(&spec, Split::Val).unwrap();
    let te = FolderDataset::open(&spec, Split::Test).unwrap();
    assert_eq!((tr.len(), va.len(), te.len()), (7, 1, 2));
    assert_eq!(tr.name(), "cracks-train");
    let ci = tr.class_info();
    assert_eq!(ci.n_classes(), 3);
    assert_eq!(ci.palette[1], [128, 0, 0], "VOC colour map for class 1");
    assert_eq!(tr.normalization().mean, [100.0; 3]);
    let s = tr.get(0).unwrap();
    assert_eq!(s.label, [0, 1, 2, 255, 1, 1, 0, 0]);
    let stem: usize = s.id.trim_start_matches('f').parse().unwrap();
    assert_eq!(s.image[0], stem as u8 * 20);
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&tr).unwrap(),
        vec![21, 21, 7]
    );
}

#[test]
fn folder_dataset_from_json_with_explicit_splits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    folder_tree(dir.path());
    let spec = dir.path().join("d.json");
    std::fs::write(
        &spec,
        r#"{"classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "train": {"images": "img", "masks": "mask"}}"#,
    )
    .unwrap();
    assert_eq!(FolderDataset::open(&spec, Split::Train).unwrap().len(), 10);
    let e = FolderDataset::open(&spec, Split::Val).unwrap_err();
    assert!(e.to_string().contains("[val]"), "{e}");
    // A mask value that is neither a class nor the ignore index.
    write_gray8(
        &dir.path().join("mask/f0.png"),
        4,
        2,
        &[0, 0, 0, 0, 0, 0, 0, 3],
        PngSpeed::Fast,
    )
    .unwrap();
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    let e = ds.get(0).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadLabel {
                value: 3,
                x: 3,
                y: 1,
                ..
            }
        ),
        "{e}"
    );
    // An image without a mask.
    std::fs::remove_file(dir.path().join("mask/f5.png")).unwrap();
    let e = FolderDataset::open(&spec, Split::Train).unwrap_err();
    assert!(e.to_string().contains("f5.png"), "{e}");
    // A broken description names its file.
    std::fs::write(&spec, r#"{"classes": [{"name": "a"}], "colour": 1}"#).unwrap();
    let e = FolderDataset::open(&spec, Split::Train).unwrap_err();
    assert!(e.to_string().contains("d.json"), "{e}");
    std::fs::write(
        &spec,
        r#"{"classes": [], "train": {"images": "img", "masks": "mask"}}"#,
    )
    .unwrap();
    let e = FolderDataset::open(&spec, Split::Train).unwrap_err();
    assert!(
        e.to_string().contains("no classes") && e.to_string().contains("d.json"),
        "{e}"
    );
}

#[test]
fn pixel_counts_are_cached_and_invalidated() {
    let dir = tempfile::tempdir().unwrap();
    folder_tree(dir.path());
    let spec = dir.path().join("d.toml");
    let write_spec = |seed: u64| {
        std::fs::write(
            &spec,
            format!("classes = [{{name = \"a\"}}, {{name = \"b\"}}, {{name = \"c\"}}]\nimages = \"img\"\nmasks = \"mask\"\nseed = {seed}\n"),
        )
        .unwrap()
    };
    write_spec(0);
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    let truth = recallseg_data::stats::class_pixel_counts(&ds).unwrap();
    assert_eq!(truth, vec![21, 21, 7]);
    let path = cache_path(&ds).unwrap();
    assert!(path.starts_with(dir.path().join(".recallseg-cache")));
    let mut cache: PixelCountCache =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cache.counts, truth);
    assert_eq!(cache.per_item.len(), ds.len());
    assert!(cache.per_item.iter().all(|it| it.hash.is_some()));
    // The cache is what a second call reads (while the label files hash to the stored
    // values): doctor it and see the doctored numbers.
    for it in cache.per_item.iter_mut() {
        it.counts = vec![0, 0, 0];
    }
    cache.per_item[0].counts = vec![1, 2, 3];
    std::fs::write(&path, serde_json::to_string(&cache).unwrap()).unwrap();
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds).unwrap(),
        vec![1, 2, 3]
    );
    // Changed options (another split seed) invalidate it ...
    write_spec(1);
    let ds1 = FolderDataset::open(&spec, Split::Train).unwrap();
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds1).unwrap(),
        vec![21, 21, 7]
    );
    // ... and so does a changed file list.
    std::fs::write(
        &path,
        serde_json::to_string(&PixelCountCache {
            counts: vec![1, 2, 3],
            ..cache.clone()
        })
        .unwrap(),
    )
    .unwrap();
    write_spec(0);
    write_rgb8(
        &dir.path().join("img/g.png"),
        4,
        2,
        &[0; 24],
        PngSpeed::Fast,
    )
    .unwrap();
    write_gray8(
        &dir.path().join("mask/g.png"),
        4,
        2,
        &[2; 8],
        PngSpeed::Fast,
    )
    .unwrap();
    let ds2 = FolderDataset::open(&spec, Split::Train).unwrap();
    assert_ne!(ds2.fingerprint(), ds.fingerprint());
    assert_ne!(
        recallseg_data::stats::class_pixel_counts(&ds2).unwrap(),
        vec![1, 2, 3]
    );
}

/// A mask without an image and an image that is a looping symbolic link used to be skipped
/// without a word; they are now listed (and printed once, as one warning line).
#[cfg(unix)]
#[test]
fn skipped_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    folder_tree(dir.path());
    write_gray8(
        &dir.path().join("mask/orphan.png"),
        4,
        2,
        &[0; 8],
        PngSpeed::Fast,
    )
    .unwrap();
    std::os::unix::fs::symlink("loop.png", dir.path().join("img/loop.png")).unwrap();
    std::os::unix::fs::symlink("gone.png", dir.path().join("mask/broken.png")).unwrap();
    let spec = dir.path().join("d.toml");
    std::fs::write(
        &spec,
        "classes = [{name = \"a\"}, {name = \"b\"}, {name = \"c\"}]\nimages = \"img\"\nmasks = \"mask\"\n",
    )
    .unwrap();
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    let mut reasons: Vec<(String, &str)> = ds
        .skipped()
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.reason.as_str(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, "broken.png");
    assert!(
        reasons[0].1.contains("broken or looping symbolic link"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "loop.png");
    assert!(
        reasons[1].1.contains("broken or looping symbolic link"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], ("orphan.png".into(), "a mask without an image"));
    let line = recallseg_data::skipped_summary(ds.skipped()).unwrap();
    assert!(
        line.contains("skipped 3 file(s)")
            && line.contains("orphan.png")
            && line.contains("loop.png"),
        "{line}"
    );
    // The items themselves are all there.
    assert_eq!(ds.len(), 7);
}

/// Names that are not UTF-8 are paired on their raw bytes: `x\xff.png` and `x\xfe.png` used to
/// become the same lossy stem and be paired with each other.
#[cfg(unix)]
#[test]
fn non_utf8_names_pair_on_their_raw_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    for d in ["img", "mask"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let name = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    // Image x\xff has mask x\xff; image x\xfe has no mask.
    write_rgb8(
        &dir.path().join("img").join(name(b"x\xff.png")),
        4,
        2,
        &[1; 24],
        PngSpeed::Fast,
    )
    .unwrap();
    write_gray8(
        &dir.path().join("mask").join(name(b"x\xff.png")),
        4,
        2,
        &[1; 8],
        PngSpeed::Fast,
    )
    .unwrap();
    write_rgb8(
        &dir.path().join("img").join(name(b"x\xfe.png")),
        4,
        2,
        &[2; 24],
        PngSpeed::Fast,
    )
    .unwrap();
    let spec = dir.path().join("d.toml");
    std::fs::write(
        &spec,
        "classes = [{name = \"a\"}, {name = \"b\"}]\n[train]\nimages = \"img\"\nmasks = \"mask\"\n",
    )
    .unwrap();
    let e = FolderDataset::open(&spec, Split::Train).unwrap_err();
    assert!(
        matches!(&e, DataError::Unpaired { path, .. } if path.file_name() == Some(&name(b"x\xfe.png"))),
        "{e}"
    );
    // With its own mask, each image is paired with the mask of exactly its name.
    write_gray8(
        &dir.path().join("mask").join(name(b"x\xfe.png")),
        4,
        2,
        &[0; 8],
        PngSpeed::Fast,
    )
    .unwrap();
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    assert_eq!(ds.len(), 2);
    for i in 0..2 {
        let img = ds.source(i).unwrap();
        let lbl = ds.label_source(i).unwrap();
        assert_eq!(img.file_name(), lbl.file_name());
        let s = ds.get(i).unwrap();
        // Image value 1 goes with mask value 1, image value 2 with mask value 0.
        let want = if s.image[0] == 1 { 1 } else { 0 };
        assert!(s.label.iter().all(|&v| v == want), "{}", img.display());
    }
    assert!(ds.skipped().is_empty());
}

/// A mask relabelled in place, with the same size and its modification time restored
/// (`touch -r`), used to keep the old cached counts; the cache is keyed on the labels' bytes too.
#[test]
fn a_relabelled_mask_with_the_same_size_and_mtime_is_recounted() {
    let dir = tempfile::tempdir().unwrap();
    folder_tree(dir.path());
    let spec = dir.path().join("d.toml");
    std::fs::write(
        &spec,
        "classes = [{name = \"a\"}, {name = \"b\"}, {name = \"c\"}]\n[train]\nimages = \"img\"\nmasks = \"mask\"\n",
    )
    .unwrap();
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds).unwrap(),
        vec![30, 30, 10]
    );
    // Relabel f0: every pixel class 2 (same dimensions, same encoder: same file size).
    let mask = dir.path().join("mask/f0.png");
    let before = std::fs::metadata(&mask).unwrap();
    let tmp = dir.path().join("f0.png");
    write_gray8(&tmp, 4, 2, &[2, 2, 2, 255, 2, 2, 2, 2], PngSpeed::Fast).unwrap();
    std::fs::copy(&tmp, &mask).unwrap();
    let f = std::fs::File::options().write(true).open(&mask).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(&mask).unwrap();
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(
        after.len(),
        before.len(),
        "same size, so the file list looks unchanged"
    );
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    // f0 had 3 × class 0, 3 × class 1, 1 × class 2; now 7 × class 2.
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds).unwrap(),
        vec![27, 27, 16]
    );

    // Only the relabelled file is decoded again: doctor the cached counts of every other item
    // (their files still hash to the stored values, so they are trusted) and relabel f1.
    let path = cache_path(&ds).unwrap();
    let mut cache: PixelCountCache =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let f1 = (0..ds.len())
        .find(|&i| ds.label_source(i).unwrap().ends_with("f1.png"))
        .unwrap();
    for (i, it) in cache.per_item.iter_mut().enumerate() {
        if i != f1 {
            it.counts = vec![1, 0, 0];
        }
    }
    std::fs::write(&path, serde_json::to_string(&cache).unwrap()).unwrap();
    let mask = dir.path().join("mask/f1.png");
    let before = std::fs::metadata(&mask).unwrap();
    write_gray8(&tmp, 4, 2, &[1, 1, 1, 255, 1, 1, 1, 1], PngSpeed::Fast).unwrap();
    std::fs::copy(&tmp, &mask).unwrap();
    let f = std::fs::File::options().write(true).open(&mask).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&mask).unwrap().len(), before.len());
    // Nine doctored items (1 pixel of class 0 each) and f1 counted from its new content.
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds).unwrap(),
        vec![9, 7, 0]
    );
    // A cache hit needs no decoding at all: with every entry trusted, the doctored values are
    // what comes back, twice.
    assert_eq!(
        recallseg_data::stats::class_pixel_counts(&ds).unwrap(),
        vec![9, 7, 0]
    );
}
