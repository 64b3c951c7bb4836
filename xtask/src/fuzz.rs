//! `cargo xtask fuzz-decoders`: runs deterministic mutations of valid PNG images and label maps
//! (and of a small JPEG) through the data crate's public decoders and counts how each ends:
//! decoded, refused with an error, or a panic (which fails the run). Allocation aborts cannot
//! be caught, so a run that finishes at all shows none happened.

use clap::Args;
use rand::{Rng, SeedableRng};
use recallseg_data::png_io::{
    decode_image_bytes, decode_label_bytes, decode_rgb8_bytes, write_gray8, write_label_rgb16,
    write_rgb8, PngSpeed,
};

/// `cargo xtask fuzz-decoders`.
#[derive(Args, Debug)]
pub(crate) struct FuzzArgs {
    /// Number of mutated files.
    #[arg(long, default_value_t = 3000)]
    files: usize,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object of the counts on stdout.
    #[arg(long)]
    json: bool,
}

/// A few valid PNGs of the kinds the datasets read: RGB images, 8-bit grey masks, 16-bit
/// Synthia-style labels.
fn seeds() -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = tempfile_dir()?;
    let (w, h) = (37, 23);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let grey: Vec<u8> = (0..w * h).map(|i| (i % 19) as u8).collect();
    let ids: Vec<u16> = (0..w * h).map(|i| (i % 16) as u16).collect();
    let mut out = Vec::new();
    for (k, speed) in [PngSpeed::Fast, PngSpeed::Balanced].into_iter().enumerate() {
        let p = dir.join(format!("rgb{k}.png"));
        write_rgb8(&p, w, h, &rgb, speed)?;
        out.push(std::fs::read(&p)?);
        let p = dir.join(format!("grey{k}.png"));
        write_gray8(&p, w, h, &grey, speed)?;
        out.push(std::fs::read(&p)?);
    }
    let p = dir.join("label16.png");
    write_label_rgb16(&p, w, h, &ids, None, PngSpeed::Fast)?;
    out.push(std::fs::read(&p)?);
    let _ = std::fs::remove_dir_all(&dir);
    // A 16x12 baseline JPEG (the data crate's decoder golden).
    out.push(include_bytes!("../../crates/data/tests/goldens/tiny.jpg").to_vec());
    Ok(out)
}

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8])
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("recallseg-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// One mutation of `b`: bit flips, random bytes, a header size field set to a huge value, a
/// truncation, or a duplicated block.
fn mutate(b: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut m = b.to_vec();
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            for _ in 0..rng.random_range(1..16) {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
        }
        2 if is_jpeg(b) => {
            // The frame header's height or width (2 bytes each, after the SOFn marker, its
            // length and the sample precision) to a large value.
            if let Some(sof) = m
                .windows(2)
                .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
            {
                let at = sof + if rng.random_bool(0.5) { 5 } else { 7 };
                if at + 2 <= m.len() {
                    let v: u16 = rng.random_range(1u16 << 12..=u16::MAX);
                    m[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
        2 => {
            // IHDR width or height (bytes 16..24) to a large value. The chunk's CRC goes stale,
            // which the decoder may check before or after reading the size: both paths run.
            let at = if rng.random_bool(0.5) { 16 } else { 20 };
            let v: u32 = rng.random_range(1u32 << 14..u32::MAX);
            m[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        3 => {
            let n = rng.random_range(1..m.len());
            m.truncate(n);
        }
        _ => {
            let a = rng.random_range(0..m.len());
            let len = rng.random_range(1..64.min(m.len() - a) + 1);
            let block = m[a..a + len].to_vec();
            let at = rng.random_range(0..m.len());
            m.splice(at..at, block);
        }
    }
    m
}

/// Recomputes every chunk's CRC, so that a mutation reaches the decoder's later stages instead of
/// failing its checksum test (chunks are walked by their length fields; a damaged length ends
/// the walk).
fn fix_crcs(m: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= m.len() {
        let len = u32::from_be_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]) as usize;
        let end = match (at + 8).checked_add(len) {
            Some(e) if e + 4 <= m.len() => e,
            _ => return,
        };
        let crc = crc32fast::hash(&m[at + 4..end]);
        m[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Saves a file that made a decoder panic (to reproduce it) and prints the panic's message.
fn report_panic(bytes: &[u8], seed: u64, k: usize, payload: &(dyn std::any::Any + Send)) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let dir = std::env::temp_dir().join("recallseg-fuzz-panics");
    let path = dir.join(format!("seed{seed}-file{k}.bin"));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, bytes))
        .map(|_| path.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"));
    eprintln!("panic on mutated file {k} (saved as {saved}): {msg}");
}

/// Runs the fuzz loop and prints the counts; fails when a decoder panicked.
pub(crate) fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let seeds = seeds()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let (mut decoded, mut refused, mut panics, mut jpegs) = (0usize, 0usize, 0usize, 0usize);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for k in 0..args.files {
        let seed = &seeds[k % seeds.len()];
        jpegs += usize::from(is_jpeg(seed));
        let mut m = mutate(seed, &mut rng);
        if !is_jpeg(seed) && rng.random_bool(0.5) {
            fix_crcs(&mut m);
        }
        for decode in [
            (|b: &[u8]| decode_rgb8_bytes(b).map(|_| ())) as fn(&[u8]) -> Result<(), String>,
            |b: &[u8]| decode_label_bytes(b).map(|_| ()),
            |b: &[u8]| decode_image_bytes(b).map(|_| ()),
        ] {
            match std::panic::catch_unwind(|| decode(&m)) {
                Ok(Ok(())) => decoded += 1,
                Ok(Err(_)) => refused += 1,
                Err(payload) => {
                    panics += 1;
                    if panics <= 10 {
                        report_panic(&m, args.seed, k, payload.as_ref());
                    }
                }
            }
        }
    }
    std::panic::set_hook(hook);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "files": args.files,
                "jpeg_files": jpegs,
                "decodes": 3 * args.files,
                "decoded": decoded,
                "refused_with_an_error": refused,
                "panics": panics,
            })
        );
    } else {
        println!(
            "{} mutated files ({} PNG, {} JPEG), {} decodes (PNG image, PNG label, by \
             content): {decoded} decoded, {refused} refused with an error, {panics} panics, \
             no abort",
            args.files,
            args.files - jpegs,
            jpegs,
            3 * args.files
        );
    }
    anyhow::ensure!(panics == 0, "{panics} decodes panicked");
    Ok(())
}
