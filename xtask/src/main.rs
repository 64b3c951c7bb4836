//! Project automation, run as `cargo xtask …` (see `.cargo/config.toml`).
//!
//! xtask only orchestrates: every piece of logic a library user would need lives in the crates.

mod bench;
mod crash_test;
mod fuzz;
mod parity;
mod reproduce;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "recallseg project automation", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark and print its figures (a table, or one JSON object with --json).
    Bench(bench::BenchArgs),
    /// Reproduce the paper's loss comparison on a dataset and write a report.
    Reproduce(reproduce::ReproduceArgs),
    /// Kill `recallseg train` (SIGKILL) many times and check no checkpoint is corrupt and the
    /// resumed run is bit for bit the uninterrupted one.
    CrashTest(crash_test::CrashTestArgs),
    /// Run mutated PNG images and label maps through the decoders; fails on a panic.
    FuzzDecoders(fuzz::FuzzArgs),
    /// Train the same DeepLabV3+ with the same budget here and with PyTorch/smp
    /// (xtask/peer/parity_smp.py), several seeds each, and compare the test scores.
    Parity(parity::ParityArgs),
}

fn main() -> anyhow::Result<()> {
    // Before any thread or candle op: see recallseg_cli::runtime.
    recallseg_cli::runtime::tune_cpu_runtime();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::CrashTest(args) => crash_test::run(&args),
        Command::FuzzDecoders(args) => fuzz::run(&args),
        Command::Parity(args) => parity::run(&args),
    }
}
