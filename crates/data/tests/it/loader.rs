//! Loader determinism, resume, shapes and augmentation consistency.

use crate::util::tiny_synthia;
use recallseg_data::transform::Augment;
use recallseg_data::{Batch, Loader, LoaderConfig, Normalize, SegDataset, Shard, Split};
use recallseg_data::{SynthiaDataset, SynthiaOptions};
use std::sync::Arc;

fn dataset(dir: &std::path::Path) -> Arc<dyn SegDataset> {
    tiny_synthia(dir, &["Omni_F", "Omni_L"], 10, 11);
    Arc::new(SynthiaDataset::open(dir, Split::Train, SynthiaOptions::default()).unwrap())
}

fn train_cfg(threads: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 3,
        seed: 42,
        resize: Some((48, 24)),
        augment: Some(Augment {
            scale: Some((0.75, 1.5)),
            scale_step: None,
            crop: Some((40, 20)),
            hflip: true,
            color_jitter: Some(0.3),
        }),
        num_threads: threads,
        ..LoaderConfig::default()
    }
}

fn collect(it: impl Iterator<Item = Result<Batch, recallseg_data::DataError>>) -> Vec<Batch> {
    it.map(|b| b.unwrap()).collect()
}

#[test]
fn epochs_are_deterministic_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let a = Loader::new(ds.clone(), train_cfg(2)).unwrap();
    let b = Loader::new(ds.clone(), train_cfg(1)).unwrap();
    assert_eq!(a.batches_per_epoch(), 14 / 3);
    let e1 = collect(a.epoch(1));
    assert_eq!(e1.len(), 4);
    // Same seed, another thread count: identical batches.
    assert_eq!(e1, collect(b.epoch(1)));
    // Resuming at batch 2 gives batches 2 and 3 exactly.
    let resumed = collect(a.epoch_from(1, 2));
    assert_eq!(resumed, e1[2..].to_vec());
    assert_eq!(a.load_batch(1, 3).unwrap(), e1[3]);
    // Another epoch: another order.
    let e2 = collect(a.epoch(2));
    let order1: Vec<usize> = e1.iter().flat_map(|b| b.indices.clone()).collect();
    let order2: Vec<usize> = e2.iter().flat_map(|b| b.indices.clone()).collect();
    assert_ne!(order1, order2);
    // Another seed: other augmentations.
    let c = Loader::new(
        ds,
        LoaderConfig {
            seed: 43,
            ..train_cfg(2)
        },
    )
    .unwrap();
    assert_ne!(collect(c.epoch(1)), e1);
}

#[test]
fn batches_have_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let l = Loader::new(ds.clone(), train_cfg(2)).unwrap();
    let b = l.load_batch(0, 0).unwrap();
    assert_eq!((b.n, b.height, b.width), (3, 20, 40));
    assert_eq!(b.images.len(), 3 * 3 * 20 * 40);
    assert_eq!(b.labels.len(), 3 * 20 * 40);
    assert_eq!(b.ids.len(), 3);
    for &v in &b.labels {
        assert!(v < 16 || v == 255, "label {v}");
    }
    // Evaluation loader: dataset order, keep the last partial batch, no augmentation.
    let ev = Loader::new(
        ds.clone(),
        LoaderConfig {
            normalize: Some(Normalize::NONE),
            ..LoaderConfig::eval(4, None)
        },
    )
    .unwrap();
    let batches = collect(ev.epoch(0));
    assert_eq!(
        batches.iter().map(|b| b.n).collect::<Vec<_>>(),
        [4, 4, 4, 2]
    );
    // With no normalisation and no resize, the batch holds the raw pixels in planar layout.
    let s = ds.get(0).unwrap();
    let b0 = &batches[0];
    assert_eq!(b0.indices[0], 0);
    let plane = s.width * s.height;
    for i in [0, 17, plane - 1] {
        for c in 0..3 {
            assert_eq!(b0.images[c * plane + i], s.image[i * 3 + c] as f32);
        }
    }
    assert_eq!(&b0.labels[..plane], &s.label[..]);
}

#[test]
fn cache_does_not_change_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let plain = Loader::new(ds.clone(), train_cfg(2)).unwrap();
    let cached = Loader::new(
        ds,
        LoaderConfig {
            cache_resized: true,
            ..train_cfg(2)
        },
    )
    .unwrap();
    let want = collect(plain.epoch(0));
    assert_eq!(collect(cached.epoch(0)), want);
    assert_eq!(
        collect(cached.epoch(0)),
        want,
        "second pass (from the cache)"
    );
}

#[test]
fn prefix_keeps_the_first_items_and_has_its_own_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let n = ds.len();
    assert!(n > 3);
    assert!(Arc::ptr_eq(&recallseg_data::prefix(ds.clone(), 0), &ds));
    assert!(Arc::ptr_eq(&recallseg_data::prefix(ds.clone(), n), &ds));
    let p = recallseg_data::prefix(ds.clone(), 3);
    assert_eq!(p.len(), 3);
    assert_eq!(p.get(2).unwrap().image, ds.get(2).unwrap().image);
    assert_eq!(p.source(1), ds.source(1));
    assert!(p.get(3).is_err() && p.get_label(3).is_err() && p.source(3).is_none());
    assert_ne!(p.fingerprint(), ds.fingerprint());
    assert_ne!(p.fingerprint(), recallseg_data::prefix(ds, 2).fingerprint());
}

#[test]
fn shards_of_a_batch_put_together_are_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let whole = collect(Loader::new(ds.clone(), train_cfg(1)).unwrap().epoch(3));
    for count in [2usize, 3] {
        let shards: Vec<Vec<Batch>> = (0..count)
            .map(|index| {
                let cfg = LoaderConfig {
                    shard: recallseg_data::Shard { index, count },
                    ..train_cfg(1)
                };
                let l = Loader::new(ds.clone(), cfg).unwrap();
                assert_eq!(l.batches_per_epoch(), whole.len());
                collect(l.epoch(3))
            })
            .collect();
        for (b, full) in whole.iter().enumerate() {
            let parts: Vec<&Batch> = shards.iter().map(|s| &s[b]).collect();
            // Batches of 3 items: one item per shard (3 shards) or 1 + 2 (2 shards).
            let sizes: Vec<usize> = parts.iter().map(|p| p.n).collect();
            let expect: Vec<usize> = if count == 2 {
                vec![1, 2]
            } else {
                vec![1, 1, 1]
            };
            assert_eq!(sizes, expect);
            let images: Vec<f32> = parts.iter().flat_map(|p| p.images.clone()).collect();
            let labels: Vec<u8> = parts.iter().flat_map(|p| p.labels.clone()).collect();
            let indices: Vec<usize> = parts.iter().flat_map(|p| p.indices.clone()).collect();
            assert_eq!(images, full.images, "batch {b}, {count} shards");
            assert_eq!(labels, full.labels);
            assert_eq!(indices, full.indices);
        }
    }
    let bad = LoaderConfig {
        shard: recallseg_data::Shard { index: 2, count: 2 },
        ..train_cfg(1)
    };
    let Err(err) = Loader::new(ds, bad) else {
        panic!("shard 2 of 2 is refused")
    };
    assert!(err.to_string().contains("shard"), "{err}");
}

#[test]
fn whole_batches_dealt_to_shards_are_the_batches_of_one_loader() {
    // 10 items in batches of 3: batches 0..4 ([0,1,2], [3,4,5], [6,7,8], [9]); two shards take
    // batches 0, 2 and 1, 3.
    let a = Shard { index: 0, count: 2 };
    let b = Shard { index: 1, count: 2 };
    assert_eq!(a.whole_batches(10, 3), vec![0, 1, 2, 6, 7, 8]);
    assert_eq!(b.whole_batches(10, 3), vec![3, 4, 5, 9]);
    assert!(Shard { index: 2, count: 3 }.whole_batches(4, 3).is_empty());
    // A loader over each shard's subset yields the whole loader's batches, dealt out.
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let eval = LoaderConfig::eval(3, Some((32, 16)));
    let whole: Vec<_> = Loader::new(ds.clone(), eval.clone())
        .unwrap()
        .epoch(0)
        .map(|b| b.unwrap())
        .collect();
    for (k, shard) in [a, b].iter().enumerate() {
        let items = shard.whole_batches(ds.len(), 3);
        let sub = recallseg_data::subset(ds.clone(), items).unwrap();
        let got: Vec<_> = Loader::new(sub, eval.clone())
            .unwrap()
            .epoch(0)
            .map(|b| b.unwrap())
            .collect();
        let want: Vec<_> = whole.iter().skip(k).step_by(2).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(
                (&g.ids, &g.images, &g.labels),
                (&w.ids, &w.images, &w.labels)
            );
        }
    }
    let e = recallseg_data::subset(ds.clone(), vec![0, ds.len()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&ds.len().to_string()), "{e}");
}
