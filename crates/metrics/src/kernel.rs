//! Counting kernels behind [`ConfusionMatrix::update`](crate::ConfusionMatrix::update).
//!
//! Two kernels count one contiguous range of pixels into a [`Partial`]:
//!
//! * [`count_direct_u8`], the fast path for `u8` labels: four interleaved 256-row `u32`
//!   sub-histograms indexed by `gt * 257 + pred` (rows padded, see [`ROW`]). Every `u8` pair has
//!   its own cell and the index is always in bounds, so the hot loop has no branch at all; ignore
//!   and out-of-range values land in their own cells and are sorted out when the sub-histograms
//!   are flushed into `u64` counts. Four sub-histograms written in turn
//!   keep consecutive equal pixels (the common case in label maps) from waiting on each other's
//!   store. The scratch tables live in a thread-local buffer that every flush leaves zeroed.
//! * [`count_simple`], for `u16`/`u32` labels and small inputs: one pass with a single, well
//!   predicted branch per pixel, counting straight into `u64` cells.
//!
//! The caller splits large inputs into contiguous ranges counted in parallel (rayon) and adds the
//! partial results. In strict mode the position of the first invalid value is searched only once
//! a range is known to hold one, so the fast path pays nothing for the error message.

use crate::error::LabelSource;
use crate::Label;
use std::cell::RefCell;

/// What to count: the matrix's settings.
#[derive(Copy, Clone, Debug)]
pub struct Spec {
    /// Number of classes.
    pub n: usize,
    /// Ignore index, if any.
    pub ignore: Option<u32>,
    /// Skip invalid values instead of reporting the first one.
    pub lenient: bool,
}

/// How a single value is treated.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A class in `0..n` (and not the ignore index).
    Class,
    /// The ignore index.
    Ignore,
    /// Anything else.
    Invalid,
}

impl Spec {
    /// Classifies one value.
    #[inline]
    pub fn kind(&self, v: u32) -> Kind {
        if Some(v) == self.ignore {
            Kind::Ignore
        } else if (v as usize) < self.n {
            Kind::Class
        } else {
            Kind::Invalid
        }
    }
}

/// The first invalid value of a range: position (in the whole input), which map, value.
pub(crate) type InvalidAt = (usize, LabelSource, u32);

/// Counts of one range of pixels.
#[derive(Clone, Debug)]
pub struct Partial {
    /// Side of `counts`: `min(n, number of values of the label type)`.
    pub k: usize,
    /// `k × k` counts, rows = ground truth, columns = prediction.
    pub counts: Vec<u64>,
    /// Pixels skipped because the label or the prediction is the ignore index.
    pub ignored: u64,
    /// Pixels with an invalid label or prediction.
    pub invalid: u64,
    /// Strict mode: the first invalid value, if any.
    pub first_invalid: Option<InvalidAt>,
}

impl Partial {
    /// Zero counts of side `k`.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            counts: vec![0; k * k],
            ignored: 0,
            invalid: 0,
            first_invalid: None,
        }
    }

    /// Adds `other` into `self` (same `k`); keeps the earlier invalid position.
    pub fn add(mut self, other: Partial) -> Partial {
        debug_assert_eq!(self.k, other.k);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.ignored += other.ignored;
        self.invalid += other.invalid;
        self.first_invalid = match (self.first_invalid, other.first_invalid) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        self
    }
}

/// The first invalid value of `gt`/`pred` (ground truth first at equal positions); `offset` is
/// added to the reported position.
pub(crate) fn find_first_invalid<L: Label>(
    gt: &[L],
    pred: &[L],
    offset: usize,
    spec: &Spec,
) -> Option<InvalidAt> {
    gt.iter().zip(pred).enumerate().find_map(|(i, (&g, &p))| {
        let (g, p) = (g.to_u32(), p.to_u32());
        if spec.kind(g) == Kind::Invalid {
            Some((i + offset, LabelSource::GroundTruth, g))
        } else if spec.kind(p) == Kind::Invalid {
            Some((i + offset, LabelSource::Prediction, p))
        } else {
            None
        }
    })
}

/// Generic kernel: one pass, counts straight into a `k × k` `u64` table.
///
/// `k` must be `min(n, number of values of L)`, so that every class value is below `k`.
pub(crate) fn count_simple<L: Label>(
    gt: &[L],
    pred: &[L],
    offset: usize,
    spec: &Spec,
    k: usize,
) -> Partial {
    let mut part = Partial::new(k);
    // `n` is at most `MAX_CLASSES`, so `u32` comparisons are exact; values equal to the ignore
    // index fail the first test through `ign` (u64::MAX never equals a label).
    let n = spec.n as u64;
    let ign = spec.ignore.map_or(u64::MAX, u64::from);
    for (i, (&g, &p)) in gt.iter().zip(pred).enumerate() {
        let (g, p) = (u64::from(g.to_u32()), u64::from(p.to_u32()));
        if g < n && p < n && g != ign && p != ign {
            part.counts[g as usize * k + p as usize] += 1;
        } else if spec.kind(g as u32) == Kind::Invalid || spec.kind(p as u32) == Kind::Invalid {
            if !spec.lenient {
                part.first_invalid = find_first_invalid(&gt[i..=i], &pred[i..=i], offset + i, spec);
                return part;
            }
            part.invalid += 1;
        } else {
            part.ignored += 1;
        }
    }
    part
}

/// Cells between two rows of a sub-histogram. Not a power of two: with 256-cell rows, rows 4
/// apart (and the same cell of different sub-histograms) share their address modulo 4 KiB, and
/// the CPU's store-to-load dependence check then stalls on false matches ("4K aliasing").
const ROW: usize = 257;
/// Cells of one 256-row sub-histogram.
const TABLE: usize = 256 * ROW;
/// Cells between the starts of two sub-histograms (one cache line of padding).
const STRIDE: usize = TABLE + 16;
/// Interleaved sub-histograms of the `u8` kernel.
const SUBS: usize = 4;
/// Pixels counted into the `u32` sub-histograms between flushes: no cell can overflow.
const BLOCK: usize = 1 << 30;

thread_local! {
    /// `SUBS` zeroed 256-row `u32` sub-histograms per thread (≈ 1 MiB), kept between calls.
    static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Fast kernel for `u8` labels (see the module documentation).
pub(crate) fn count_direct_u8(
    gt: &[u8],
    pred: &[u8],
    offset: usize,
    spec: &Spec,
    k: usize,
) -> Partial {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() != SUBS * STRIDE {
                *buf = vec![0; SUBS * STRIDE];
            }
            direct_u8_with(&mut buf, gt, pred, offset, spec, k)
        }
        // Re-entered on this thread (not expected): use a fresh table.
        Err(_) => direct_u8_with(&mut vec![0; SUBS * STRIDE], gt, pred, offset, spec, k),
    })
}

fn direct_u8_with(
    buf: &mut [u32],
    gt: &[u8],
    pred: &[u8],
    offset: usize,
    spec: &Spec,
    k: usize,
) -> Partial {
    let mut part = Partial::new(k);
    let kinds: [Kind; 256] = std::array::from_fn(|v| spec.kind(v as u32));
    for (gb, pb) in gt.chunks(BLOCK).zip(pred.chunks(BLOCK)) {
        histogram_u8(buf, gb, pb);
        flush_u8(buf, &kinds, &mut part);
    }
    if !spec.lenient && part.invalid > 0 {
        part.first_invalid = find_first_invalid(gt, pred, offset, spec);
    }
    part
}

/// The hot loop: `SUBS` interleaved sub-histograms, no branches, no bounds checks.
fn histogram_u8(buf: &mut [u32], gt: &[u8], pred: &[u8]) {
    let (t0, rest) = buf.split_at_mut(STRIDE);
    let (t1, rest) = rest.split_at_mut(STRIDE);
    let (t2, t3) = rest.split_at_mut(STRIDE);
    // Constant-length slices: with `idx <= 255 * ROW + 255 < TABLE` the compiler drops every
    // bounds check.
    let (t0, t1, t2, t3) = (
        &mut t0[..TABLE],
        &mut t1[..TABLE],
        &mut t2[..TABLE],
        &mut t3[..TABLE],
    );
    #[inline(always)]
    fn idx(g: u8, p: u8) -> usize {
        usize::from(g) * ROW + usize::from(p)
    }
    let gc = gt.chunks_exact(8);
    let pc = pred.chunks_exact(8);
    let (gr, pr) = (gc.remainder(), pc.remainder());
    for (g, p) in gc.zip(pc) {
        let g = u64::from_le_bytes([g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]]);
        let p = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
        let b = |x: u64, i: u32| (x >> (8 * i)) as u8;
        t0[idx(b(g, 0), b(p, 0))] += 1;
        t1[idx(b(g, 1), b(p, 1))] += 1;
        t2[idx(b(g, 2), b(p, 2))] += 1;
        t3[idx(b(g, 3), b(p, 3))] += 1;
        t0[idx(b(g, 4), b(p, 4))] += 1;
        t1[idx(b(g, 5), b(p, 5))] += 1;
        t2[idx(b(g, 6), b(p, 6))] += 1;
        t3[idx(b(g, 7), b(p, 7))] += 1;
    }
    for (&g, &p) in gr.iter().zip(pr) {
        t0[idx(g, p)] += 1;
    }
}

/// Adds the sub-histograms into `part` by kind of value, and zeroes them.
fn flush_u8(buf: &mut [u32], kinds: &[Kind; 256], part: &mut Partial) {
    let k = part.k;
    let mut row = [0u64; 256];
    for g in 0..256 {
        let r = g * ROW..g * ROW + 256;
        // Most rows are empty (only labels that occur have cells set): a vectorised OR finds them.
        let any = (0..SUBS).fold(0u32, |acc, s| {
            acc | buf[s * STRIDE..][r.clone()].iter().fold(0, |a, &c| a | c)
        });
        if any == 0 {
            continue;
        }
        row.fill(0);
        for s in 0..SUBS {
            let cells = &mut buf[s * STRIDE..][r.clone()];
            for (acc, c) in row.iter_mut().zip(cells.iter_mut()) {
                *acc += u64::from(std::mem::take(c));
            }
        }
        for (p, &c) in row.iter().enumerate() {
            if c == 0 {
                continue;
            }
            match (kinds[g], kinds[p]) {
                (Kind::Invalid, _) | (_, Kind::Invalid) => part.invalid += c,
                (Kind::Ignore, _) | (_, Kind::Ignore) => part.ignored += c,
                // A class value is below `n` and below 256, hence below `k`.
                (Kind::Class, Kind::Class) => part.counts[g * k + p] += c,
            }
        }
    }
}
