//! `cargo xtask bench data`: Synthia-format loading throughput.
//!
//! Writes 16 synthetic Synthia-format frames of 1280×760 (the real SYNTHIA-SEQS size: 8-bit RGB
//! PNG + 16-bit RGB label PNG, written with fast deflate and adaptive filters) into a temporary
//! folder, then times whole loader epochs over them: PNG decode of image and label, bilinear /
//! nearest resize to 768×384, training augmentation (random scale 0.5–2.0, random crop
//! 768×384 with ignore padding, random flip), normalisation into `N×3×H×W` f32 batches of 4.
//! Reported as images per second with every core and with one worker thread, plus the decode
//! stage alone on one thread, for these files and for zlib-compressed copies.
//!
//! The PyTorch peer is `crates/data/bench/peer_loader.py` (PIL decode, torch bilinear/nearest
//! resize, the same augmentation, `torch.utils.data.DataLoader` with one worker per core).

use super::{BenchArgs, Figure};
use recallseg_data::png_io::{decode_label, decode_rgb8, PngSpeed};
use recallseg_data::transform::Augment;
use recallseg_data::SplitFractions;
use recallseg_data::{
    generate_synthia, Loader, LoaderConfig, SegDataset, Split, SyntheticConfig, SynthiaDataset,
    SynthiaOptions,
};
use std::sync::Arc;
use std::time::Instant;

/// Frames written and loaded per epoch.
const FRAMES: usize = 16;

/// The PyTorch peer (`crates/data/bench/peer_loader.py`: OpenCV decode and resize, the same
/// augmentation, `DataLoader` with 2 workers) on the 2-core machine, median of 5 epochs, measured
/// in the same sitting as the figures in docs/benchmarks.md (load average about 7 from other
/// work): images/s with 2 workers, and images per CPU-second in-process (workers = 0).
const PEER_IMG_PER_S: Option<f64> = Some(13.76);
const PEER_IMG_PER_CPU_S: Option<f64> = Some(17.74);

/// Removes the temporary folder on drop.
struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time (user + system, every thread) this process has used so far, in seconds, from
/// `/proc/self/stat` (Linux; `None` elsewhere). Clock ticks are taken as 100 Hz, the Linux
/// default.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `rest` starts at field 3.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Median images/s over `reps` epochs (after one warm-up epoch), and images per CPU-second over
/// the same epochs (robust to a machine shared with other work).
fn epochs_per_s(loader: &Loader, reps: usize) -> anyhow::Result<(f64, Option<f64>)> {
    let n = loader.dataset().len();
    let mut rates = Vec::new();
    let mut cpu0 = None;
    for e in 0..=reps.max(1) as u64 {
        if e == 1 {
            cpu0 = cpu_seconds();
        }
        let t = Instant::now();
        let mut seen = 0;
        for b in loader.epoch(e) {
            seen += b?.n;
        }
        anyhow::ensure!(seen == n, "epoch yielded {seen} of {n} images");
        if e > 0 {
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    let per_cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some((n * rates.len()) as f64 / (b - a)),
        _ => None,
    };
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], per_cpu))
}

/// Median images/s of decoding every frame (RGB + label PNG) under `root`, one thread.
fn decode_rate(root: &std::path::Path, reps: usize) -> anyhow::Result<f64> {
    let seq = root.join("SYNTHIA-SEQS-05-SUMMER");
    let rgb = seq.join("RGB/Stereo_Left/Omni_F");
    let lbl = seq.join("GT/LABELS/Stereo_Left/Omni_F");
    let mut names: Vec<_> = std::fs::read_dir(&rgb)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut rates = Vec::new();
    for _ in 0..=reps.max(1) {
        let t = Instant::now();
        for n in &names {
            let img = decode_rgb8(&rgb.join(n))?;
            let l = decode_label(&lbl.join(n))?;
            anyhow::ensure!(
                img.width == l.width && img.height == l.height,
                "size mismatch"
            );
        }
        rates.push(names.len() as f64 / t.elapsed().as_secs_f64());
    }
    rates.remove(0); // warm-up
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Generates the benchmark's Synthia-format frames into `dir` and opens them as one training
/// split; returns the dataset, the generation rate (frames/s) and the generator's settings.
fn bench_dataset(
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn SegDataset>, f64, SyntheticConfig)> {
    let gen = SyntheticConfig {
        width: 1280,
        height: 760,
        cameras: vec!["Omni_F".into()],
        sides: vec!["Stereo_Left".into()],
        frames_per_folder: FRAMES,
        ..SyntheticConfig::default()
    };
    eprintln!(
        "generating {FRAMES} Synthia-format 1280x760 frames in {}",
        dir.display()
    );
    let t = Instant::now();
    generate_synthia(dir, &gen)?;
    let gen_rate = FRAMES as f64 / t.elapsed().as_secs_f64();
    let ds: Arc<dyn SegDataset> = Arc::new(SynthiaDataset::open(
        dir,
        Split::Train,
        SynthiaOptions {
            fractions: SplitFractions {
                train: 1.0,
                val: 0.0,
            },
            ..SynthiaOptions::default()
        },
    )?);
    anyhow::ensure!(
        ds.len() == FRAMES,
        "expected {FRAMES} frames, found {}",
        ds.len()
    );
    Ok((ds, gen_rate, gen))
}

/// Runs the data benchmark.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("recallseg-bench-data-{}", std::process::id())));
    let (ds, gen_rate, gen) = bench_dataset(&dir.0)?;

    let cfg = |threads: usize| LoaderConfig {
        batch_size: 4,
        shuffle: true,
        seed: 0,
        drop_last: false,
        resize: Some((768, 384)),
        augment: Some(Augment {
            scale: Some((0.5, 2.0)),
            scale_step: None,
            crop: Some((768, 384)),
            hflip: true,
            color_jitter: None,
        }),
        num_threads: threads,
        prefetch: 2,
        ..LoaderConfig::default()
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!("loader, {cores} thread(s)");
    let (all, all_cpu) = epochs_per_s(&Loader::new(ds.clone(), cfg(0))?, args.reps)?;
    eprintln!("loader, 1 thread");
    let (one, one_cpu) = epochs_per_s(&Loader::new(ds.clone(), cfg(1))?, args.reps)?;

    // Decode alone (image + label PNG), one thread: the benchmark's fast-deflate files, and the
    // same frames re-encoded with zlib-style compression (what most PNG writers produce, and
    // slower to inflate).
    let decode_fast = decode_rate(&dir.0, args.reps)?;
    let zlib = TempDir(dir.0.with_extension("zlib"));
    generate_synthia(
        &zlib.0,
        &SyntheticConfig {
            frames_per_folder: 4,
            png: PngSpeed::Balanced,
            ..gen.clone()
        },
    )?;
    let decode_zlib = decode_rate(&zlib.0, args.reps)?;

    let mut main = Figure::new(
        "synthia_decode_resize_augment_img_per_s",
        format!("decode+resize 768x384+augment, {cores} threads"),
        all,
        "img/s",
    );
    if let Some(p) = PEER_IMG_PER_S {
        main = main.with_peer(p);
    }
    let mut figures = vec![main];
    if let Some(c) = all_cpu {
        figures.push(Figure::new(
            "synthia_decode_resize_augment_img_per_cpu_s",
            format!("same, images per CPU-second ({cores} threads)"),
            c,
            "img/cpu-s",
        ));
    }
    figures.extend([
        Figure::new(
            "synthia_decode_resize_augment_1thread_img_per_s",
            "decode+resize 768x384+augment, 1 thread",
            one,
            "img/s",
        ),
        {
            let f = Figure::new(
                "synthia_decode_resize_augment_1thread_img_per_cpu_s",
                "same, images per CPU-second (1 thread)",
                one_cpu.unwrap_or(f64::NAN),
                "img/cpu-s",
            );
            match PEER_IMG_PER_CPU_S {
                Some(p) => f.with_peer(p),
                None => f,
            }
        },
        Figure::new(
            "synthia_png_decode_1thread_img_per_s",
            "PNG decode (RGB + 16-bit label), 1 thread",
            decode_fast,
            "img/s",
        ),
        Figure::new(
            "synthia_png_decode_zlib_files_1thread_img_per_s",
            "PNG decode, zlib-compressed files, 1 thread",
            decode_zlib,
            "img/s",
        ),
        Figure::new(
            "synthia_generate_1280x760_img_per_s",
            format!("synthetic generation 1280x760, {cores} threads"),
            gen_rate,
            "img/s",
        ),
    ]);
    Ok(figures)
}
