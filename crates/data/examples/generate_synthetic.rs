//! Writes the synthetic Synthia-format dataset and prints its class frequency table.
//!
//! `cargo run --release -p recallseg-data --example generate_synthetic -- OUT_DIR [SEED] [WIDTH HEIGHT FRAMES_PER_FOLDER]`

use recallseg_data::SYNTHIA_CLASS_NAMES;
use recallseg_data::{generate_synthia, SyntheticConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: generate_synthetic OUT_DIR [SEED] [WIDTH HEIGHT FRAMES_PER_FOLDER]");
        std::process::exit(2);
    };
    let mut cfg = SyntheticConfig::default();
    if let Some(s) = args.get(1) {
        cfg.seed = s.parse()?;
    }
    if args.len() >= 5 {
        cfg.width = args[2].parse()?;
        cfg.height = args[3].parse()?;
        cfg.frames_per_folder = args[4].parse()?;
    }
    let t = std::time::Instant::now();
    let report = generate_synthia(std::path::Path::new(out), &cfg)?;
    eprintln!(
        "wrote {} images of {}x{} to {} in {:.2} s",
        report.images,
        cfg.width,
        cfg.height,
        report.sequence_dir.display(),
        t.elapsed().as_secs_f64()
    );
    println!("| id | class | pixels (%) | images with the class (%) |");
    println!("|---:|---|---:|---:|");
    let fr = report.class_fractions();
    for (id, name) in SYNTHIA_CLASS_NAMES.iter().enumerate() {
        println!(
            "| {id} | {name} | {:.3} | {:.1} |",
            fr[id] * 100.0,
            report.class_images[id] as f64 * 100.0 / report.images as f64
        );
    }
    Ok(())
}
