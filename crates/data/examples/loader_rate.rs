//! Loader throughput on Synthia-format frames already on disk (a development aid):
//! `cargo run --release -p recallseg-data --example loader_rate -- ROOT THREADS [EPOCHS]`.

use recallseg_data::transform::Augment;
use recallseg_data::SplitFractions;
use recallseg_data::{Loader, LoaderConfig, Split, SynthiaDataset, SynthiaOptions};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: loader_rate ROOT THREADS [EPOCHS]");
        std::process::exit(2);
    }
    let threads: usize = args[1].parse()?;
    let epochs: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let opts = SynthiaOptions {
        fractions: SplitFractions {
            train: 1.0,
            val: 0.0,
        },
        ..SynthiaOptions::default()
    };
    let ds = Arc::new(SynthiaDataset::open(&args[0], Split::Train, opts)?);
    let loader = Loader::new(
        ds,
        LoaderConfig {
            batch_size: 4,
            resize: Some((768, 384)),
            augment: Some(Augment {
                scale: Some((0.5, 2.0)),
                scale_step: None,
                crop: Some((768, 384)),
                hflip: true,
                color_jitter: None,
            }),
            num_threads: threads,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?;
    for e in 0..epochs {
        let t = Instant::now();
        let mut n = 0;
        for b in loader.epoch(e) {
            n += b?.n;
        }
        println!(
            "epoch {e}: {:.1} img/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
