//! `stats::dataset_stats`: per-channel mean / std and class pixel counts against numpy
//! (`goldens/make_dataset_stats.py`, which builds the same images from the same formulas) and
//! against a case worked by hand.

use recallseg_data::png_io::{write_gray8, write_rgb8, PngSpeed};
use recallseg_data::stats::dataset_stats;
use recallseg_data::{FolderDataset, Split};
use std::path::Path;

const GOLDEN: &str = include_str!("../goldens/dataset_stats.json");

/// A folder dataset whose `[train]` split holds `items` (width, height, RGB bytes, labels).
fn folder(root: &Path, items: &[(usize, usize, Vec<u8>, Vec<u8>)]) -> std::path::PathBuf {
    for (k, (w, h, img, lab)) in items.iter().enumerate() {
        write_rgb8(
            &root.join(format!("img/i{k}.png")),
            *w,
            *h,
            img,
            PngSpeed::Fast,
        )
        .unwrap();
        write_gray8(
            &root.join(format!("mask/i{k}.png")),
            *w,
            *h,
            lab,
            PngSpeed::Fast,
        )
        .unwrap();
    }
    let spec = root.join("d.toml");
    std::fs::write(
        &spec,
        "classes = [ { name = \"a\" }, { name = \"b\" }, { name = \"c\" } ]\n\
         [train]\nimages = \"img\"\nmasks = \"mask\"\n",
    )
    .unwrap();
    spec
}

#[test]
fn mean_std_and_class_pixels_match_numpy() {
    let g: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let sizes: Vec<(usize, usize)> = serde_json::from_value(g["sizes"].clone()).unwrap();
    let items: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(k, &(w, h))| {
            let mut img = Vec::with_capacity(w * h * 3);
            let mut lab = Vec::with_capacity(w * h);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        img.push(
                            ((53 * k + 31 * y + 17 * x + 89 * c + 11 * ((x * y) % 7)) % 256) as u8,
                        );
                    }
                    let l = (k + 3 * x + 5 * y) % 4;
                    lab.push(if l == 3 { 255 } else { l as u8 });
                }
            }
            (w, h, img, lab)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let spec = folder(dir.path(), &items);
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    let s = dataset_stats(&ds).unwrap();
    assert_eq!(s.images, g["images"].as_u64().unwrap() as usize);
    assert_eq!(s.pixels, g["pixels"].as_u64().unwrap());
    for c in 0..3 {
        let (m, sd) = (
            g["mean"][c].as_f64().unwrap(),
            g["std"][c].as_f64().unwrap(),
        );
        assert!(
            (s.mean[c] - m).abs() <= 1e-12 * m,
            "mean[{c}] {} vs numpy {m}",
            s.mean[c]
        );
        assert!(
            (s.std[c] - sd).abs() <= 1e-12 * sd,
            "std[{c}] {} vs numpy {sd}",
            s.std[c]
        );
    }
    let counts: Vec<u64> = serde_json::from_value(g["class_pixels"].clone()).unwrap();
    assert_eq!(s.class_pixels, counts);
    assert_eq!(s.ignored_pixels, g["ignored_pixels"].as_u64().unwrap());
    // The counts are those of the pixel-count pass, and the shares numpy's.
    assert_eq!(
        s.class_pixels,
        recallseg_data::stats::class_pixel_counts(&ds).unwrap()
    );
    for (a, b) in s.class_shares().iter().zip(g["shares"].as_array().unwrap()) {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-15);
    }
    // Same result on one thread (items are summed in a fixed order).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| dataset_stats(&ds)).unwrap(), s);
}

/// Two pixels, (0, 0, 0) and (2, 4, 6): mean (1, 2, 3), population std (1, 2, 3); labels
/// class 1 and ignored.
#[test]
fn a_case_worked_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let spec = folder(dir.path(), &[(2, 1, vec![0, 0, 0, 2, 4, 6], vec![1, 255])]);
    let ds = FolderDataset::open(&spec, Split::Train).unwrap();
    let s = dataset_stats(&ds).unwrap();
    assert_eq!((s.images, s.pixels), (1, 2));
    assert_eq!(s.mean, [1.0, 2.0, 3.0]);
    assert_eq!(s.std, [1.0, 2.0, 3.0]);
    assert_eq!(s.class_pixels, vec![0, 1, 0]);
    assert_eq!(s.ignored_pixels, 1);
    assert_eq!(s.class_shares(), vec![0.0, 1.0, 0.0]);
    let n = s.normalize();
    assert_eq!((n.mean, n.std), ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]));
}
