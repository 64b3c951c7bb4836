//! A folder dataset of one's own (images and masks in two folders, classes in a TOML file)
//! through the loader: resized, augmented, batched. Run with
//! `cargo run -p recallseg-data --example folder_loader`.

use recallseg_data::png_io::{write_gray8, write_rgb8, PngSpeed};
use recallseg_data::transform::Augment;
use recallseg_data::{FolderDataset, Loader, LoaderConfig, SegDataset, Split};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A dataset on disk: `cracks.toml` names the classes and the folders of the train split.
    let dir = std::env::temp_dir().join(format!("recallseg-folder-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("cracks.toml"),
        "classes = [{ name = \"background\" }, { name = \"crack\" }]\n\
         [train]\nimages = \"img\"\nmasks = \"mask\"\n",
    )?;
    for i in 0..6u8 {
        // 16×8 images; the mask's grey levels are class ids (255 = ignore).
        let image: Vec<u8> = (0..16 * 8 * 3)
            .map(|k| (k as u8).wrapping_mul(i + 1))
            .collect();
        let mask: Vec<u8> = (0..16 * 8)
            .map(|k| u8::from(k % 16 == i as usize))
            .collect();
        write_rgb8(
            &dir.join(format!("img/{i}.png")),
            16,
            8,
            &image,
            PngSpeed::Fast,
        )?;
        write_gray8(
            &dir.join(format!("mask/{i}.png")),
            16,
            8,
            &mask,
            PngSpeed::Fast,
        )?;
    }

    let train = FolderDataset::open(dir.join("cracks.toml"), Split::Train)?;
    println!(
        "{}: {} items, classes {:?}",
        train.name(),
        train.len(),
        train.class_info().names
    );
    let counts = recallseg_data::stats::class_pixel_counts(&train)?;
    println!("pixels per class: {counts:?}");

    // Batches of 4 at 32×16, flipped at random, shuffled per epoch (seeded: the same batches
    // on every run and every thread count); the incomplete last batch is dropped (the
    // default `drop_last`), so 6 items give one batch an epoch.
    let loader = Loader::new(
        Arc::new(train),
        LoaderConfig {
            batch_size: 4,
            shuffle: true,
            seed: 7,
            resize: Some((32, 16)),
            augment: Some(Augment {
                hflip: true,
                ..Augment::default()
            }),
            ..LoaderConfig::default()
        },
    )?;
    for batch in loader.epoch(0) {
        let b = batch?;
        // images: N×3×H×W normalised f32; labels: N×H×W train ids.
        println!(
            "batch {}: {} images of {}×{}, ids {:?}, {} crack pixels",
            b.batch_index,
            b.n,
            b.width,
            b.height,
            b.ids,
            b.labels.iter().filter(|&&l| l == 1).count()
        );
        assert_eq!(b.images.len(), b.n * 3 * b.height * b.width);
        assert_eq!(b.labels.len(), b.n * b.height * b.width);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
