//! Which public types may cross threads: every handle is `Send` and `Sync`, so it can be
//! moved into a thread or shared by reference (as tokio's `tests/async_send_sync.rs`
//! pins for its types). Guards of process-shared locks stay on the thread that took
//! them. Checked when the file compiles: a change that breaks one fails the build.
#![allow(dead_code)]

mod watchdog;

use multiproc::manager::{
    BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy, QueueProxy,
    RLockProxy, SemaphoreProxy, SetProxy, ValueProxy,
};
use multiproc::sched::{Clock, JobEvent, ManualClock};
use multiproc::*;

fn send_sync<T: Send + Sync>() {}

/// Naming `<T as AmbiguousIfSend<_>>::some_item` compiles only if exactly one impl
/// applies, that is when `T` is not `Send` (the trick tokio's `async_send_sync` uses).
trait AmbiguousIfSend<A> {
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

macro_rules! assert_not_send {
    ($t:ty) => {
        let _ = <$t as AmbiguousIfSend<_>>::some_item;
    };
}

/// A `T` for the generic handles: plain data.
type D = u64;

#[test]
fn process_handles() {
    send_sync::<JoinHandle<D>>();
    send_sync::<ChildProcess>();
    send_sync::<CurrentProcess>();
    send_sync::<ParentProcess>();
    send_sync::<Builder>();
    send_sync::<Init>();
}

#[test]
fn ipc_handles() {
    send_sync::<Sender<D>>();
    send_sync::<Receiver<D>>();
    send_sync::<Connection<D, D>>();
    send_sync::<Queue<D>>();
    send_sync::<JoinableQueue<D>>();
}

#[test]
fn sync_handles() {
    send_sync::<Lock>();
    send_sync::<RLock>();
    send_sync::<Semaphore>();
    send_sync::<BoundedSemaphore>();
    send_sync::<Event>();
    send_sync::<Condition>();
    send_sync::<Barrier>();
    send_sync::<Value<D>>();
    send_sync::<Array<D>>();
    send_sync::<SharedMemory>();
    send_sync::<SemaphorePermit<'static>>();
}

/// A process-shared lock is owned by the thread that took it (its identity is in the
/// lock word), so its guard cannot move to another thread, as std's `MutexGuard`.
#[test]
fn lock_guards_stay_on_their_thread() {
    assert_not_send!(LockGuard<'static>);
    assert_not_send!(RLockGuard<'static>);
    assert_not_send!(ValueGuard<'static, D>);
    assert_not_send!(ArrayGuard<'static, D>);
    // A managed lock's holder is the thread that took it, as the server knows it.
    assert_not_send!(multiproc::manager::ProxyGuard<'static>);
    assert_not_send!(multiproc::manager::ConditionGuard<'static>);
}

#[test]
fn pool_handles() {
    send_sync::<Pool>();
    send_sync::<PoolBuilder>();
    send_sync::<ThreadPool>();
    send_sync::<ThreadPoolBuilder>();
    send_sync::<Task<D>>();
    send_sync::<RetryPolicy>();
    send_sync::<TaskOptions>();
    send_sync::<Failure>();
    send_sync::<AsCompleted<D>>();
    send_sync::<Timer>();
}

#[test]
fn manager_handles() {
    send_sync::<Manager>();
    send_sync::<manager::Server>();
    send_sync::<DictProxy<D, D>>();
    send_sync::<ListProxy<D>>();
    send_sync::<SetProxy<D>>();
    send_sync::<QueueProxy<D>>();
    send_sync::<ValueProxy<D>>();
    send_sync::<LockProxy>();
    send_sync::<RLockProxy>();
    send_sync::<SemaphoreProxy>();
    send_sync::<EventProxy>();
    send_sync::<ConditionProxy>();
    send_sync::<BarrierProxy>();
}

#[test]
fn background_handles() {
    send_sync::<Scheduler>();
    send_sync::<Job>();
    send_sync::<JobEvent>();
    send_sync::<Clock>();
    send_sync::<ManualClock>();
    send_sync::<Supervisor>();
    send_sync::<ChildSpec>();
    send_sync::<Daemon>();
}

#[test]
fn errors_travel() {
    send_sync::<SpawnError>();
    send_sync::<ProcessError>();
    send_sync::<TaskError>();
    send_sync::<PoolError>();
    send_sync::<ManagerError>();
    send_sync::<ScheduleError>();
    send_sync::<SupervisorError>();
    send_sync::<ShmError>();
    send_sync::<CodecError>();
    send_sync::<RecvError>();
    send_sync::<SendError<D>>();
}
