//! The one locking helper every stage uses.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, ignoring poisoning: every critical section in the pipeline is a plain copy or a
/// push that leaves the data consistent even if a panic unwound through it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
