//! Time of `MpiCommunicator::all_reduce_sum_f32` on a buffer of `--floats` values, as one
//! data-parallel step's gradient all-reduce. What `cargo xtask bench allreduce` runs:
//!
//! ```text
//! cargo build --release -p recallseg-distributed --features mpi --example mpi_allreduce_bench
//! mpirun -np 2 target/release/examples/mpi_allreduce_bench --floats 12000000 --iters 20
//! ```
//!
//! Each timed iteration refills the buffer (untimed), waits at a barrier, then times one
//! all-reduce on every rank; an iteration's time is the slowest rank's (the step waits for it).
//! Rank 0 prints one JSON object: `ranks`, `floats`, `iters`, `median_ms`, `min_ms`, `max_ms`
//! over the iterations, and `gbytes_per_s` (buffer bytes / median time). After the timing,
//! the result is checked against the expected sum (an error exits non-zero).

use recallseg_distributed::{Communicator, MpiCommunicator};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v > 0)
            .ok_or_else(|| format!("{name} needs a positive integer")),
    }
}

fn run(comm: &MpiCommunicator) -> Result<String, String> {
    let args: Vec<String> = std::env::args().collect();
    let floats = arg(&args, "--floats", 1 << 20)?;
    let iters = arg(&args, "--iters", 20)?;
    let warmup = arg(&args, "--warmup", 2)?;
    let (rank, size) = (comm.rank(), comm.size());
    let e = |e: candle_core::Error| e.to_string();

    let mut buf = vec![0f32; floats];
    let fill = |buf: &mut [f32]| {
        for (i, x) in buf.iter_mut().enumerate() {
            *x = ((i % 1024) as f32) * 0.5 + rank as f32;
        }
    };
    let mut mine = Vec::with_capacity(iters);
    for k in 0..warmup + iters {
        fill(&mut buf);
        comm.barrier().map_err(e)?;
        let t = Instant::now();
        comm.all_reduce_sum_f32(&mut buf).map_err(e)?;
        if k >= warmup {
            mine.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Integer-valued halves: exact in f32 in any order.
    let s = size as f32;
    let ok = buf
        .iter()
        .enumerate()
        .all(|(i, &x)| x == ((i % 1024) as f32) * 0.5 * s + (s - 1.0) * s / 2.0);
    if !ok {
        return Err(format!("rank {rank}: wrong all-reduce result"));
    }

    // Every rank's times, row by row; an iteration takes as long as its slowest rank.
    let mut all = vec![0f64; size * iters];
    all[rank * iters..(rank + 1) * iters].copy_from_slice(&mine);
    comm.all_reduce_sum_f64(&mut all).map_err(e)?;
    let mut per_iter: Vec<f64> = (0..iters)
        .map(|k| (0..size).map(|r| all[r * iters + k]).fold(0.0, f64::max))
        .collect();
    per_iter.sort_by(f64::total_cmp);
    let median = per_iter[iters / 2];
    let bytes = (floats * std::mem::size_of::<f32>()) as f64;
    Ok(format!(
        "{{\"ranks\":{size},\"floats\":{floats},\"iters\":{iters},\"median_ms\":{median:.4},\
         \"min_ms\":{:.4},\"max_ms\":{:.4},\"gbytes_per_s\":{:.4}}}",
        per_iter[0],
        per_iter[iters - 1],
        bytes / (median * 1e-3) / 1e9
    ))
}

fn main() {
    let comm = match MpiCommunicator::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpi_allreduce_bench: {e}");
            std::process::exit(2);
        }
    };
    match run(&comm) {
        Ok(json) => {
            if comm.rank() == 0 {
                println!("{json}");
            }
            if let Err(e) = comm.finish() {
                eprintln!("mpi_allreduce_bench: {e}");
                comm.abort(1);
            }
        }
        Err(e) => {
            eprintln!("mpi_allreduce_bench: {e}");
            comm.abort(1);
        }
    }
}
