//! Every kind of bad input gives a clear error naming the file (or a counted skip on request).

use crate::util::tiny_synthia;
use recallseg_data::png_io::{write_label_rgb16, write_rgb8, PngSpeed};
use recallseg_data::{
    ClassInfo, DataError, Loader, LoaderConfig, SegDataset, Split, SynthiaDataset, SynthiaOptions,
};
use std::path::Path;
use std::sync::Arc;

fn open_train(root: &Path) -> Result<SynthiaDataset, DataError> {
    SynthiaDataset::open(root, Split::Train, SynthiaOptions::default())
}

/// A one-folder Synthia tree with `n` frames of 8x4 and all-sky labels.
fn handmade(root: &Path, n: usize) {
    let seq = root.join("SEQ");
    for i in 0..n {
        let name = format!("{i:06}.png");
        let img = seq.join("RGB/Stereo_Left/Omni_F").join(&name);
        let lbl = seq.join("GT/LABELS/Stereo_Left/Omni_F").join(&name);
        write_rgb8(&img, 8, 4, &[100; 8 * 4 * 3], PngSpeed::Fast).unwrap();
        write_label_rgb16(&lbl, 8, 4, &[1; 32], None, PngSpeed::Fast).unwrap();
    }
}

fn msg(e: DataError) -> String {
    e.to_string()
}

#[test]
fn missing_root_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nope");
    let e = open_train(&root).unwrap_err();
    assert!(matches!(e, DataError::MissingPath { .. }));
    assert!(msg(e).contains("nope"));
    let e = SynthiaDataset::open(
        dir.path(),
        Split::Train,
        SynthiaOptions {
            sequences: vec!["SYNTHIA-SEQS-05-SUMMER".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(msg(e).contains("SYNTHIA-SEQS-05-SUMMER"));
}

#[test]
fn empty_split_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("SEQ/RGB/Stereo_Left/Omni_F")).unwrap();
    std::fs::create_dir_all(dir.path().join("SEQ/GT/LABELS/Stereo_Left/Omni_F")).unwrap();
    let e = open_train(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
    assert!(msg(e).contains("train"));
    // One file: train gets floor(0.7) = 0 items.
    handmade(dir.path(), 1);
    assert!(matches!(
        open_train(dir.path()),
        Err(DataError::EmptySplit { .. })
    ));
    // A loader over an empty dataset is refused too (checked by Loader::new).
}

#[test]
fn missing_label_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    handmade(dir.path(), 10);
    let lbl = dir.path().join("SEQ/GT/LABELS/Stereo_Left/Omni_F");
    for i in 0..10 {
        std::fs::remove_file(lbl.join(format!("{i:06}.png"))).unwrap();
    }
    let e = open_train(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Unpaired { .. }), "{e}");
    let m = msg(e);
    assert!(m.contains("GT/LABELS/Stereo_Left/Omni_F/0000"), "{m}");
    assert!(!m.contains("which is"), "nothing is there: {m}");
    // Something is there but it is no file: the message says what it is.
    for i in 0..10 {
        std::fs::create_dir(lbl.join(format!("{i:06}.png"))).unwrap();
    }
    let m = msg(open_train(dir.path()).unwrap_err());
    assert!(m.contains(".png, which is a folder)"), "{m}");
    #[cfg(unix)]
    {
        for i in 0..10 {
            let p = lbl.join(format!("{i:06}.png"));
            std::fs::remove_dir(&p).unwrap();
            std::os::unix::fs::symlink(&p, &p).unwrap(); // a link to itself
        }
        let m = msg(open_train(dir.path()).unwrap_err());
        assert!(
            m.contains(".png, which is a broken or looping symbolic link ("),
            "{m}"
        );
    }
}

/// Each way a Synthia root can fail to open has its own message, and only the one where the
/// dataset is absent says so: a missing root and a folder without the SYNTHIA layout are told
/// apart from a split that is empty and from an image without its label (whose messages used to
/// be followed by the dataset download instructions).
#[test]
fn synthia_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // No root.
    let e = open_train(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(e, DataError::MissingPath { .. }), "{e}");
    assert_eq!(
        msg(e),
        format!(
            "Synthia root not found: {}",
            dir.path().join("nope").display()
        )
    );
    // A root without the layout.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(bare.join("something")).unwrap();
    let e = msg(open_train(&bare).unwrap_err());
    assert!(
        e.contains("no sequence folder with RGB/ and GT/LABELS/"),
        "{e}"
    );
    // The layout, no images for the split.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("SEQ/RGB/Stereo_Left/Omni_F")).unwrap();
    std::fs::create_dir_all(empty.join("SEQ/GT/LABELS/Stereo_Left/Omni_F")).unwrap();
    let e = msg(open_train(&empty).unwrap_err());
    assert!(
        e.contains("split `train` is empty")
            && e.contains("no PNG in RGB/Stereo_*/Omni_*/ of 1 sequence(s)"),
        "{e}"
    );
    assert!(
        !e.contains("no sequence folder") && !e.contains("not found"),
        "{e}"
    );
    // An image without its label: named, with where the label was expected.
    let unpaired = dir.path().join("unpaired");
    handmade(&unpaired, 10);
    for i in 0..10 {
        let l = unpaired.join(format!("SEQ/GT/LABELS/Stereo_Left/Omni_F/{i:06}.png"));
        std::fs::remove_file(l).unwrap();
    }
    let e = open_train(&unpaired).unwrap_err();
    let DataError::Unpaired { path, expected, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        path.starts_with(unpaired.join("SEQ/RGB/Stereo_Left/Omni_F")),
        "{e}"
    );
    assert!(
        expected.starts_with(unpaired.join("SEQ/GT/LABELS/Stereo_Left/Omni_F")),
        "{e}"
    );
    let e = msg(e);
    assert!(
        e.contains("no matching label") && !e.contains("not found") && !e.contains("empty"),
        "{e}"
    );
}

fn first_item_paths(ds: &SynthiaDataset) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        ds.source(0).unwrap(),
        ds.label_path(0).unwrap().to_path_buf(),
    )
}

#[test]
fn corrupt_and_truncated_pngs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    handmade(dir.path(), 10);
    let ds = open_train(dir.path()).unwrap();
    let (img, lbl) = first_item_paths(&ds);
    std::fs::write(&img, b"this is not a png at all").unwrap();
    let e = ds.get(0).unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }), "{e}");
    assert!(msg(e).contains(&img.display().to_string()));
    // Truncated label: valid header, half the data.
    let bytes = std::fs::read(&lbl).unwrap();
    std::fs::write(&lbl, &bytes[..bytes.len() / 2]).unwrap();
    let e = ds.get_label(0).unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }), "{e}");
    assert!(msg(e).contains(&lbl.display().to_string()));
}

#[test]
fn size_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    handmade(dir.path(), 10);
    let ds = open_train(dir.path()).unwrap();
    let (img, lbl) = first_item_paths(&ds);
    write_label_rgb16(&lbl, 8, 5, &[1; 40], None, PngSpeed::Fast).unwrap();
    let e = ds.get(0).unwrap_err();
    let m = msg(e);
    assert!(m.contains("8x4") && m.contains("8x5"), "{m}");
    assert!(m.contains(&img.display().to_string()) && m.contains(&lbl.display().to_string()));
}

#[test]
fn label_value_outside_the_class_set_is_named_with_its_pixel() {
    let dir = tempfile::tempdir().unwrap();
    handmade(dir.path(), 10);
    let ds = open_train(dir.path()).unwrap();
    let (_, lbl) = first_item_paths(&ds);
    let mut ids = vec![1u16; 32];
    ids[8 + 3] = 20; // x = 3, y = 1
    write_label_rgb16(&lbl, 8, 4, &ids, None, PngSpeed::Fast).unwrap();
    match ds.get(0).unwrap_err() {
        DataError::BadLabel {
            path, value, x, y, ..
        } => {
            assert_eq!((value, x, y), (20, 3, 1));
            assert_eq!(path, lbl);
        }
        e => panic!("wrong error {e}"),
    }
}

#[test]
fn loader_stops_on_bad_items_or_skips_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F"], 10, 2);
    let ds = Arc::new(open_train(dir.path()).unwrap());
    let bad = ds.source(3).unwrap();
    std::fs::write(&bad, b"garbage").unwrap();
    let cfg = LoaderConfig::eval(7, None);
    let strict = Loader::new(ds.clone(), cfg.clone()).unwrap();
    let r: Vec<_> = strict.epoch(0).collect();
    assert_eq!(r.len(), 1);
    let e = r.into_iter().next().unwrap().unwrap_err();
    assert!(e.to_string().contains(&bad.display().to_string()));

    let lenient = Loader::new(
        ds,
        LoaderConfig {
            skip_bad: true,
            ..cfg
        },
    )
    .unwrap();
    let batches: Vec<_> = lenient.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].n, 6);
    assert!(!batches[0].indices.contains(&3));
    assert_eq!(lenient.skipped(), 1);
}

#[test]
fn invalid_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F"], 10, 2);
    let ds: Arc<dyn SegDataset> = Arc::new(open_train(dir.path()).unwrap());
    let bad = LoaderConfig {
        batch_size: 0,
        ..Default::default()
    };
    assert!(Loader::new(ds.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("batch_size"));
    let too_many: Vec<String> = (0..256).map(|i| format!("c{i}")).collect();
    let e = ClassInfo::new(too_many, vec![[0; 3]; 256], 255).unwrap_err();
    assert!(e.to_string().contains("at most 255"));
    let e = ClassInfo::new(vec!["a".into(), "a".into()], vec![[0; 3]; 2], 255).unwrap_err();
    assert!(e.to_string().contains("twice"));
    let e = ClassInfo::new(vec!["a".into(), "b".into()], vec![[0; 3]; 2], 1).unwrap_err();
    assert!(e.to_string().contains("ignore index"));
}

/// 200 mutated PNGs (header sizes set to large values with valid CRCs, random bytes, cuts)
/// through both decoders: each decodes or is refused with an error; none panics or aborts.
/// `cargo xtask fuzz-decoders` runs thousands.
#[test]
fn mutated_pngs_never_panic_nor_allocate_their_claimed_size() {
    use rand::{Rng, SeedableRng};
    use recallseg_data::png_io::{decode_label_bytes, decode_rgb8_bytes, write_gray8, PngSpeed};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.png");
    let grey: Vec<u8> = (0..31 * 17).map(|i| (i % 7) as u8).collect();
    write_gray8(&p, 31, 17, &grey, PngSpeed::Fast).unwrap();
    let good = std::fs::read(&p).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for k in 0..200 {
        let mut m = good.clone();
        match k % 3 {
            0 => {
                let at = if rng.random_bool(0.5) { 16 } else { 20 };
                let v: u32 = rng.random_range(1u32 << 15..u32::MAX);
                m[at..at + 4].copy_from_slice(&v.to_be_bytes());
                // A valid IHDR CRC, so the decoder reads the size.
                let crc = crc32fast::hash(&m[12..29]);
                m[29..33].copy_from_slice(&crc.to_be_bytes());
            }
            1 => {
                for _ in 0..4 {
                    let i = rng.random_range(8..m.len());
                    m[i] = rng.random();
                }
            }
            _ => m.truncate(rng.random_range(1..m.len())),
        }
        let r1 = std::panic::catch_unwind(|| decode_rgb8_bytes(&m).map(|_| ()));
        let r2 = std::panic::catch_unwind(|| decode_label_bytes(&m).map(|_| ()));
        assert!(r1.is_ok() && r2.is_ok(), "mutation {k} panicked");
        if k % 3 == 0 {
            assert!(r1.unwrap().is_err() && r2.unwrap().is_err(), "mutation {k}");
        }
    }
}

/// 300 mutations of a baseline JPEG (random bytes, bit flips, frame sizes set to large values,
/// cuts) through the content-sniffing image decoder, which sends them down the JPEG path: each
/// decodes or is refused with an error; none panics or aborts.
#[test]
fn mutated_jpegs_never_panic_nor_allocate_their_claimed_size() {
    use rand::{Rng, SeedableRng};
    use recallseg_data::png_io::{decode_image_bytes_with, DecodeLimits};
    let good = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny.jpg"),
    )
    .unwrap();
    assert!(decode_image_bytes_with(&good, &DecodeLimits::default()).is_ok());
    // The baseline frame header (SOF0): height and width follow its marker, length and precision.
    let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut decoded, mut refused) = (0, 0);
    for k in 0..300 {
        let mut m = good.clone();
        match k % 4 {
            0 => {
                let at = sof + if rng.random_bool(0.5) { 5 } else { 7 };
                let v: u16 = rng.random_range(1u16 << 12..=u16::MAX);
                m[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            1 => {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(2..m.len());
                    m[i] = rng.random();
                }
            }
            2 => {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(2..m.len());
                    m[i] ^= 1 << rng.random_range(0..8);
                }
            }
            _ => m.truncate(rng.random_range(3..m.len())),
        }
        let small = DecodeLimits {
            max_pixels: 1 << 20,
        };
        match std::panic::catch_unwind(|| decode_image_bytes_with(&m, &small).map(|_| ())) {
            Ok(Ok(())) => decoded += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("JPEG mutation {k} panicked"),
        }
    }
    assert_eq!(decoded + refused, 300);
    assert!(refused > 0);
}

#[test]
fn a_folder_given_for_the_folder_dataset_description_gets_a_hint() {
    use recallseg_data::FolderDataset;
    let dir = tempfile::tempdir().unwrap();
    let e = FolderDataset::open(dir.path(), Split::Train).unwrap_err();
    let m = msg(e);
    assert!(m.contains("is a folder"), "{m}");
    assert!(m.contains("none was found"), "{m}");
    std::fs::write(dir.path().join("cracks.toml"), "classes = []\n").unwrap();
    let m = msg(FolderDataset::open(dir.path(), Split::Train).unwrap_err());
    assert!(m.contains("did you mean"), "{m}");
    assert!(m.contains("cracks.toml"), "{m}");
}

/// A JPEG cut short anywhere (before or inside its image data, or just its end-of-image marker)
/// is refused as truncated, as PIL's "image file is truncated", instead of being decoded with
/// grey fill; data after the end-of-image marker is harmless. Through a file, the error is
/// `DataError::Decode` naming it.
#[test]
fn truncated_jpegs_are_refused() {
    use recallseg_data::png_io::{decode_image_bytes_with, decode_rgb8, DecodeLimits};
    let good = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny.jpg"),
    )
    .unwrap();
    let limits = DecodeLimits::default();
    let whole = decode_image_bytes_with(&good, &limits).unwrap();
    assert_eq!(&good[good.len() - 2..], &[0xFF, 0xD9]);
    for keep in [
        good.len() / 10,
        good.len() / 2,
        good.len() * 9 / 10,
        good.len() - 2,
    ] {
        let e = decode_image_bytes_with(&good[..keep], &limits)
            .map(|_| ())
            .unwrap_err();
        assert!(
            e.contains("truncated"),
            "{keep} of {} bytes: {e}",
            good.len()
        );
    }
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"camera maker's trailer");
    assert_eq!(decode_image_bytes_with(&trailing, &limits).unwrap(), whole);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.jpg");
    std::fs::write(&p, &good[..good.len() / 10]).unwrap();
    let e = decode_rgb8(&p).unwrap_err();
    assert!(
        matches!(e, recallseg_data::DataError::Decode { .. }) && e.to_string().contains("cut.jpg"),
        "{e}"
    );
}
