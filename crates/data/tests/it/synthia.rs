//! The Synthia reader on generated data: layout, split protocol, round trip, class mapping.

use crate::util::tiny_synthia;
use recallseg_data::mix_seed;
use recallseg_data::render_scene;
use recallseg_data::{synthia_class as class, SYNTHIA_NORMALIZE};
use recallseg_data::{SegDataset, Split, SynthiaDataset, SynthiaOptions};
use std::collections::BTreeSet;

#[test]
fn splits_are_70_10_20_per_folder_disjoint_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F", "Omni_B"], 10, 1);
    let open = |s| SynthiaDataset::open(dir.path(), s, SynthiaOptions::default()).unwrap();
    let (tr, va, te) = (open(Split::Train), open(Split::Val), open(Split::Test));
    // 10 files per folder: floor(7) / floor(1) / rest 2, two folders.
    assert_eq!((tr.len(), va.len(), te.len()), (14, 2, 4));
    let all: Vec<&str> = [tr.ids(), va.ids(), te.ids()].concat();
    let set: BTreeSet<&str> = all.iter().copied().collect();
    assert_eq!(set.len(), 20, "splits overlap");
    // Folder order follows the paper's loop: Omni_B before Omni_F.
    assert!(tr.ids()[0].contains("Omni_B") && tr.ids()[13].contains("Omni_F"));
    assert_eq!(tr.class_info().n_classes(), 16);
    assert_eq!(tr.class_info().ignore_index, 255);
    assert_eq!(tr.normalization(), SYNTHIA_NORMALIZE);
}

#[test]
fn split_membership_is_pinned() {
    // Pins the shuffle (ChaCha8 seed 0, Fisher–Yates, 70/10/20): changing it moves these ids.
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F"], 10, 1);
    let open = |s| SynthiaDataset::open(dir.path(), s, SynthiaOptions::default()).unwrap();
    let frames = |d: &SynthiaDataset| -> Vec<String> {
        d.ids()
            .iter()
            .map(|i| i.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let val = frames(&open(Split::Val));
    let test = frames(&open(Split::Test));
    assert_eq!(val, ["000005"], "val split moved");
    assert_eq!(test, ["000004", "000007"], "test split moved");
    let other = SynthiaDataset::open(
        dir.path(),
        Split::Test,
        SynthiaOptions {
            seed: 5,
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(frames(&other), test, "the seed must change the split");
}

#[test]
fn reads_back_exactly_what_the_generator_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let report = tiny_synthia(dir.path(), &["Omni_F"], 10, 3);
    let ds = SynthiaDataset::open(dir.path(), Split::Train, SynthiaOptions::default()).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!((s.width, s.height), (64, 32));
    let frame: u64 = s.id.rsplit('/').next().unwrap().parse().unwrap();
    // Omni_F / Stereo_Left is folder 1 of the generator's (side, camera) enumeration.
    let scene = render_scene(64, 32, mix_seed(3, 1, frame));
    assert_eq!(s.image, scene.rgb);
    let want: Vec<u8> = scene.label.iter().map(|&v| v as u8).collect();
    assert_eq!(s.label, want);
    let lm = ds.get_label(0).unwrap();
    assert_eq!(lm.label, s.label);
    // The per-class pixel counts over all three splits add up to the generator's report.
    let mut total = vec![0u64; 16];
    for split in [Split::Train, Split::Val, Split::Test] {
        let d = SynthiaDataset::open(dir.path(), split, SynthiaOptions::default()).unwrap();
        for (t, c) in total
            .iter_mut()
            .zip(recallseg_data::stats::class_pixel_counts(&d).unwrap())
        {
            *t += c;
        }
    }
    assert_eq!(total, report.class_pixels);
}

#[test]
fn ignore_void_maps_class_zero_to_the_ignore_index() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F"], 10, 4);
    let plain = SynthiaDataset::open(dir.path(), Split::Train, SynthiaOptions::default()).unwrap();
    let opts = SynthiaOptions {
        ignore_void: true,
        ..Default::default()
    };
    let iv = SynthiaDataset::open(dir.path(), Split::Train, opts).unwrap();
    let mut saw_void = false;
    for i in 0..plain.len() {
        let (a, b) = (plain.get_label(i).unwrap(), iv.get_label(i).unwrap());
        for (&x, &y) in a.label.iter().zip(&b.label) {
            if x == class::VOID {
                saw_void = true;
                assert_eq!(y, 255);
            } else {
                assert_eq!(x, y);
            }
        }
    }
    assert!(saw_void, "fixture should contain void pixels");
    assert_ne!(plain.fingerprint(), iv.fingerprint());
}

#[test]
fn generator_is_deterministic_and_seed_dependent() {
    let a = render_scene(96, 48, 7);
    let b = render_scene(96, 48, 7);
    let c = render_scene(96, 48, 8);
    assert_eq!(a.rgb, b.rgb);
    assert_eq!(a.label, b.label);
    assert_ne!(a.rgb, c.rgb);
}
