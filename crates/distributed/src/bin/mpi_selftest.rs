//! Every collective of `MpiCommunicator`, checked on however many ranks `mpirun` starts:
//!
//! ```text
//! cargo build -p recallseg-distributed --features mpi --bin recallseg-mpi-selftest
//! mpirun -np 2 --oversubscribe target/debug/recallseg-mpi-selftest
//! ```
//!
//! Checks (every rank generates every rank's inputs from a fixed seed, so each can compute the
//! expected result itself):
//! * `f32`/`f64` sums of integer-valued data (exact in any order) at several lengths;
//! * `f32`/`f64` sums of random data at lengths that select each of Open MPI's all-reduce
//!   algorithms: every rank receives the same bits as rank 0; on 2 ranks they equal `a₀ + a₁`
//!   exactly, on more they are within the rounding bound of the rank-order sum;
//! * `u64` sums of random values below 2⁵⁶ (exact);
//! * buffers of different lengths on different ranks: an error on every rank, after which the
//!   ranks still agree;
//! * `broadcast_bytes` from every root, of 0 B to 1 MiB, into buffers of other lengths;
//! * `barrier`: rank 0 writes a file before it, every rank finds the file after it;
//! * `all_reduce_sum` of `f32`, `f64`, `f16` and `u32` tensors (shape, dtype, values);
//! * a collective called from another thread (the type is `Send + Sync`);
//! * 300 small collectives in a row.
//!
//! With `--break-rank1 exit|panic|drop`, rank 1 leaves instead while the others wait in an
//! all-reduce: the job must end with a non-zero status rather than hang.
//!
//! Prints one line per rank; the exit status is 0 on every rank if every check passed on every
//! rank, 1 otherwise (the ranks agree on it with a last all-reduce). An MPI error aborts the job.

mod selftest;

use selftest::Checks;

use candle_core::{DType, Device, Tensor};
use recallseg_distributed::{Communicator, MpiCommunicator};

/// SplitMix64: the inputs of rank `r` are `stream(seed, r)`.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, rank: usize, len: usize) -> Self {
        Self(seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((len as u64) << 32))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1) times a power of two in 2^-8 .. 2^8 (varied magnitudes, so that the
    /// order of a sum matters).
    fn float(&mut self) -> f64 {
        let x = self.next();
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        unit * f64::powi(2.0, (x & 15) as i32 - 8)
    }
}

/// Lengths that select each of Open MPI 4.1's all-reduce algorithms (`coll/tuned`'s fixed
/// decision: recursive doubling below ~10 kB, ring, segmented ring above ~1 MB per rank).
const LENGTHS: [usize; 6] = [1, 5, 2_500, 40_000, 300_000, 1_100_000];

/// Ends the job if a collective returned an error where none was expected.
fn ok<T>(comm: &MpiCommunicator, r: candle_core::Result<T>, what: &str) -> T {
    selftest::ok_or_abort("mpi_selftest", comm, r, what)
}

/// Rank 0's bytes of `bits` (its result) compared with this rank's.
fn same_bits_as_rank0(comm: &MpiCommunicator, bits: Vec<u8>) -> bool {
    let mut root = bits.clone();
    ok(
        comm,
        comm.broadcast_bytes(&mut root, 0),
        "broadcast of rank 0's result",
    );
    root == bits
}

fn exact_sums(comm: &MpiCommunicator, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    for &n in &[1usize, 3, 1000, 100_000] {
        // Integers below 2^20: every partial sum is exact in f32 for up to 16 ranks.
        let input = |r: usize, i: usize| ((i * 7919 + r * 104_729) % (1 << 20)) as f64 - 300_000.0;
        let expect: Vec<f64> = (0..n)
            .map(|i| (0..size).map(|r| input(r, i)).sum())
            .collect();
        let mut v32: Vec<f32> = (0..n).map(|i| input(rank, i) as f32).collect();
        ok(comm, comm.all_reduce_sum_f32(&mut v32), "f32 all-reduce");
        c.check(
            v32.iter().zip(&expect).all(|(a, b)| *a as f64 == *b),
            || format!("exact f32 sum of {n} values"),
        );
        let mut v64: Vec<f64> = (0..n).map(|i| input(rank, i)).collect();
        ok(comm, comm.all_reduce_sum_f64(&mut v64), "f64 all-reduce");
        c.check(v64 == expect, || format!("exact f64 sum of {n} values"));
    }
}

fn random_sums(comm: &MpiCommunicator, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    for &n in &LENGTHS {
        let inputs: Vec<Vec<f64>> = (0..size)
            .map(|r| {
                let mut g = SplitMix::new(0xF32, r, n);
                (0..n).map(|_| g.float()).collect()
            })
            .collect();

        // f32
        let mut v: Vec<f32> = inputs[rank].iter().map(|&x| x as f32).collect();
        ok(comm, comm.all_reduce_sum_f32(&mut v), "f32 all-reduce");
        let bits: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        c.check(same_bits_as_rank0(comm, bits), || {
            format!("f32 sum of {n} random values: bits differ from rank 0's")
        });
        let mut worst = 0.0f64;
        for (i, got) in v.iter().enumerate() {
            let xs: Vec<f32> = inputs.iter().map(|inp| inp[i] as f32).collect();
            if size == 2 {
                if got.to_bits() != (xs[0] + xs[1]).to_bits() {
                    worst = f64::INFINITY;
                }
            } else {
                let ordered: f32 = xs.iter().fold(0.0f32, |a, x| a + x);
                let bound: f64 = xs.iter().map(|x| x.abs() as f64).sum::<f64>()
                    * size as f64
                    * f32::EPSILON as f64;
                worst =
                    worst.max((*got as f64 - ordered as f64).abs() / bound.max(f64::MIN_POSITIVE));
            }
        }
        c.check(worst <= 1.0, || {
            format!("f32 sum of {n} random values off by {worst} of the rounding bound")
        });

        // f64
        let mut v: Vec<f64> = inputs[rank].clone();
        ok(comm, comm.all_reduce_sum_f64(&mut v), "f64 all-reduce");
        let bits: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        c.check(same_bits_as_rank0(comm, bits), || {
            format!("f64 sum of {n} random values: bits differ from rank 0's")
        });
        let mut worst = 0.0f64;
        for (i, got) in v.iter().enumerate() {
            let xs: Vec<f64> = inputs.iter().map(|inp| inp[i]).collect();
            if size == 2 {
                if got.to_bits() != (xs[0] + xs[1]).to_bits() {
                    worst = f64::INFINITY;
                }
            } else {
                let ordered: f64 = xs.iter().fold(0.0, |a, x| a + x);
                let bound = xs.iter().map(|x| x.abs()).sum::<f64>() * size as f64 * f64::EPSILON;
                worst = worst.max((got - ordered).abs() / bound.max(f64::MIN_POSITIVE));
            }
        }
        c.check(worst <= 1.0, || {
            format!("f64 sum of {n} random values off by {worst} of the rounding bound")
        });

        // u64 (exact)
        let gen = |r: usize| -> Vec<u64> {
            let mut g = SplitMix::new(0x64, r, n);
            (0..n).map(|_| g.next() >> 8).collect()
        };
        let all: Vec<Vec<u64>> = (0..size).map(gen).collect();
        let expect: Vec<u64> = (0..n).map(|i| all.iter().map(|g| g[i]).sum()).collect();
        let mut v = gen(rank);
        ok(comm, comm.all_reduce_sum_u64(&mut v), "u64 all-reduce");
        c.check(v == expect, || format!("u64 sum of {n} random values"));
    }
}

fn mismatched_lengths(comm: &MpiCommunicator, c: &mut Checks) {
    if comm.size() == 1 {
        return; // one rank cannot disagree with itself
    }
    let mut v = vec![1.0f32; 4 + comm.rank()];
    let r = comm.all_reduce_sum_f32(&mut v);
    c.check(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("lengths range from 4")),
        || format!("mismatched lengths: expected an error, got {r:?}"),
    );
    c.check(v.iter().all(|&x| x == 1.0), || {
        "mismatched lengths: the buffer was changed".into()
    });
    // The ranks are still in step.
    let mut u = vec![comm.rank() as u64];
    ok(
        comm,
        comm.all_reduce_sum_u64(&mut u),
        "u64 all-reduce after a mismatch",
    );
    let s = comm.size() as u64;
    c.check(u[0] == s * (s - 1) / 2, || {
        "all-reduce after a mismatch".into()
    });
}

fn broadcasts(comm: &MpiCommunicator, c: &mut Checks) {
    for root in 0..comm.size() {
        for &len in &[0usize, 1, 1000, 1 << 20] {
            let payload = |len: usize| -> Vec<u8> {
                (0..len).map(|i| (i * 31 + root * 7 + len) as u8).collect()
            };
            let mut b = if comm.rank() == root {
                payload(len)
            } else {
                vec![0xAB; comm.rank() + 3]
            };
            ok(comm, comm.broadcast_bytes(&mut b, root), "broadcast");
            c.check(b == payload(len), || {
                format!("broadcast of {len} bytes from rank {root}")
            });
        }
    }
    let mut b = vec![1u8];
    c.check(comm.broadcast_bytes(&mut b, comm.size()).is_err(), || {
        "broadcast from a rank outside the group is an error".into()
    });
}

fn barrier(comm: &MpiCommunicator, c: &mut Checks) {
    // Rank 0 names a fresh file, tells everyone, writes it, then enters the barrier.
    let mut name = if comm.rank() == 0 {
        std::env::temp_dir()
            .join(format!("recallseg-mpi-selftest-{}", std::process::id()))
            .to_string_lossy()
            .into_owned()
            .into_bytes()
    } else {
        Vec::new()
    };
    ok(
        comm,
        comm.broadcast_bytes(&mut name, 0),
        "broadcast of the file name",
    );
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    for round in 0..3u8 {
        if comm.rank() == 0 {
            // Slow down the writer so that a barrier that does not wait shows.
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::fs::write(&path, [round]).expect("write the barrier file");
        }
        ok(comm, comm.barrier(), "barrier");
        let seen = std::fs::read(&path).ok();
        c.check(seen.as_deref() == Some(&[round][..]), || {
            format!("barrier round {round}: rank 0's file holds {seen:?}")
        });
        ok(comm, comm.barrier(), "barrier");
    }
    if comm.rank() == 0 {
        let _ = std::fs::remove_file(&path);
    }
}

fn tensors(comm: &MpiCommunicator, c: &mut Checks) {
    let (rank, size) = (comm.rank() as f64, comm.size() as f64);
    let dev = Device::Cpu;
    let base = Tensor::arange(0f64, 120., &dev)
        .and_then(|t| t.reshape((2, 3, 4, 5)))
        .expect("a tensor");
    // rank-dependent values: base * (rank + 1); sum = base * size(size+1)/2.
    let factor = size * (size + 1.0) / 2.0;
    for dtype in [DType::F32, DType::F64, DType::F16, DType::U32] {
        let t = (&base * (rank + 1.0))
            .and_then(|t| t.to_dtype(dtype))
            .expect("a tensor");
        let s = ok(comm, comm.all_reduce_sum(&t), "tensor all-reduce");
        let want = (&base * factor)
            .and_then(|t| t.to_dtype(dtype))
            .expect("a tensor");
        let same = s.dims() == want.dims()
            && s.dtype() == dtype
            && s.to_dtype(DType::F64)
                .and_then(|a| a.flatten_all()?.to_vec1::<f64>())
                .ok()
                == want
                    .to_dtype(DType::F64)
                    .and_then(|a| a.flatten_all()?.to_vec1::<f64>())
                    .ok();
        c.check(same, || format!("all_reduce_sum of a {dtype:?} tensor"));
    }
}

fn from_another_thread(comm: &MpiCommunicator, c: &mut Checks) {
    let got = std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = vec![1.0f64, comm.rank() as f64];
            comm.all_reduce_sum_f64(&mut v).map(|_| v)
        })
        .join()
        .expect("the thread")
    });
    let got = ok(comm, got, "all-reduce from another thread");
    let s = comm.size() as f64;
    c.check(got == vec![s, s * (s - 1.0) / 2.0], || {
        format!("all-reduce from another thread gave {got:?}")
    });
}

fn many_in_a_row(comm: &MpiCommunicator, c: &mut Checks) {
    let mut total = 0u64;
    for k in 0..300u64 {
        let mut v = [k * (comm.rank() as u64 + 1)];
        ok(comm, comm.all_reduce_sum_u64(&mut v), "u64 all-reduce");
        total += v[0];
        if k % 60 == 0 {
            let mut b = if comm.rank() == 0 {
                k.to_le_bytes().to_vec()
            } else {
                vec![]
            };
            ok(comm, comm.broadcast_bytes(&mut b, 0), "broadcast");
            c.check(b == k.to_le_bytes(), || format!("broadcast {k} in a row"));
        }
    }
    let s = comm.size() as u64;
    let expect: u64 = (0..300u64).map(|k| k * s * (s + 1) / 2).sum();
    c.check(total == expect, || {
        format!("300 all-reduces in a row: {total} != {expect}")
    });
}

fn main() {
    let comm = match MpiCommunicator::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpi_selftest: {e}");
            std::process::exit(2);
        }
    };
    let mut c = Checks::new("mpi_selftest", comm.rank());
    c.check(comm.backend() == "mpi" && comm.rank() < comm.size(), || {
        "rank and size".into()
    });
    let mut world = [1u64, comm.rank() as u64];
    ok(&comm, comm.all_reduce_sum_u64(&mut world), "u64 all-reduce");
    let s = comm.size() as u64;
    c.check(world == [s, s * (s - 1) / 2], || {
        format!("size/rank sums {world:?}")
    });

    if let Some(how) = std::env::args().nth(1) {
        // `--break-rank1 HOW`: rank 1 stops (see `break_rank1`) while the others wait.
        if how == "--break-rank1" {
            break_rank1(comm, &std::env::args().nth(2).unwrap_or_default());
        }
    }
    exact_sums(&comm, &mut c);
    random_sums(&comm, &mut c);
    mismatched_lengths(&comm, &mut c);
    broadcasts(&comm, &mut c);
    barrier(&comm, &mut c);
    tensors(&comm, &mut c);
    from_another_thread(&comm, &mut c);
    many_in_a_row(&comm, &mut c);

    // Every rank learns how many checks failed anywhere.
    let failures = c.failed_on_all_ranks(&comm);
    println!(
        "mpi_selftest: rank {} of {}: {} checks passed, {} failed here, {} failed on all ranks ({})",
        comm.rank(),
        comm.size(),
        c.passed,
        c.failed.len(),
        failures,
        MpiCommunicator::library_version()
            .lines()
            .next()
            .unwrap_or("")
    );
    let code = i32::from(failures != 0);
    ok(&comm, comm.finish(), "finish");
    drop(comm); // MPI_Finalize before exiting
    std::process::exit(code);
}

/// Rank 1 leaves while the other ranks are in a collective: `exit` (ends without finalising,
/// as a killed process does), `panic` or `drop` (the communicator is dropped without
/// `finish`, as on an error return: its drop aborts the job). mpirun must end the job with a
/// non-zero status, not hang.
fn break_rank1(comm: MpiCommunicator, how: &str) -> ! {
    if comm.rank() == 1 {
        match how {
            "exit" => std::process::exit(3),
            "panic" => panic!("rank 1 panics on purpose"),
            _ => {
                drop(comm);
                std::process::exit(0)
            }
        }
    }
    let mut v = vec![1.0f32; 1000];
    let r = comm.all_reduce_sum_f32(&mut v);
    eprintln!(
        "mpi_selftest: rank {}: the collective returned {r:?}",
        comm.rank()
    );
    let _ = comm.finish();
    drop(comm);
    std::process::exit(4)
}
