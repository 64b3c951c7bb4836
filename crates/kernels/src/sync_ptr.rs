//! A raw pointer that parallel tasks share to write disjoint parts of one buffer.

/// A raw pointer shared by parallel tasks (rayon closures) that each write a disjoint part of
/// one buffer, e.g. one pixel block, one channel or one tile each.
///
/// Creating one is safe; every access through it is `unsafe`, and the caller's `// SAFETY:`
/// comment must say why no other running task touches the same elements and why the buffer
/// outlives the parallel section. Inside closures, read the pointer through the methods
/// ([`SyncPtr::get`], [`SyncPtr::add`]) rather than the field: edition 2021 closures capture
/// the fields they name, and a bare `*mut T` is neither `Send` nor `Sync` (the closure would not
/// compile).
#[derive(Debug)]
pub struct SyncPtr<T = f32>(
    /// The pointer (construct with `SyncPtr(ptr)` or [`SyncPtr::new`]).
    pub *mut T,
);

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SyncPtr<T> {}

// SAFETY: the wrapper only carries the address; every write through it is an `unsafe` access
// whose caller guarantees that the tasks write disjoint elements of a buffer that outlives the
// parallel section, so sending it to another thread moves no ownership and creates no aliasing
// writes. `T: Send` because values of `T` are written from other threads.
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: shared references only copy the pointer; the writes through it are disjoint, as for
// `Send` above.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// Wraps `ptr` (typically `buffer.as_mut_ptr()`).
    #[inline(always)]
    pub fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// The pointer.
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }

    /// The pointer moved by `count` elements.
    ///
    /// # Safety
    /// As for `<*mut T>::add`: the result must stay inside (or one past the end of) the
    /// allocation the pointer came from.
    #[inline(always)]
    pub unsafe fn add(self, count: usize) -> *mut T {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe { self.0.add(count) }
    }
}

#[cfg(test)]
mod tests {
    use super::SyncPtr;

    #[test]
    fn tasks_write_disjoint_halves() {
        let mut v = vec![0f32; 8];
        let p = SyncPtr::new(v.as_mut_ptr());
        std::thread::scope(|s| {
            for half in 0..2 {
                s.spawn(move || {
                    for i in 0..4 {
                        // SAFETY: thread `half` alone writes elements 4·half .. 4·half + 4 of
                        // `v`, which outlives the scope.
                        unsafe { *p.add(4 * half + i) = (half * 4 + i) as f32 };
                    }
                });
            }
        });
        assert_eq!(v, [0., 1., 2., 3., 4., 5., 6., 7.]);
    }
}
