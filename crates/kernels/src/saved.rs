//! State that a custom op's forward pass leaves for its backward pass (or for the code that ran
//! the op).

use candle_core::{Error, Result};
use std::sync::{Mutex, MutexGuard};

/// A cell for state a custom op's forward pass leaves for its backward pass: a kept softmax,
/// max-pool winners, batch statistics, the coefficients of a loss's gradient.
///
/// It is a `Mutex<Option<T>>` whose accessors return candle errors instead of panicking: a
/// poisoned lock (a panic in another pass) and a missing state (a backward pass without its
/// forward pass, or after another backward pass consumed the state) both become an
/// [`candle_core::Error`] naming the state's type. The lock is held only while an accessor runs,
/// so keep the work inside [`SavedState::with`] to what needs the state.
#[derive(Debug)]
pub struct SavedState<T>(Mutex<Option<T>>);

impl<T> Default for SavedState<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SavedState<T> {
    /// An empty cell (the forward pass fills it with [`SavedState::put`]).
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// A cell that already holds `value`.
    pub const fn holding(value: T) -> Self {
        Self(Mutex::new(Some(value)))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<T>>> {
        self.0.lock().map_err(|_| {
            Error::Msg(format!(
                "saved state `{}`: the lock was poisoned by a panic in another pass",
                std::any::type_name::<T>()
            ))
        })
    }

    fn missing() -> Error {
        Error::Msg(format!(
            "saved state `{}`: nothing saved (a backward pass before its forward pass, or after \
             another backward pass consumed the state)",
            std::any::type_name::<T>()
        ))
    }

    /// Stores `value`, replacing what was there.
    ///
    /// # Errors
    /// A poisoned lock.
    pub fn put(&self, value: T) -> Result<()> {
        *self.lock()? = Some(value);
        Ok(())
    }

    /// Removes and returns the state.
    ///
    /// # Errors
    /// A poisoned lock, or nothing saved.
    pub fn take(&self) -> Result<T> {
        self.lock()?.take().ok_or_else(Self::missing)
    }

    /// Removes and returns the state if there is one (for optional state, e.g. a kept softmax
    /// that a second backward pass recomputes instead).
    ///
    /// # Errors
    /// A poisoned lock.
    pub fn take_if_saved(&self) -> Result<Option<T>> {
        Ok(self.lock()?.take())
    }

    /// Runs `f` on the state, left in place, under the lock.
    ///
    /// # Errors
    /// A poisoned lock, or nothing saved.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let mut guard = self.lock()?;
        let state = guard.as_mut().ok_or_else(Self::missing)?;
        Ok(f(state))
    }

    /// A clone of the state.
    ///
    /// # Errors
    /// A poisoned lock, or nothing saved.
    pub fn cloned(&self) -> Result<T>
    where
        T: Clone,
    {
        self.with(|v| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::SavedState;

    #[test]
    fn put_with_take() {
        let s = SavedState::new();
        assert!(s.take_if_saved().unwrap().is_none());
        let e = s.with(|v: &mut Vec<u8>| v.len()).unwrap_err().to_string();
        assert!(e.contains("nothing saved") && e.contains("Vec<u8>"), "{e}");
        s.put(vec![1u8, 2]).unwrap();
        assert_eq!(s.with(|v| v.len()).unwrap(), 2);
        assert_eq!(s.cloned().unwrap(), [1, 2]);
        assert_eq!(s.take().unwrap(), [1, 2]);
        assert!(s.take().is_err());
        assert_eq!(SavedState::holding(3).take().unwrap(), 3);
    }

    #[test]
    fn a_poisoned_lock_is_an_error_not_a_panic() {
        let s = SavedState::holding(1u32);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.with(|_| panic!("a pass panics")).unwrap();
        }));
        let e = s.put(2).unwrap_err().to_string();
        assert!(e.contains("poisoned"), "{e}");
        assert!(s.take().is_err());
    }
}
