//! The plumbing shared by recallseg's CPU custom ops (candle `CustomOp1/2/3` in
//! `recallseg-models` and the fused kernels of `recallseg-losses`), so that each op keeps only
//! its own arithmetic:
//!
//! * [`storage`]: contiguous slices (`f32`, and the `u8`/`u32`/`i64` label types) out of a
//!   candle [`candle_core::CpuStorage`] and [`candle_core::Layout`], with one error message for
//!   a wrong dtype and one for a non-contiguous layout;
//! * [`SyncPtr`]: the raw pointer parallel tasks share to write disjoint parts of one buffer;
//! * [`SavedState`]: state a forward pass leaves for its backward pass, with candle errors (never
//!   a panic) for a poisoned lock or a missing state;
//! * [`simd`]: run-time selection of the AVX2 + FMA build of a kernel ([`dispatch!`]);
//! * [`fused`]: the adapter that turns a fused loss over `(f32 logits, integer labels)` into a
//!   candle `CustomOp2` ([`fused::FusedOp`]).
//!
//! Nothing here changes what a kernel computes: the accessors only borrow, and the dispatch
//! picks between two builds of the same code, which produce the same bits.

pub mod fused;
mod saved;
pub mod simd;
pub mod storage;
mod sync_ptr;

pub use saved::SavedState;
pub use sync_ptr::SyncPtr;
