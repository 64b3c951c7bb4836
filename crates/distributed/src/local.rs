//! [`LocalGroup`]: `n` ranks as threads of one process.

use crate::{check_root, Communicator};
use candle_core::Result;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What one rank put in for the current collective.
#[derive(Debug, Clone)]
enum Slot {
    Empty,
    F32(Vec<f32>),
    F64(Vec<f64>),
    U64(Vec<u64>),
    Bytes(Vec<u8>),
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    /// Ranks that reached the current phase of the barrier.
    arrived: usize,
    /// Incremented each time every rank has arrived.
    generation: u64,
    /// A rank that left the group (its handle was dropped, e.g. its thread failed): every
    /// collective fails from then on instead of waiting forever.
    left: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    size: usize,
    state: Mutex<State>,
    turn: Condvar,
}

/// Creates the ranks of an in-process group: hand one [`LocalComm`] to each thread.
///
/// Sums are taken in rank order by every rank, so the results are identical on every rank and
/// independent of thread scheduling. A rank whose handle is dropped while others wait in (or
/// later enter) a collective makes those collectives fail with an error naming it, so a failing
/// thread never leaves the others hanging.
#[derive(Debug)]
pub struct LocalGroup;

impl LocalGroup {
    /// `size` connected ranks (`size ≥ 1`), rank `k` at index `k`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(size: usize) -> Vec<LocalComm> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                slots: vec![Slot::Empty; size],
                arrived: 0,
                generation: 0,
                left: None,
            }),
            turn: Condvar::new(),
        });
        (0..size)
            .map(|rank| LocalComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`LocalGroup`].
#[derive(Debug)]
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.shared
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("local group: a rank panicked".into()))
    }

    /// Waits until every rank has arrived at this point (or one has left).
    fn wait_all<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        if let Some(r) = st.left {
            candle_core::bail!("local group: rank {r} left the group");
        }
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == self.shared.size {
            st.arrived = 0;
            st.generation += 1;
            self.shared.turn.notify_all();
            return Ok(st);
        }
        while st.generation == generation {
            if let Some(r) = st.left {
                candle_core::bail!("local group: rank {r} left the group");
            }
            st = self
                .shared
                .turn
                .wait(st)
                .map_err(|_| candle_core::Error::Msg("local group: a rank panicked".into()))?;
        }
        Ok(st)
    }

    /// Deposits `slot`, waits for every rank's, lets `read` see them all, and waits again so
    /// that no rank starts the next collective while another still reads.
    fn exchange<T>(&self, slot: Slot, read: impl FnOnce(&[Slot]) -> Result<T>) -> Result<T> {
        let mut st = self.lock()?;
        st.slots[self.rank] = slot;
        let st = self.wait_all(st)?;
        let out = read(&st.slots);
        let mut st = self.wait_all(st)?;
        st.slots[self.rank] = Slot::Empty;
        drop(st);
        out
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            if st.left.is_none() {
                st.left = Some(self.rank);
            }
            self.shared.turn.notify_all();
        }
    }
}

fn mismatch(what: &str, mine: usize, theirs: usize, rank: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "local group: {what} of {mine} values here but {theirs} on rank {rank}"
    ))
}

macro_rules! sum_slots {
    ($self:ident, $values:ident, $variant:ident) => {{
        let n = $values.len();
        let sum = $self.exchange(Slot::$variant($values.to_vec()), |slots| {
            let mut acc = vec![Default::default(); n];
            for (r, s) in slots.iter().enumerate() {
                match s {
                    Slot::$variant(v) if v.len() == n => {
                        for (a, x) in acc.iter_mut().zip(v) {
                            *a += *x;
                        }
                    }
                    Slot::$variant(v) => return Err(mismatch("all-reduce", n, v.len(), r)),
                    _ => candle_core::bail!(
                        "local group: rank {r} is in a different collective than rank {}",
                        $self.rank
                    ),
                }
            }
            Ok(acc)
        })?;
        $values.copy_from_slice(&sum);
        Ok(())
    }};
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        sum_slots!(self, values, F32)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        sum_slots!(self, values, F64)
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        sum_slots!(self, values, U64)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, self.shared.size)?;
        let mine = if self.rank == root {
            Slot::Bytes(bytes.clone())
        } else {
            Slot::Bytes(Vec::new())
        };
        let got = self.exchange(mine, |slots| match &slots[root] {
            Slot::Bytes(b) => Ok(b.clone()),
            _ => candle_core::bail!("local group: rank {root} is in a different collective"),
        })?;
        *bytes = got;
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Slot::Empty, |_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send>(n: usize, f: impl Fn(&LocalComm) -> T + Sync) -> Vec<T> {
        let ranks = LocalGroup::new(n);
        std::thread::scope(|s| {
            let hs: Vec<_> = ranks.iter().map(|c| s.spawn(|| f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_are_identical_on_every_rank_and_in_rank_order() {
        // 1e8 + 1 + (-1e8) in f32 depends on the order: rank order gives 0 + ... exactly.
        let out = run(3, |c| {
            let mut v = vec![[1e8f32, 1.0, -1e8][c.rank()], c.rank() as f32];
            c.all_reduce_sum_f32(&mut v).unwrap();
            let mut u = vec![c.rank() as u64 + 1];
            c.all_reduce_sum_u64(&mut u).unwrap();
            (v, u)
        });
        let expect_first = (1e8f32 + 1.0) + -1e8;
        for (v, u) in &out {
            assert_eq!(v[0].to_bits(), expect_first.to_bits());
            assert_eq!(v[1], 3.0);
            assert_eq!(u, &vec![6]);
        }
    }

    #[test]
    fn many_collectives_in_a_row_stay_in_step() {
        let out = run(2, |c| {
            let mut total = 0.0f64;
            for k in 0..200 {
                let mut v = vec![(k * (c.rank() + 1)) as f64];
                c.all_reduce_sum_f64(&mut v).unwrap();
                total += v[0];
                if k % 50 == 0 {
                    c.barrier().unwrap();
                }
            }
            total
        });
        let expect: f64 = (0..200).map(|k| (3 * k) as f64).sum();
        assert_eq!(out, vec![expect, expect]);
    }

    #[test]
    fn broadcast_copies_the_roots_bytes() {
        let out = run(3, |c| {
            let mut b = if c.rank() == 1 {
                b"from one".to_vec()
            } else {
                vec![0; 3]
            };
            c.broadcast_bytes(&mut b, 1).unwrap();
            b
        });
        assert!(out.iter().all(|b| b == b"from one"));
    }

    #[test]
    fn length_mismatch_is_an_error_on_every_rank() {
        let out = run(2, |c| {
            let mut v = vec![0.0f32; 1 + c.rank()];
            c.all_reduce_sum_f32(&mut v).map_err(|e| e.to_string())
        });
        for r in out {
            assert!(r.unwrap_err().contains("all-reduce"));
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
        let mut ranks = LocalGroup::new(2);
        let r1 = ranks.pop().unwrap();
        let r0 = ranks.pop().unwrap();
        let waiter = std::thread::spawn(move || {
            let mut v = vec![1.0f32];
            r0.all_reduce_sum_f32(&mut v).map_err(|e| e.to_string())
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(r1);
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.contains("rank 1 left"), "{err}");
    }
}
