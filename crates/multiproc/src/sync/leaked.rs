//! Guards of shared data that a thread of this process leaked before it ended.
//!
//! A lock whose owner died is taken over ([`raw`](super::raw)): the owner can no longer
//! touch what the lock guards. That holds for a process that died, and for a thread
//! that ended holding a guard it unwound past, which Rust cannot do: a thread ends
//! holding a guard only if the guard was leaked (`mem::forget`, `Box::leak`), and then
//! a reference to the data it guards (`&mut T` from a `ValueGuard`) may outlive the
//! thread, in safe code. Taking such a lock over would hand out a second `&mut T` to
//! the same memory in this process. So each thread counts the guards of data it holds
//! (`Value`'s, `Array`'s), and one that ends with any left is recorded here: the locks
//! it holds stay held in this process, as those of a live thread that leaked a guard do
//! (and as `std`'s `Mutex` does). Other processes do not see this list: there such a
//! lock is taken over once the thread's death is seen, as they cannot tell a leak from
//! a death (their writes are then seen through the leaked reference, as any peer's
//! writes to shared memory are).
//!
//! The cost on the lock's path is a thread-local count, up and down; the record is
//! made at such a thread's exit only (a leak), and looked at only when an owner is
//! found dead.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::unpoisoned;
use crate::sys;

thread_local! {
    /// The guards of data this thread holds, and whether its exit is watched.
    static HELD: Cell<(u32, bool)> = const { Cell::new((0, false)) };
    /// Looks at [`HELD`] as the thread ends.
    static WATCH: Watch = const { Watch };
}

/// The identities of the threads of this process that ended holding guards of data.
static LEAKED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// Whether [`LEAKED`] has any: looked at first, so that the usual dead owner (another
/// process's) costs no lock.
static ANY: AtomicBool = AtomicBool::new(false);

/// A guard of data is made on this thread.
#[inline]
pub(crate) fn enter() {
    HELD.with(|h| {
        let (n, watched) = h.get();
        if !watched {
            watch();
        }
        h.set((n + 1, true));
    });
}

/// A guard of data made on this thread is dropped.
#[inline]
pub(crate) fn leave() {
    let _ = HELD.try_with(|h| {
        let (n, watched) = h.get();
        h.set((n.saturating_sub(1), watched));
    });
}

#[cold]
#[inline(never)]
fn watch() {
    // The first use registers the destructor.
    let _ = WATCH.try_with(|_| ());
}

struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        if HELD.try_with(|h| h.get().0).unwrap_or(0) > 0 {
            unpoisoned::lock(&LEAKED).push(sys::thread_identity());
            ANY.store(true, Ordering::SeqCst);
        }
    }
}

/// The list, held across a fork (`spawn_fork`) so that the child does not get it held
/// by a thread it does not have.
pub(crate) fn lock_for_fork() -> impl Sized {
    unpoisoned::lock(&LEAKED)
}

/// Whether `owner`, a thread found dead, is one of this process's that leaked a guard
/// of data: what it holds is not taken over here.
pub(crate) fn leaked_by(owner: u64) -> bool {
    ANY.load(Ordering::SeqCst) && unpoisoned::lock(&LEAKED).contains(&owner)
}
