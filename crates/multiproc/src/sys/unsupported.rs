//! The backend for platforms multiproc does not support yet: everything compiles, and
//! anything that would start or manage a process fails with an `Unsupported` error.
//! `Builder::spawn` checks [`SUPPORTED`] first, so users see `SpawnError::Unsupported`.
#![allow(dead_code, unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sys::{
    Caller, CgroupKind, ContextCaller, Entry, FdKind, Forked, NotSingleThreaded, Readiness,
    RlimitKind, Signature, WaitStatus,
};

/// Processes cannot be started here.
pub(crate) const SUPPORTED: bool = false;

const WHY: &str = "multiproc supports Linux only so far";

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, WHY)
}

#[cfg(unix)]
pub(crate) use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

#[cfg(not(unix))]
mod no_fds {
    use std::convert::Infallible;
    use std::marker::PhantomData;

    /// No descriptors exist on this platform: the type has no values.
    #[derive(Debug)]
    pub(crate) struct OwnedFd(pub(crate) Infallible);

    /// No descriptors exist on this platform: the type has no values.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct BorrowedFd<'a>(pub(crate) Infallible, PhantomData<&'a ()>);

    pub(crate) trait AsFd {
        fn as_fd(&self) -> BorrowedFd<'_>;
    }

    impl AsFd for OwnedFd {
        fn as_fd(&self) -> BorrowedFd<'_> {
            match self.0 {}
        }
    }

    impl AsFd for BorrowedFd<'_> {
        fn as_fd(&self) -> BorrowedFd<'_> {
            *self
        }
    }
}
#[cfg(not(unix))]
pub(crate) use no_fds::{AsFd, BorrowedFd, OwnedFd};

pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

// POSIX's traditional numbers, for `Signal`'s constants; nothing is ever sent here.
pub(crate) const SIGINT: i32 = 2;
pub(crate) const SIGHUP: i32 = 1;
pub(crate) const SIGQUIT: i32 = 3;
pub(crate) const SIGPIPE: i32 = 13;
pub(crate) const SIGCHLD: i32 = 17;
pub(crate) const SIGILL: i32 = 4;
pub(crate) const SIGABRT: i32 = 6;
pub(crate) const SIGBUS: i32 = 7;
pub(crate) const SIGFPE: i32 = 8;
pub(crate) const SIGKILL: i32 = 9;
pub(crate) const SIGSEGV: i32 = 11;
pub(crate) const SIGTERM: i32 = 15;

#[derive(Debug)]
pub(crate) struct NotInImage;

impl std::fmt::Display for NotInImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("processes are not supported on this platform")
    }
}

#[derive(Debug)]
pub(crate) struct SameImage(std::convert::Infallible);

pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Err(unsupported())
}
pub(crate) fn send_room(_: BorrowedFd<'_>) -> io::Result<usize> {
    Err(unsupported())
}
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Err(unsupported())
}
pub(crate) fn dev_null() -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn dup(_: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn dup_stdio(_: u8) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
pub(crate) fn send_with_fds(
    _: BorrowedFd<'_>,
    _: &[io::IoSlice<'_>],
    _: &[BorrowedFd<'_>],
    _: bool,
) -> io::Result<usize> {
    Err(unsupported())
}
pub(crate) fn recv_with_fds(
    _: BorrowedFd<'_>,
    _: &mut [u8],
    _: &mut Vec<OwnedFd>,
    _: bool,
) -> io::Result<usize> {
    Err(unsupported())
}
pub(crate) fn recv_keeping_bytes(
    _: BorrowedFd<'_>,
    _: &mut [u8],
    _: &mut Vec<OwnedFd>,
    _: bool,
) -> io::Result<(usize, bool)> {
    Err(unsupported())
}
pub(crate) fn descriptors_lost(_: &io::Error) -> bool {
    false
}
pub(crate) fn lost_descriptors_error() -> io::Error {
    unsupported()
}
pub(crate) fn wait_readable(
    _: &[BorrowedFd<'_>],
    _: Option<Instant>,
) -> io::Result<Vec<Readiness>> {
    Err(unsupported())
}
pub(crate) fn too_many_in_flight(_: &io::Error) -> bool {
    false
}

pub(crate) fn poll_now(_: BorrowedFd<'_>) -> io::Result<Readiness> {
    Err(unsupported())
}
pub(crate) async fn readable_any(_: &[BorrowedFd<'_>], _: Instant) -> io::Result<()> {
    Err(unsupported())
}
/// Nothing can be watched here.
#[derive(Debug)]
pub(crate) struct Watched(std::convert::Infallible);
impl Watched {
    pub(crate) fn new(_: BorrowedFd<'_>) -> io::Result<Self> {
        Err(unsupported())
    }
    pub(crate) fn poll_readable(
        &self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.0 {}
    }
}
pub(crate) fn read(_: BorrowedFd<'_>, _: &mut [u8]) -> io::Result<usize> {
    Err(unsupported())
}
pub(crate) fn write_all(_: BorrowedFd<'_>, _: &[u8]) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn set_cloexec(_: BorrowedFd<'_>, _: bool) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn renumber(_: Vec<OwnedFd>, _: i32) -> io::Result<Vec<OwnedFd>> {
    Err(unsupported())
}
pub(crate) fn keep_only(_: Vec<OwnedFd>, _: i32) -> io::Result<Vec<OwnedFd>> {
    Err(unsupported())
}
pub(crate) fn leave_open(fd: OwnedFd) {
    // Nothing can be open here (no process is ever started); dropping closes it.
    drop(fd);
}
pub(crate) fn try_lock_file(_: &std::fs::File) -> io::Result<bool> {
    Err(unsupported())
}
pub(crate) fn redirect_stdio(
    _: &std::fs::File,
    _: &std::fs::File,
    _: &std::fs::File,
) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn set_create_mode(_: &mut std::fs::OpenOptions, _: u32) {}
pub(crate) fn path_from_bytes(bytes: Vec<u8>) -> std::path::PathBuf {
    String::from_utf8_lossy(&bytes).into_owned().into()
}
pub(crate) fn file_fd(_file: std::fs::File) -> OwnedFd {
    #[cfg(unix)]
    {
        _file.into()
    }
    #[cfg(not(unix))]
    {
        unreachable!("spawning fails before files are converted on this platform")
    }
}
#[allow(clippy::type_complexity)]
pub(crate) fn child_stdio(
    fds: [Option<OwnedFd>; 3],
) -> (
    Option<std::process::ChildStdin>,
    Option<std::process::ChildStdout>,
    Option<std::process::ChildStderr>,
) {
    #[cfg(unix)]
    {
        let [i, o, e] = fds;
        (i.map(Into::into), o.map(Into::into), e.map(Into::into))
    }
    #[cfg(not(unix))]
    {
        let [i, o, e] = fds;
        (
            i.map(|fd| match fd.0 {}),
            o.map(|fd| match fd.0 {}),
            e.map(|fd| match fd.0 {}),
        )
    }
}

pub(crate) fn getpid() -> u32 {
    std::process::id()
}
pub(crate) fn is_main_thread() -> bool {
    true
}
pub(crate) fn child_pidfd(_: u32) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn send_signal(_: BorrowedFd<'_>, _: i32) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn try_reap(_: BorrowedFd<'_>) -> io::Result<Option<WaitStatus>> {
    Err(unsupported())
}
pub(crate) fn set_name(_: &str) {}
pub(crate) fn set_cmdline(_: &str) {}
pub(crate) fn thread_count() -> Option<usize> {
    None
}
pub(crate) fn kill_me_with_parent(_: u32) -> io::Result<bool> {
    Err(unsupported())
}
pub(crate) fn clear_parent_death_signal() -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn lead_process_group() -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn make_group_leader(_: u32) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn kill_self() -> ! {
    std::process::abort()
}
/// A signal's disposition (none exist here).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Disposition;
pub(crate) fn ignore_signal(_: i32) -> Disposition {
    Disposition
}
pub(crate) fn default_signal(_: i32) -> Disposition {
    Disposition
}
pub(crate) fn signal_is_default(_: i32) -> bool {
    false
}
pub(crate) fn restore_signal(_: i32, _: Disposition) {}
pub(crate) fn unblock_signals(_: bool) {}
pub(crate) fn unblock_signal(_: i32) {}
/// A signal mask (none exist here).
#[derive(Clone, Copy)]
pub(crate) struct SignalMask;
pub(crate) fn block_signals(_: &[i32]) -> SignalMask {
    SignalMask
}
pub(crate) fn set_signal_mask(_: SignalMask) {}

pub(crate) fn blocks_signals() -> bool {
    false
}
pub(crate) fn leave_interrupts_to_owner() {}
pub(crate) fn signal_is_ignored(_: i32) -> bool {
    false
}
pub(crate) fn new_session() -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn set_umask(_: u32) {}
pub(crate) fn wait_child(_: u32) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn reap_adopted(_: u32) {}
pub(crate) fn reap_adopted_named(_: &str, _: std::time::Duration) {}
pub(crate) fn group_exists(_: u32) -> bool {
    false
}
pub(crate) fn process_exists(_: u32) -> bool {
    false
}
pub(crate) fn in_group(_: u32, _: u32) -> bool {
    false
}

pub(crate) fn group_alive(_: u32) -> bool {
    false
}
pub(crate) fn process_state(_: u32) -> Option<char> {
    None
}
pub(crate) fn signal_group(_: u32, _: i32) -> io::Result<bool> {
    Err(unsupported())
}
pub(crate) fn signal_name(_: i32) -> Option<&'static str> {
    None
}
pub(crate) fn exe_identity() -> io::Result<[u64; 6]> {
    Err(unsupported())
}
pub(crate) fn entry<C, A, R>(_: fn(A) -> R) -> Result<Entry<C::Sig>, NotInImage>
where
    C: Caller,
    A: DeserializeOwned,
    R: Serialize,
{
    Err(NotInImage)
}
pub(crate) fn entry_with_context<C, X, A, R>(_: fn(&X, A) -> R) -> Result<Entry<C::Sig>, NotInImage>
where
    C: ContextCaller,
    X: DeserializeOwned + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    Err(NotInImage)
}
pub(crate) fn call<S: Signature>(_: Entry<S>, proof: &SameImage, _: S::Input<'_>) -> S::Output {
    match proof.0 {}
}
pub(crate) fn fn_offset(_: fn()) -> Result<u64, NotInImage> {
    Err(NotInImage)
}
pub(crate) fn fn_at(_: u64, proof: &SameImage) -> fn() {
    match proof.0 {}
}
pub(crate) fn verify_image(_: &[u64; 6]) -> Result<SameImage, String> {
    Err(WHY.into())
}
pub(crate) fn take_env(_: &str) -> Option<OsString> {
    None
}
pub(crate) fn adopt_inherited_fd(_: i32) -> Option<OwnedFd> {
    None
}
pub(crate) fn inherited_fd_id(_: i32) -> Option<(u64, u64)> {
    None
}
pub(crate) fn at_exit(
    _: extern "C" fn(),
    _: extern "C" fn(std::ffi::c_int, *mut std::ffi::c_void),
) {
}
pub(crate) fn write_stderr(bytes: &[u8]) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(bytes);
}
pub(crate) fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
pub(crate) fn exit_now(code: i32) -> ! {
    std::process::exit(code)
}
pub(crate) fn fork_if_single_threaded() -> io::Result<Option<Forked>> {
    Ok(None)
}
/// # Safety
///
/// Never forks here; always an error.
pub(crate) unsafe fn fork_unchecked() -> io::Result<Forked> {
    Err(unsupported())
}
pub(crate) fn spawn_self(
    _: &str,
    _: &[(&str, &str)],
    _: &[&str],
    _: &[OwnedFd],
) -> io::Result<(u32, OwnedFd)> {
    Err(unsupported())
}
pub(crate) fn exec_self<'a>(
    _: &str,
    _: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> io::Error {
    unsupported()
}
pub(crate) fn change_env(_: &[(&[u8], Option<&[u8]>)]) -> Result<(), NotSingleThreaded> {
    Err(NotSingleThreaded)
}
pub(crate) fn memfd(_: &str, _: u64) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn sealed_memfd(_: &str, _: &[u8]) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn file_len(_: BorrowedFd<'_>) -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn size_sealed(_: BorrowedFd<'_>) -> bool {
    false
}
pub(crate) fn fully_sealed(_: BorrowedFd<'_>) -> bool {
    false
}
pub(crate) fn shared_word() -> io::Result<&'static std::sync::atomic::AtomicU64> {
    Err(unsupported())
}
pub(crate) fn pin_here() -> Option<()> {
    None
}
pub(crate) fn unpin(_: &()) -> bool {
    true
}
pub(crate) fn map_shared(
    _: BorrowedFd<'_>,
    _: usize,
    _: bool,
) -> io::Result<std::ptr::NonNull<u8>> {
    Err(unsupported())
}
pub(crate) fn map_shared_at(
    _: BorrowedFd<'_>,
    _: u64,
    _: usize,
    _: bool,
    _: bool,
) -> io::Result<std::ptr::NonNull<u8>> {
    Err(unsupported())
}
pub(crate) fn reserve(_: usize) -> io::Result<std::ptr::NonNull<u8>> {
    Err(unsupported())
}
/// # Safety
///
/// Nothing is ever reserved here; this does nothing.
pub(crate) unsafe fn map_shared_over(
    _: BorrowedFd<'_>,
    _: std::ptr::NonNull<u8>,
    _: usize,
) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn memfd_growable(_: &str, _: u64) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn grow(_: BorrowedFd<'_>, _: u64) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn punch_hole(_: BorrowedFd<'_>, _: u64, _: u64) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn shrink_sealed(_: BorrowedFd<'_>) -> bool {
    false
}
/// # Safety
///
/// Nothing is ever mapped here; this does nothing.
pub(crate) unsafe fn unmap(_: std::ptr::NonNull<u8>, _: usize) {}
pub(crate) fn shm_create(_: &str) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn shm_reserve(_: BorrowedFd<'_>, _: u64) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn file_allocated(_: BorrowedFd<'_>) -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn shm_open(_: &str) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn shm_unlink(_: &str) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn adopts_orphans() -> bool {
    false
}
pub(crate) fn fd_kind(_: BorrowedFd<'_>) -> FdKind {
    FdKind::Other
}
pub(crate) fn file_id(_: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    Err(unsupported())
}
pub(crate) fn cwd_id() -> io::Result<(u64, u64)> {
    Err(unsupported())
}
pub(crate) fn open_file_id(_: &std::fs::File) -> io::Result<(u64, u64)> {
    Err(unsupported())
}
pub(crate) fn path_id(_: &std::path::Path) -> io::Result<(u64, u64)> {
    Err(unsupported())
}
pub(crate) fn shm_unlink_if(_: &str, _: (u64, u64)) {}
pub(crate) fn prefault<T>(_: &mut [std::mem::MaybeUninit<T>]) {}
pub(crate) fn doorbell() -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn ring(_: BorrowedFd<'_>) {}
pub(crate) fn silence(_: BorrowedFd<'_>) {}
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Err(unsupported())
}
pub(crate) fn send_packet(
    _: BorrowedFd<'_>,
    _: &[io::IoSlice<'_>],
    _: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    Err(unsupported())
}
pub(crate) fn out_of_address_space(_: &io::Error) -> bool {
    false
}
pub(crate) fn out_of_descriptors(_: &io::Error) -> bool {
    false
}
pub(crate) fn room_for_descriptors(_: BorrowedFd<'_>, _: usize) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn peek_packet(_: BorrowedFd<'_>, _: &mut [u8]) -> io::Result<Option<usize>> {
    Err(unsupported())
}
pub(crate) fn wait_writable(
    _: BorrowedFd<'_>,
    _: Option<BorrowedFd<'_>>,
    _: Option<Instant>,
) -> io::Result<bool> {
    Err(unsupported())
}
pub(crate) fn futex_wait(_: &std::sync::atomic::AtomicU32, _: u32, _: Option<std::time::Duration>) {
}
pub(crate) fn futex_wake(_: &std::sync::atomic::AtomicU32, _: u32) {}
pub(crate) fn move_to_an_idle_cpu() -> Option<(usize, usize)> {
    None
}
pub(crate) fn raise_fd_limit() {}

pub(crate) fn set_fd_limit(_soft: Option<u64>) {}
pub(crate) fn reserve_fd_table(_: u64) {}
pub(crate) fn fd_limit() -> Option<u64> {
    None
}
pub(crate) fn process_id() -> u32 {
    std::process::id()
}
pub(crate) fn thread_identity() -> u64 {
    1
}
pub(crate) fn identity_stopped(_: u64) -> bool {
    false
}
pub(crate) fn identity_stopped_by_signal(_: u64) -> bool {
    false
}
pub(crate) fn identity_in_process(_: u64, _: u32) -> bool {
    false
}
#[cfg(debug_assertions)]
pub(crate) fn stop_self() {}
pub(crate) fn identity_alive(_: u64) -> bool {
    true
}
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn process_identity() -> u64 {
    u64::from(std::process::id())
}
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn boot_id() -> String {
    String::new()
}
pub(crate) fn machine_id() -> String {
    String::new()
}
pub(crate) fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
pub(crate) fn involuntary_switches() -> Option<u64> {
    None
}

pub(crate) fn set_keepalive(_: BorrowedFd<'_>, _: std::time::Duration) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn listen_backlog(_: BorrowedFd<'_>) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn peer_credentials(_: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    Err(unsupported())
}
#[cfg(unix)]
pub(crate) fn abstract_socket_addr(_: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(unsupported())
}

pub(crate) const SIGXCPU: i32 = 24;
pub(crate) const EMFILE: i32 = 24;
pub(crate) fn set_rlimit(_: RlimitKind, _: u64, _: bool) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn cpu_time_used() -> std::time::Duration {
    std::time::Duration::ZERO
}
pub(crate) fn address_space_used() -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn memory_cgroup_home() -> io::Result<(std::path::PathBuf, CgroupKind)> {
    Err(unsupported())
}
pub(crate) fn make_memory_cgroup(_: &std::path::Path, _: CgroupKind, _: u64) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn join_cgroup(_: &std::path::Path) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn oom_kills(_: &std::path::Path, _: CgroupKind) -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn remove_cgroup(_: &std::path::Path) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn code_on_huge_pages() -> io::Result<usize> {
    Ok(0)
}

/// A process's users and groups (none here).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ids;
pub(crate) fn own_ids() -> Option<Ids> {
    None
}
pub(crate) fn become_ids(_: &Ids, _: &Ids) -> io::Result<()> {
    Err(unsupported())
}
