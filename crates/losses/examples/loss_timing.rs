//! Times one loss's forward and backward passes on the benchmark shape (4×19×256×512, 10%
//! ignored), split into their parts; a development aid next to `cargo xtask bench losses`.
//!
//! `cargo run --release -p recallseg-losses --example loss_timing -- [loss-name] [reps]`

use candle_core::{Device, Tensor, Var};
use recallseg_losses::{LossConfig, LossContext};
use std::time::Instant;

/// CPU time of the whole process so far (user + system), in ms, from `/proc/self/stat`
/// (Linux; 0 elsewhere). Under a loaded machine it is steadier than wall time.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) * 10.0
}

/// Minor page faults of the process so far.
fn minflt() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(7)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// System CPU time of the process so far, in ms.
fn sys_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(12)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 10.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("recall_ce");
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let (n, c, h, w) = (4, 19, 256, 512);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)?)?;
    let mut state = 7u64;
    let labels: Vec<u8> = (0..n * h * w)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let r = (state >> 33) % 1000;
            if r < 100 {
                255
            } else {
                (r % c as u64) as u8
            }
        })
        .collect();
    let t = Tensor::from_vec(labels, (n, h, w), &dev)?;
    let ctx = LossContext::new(c).with_class_pixel_counts((1..=c as u64).collect());
    let mut loss = LossConfig::from_name(name)?.build(&ctx)?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    let (mut cf, mut cb) = (0.0, 0.0);
    let (mut cpu0, mut sys0, mut flt0) = (0.0, 0.0, 0.0);
    for r in 0..reps + 1 {
        if r == 1 {
            cpu0 = cpu_ms();
            sys0 = sys_ms();
            flt0 = minflt();
        }
        let c0 = cpu_ms();
        let t0 = Instant::now();
        let l = loss.forward(x.as_tensor(), &t)?;
        let t1 = Instant::now();
        let c1 = cpu_ms();
        let g = l.backward()?;
        let _ = g.get(x.as_tensor()).expect("gradient");
        let t2 = Instant::now();
        let c2 = cpu_ms();
        if r > 0 {
            cf += (c1 - c0) / reps as f64;
            cb += (c2 - c1) / reps as f64;
        }
        fwd.push((t1 - t0).as_secs_f64() * 1e3);
        bwd.push((t2 - t1).as_secs_f64() * 1e3);
    }
    let cpu = (cpu_ms() - cpu0) / reps as f64;
    let sys = (sys_ms() - sys0) / reps as f64;
    let flt = (minflt() - flt0) / reps as f64;
    fwd.remove(0);
    bwd.remove(0);
    fwd.sort_by(f64::total_cmp);
    bwd.sort_by(f64::total_cmp);
    println!(
        "{name}: forward {:.1} ms, backward {:.1} ms (medians of {reps}; threads {}); \
         CPU time per step {cpu:.0} ms ({sys:.0} ms system; forward {cf:.0}, backward {cb:.0}); {flt:.0} page faults per step",
        fwd[reps / 2],
        bwd[reps / 2],
        rayon::current_num_threads()
    );
    let xd = x.as_tensor().detach();
    let c0 = cpu_ms();
    for _ in 0..reps {
        loss.forward(&xd, &t)?;
    }
    println!(
        "forward without a graph: CPU {:.0} ms per call",
        (cpu_ms() - c0) / reps as f64
    );
    // candle's own cost of accumulating a gradient of this size: zeros_like + add.
    let t0 = Instant::now();
    let z = x.as_tensor().zeros_like()?;
    let _s = z.add(x.as_tensor())?;
    println!(
        "candle zeros_like + add of the logits: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
