//! Times each loading stage on Synthia-format 1280×760 frames (a development aid for the data
//! benchmark): `cargo run --release -p recallseg-data --example profile_stages`.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recallseg_data::png_io::{decode_label, decode_rgb8};
use recallseg_data::transform::Augment;
use recallseg_data::transform::{normalize_chw, resize_bilinear_rgb, resize_nearest};
use recallseg_data::{generate_synthia, Normalize, SyntheticConfig};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("recallseg-profile-{}", std::process::id()));
    let cfg = SyntheticConfig {
        width: 1280,
        height: 760,
        cameras: vec!["Omni_F".into()],
        sides: vec!["Stereo_Left".into()],
        frames_per_folder: 4,
        ..SyntheticConfig::default()
    };
    generate_synthia(&dir, &cfg)?;
    let seq = dir.join("SYNTHIA-SEQS-05-SUMMER");
    let n = 4;
    let mut t = [0f64; 6];
    for rep in 0..3 {
        for i in 0..n {
            let name = format!("{i:06}.png");
            let s = Instant::now();
            let img = decode_rgb8(&seq.join("RGB/Stereo_Left/Omni_F").join(&name))?;
            let t0 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let lbl = decode_label(&seq.join("GT/LABELS/Stereo_Left/Omni_F").join(&name))?;
            let l8: Vec<u8> = lbl.data.iter().map(|&v| v as u8).collect();
            let t1 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let r = resize_bilinear_rgb(&img.data, 1280, 760, 768, 384)?;
            let t2 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let rl = resize_nearest(&l8, 1280, 760, 768, 384, 1)?;
            let t3 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
            let aug = Augment {
                scale: Some((0.5, 2.0)),
                scale_step: None,
                crop: Some((768, 384)),
                hflip: true,
                color_jitter: None,
            };
            let (ai, _al, w, h) = aug.apply(&r, &rl, 768, 384, [0, 0, 0], 255, &mut rng)?;
            let t4 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let mut out = vec![0f32; w * h * 3];
            normalize_chw(&ai, w, h, &Normalize::IMAGENET, &mut out)?;
            let t5 = s.elapsed().as_secs_f64();
            if rep > 0 {
                for (a, b) in t.iter_mut().zip([t0, t1, t2, t3, t4, t5]) {
                    *a += b;
                }
            }
        }
    }
    let k = 1e3 / (2 * n) as f64;
    println!(
        "ms/image: decode rgb {:.2}, decode label {:.2}, resize rgb {:.2}, resize label {:.2}, augment {:.2}, normalise {:.2}",
        t[0] * k, t[1] * k, t[2] * k, t[3] * k, t[4] * k, t[5] * k
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
