//! The shared channel under pipes and queues; the protocol is in `README.md` here.

mod overflow;
mod ring;
#[cfg(debug_assertions)]
pub(crate) use ring::STOP_HOLDING_TAIL;
mod side;

use std::fmt;
use std::io;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::layout::ChannelHeader;
use crate::shm::segment::{Segment, View};
use crate::sync::raw::{AdaptiveSpin, spin_until};
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};
use crate::wire::codec::{self, Encoded};
use ring::{
    Head, INLINE, LINK, LockWait, Ring, SIDE, SIDE_REPAIR, SIDE_REPAIR_TASK, Slot, Tail, record_len,
};

/// Bytes of ring a channel gets unless told otherwise. Messages up to half of it travel
/// in the ring; larger ones in a memory file of their own.
pub(crate) const DEFAULT_RING: usize = 4 << 20;
/// The smallest ring accepted.
const MIN_RING: usize = 4096;
/// The largest ring accepted (a corrupt handle must not make a process map terabytes).
const MAX_RING: usize = 1 << 40;
/// How long a receiver (or a sender waiting for room) spins before it sleeps: long
/// enough to catch a reply from a peer that is running, short next to a sleep.
const SPIN: Duration = Duration::from_micros(30);
/// How long a non-blocking send or receive waits for the producers' or consumers' lock:
/// while its holder runs: one copying a message holds it for microseconds, but may be
/// preempted for a time slice or more on a busy machine. A holder seen stopped
/// (`SIGSTOP`, a debugger) ends the wait at once; one in a frozen cgroup, which `/proc`
/// shows as sleeping, not before this.
const TRY_LOCK_PATIENCE: Duration = Duration::from_millis(20);

/// How long a non-blocking call made by an async send or receive (see [`Polling`]) waits
/// for the producers' or consumers' lock while its holder runs: about the time a
/// message is copied. Longer, it would hold the executor's thread; the future waits on
/// the reactor instead (a millisecond, [`HELD_UP`]) and tries again.
const POLL_LOCK_PATIENCE: Duration = Duration::from_micros(50);

thread_local! {
    /// Set while an async send or receive makes its non-blocking call.
    static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set when a non-blocking call gave up waiting for a lock whose holder ran on.
    static LOCK_GAVE_UP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the non-blocking call of an async send or receive on this thread, for as long
/// as it lives (never across an `.await`: another task on the thread would inherit it).
pub(crate) struct Polling(());

impl Polling {
    pub(crate) fn begin() -> Polling {
        POLLING.with(|p| p.set(true));
        LOCK_GAVE_UP.with(|g| g.set(false));
        Polling(())
    }

    /// Whether the call gave up on a lock held by another thread (not a full channel:
    /// its consumers' doorbell would not ring for that).
    pub(crate) fn lock_gave_up(&self) -> bool {
        LOCK_GAVE_UP.with(std::cell::Cell::get)
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with(|p| p.set(false));
    }
}

/// Notes that a call gave up waiting for a lock (see [`Polling::lock_gave_up`]).
fn gave_up_on_lock() {
    LOCK_GAVE_UP.with(|g| g.set(true));
}

/// How to wait for the producers' or consumers' lock: a non-blocking call waits while
/// the holder runs (see [`TRY_LOCK_PATIENCE`]; [`POLL_LOCK_PATIENCE`] for an async
/// one), the others as long as they may wait.
fn lock_wait(wait: Deadline) -> LockWait {
    match wait {
        Deadline::Now if POLLING.with(std::cell::Cell::get) => {
            LockWait::UnlessStopped(POLL_LOCK_PATIENCE)
        }
        Deadline::Now => LockWait::UnlessStopped(TRY_LOCK_PATIENCE),
        _ => LockWait::Until(wait.instant()),
    }
}
/// The longest a sleeper sleeps before looking again. Doorbells are shared by every
/// sleeper of a side, and one that resets a bell can, in a narrow window, leave another
/// asleep while an item waits (the resetter takes it, or, leaving without it, rings
/// again for the others, so nothing is lost); this bounds what such a sleeper
/// oversleeps.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How long a receiver sleeps between looks at a message it cannot have yet (a producer
/// is half-way through publishing it, or another receiver holds the consumers' lock,
/// either perhaps stopped), once looking for it for [`SPIN`] did not get it.
pub(crate) const HELD_UP: Duration = Duration::from_millis(1);
/// How long a blocking receive (or a send waiting for room) first naps on a futex word
/// in the channel's header, before it sleeps on the doorbell. A nap is one system call
/// for the sleeper and one for its waker; the doorbell is three (a `ppoll` of the bell
/// and the other side's liveness pipe, a `read` to reset the bell, a `write` to ring
/// it). Both come after a look at the other side's liveness pipe (a channel whose other
/// side is all gone says so at once). What the doorbell adds is noticing at once that
/// the other side goes while the sleeper waits; a nap notices it when it ends, this much
/// later at most. Sleeps are mostly short in a conversation (a reply, a worker's next
/// task), and then the nap is all there is.
const NAP: Duration = Duration::from_millis(5);
/// How long a message for an unbounded channel whose own ring is full waits for
/// consumers to make room before it goes to an overflow segment (see
/// [`RawSender::room_soon`]).
const OVERFLOW_WAIT: Duration = Duration::from_millis(1);
/// `side_pending` for a side message that is a task (`JoinableQueue`); 1 for one that
/// is not.
const SIDE_PENDING_TASK: u64 = 2;

#[cfg(test)]
thread_local! {
    /// `OVERFLOW_WAIT` for sends from this thread: a test that needs a consumer to act
    /// within the wait makes it long enough for a loaded machine.
    static OVERFLOW_WAIT_HERE: std::cell::Cell<Duration> = const {
        std::cell::Cell::new(OVERFLOW_WAIT)
    };
}

/// How long a send to an unbounded channel whose own ring is full waits for consumers to
/// make room there (see [`RawSender::room_soon`]): `None` for a non-blocking send.
fn overflow_wait_until(wait: Deadline) -> Option<Instant> {
    #[cfg(test)]
    let overflow_wait = OVERFLOW_WAIT_HERE.with(std::cell::Cell::get);
    #[cfg(not(test))]
    let overflow_wait = OVERFLOW_WAIT;
    let until = Instant::now().checked_add(overflow_wait)?;
    match wait {
        Deadline::Now => None,
        _ => Some(wait.instant().map_or(until, |d| d.min(until))),
    }
}

/// When a nap that starts now ends, for a wait that ends at `wait`.
fn nap_until(wait: Deadline) -> Instant {
    let end = Instant::now() + NAP;
    wait.instant().map_or(end, |d| d.min(end))
}

pub(crate) use crate::deadline::Deadline;

/// Why a send did not happen.
#[derive(Debug)]
pub(crate) enum SendFail {
    /// Full, and not allowed to wait (long enough).
    Full,
    /// Every receiver is gone.
    Disconnected,
    Io(io::Error),
}

/// Why a receive returned nothing.
#[derive(Debug)]
pub(crate) enum RecvFail {
    /// Empty, and not allowed to wait (long enough).
    Empty,
    /// Empty, and every sender is gone.
    Disconnected,
    /// A message sent apart from the ring is not what the protocol says: another
    /// process broke it. It is taken off the socket, and the next receive skips its
    /// record. (A ring that is not what the protocol says is an `Io` error of kind
    /// `InvalidData`: nothing past it can be read.)
    Broken(String),
    Io(io::Error),
}

/// A message as it arrives: in an owned buffer, or mapped from shared memory.
#[derive(Debug)]
pub(crate) enum Payload {
    Owned(Vec<u8>),
    Mapped(View),
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Mapped(m) => m.bytes(),
        }
    }
}

/// A received message.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) bytes: Payload,
    pub(crate) fds: Vec<OwnedFd>,
}

/// What one process holds of a channel: the mapped segment and the descriptors every
/// handle needs.
struct Core {
    seg: Segment,
    ring_len: u64,
    max_items: u64,
    /// An unbounded channel: a full ring overflows into segments of the same file
    /// (`overflow.rs`).
    growable: bool,
    /// The overflow segments this process's producers and consumers last used, mapped.
    write_map: Mutex<overflow::Mapped>,
    read_map: Mutex<overflow::Mapped>,
    /// Producers ring it when consumers sleep.
    recv_bell: OwnedFd,
    /// Consumers ring it when producers sleep.
    send_bell: OwnedFd,
    /// Both ends of the side socket (any handle may send or receive on it).
    side_tx: OwnedFd,
    side_rx: OwnedFd,
    /// Read ends of the liveness pipes: they hang up when every sender (receiver) is
    /// gone.
    senders: OwnedFd,
    receivers: OwnedFd,
    /// Sends through this process's handles since the kernel was last asked whether
    /// receivers are gone: counted per channel (counted per thread, a thread that sent
    /// on two channels in turn had every look fall on the same one).
    sends: AtomicU32,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("ring_len", &self.ring_len)
            .field("max_items", &self.max_items)
            .finish_non_exhaustive()
    }
}

/// What `try_take` took out of the ring.
enum Taken {
    /// Copied into this thread's scratch buffer (taken out of its cell meanwhile).
    Inline(Vec<u8>),
    Side(Received),
}

/// The write end of a liveness pipe, shared by the handles of one side in a process. A
/// receiver's token also holds one count in the header's `receivers`, which belongs to
/// the process that made the token: a copy a forked child inherits and drops gives
/// nothing back, nor was it counted (a count of none is therefore checked with the
/// kernel, whose pipe the child's copy holds open).
#[derive(Debug)]
struct Token {
    fd: OwnedFd,
    counted: Option<Arc<Core>>,
    pid: u32,
}

impl Token {
    fn sender(fd: OwnedFd) -> Arc<Self> {
        Arc::new(Token {
            fd,
            counted: None,
            pid: sys::process_id(),
        })
    }

    /// A receiver's token, taking over one count (made by whoever created or sent it).
    fn receiver(fd: OwnedFd, core: &Arc<Core>) -> Arc<Self> {
        Arc::new(Token {
            fd,
            counted: Some(Arc::clone(core)),
            pid: sys::process_id(),
        })
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(core) = &self.counted
            && self.pid == sys::process_id()
        {
            core.header().receivers.fetch_sub(1, SeqCst);
        }
    }
}

/// The sending side of a channel, untyped.
#[derive(Clone, Debug)]
pub(crate) struct RawSender {
    core: Arc<Core>,
    _token: Arc<Token>,
}

/// The receiving side of a channel, untyped.
#[derive(Clone, Debug)]
pub(crate) struct RawReceiver {
    core: Arc<Core>,
    _token: Arc<Token>,
    /// How a receive spins before it yields between looks, if not as [`spin_until`]
    /// does (this handle and its clones only; it does not travel).
    adaptive: Option<Arc<AdaptiveSpin>>,
}

#[cfg(test)]
impl RawReceiver {
    /// Writes `bytes` into the channel's own ring at `at`, as another process may.
    pub(crate) fn scribble(&self, at: usize, bytes: &[u8]) {
        self.core.seg.write(ChannelHeader::RING_OFFSET + at, bytes);
    }
}

/// A new channel with a ring of `ring` bytes holding at most `max_items` messages.
pub(crate) fn channel(ring: usize, max_items: Option<u64>) -> io::Result<(RawSender, RawReceiver)> {
    make(ring, max_items, false)
}

/// A new unbounded channel: a ring of `ring` bytes (rounded up to whole pages) that
/// overflows into segments of the same memory file, so a send never waits for room
/// (a blocking one gives consumers [`OVERFLOW_WAIT`] to make some in the ring first).
pub(crate) fn unbounded(ring: usize) -> io::Result<(RawSender, RawReceiver)> {
    make(ring, None, true)
}

fn make(
    ring: usize,
    max_items: Option<u64>,
    growable: bool,
) -> io::Result<(RawSender, RawReceiver)> {
    let mut ring_len = ring.clamp(MIN_RING, MAX_RING).next_multiple_of(8);
    let len = ChannelHeader::RING_OFFSET + ring_len;
    let seg = if growable {
        // Segments are mapped one by one: each starts on a page.
        ring_len = ring_len.next_multiple_of(overflow::PAGE);
        Segment::create_growable("multiproc-queue", ChannelHeader::RING_OFFSET + ring_len)?
    } else {
        Segment::create("multiproc-channel", len)?
    };
    let h: &ChannelHeader = seg.at(0);
    h.ring_len.store(ring_len as u64, Relaxed);
    h.max_items
        .store(max_items.unwrap_or(u64::MAX).max(1), Relaxed);
    h.receivers.store(1, Relaxed);
    h.growable.store(u64::from(growable), Relaxed);
    h.magic.store(ChannelHeader::MAGIC, Release);
    let (side_rx, side_tx) = sys::packet_pair()?;
    let (senders, sender_token) = sys::pipe()?;
    let (receivers, receiver_token) = sys::pipe()?;
    let core = Arc::new(Core {
        ring_len: ring_len as u64,
        max_items: max_items.unwrap_or(u64::MAX).max(1),
        growable,
        write_map: Mutex::default(),
        read_map: Mutex::default(),
        seg,
        recv_bell: sys::doorbell()?,
        send_bell: sys::doorbell()?,
        side_tx,
        side_rx,
        senders,
        receivers,
        sends: AtomicU32::new(0),
    });
    Ok((
        RawSender {
            core: Arc::clone(&core),
            _token: Token::sender(sender_token),
        },
        RawReceiver {
            _token: Token::receiver(receiver_token, &core),
            core,
            adaptive: None,
        },
    ))
}

impl Core {
    fn header(&self) -> &ChannelHeader {
        self.seg.at(0)
    }

    /// The channel's own ring.
    fn ring(&self) -> Ring<'_> {
        let h = self.header();
        Ring::new(
            &self.seg,
            ChannelHeader::RING_OFFSET,
            self.ring_len,
            (&h.produced.0, &h.consumed.0),
            h,
        )
    }

    /// Whether a message is published and not taken (in any ring).
    fn has_data(&self) -> bool {
        if self.growable {
            let h = self.header();
            h.produced.0.items.load(Acquire) != h.consumed.0.items.load(Acquire)
        } else {
            self.ring().has_data()
        }
    }

    /// Runs `write` on room for a record of `len` payload bytes in the ring producers
    /// write to (in an unbounded channel, moving on to an overflow segment when it is
    /// full). `Ok(None)`: no room (a bounded channel is full).
    fn write_slot<R>(
        &self,
        tail: &mut Tail<'_>,
        len: usize,
        may_overflow: bool,
        write: impl FnOnce(Slot<'_, '_>) -> R,
    ) -> io::Result<Option<R>> {
        if !self.repair(tail)? {
            return Ok(None);
        }
        self.reserve_and_write(tail, len, may_overflow, write)
    }

    /// [`write_slot`](Self::write_slot) without the repair.
    fn reserve_and_write<R>(
        &self,
        tail: &mut Tail<'_>,
        len: usize,
        may_overflow: bool,
        write: impl FnOnce(Slot<'_, '_>) -> R,
    ) -> io::Result<Option<R>> {
        if self.growable {
            return self.write_growable(tail, len, may_overflow, write);
        }
        Ok(self
            .ring()
            .reserve(tail, len, self.max_items, 0, Some(0))?
            .map(write))
    }

    /// Under the producers' lock, before anything else: repairs what a producer that
    /// died holding it left. Its publish or move between rings is finished, if it was
    /// in one (the lock was taken over); and a side message whose number it took and
    /// whose record it did not publish gets a record now (`SIDE_REPAIR`): the message
    /// comes through if it was sent (its descriptors stayed open on the side socket,
    /// until a later side message's receive dropped it, for as long as none came: a
    /// reply channel's sender inside it kept that channel's receiver from ever seeing
    /// `Disconnected`), and the record is passed over if it was not. Whether nothing is
    /// left to repair: a bounded channel without room for the record (the smallest a
    /// side message has, so only when a publish since took the room: the dead
    /// producer's own, which the record then repeats) leaves it to the next holder,
    /// and the caller writes nothing meanwhile (a side message of its own would take
    /// the next number, and the receive that reached it would drop the one before as
    /// an orphan).
    fn repair(&self, tail: &mut Tail<'_>) -> io::Result<bool> {
        if tail.took_over {
            if self.growable {
                self.finish_dead_producer(tail)?;
            } else {
                self.ring().finish_publish(tail);
            }
        }
        let p = &self.header().produced.0;
        let pending = p.side_pending.load(Acquire);
        if pending == 0 {
            return Ok(true);
        }
        let id = p.next_side_id.load(Relaxed).wrapping_sub(1);
        let task = pending == SIDE_PENDING_TASK;
        let kind = if task { SIDE_REPAIR_TASK } else { SIDE_REPAIR };
        let published = self.reserve_and_write(tail, 8, true, |mut slot| {
            slot.payload().copy_from_slice(&id.to_le_bytes());
            slot.publish(kind, task);
        })?;
        if published.is_none() {
            return Ok(false);
        }
        p.side_pending.store(0, Release);
        tracing::debug!(
            id,
            "published the record of a side message whose producer died"
        );
        // Its receivers learn of it now, whatever becomes of the send that repaired it
        // (one that finds no room for its own message next waits).
        self.wake_receivers();
        Ok(true)
    }

    /// Whether a producer that died may have left work for the next holder of the
    /// producers' lock: a publish (its log is written), or a side message's record.
    fn repair_due(&self) -> bool {
        let p = &self.header().produced.0;
        p.publishing_tail.load(Acquire) != 0 || p.side_pending.load(Acquire) != 0
    }

    /// The payload of the ring record that keeps the place of a side message of
    /// `bytes` bytes: its id (8 bytes) and, in a bounded channel, room for as many of its
    /// bytes as half the ring holds. The side socket's kernel buffer counts messages (a
    /// few hundred), not the sizes of the memory files they carry, so without that
    /// room a pipe whose receiver stopped reading took hundreds of 16 MiB messages
    /// (gigabytes of shared memory) before a send waited; now a bounded channel holds at
    /// most two messages larger than half its ring (an unbounded one is unbounded).
    fn side_record_len(&self, bytes: usize) -> usize {
        if self.growable {
            return 8;
        }
        let most = usize::try_from((self.ring_len / 2).saturating_sub(ring::HEADER) / 8 * 8)
            .unwrap_or(usize::MAX);
        bytes.min(most).max(8)
    }

    /// After publishing: wakes a napping receiver and rings the receivers' bell if one
    /// sleeps. A receiver going to sleep counts itself, then looks at `tail`; we
    /// published `tail`, then look at the counts (both sequentially consistent), so one
    /// of us sees the other.
    fn wake_receivers(&self) {
        fence(SeqCst);
        let s = &self.header().sleepers.0;
        wake_nappers(&s.recv_nappers, &s.recv_seq, 1);
        if s.receivers.load(SeqCst) > 0 {
            sys::ring(self.recv_bell.as_fd());
        }
    }

    /// After consuming: the same for the senders.
    fn wake_senders(&self) {
        fence(SeqCst);
        let s = &self.header().sleepers.0;
        wake_nappers(&s.send_nappers, &s.send_seq, u32::MAX);
        if s.senders.load(SeqCst) > 0 {
            sys::ring(self.send_bell.as_fd());
        }
    }

    /// One task marked done that nobody had: its record was passed over (see
    /// [`Core::repair`]).
    fn task_given_up(&self) {
        let h = self.header();
        h.tasks_done.fetch_add(1, SeqCst);
        wake_joiners_if_done(h);
    }

    /// Items waiting (an estimate while others work).
    fn len(&self) -> usize {
        let h = self.header();
        let put = h.produced.0.items.load(Acquire);
        let got = h.consumed.0.items.load(Acquire);
        put.saturating_sub(got) as usize
    }

    /// Whether every holder of the other end of this liveness pipe is gone.
    fn all_gone(pipe: &OwnedFd) -> bool {
        matches!(sys::poll_now(pipe.as_fd()), Ok(r) if r.hangup)
    }

    /// Naps on the futex word `seq`, counted in `nappers`, until `ready()` (looked at
    /// after counting in), a waker bumps the word, or `until`. True if `ready()` was
    /// true at once or a waker bumped the word meanwhile.
    fn nap(nappers: &AtomicU32, seq: &AtomicU32, until: Instant, ready: impl Fn() -> bool) -> bool {
        let seen = seq.load(SeqCst);
        let counted = Napping::count(nappers);
        let ready_now = ready();
        if !ready_now {
            nap_on(seq, seen, until);
        }
        drop(counted);
        ready_now || seq.load(SeqCst) != seen
    }

    /// Sleeps on a doorbell until it rings, the other side is all gone, the wait ends,
    /// or `MAX_SLEEP` passes.
    fn sleep(&self, bell: &OwnedFd, other_side: &OwnedFd, wait: Deadline) -> io::Result<()> {
        let cap = Instant::now() + MAX_SLEEP;
        let until = wait.instant().map_or(cap, |d| d.min(cap));
        sys::wait_readable(&[bell.as_fd(), other_side.as_fd()], Some(until))?;
        sys::silence(bell.as_fd());
        Ok(())
    }
}

/// Sleeps on the futex word `seq` while it holds `seen`, until `until` at most.
fn nap_on(seq: &AtomicU32, seen: u32, until: Instant) {
    if let Some(left) = until.checked_duration_since(Instant::now()) {
        sys::futex_wait(seq, seen, Some(left));
    }
}

/// A thread counted in a count of nappers (see [`Core::nap`]) until dropped.
struct Napping<'a>(&'a AtomicU32);

impl<'a> Napping<'a> {
    fn count(nappers: &'a AtomicU32) -> Self {
        nappers.fetch_add(1, SeqCst);
        Napping(nappers)
    }
}

impl Drop for Napping<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Wakes up to `n` threads napping on `seq` (see [`Core::nap`]), if `nappers` counts
/// one. Receivers are woken one per message (a napper that wakes to find the message
/// taken looks again, then sleeps); senders all at once, since the room one take made
/// may serve several of them, or not the one woken.
fn wake_nappers(nappers: &AtomicU32, seq: &AtomicU32, n: u32) {
    if nappers.load(SeqCst) > 0 {
        seq.fetch_add(1, SeqCst);
        sys::futex_wake(seq, n);
    }
}

impl RawSender {
    /// Whether a message of `len` encoded bytes (with no descriptors) travels in the
    /// ring rather than on the side socket.
    pub(crate) fn fits_inline(&self, len: usize) -> bool {
        record_len(len) <= self.core.ring_len / 2
    }

    /// A bound on the encoded length of a message that [`fits_inline`](Self::fits_inline):
    /// how far measuring one need go.
    pub(crate) fn inline_most(&self) -> usize {
        usize::try_from(self.core.ring_len / 2).unwrap_or(usize::MAX)
    }

    /// Sends a message of `len` bytes that `fill` writes straight into the ring (it
    /// must fit inline), waiting for room as `wait` allows. With `unfinished`, the
    /// message is also counted as a task not yet done (`JoinableQueue`). `fill` returns
    /// false if it could not write the message; nothing is sent then.
    pub(crate) fn send_inline(
        &self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> bool,
        wait: Deadline,
        unfinished: bool,
    ) -> Result<(), SendFail> {
        let core = &*self.core;
        if self.receivers_gone() {
            return Err(SendFail::Disconnected);
        }
        // An unbounded channel overflows only once consumers have had a moment to make
        // room in its own ring (see `room_soon`), until `patience`.
        let mut may_overflow = false;
        let mut patience = None;
        loop {
            {
                // A producer that died holding the lock may have left a publish or an
                // unbounded channel's move between rings half-done: the next producer
                // finishes it (see README).
                let Some(mut tail) = Tail::lock(core.header(), lock_wait(wait)) else {
                    gave_up_on_lock();
                    return Err(SendFail::Full);
                };
                let written = core.write_slot(&mut tail, len, may_overflow, |mut slot| {
                    if !fill(slot.payload()) {
                        return false;
                    }
                    slot.publish(INLINE, unfinished);
                    true
                });
                match written.map_err(SendFail::Io)? {
                    Some(true) => {
                        drop(tail);
                        core.wake_receivers();
                        return Ok(());
                    }
                    Some(false) => {
                        return Err(SendFail::Io(io::Error::other(
                            "the message changed size while it was written",
                        )));
                    }
                    None => {}
                }
            }
            if core.growable {
                let until = *patience.get_or_insert_with(|| overflow_wait_until(wait));
                may_overflow = !until.is_some_and(|until| self.room_soon(until));
            } else {
                self.full(len, wait)?;
            }
        }
    }

    /// An unbounded channel's own ring is full: waits until a consumer takes a message
    /// (true: the caller tries the ring again) or `until` passes (false: the message
    /// goes to an overflow segment). Consumers that keep up make room within
    /// [`OVERFLOW_WAIT`], and the message stays in the ring's memory, which they have
    /// just read (an overflow segment's pages may have to be faulted in, and a producer
    /// that runs far ahead of its consumers evicts what they are about to read from the
    /// caches); consumers that do not cost the producer this wait once per fill of the
    /// ring.
    fn room_soon(&self, until: Instant) -> bool {
        let core = &*self.core;
        let ring = core.ring();
        let head = ring.head();
        let taken = || ring.head() != head;
        let spin_end = Instant::now() + SPIN;
        if spin_until(spin_end.min(until), taken) {
            return true;
        }
        let s = &core.header().sleepers.0;
        // Each take by a consumer ends a nap.
        while !taken() && Instant::now() < until {
            Core::nap(&s.send_nappers, &s.send_seq, until, taken);
        }
        taken()
    }

    /// Sends an encoded message: in the ring if it fits and carries no descriptors, on
    /// the side socket otherwise.
    pub(crate) fn send(
        &self,
        msg: Encoded,
        wait: Deadline,
        unfinished: bool,
    ) -> Result<(), (Encoded, SendFail)> {
        if msg.fds.is_empty() && self.fits_inline(msg.bytes.len()) {
            let bytes = &msg.bytes;
            let mut fill = |buf: &mut [u8]| {
                buf.copy_from_slice(bytes);
                true
            };
            return match self.send_inline(bytes.len(), &mut fill, wait, unfinished) {
                Ok(()) => Ok(()),
                Err(e) => Err((msg, e)),
            };
        }
        let core = &*self.core;
        if self.receivers_gone() {
            return Err((msg, SendFail::Disconnected));
        }
        let held = core.side_record_len(msg.bytes.len());
        // A send that may not wait, to a bounded channel without room for the record:
        // refused before the message is copied into a memory file, which would be
        // thrown away (the pool's engine tries its workers this way).
        if matches!(wait, Deadline::Now)
            && !core.growable
            && !core.ring().has_room(held, core.max_items)
        {
            // Full only while a receiver lives (the kernel is asked, as `full` does: a
            // receiver killed with its process stays in the shared count).
            if Core::all_gone(&core.receivers) {
                return Err((msg, SendFail::Disconnected));
            }
            return Err((msg, SendFail::Full));
        }
        let mut out = match side::Outgoing::prepare(&msg) {
            Ok(out) => out,
            Err(e) => return Err((msg, SendFail::Io(e))),
        };
        // Counted among the senders napping for room once the side socket was full (see
        // below), with the wake-up count last seen; uncounted as the send ends.
        let mut napping: Option<(Napping<'_>, u32)> = None;
        loop {
            let sent = {
                let Some(mut tail) = Tail::lock(core.header(), lock_wait(wait)) else {
                    gave_up_on_lock();
                    return Err((msg, SendFail::Full));
                };
                let written = core.write_slot(&mut tail, held, true, |mut slot| {
                    let h = core.header();
                    // The number is taken before the message is sent: a producer that
                    // dies once it is on the socket, before its record is published,
                    // leaves the number to the next holder's repair. Taken after, the
                    // next producer would reuse the number, and the message would be
                    // delivered as that producer's, and its own dropped. A number whose
                    // send failed is never published: a gap, harmless.
                    let p = &h.produced.0;
                    let id = p.next_side_id.load(Relaxed);
                    // Wrapping: no channel numbers 2^64 side messages, but another
                    // process may have written any number here.
                    p.next_side_id.store(id.wrapping_add(1), Relaxed);
                    // Marked before the send, cleared once the record is published or
                    // the send failed: a producer that dies in between leaves the next
                    // holder of the lock to publish a record for it (see `repair`).
                    let pending = if unfinished { SIDE_PENDING_TASK } else { 1 };
                    p.side_pending.store(pending, Release);
                    if ring::dies_at(ring::DIES_BEFORE_SENDING) {
                        return Ok(());
                    }
                    let sent = out.send(core.side_tx.as_fd(), id, &msg).map(|()| {
                        slot.payload()[..8].copy_from_slice(&id.to_le_bytes());
                        slot.publish(SIDE, unfinished);
                    });
                    // A producer that dies here, its record published, leaves a repair
                    // that publishes the record again: the receive that reaches the
                    // second finds the message taken, and passes over it.
                    if !ring::dies_at(ring::DIES_BEFORE_PUBLISHING)
                        && !ring::dies_at(ring::DIES_PUBLISHING)
                    {
                        p.side_pending.store(0, Release);
                    }
                    sent
                });
                match written {
                    Ok(sent) => sent,
                    Err(e) => return Err((msg, SendFail::Io(e))),
                }
            };
            match sent {
                Some(Ok(())) => {
                    core.wake_receivers();
                    return Ok(());
                }
                // The side socket is full: wait for room without the lock, or until
                // every receiver is gone (none will ever read it again; looked at
                // again every `MAX_SLEEP` at least). The kernel says such a socket is
                // writable only once three quarters of what it holds have been read,
                // though the first take makes room for a message: counted among the
                // senders napping for room, this one is woken by every take (all such
                // senders at once, none taking another's wake-up), and tries again,
                // at once the first time (a take between the failed send and the count
                // woke nobody).
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Receivers gone first: a full socket nobody will read is no
                    // reason to say `Full` (an async send, woken by their hang-up, was
                    // told so again and again).
                    if Core::all_gone(&core.receivers) {
                        return Err((msg, SendFail::Disconnected));
                    }
                    if wait.passed() {
                        return Err((msg, SendFail::Full));
                    }
                    let s = &core.header().sleepers.0;
                    match &mut napping {
                        None => {
                            let seen = s.send_seq.load(SeqCst);
                            napping = Some((Napping::count(&s.send_nappers), seen));
                            continue;
                        }
                        Some((_, seen)) => {
                            let cap = Instant::now() + MAX_SLEEP;
                            nap_on(
                                &s.send_seq,
                                *seen,
                                wait.instant().map_or(cap, |d| d.min(cap)),
                            );
                            *seen = s.send_seq.load(SeqCst);
                        }
                    }
                }
                // Too many descriptors in flight for this user (a channel handle is 8):
                // as for a full socket, a consumer's read makes room, and no event
                // tells when: looked at again every millisecond. Only while this
                // channel holds unread messages: with none, its consumers can free
                // nothing, the descriptors are in flight elsewhere, and a wait could
                // last for ever (the error is the caller's).
                Some(Err(e)) if sys::too_many_in_flight(&e) && core.len() > 0 => {
                    if Core::all_gone(&core.receivers) {
                        return Err((msg, SendFail::Disconnected));
                    }
                    if wait.passed() {
                        return Err((msg, SendFail::Full));
                    }
                    let left = wait.instant().map_or(HELD_UP, |d| {
                        d.saturating_duration_since(Instant::now()).min(HELD_UP)
                    });
                    std::thread::sleep(left);
                }
                Some(Err(e)) => return Err((msg, SendFail::Io(e))),
                None => {
                    if let Err(e) = self.full(held, wait) {
                        return Err((msg, e));
                    }
                }
            }
        }
    }

    /// The ring is full: fails if every receiver is gone (the kernel is asked: a full
    /// ring whose receivers were killed said `Full` to a `try_send` until the next of
    /// the sends that ask every so many), or if waiting is not allowed (or over);
    /// otherwise waits (spinning first) until a consumer may have made room.
    fn full(&self, len: usize, wait: Deadline) -> Result<(), SendFail> {
        let core = &*self.core;
        if Core::all_gone(&core.receivers) {
            return Err(SendFail::Disconnected);
        }
        if matches!(wait, Deadline::Now) || wait.passed() {
            return Err(SendFail::Full);
        }
        let ring = core.ring();
        let room = || ring.has_room(len, core.max_items);
        let spin_end = Instant::now() + SPIN;
        if spin_until(wait.instant().map_or(spin_end, |d| d.min(spin_end)), room) {
            return Ok(());
        }
        let s = &core.header().sleepers.0;
        // Woken: a consumer took something. The caller tries its write again (`room`
        // asks for more than a write needs, to be sure).
        if Core::nap(&s.send_nappers, &s.send_seq, nap_until(wait), room) || room() {
            return Ok(());
        }
        // Receivers that went meanwhile, or a deadline that passed, end the doorbell's
        // sleep at once; the caller's next call says which.
        let sleepers = &s.senders;
        sleepers.fetch_add(1, SeqCst);
        let slept = if room() {
            Ok(())
        } else {
            core.sleep(&core.send_bell, &core.receivers, wait)
        };
        uncount(sleepers);
        slept.map_err(SendFail::Io)
    }

    /// Counts the caller among the senders waiting for room, so that receivers ring
    /// the senders' doorbell; the returned guard uncounts it and silences the bell.
    pub(crate) fn sleeping(&self) -> SenderSleeping<'_> {
        self.core.header().sleepers.0.senders.fetch_add(1, SeqCst);
        SenderSleeping {
            core: &self.core,
            armed: false,
        }
    }

    /// What to poll to learn that a send may go through now: the senders' doorbell
    /// (while the caller is counted as a sleeper) and the receivers' liveness pipe.
    pub(crate) fn writability(&self) -> [BorrowedFd<'_>; 2] {
        [self.core.send_bell.as_fd(), self.core.receivers.as_fd()]
    }

    /// Whether every receiver is gone (the kernel says: the count misses the copies
    /// forked children hold, see [`receivers_gone`](Self::receivers_gone)).
    pub(crate) fn is_disconnected(&self) -> bool {
        Core::all_gone(&self.core.receivers)
    }

    /// Cheap enough for every send: while the shared count holds a receiver, one is
    /// there, or was killed with its process (found by asking the kernel every so many
    /// sends, and whenever a send would wait). A count of none is checked with the
    /// kernel: a receiver moved into a `spawn_fork` closure lives on in the child,
    /// uncounted, once the parent's copy is dropped.
    fn receivers_gone(&self) -> bool {
        let core = &*self.core;
        if core.header().receivers.load(Acquire) == 0 {
            return Core::all_gone(&core.receivers);
        }
        let sends = core.sends.fetch_add(1, Relaxed).wrapping_add(1);
        sends.is_multiple_of(1024) && Core::all_gone(&core.receivers)
    }

    /// The thread that holds the producers' lock (its identity), if one does: while it
    /// does, every other send waits for it.
    pub(crate) fn producers_lock_holder(&self) -> Option<u64> {
        self.core.header().tail_lock.0.holder()
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.core.len()
    }
}

thread_local! {
    /// Where a consumer copies a message out of the ring before decoding it, reused.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl RawReceiver {
    /// Makes receives on this handle spin up to `max` before they yield between looks,
    /// as long as spinning pays off (see [`AdaptiveSpin`]): for a receiver whose peer
    /// answers within a microsecond or two while it runs (a manager's client).
    pub(crate) fn spin_adaptively(&mut self, max: Duration) {
        self.adaptive = Some(Arc::new(AdaptiveSpin::new(max)));
    }

    /// Whether a message is waiting: one look at shared memory, no system call.
    pub(crate) fn has_message(&self) -> bool {
        self.core.has_data()
    }

    /// Receives a message, waiting as `wait` allows, and hands it to `decode`.
    pub(crate) fn recv_with<R>(
        &self,
        wait: Deadline,
        decode: &mut dyn FnMut(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<R, RecvFail> {
        let core = &*self.core;
        let h = core.header();
        let mut napped = false;
        let mut held_up_since = None::<Instant>;
        loop {
            if let Some(r) = self.try_take(wait, decode)? {
                return Ok(r);
            }
            // A message is there but another consumer holds the lock (it may be stopped
            // in the middle of copying one out): the time is up.
            if core.has_data() && wait.passed() {
                return Err(RecvFail::Empty);
            }
            if matches!(wait, Deadline::Now) {
                // As crossbeam does: an empty channel with no senders is disconnected.
                return Err(if Core::all_gone(&core.senders) && !core.has_data() {
                    RecvFail::Disconnected
                } else {
                    RecvFail::Empty
                });
            }
            if core.has_data() {
                // Counted, and not to be had: a live producer is half-way through its
                // publish (an unbounded channel counts the message first), or a consumer
                // holds the lock. Looked at again and again for a moment, then between
                // sleeps: a producer stopped there kept the receiver spinning, a whole
                // CPU, for as long as it stayed stopped.
                let since = *held_up_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SPIN {
                    let left = wait.instant().map_or(HELD_UP, |d| {
                        d.saturating_duration_since(Instant::now()).min(HELD_UP)
                    });
                    std::thread::sleep(left);
                    continue;
                }
            } else {
                held_up_since = None;
            }
            let spin_end = Instant::now() + SPIN;
            let until = wait.instant().map_or(spin_end, |d| d.min(spin_end));
            let came = match &self.adaptive {
                Some(spin) => spin.wait(until, || core.has_data()),
                None => spin_until(until, || core.has_data()),
            };
            if came {
                continue;
            }
            if Core::all_gone(&core.senders) {
                // Whatever they sent before they went is still ours.
                if let Some(r) = self.try_take(wait, decode)? {
                    return Ok(r);
                }
                if !core.has_data() {
                    return Err(RecvFail::Disconnected);
                }
            }
            if wait.passed() {
                return Err(RecvFail::Empty);
            }
            if !napped {
                // Once per receive, before the doorbell: see `NAP`.
                napped = true;
                let s = &h.sleepers.0;
                Core::nap(&s.recv_nappers, &s.recv_seq, nap_until(wait), || {
                    core.has_data()
                });
                continue;
            }
            h.sleepers.0.receivers.fetch_add(1, SeqCst);
            let slept = if core.has_data() {
                Ok(())
            } else {
                core.sleep(&core.recv_bell, &core.senders, wait)
            };
            uncount(&h.sleepers.0.receivers);
            slept.map_err(RecvFail::Io)?;
        }
    }

    /// Takes the next message if there is one, and decodes it (outside the lock: the
    /// decoder is the user's code).
    fn try_take<R>(
        &self,
        wait: Deadline,
        decode: &mut dyn FnMut(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<Option<R>, RecvFail> {
        let Some(taken) = self.take_next(wait)? else {
            return Ok(None);
        };
        Ok(Some(match taken {
            Taken::Inline(buf) => {
                let r = decode(&buf, Vec::new());
                // Back for the next message (a decoder that received on this thread in
                // the meantime found the cell empty and used a buffer of its own).
                SCRATCH.with(|s| s.set(buf));
                r
            }
            Taken::Side(msg) => decode(&msg.bytes, msg.fds),
        }))
    }

    /// Takes the next message if there is one, as it is: an inline message in a buffer
    /// of its own, a large one still mapped.
    pub(crate) fn try_recv_owned(&self) -> Result<Option<Received>, RecvFail> {
        Ok(self.take_next(Deadline::Now)?.map(|taken| match taken {
            Taken::Inline(buf) => Received {
                bytes: Payload::Owned(buf),
                fds: Vec::new(),
            },
            Taken::Side(msg) => msg,
        }))
    }

    /// Takes the next message if there is one; `None` also when the consumers' lock
    /// could not be had within `wait`.
    fn take_next(&self, wait: Deadline) -> Result<Option<Taken>, RecvFail> {
        let core = &*self.core;
        let (mut taken, mut freed) = self.take_once(wait)?;
        // A producer is publishing a message, which is not in the ring yet: it may have
        // died half-way (it has a lock to take over then; a live one's is not waited
        // for). Nothing else would finish that publish before the next send: an
        // unbounded channel's counts would say a message waits, and a receiver would
        // spin; a `JoinableQueue`'s task would count, and `join` would wait, for a
        // message that nobody can get. Once finished, its message is there to take.
        if taken.is_none() && core.repair_due() && self.finish_dead_publish()? {
            let again;
            (taken, again) = self.take_once(wait)?;
            freed |= again;
        }
        // Room came free: a message taken, or a dead consumer's record passed over or
        // its consume finished (a sender waiting for that room slept on until its nap's
        // end, up to 100 ms).
        if taken.is_some() || freed {
            core.wake_senders();
        }
        Ok(taken)
    }

    /// Repairs what a producer that died holding the producers' lock left (its
    /// publish, a side message's record: see [`Core::repair`]), if the lock is free or
    /// a dead one's; whether it did (a live holder is not waited for).
    fn finish_dead_publish(&self) -> Result<bool, RecvFail> {
        let core = &*self.core;
        let Some(mut tail) = Tail::lock(core.header(), LockWait::UnlessStopped(Duration::ZERO))
        else {
            return Ok(false);
        };
        if !tail.took_over && core.header().produced.0.side_pending.load(Acquire) == 0 {
            return Ok(false);
        }
        let took_over = tail.took_over;
        // A repair that finds the ring's positions out of line (its memory overwritten)
        // says the ring is corrupt, as a receive that meets them does.
        let repaired = core.repair(&mut tail).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => broken(&e.to_string()),
            _ => RecvFail::Io(e),
        })?;
        Ok(repaired || took_over)
    }

    /// [`take_next`](Self::take_next) without finishing a dead producer's publish; and
    /// whether it freed room without taking a message (a dead consumer's work finished,
    /// a record passed over).
    fn take_once(&self, wait: Deadline) -> Result<(Option<Taken>, bool), RecvFail> {
        let core = &*self.core;
        let mut freed = false;
        let taken = {
            // A consumer that died holding the lock had not consumed the record it was
            // reading (it is still there for us), or was consuming it (we finish
            // that; see README).
            let Some(mut head) = Head::lock(core.header(), lock_wait(wait)) else {
                return Ok((None, false));
            };
            freed |= head.took_over;
            if core.growable {
                core.take_growable(&mut head)?
            } else {
                let ring = core.ring();
                if head.took_over {
                    ring.finish_consume(&mut head);
                }
                loop {
                    match take_record(core, &ring, &mut head)? {
                        Step::Taken(t) => break Some(t),
                        Step::Empty => break None,
                        Step::Again => freed = true,
                        Step::Link(..) => return Err(broken("a link in a bounded channel")),
                    }
                }
            }
        };
        Ok((taken, freed))
    }

    /// Whether every sender is gone (messages may still be waiting).
    pub(crate) fn senders_gone(&self) -> bool {
        Core::all_gone(&self.core.senders)
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.core.len()
    }

    /// The most messages the channel holds (`None`: as many as its ring holds).
    pub(crate) fn capacity(&self) -> Option<usize> {
        (self.core.max_items != u64::MAX).then_some(self.core.max_items as usize)
    }

    /// The shared header (for queues built on the channel).
    pub(crate) fn header(&self) -> &ChannelHeader {
        self.core.header()
    }

    /// What to poll to learn that a receive would not block: the doorbell (while the
    /// caller is counted as a sleeper) and the senders' liveness pipe.
    pub(crate) fn readiness(&self) -> [BorrowedFd<'_>; 2] {
        [self.core.recv_bell.as_fd(), self.core.senders.as_fd()]
    }

    /// Whether a receive would not block: a message is waiting, or the senders are gone.
    /// A producer that died publishing left its message out of the ring, where only a
    /// receive finishes the publish: this finishes it too (a wait for readiness slept
    /// by it while another sender lived).
    pub(crate) fn ready(&self) -> bool {
        self.core.has_data()
            || self.senders_gone()
            || (self.core.repair_due() && self.finish_dead_publish().unwrap_or(true))
    }

    /// How many receivers are counted among the sleepers.
    #[cfg(test)]
    pub(crate) fn sleeping_receivers(&self) -> u32 {
        self.core.header().sleepers.0.receivers.load(SeqCst)
    }

    /// Counts the caller among the sleepers, so that senders ring the doorbell; the
    /// returned guard uncounts it and silences the bell.
    pub(crate) fn sleeping(&self) -> Sleeping<'_> {
        self.core.header().sleepers.0.receivers.fetch_add(1, SeqCst);
        Sleeping {
            core: &self.core,
            armed: false,
        }
    }
}

/// A ring that does not follow the protocol: its consumers cannot read past the place,
/// so every receive fails there (an error of the system's kind, not a message's).
fn broken(why: &str) -> RecvFail {
    RecvFail::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the channel's ring is corrupt: {why}"),
    ))
}

/// What one look at a ring's next record gave.
enum Step {
    Taken(Taken),
    /// The ring is empty.
    Empty,
    /// A record whose message a consumer that died had taken: look again.
    Again,
    /// A link record (its payload: ring, resume position), left in the ring.
    Link(u64, u64),
}

/// Takes the next record of `ring` (under the consumers' lock `head`).
fn take_record(core: &Core, ring: &Ring<'_>, head: &mut Head<'_>) -> Result<Step, RecvFail> {
    let Some(record) = ring.next(head).map_err(|why| broken(&why))? else {
        return Ok(Step::Empty);
    };
    match record.kind {
        INLINE => {
            let mut buf = SCRATCH.with(std::cell::Cell::take);
            buf.clear();
            buf.extend_from_slice(record.payload());
            record.consume();
            Ok(Step::Taken(Taken::Inline(buf)))
        }
        LINK => match record.link() {
            Some((to, resume)) => Ok(Step::Link(to, resume)),
            None => Err(broken("a link record of the wrong size")),
        },
        kind => {
            // The id, then the room the message holds (see `Core::side_record_len`).
            let word = |at: usize| {
                record
                    .payload()
                    .get(at..at + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_le_bytes)
            };
            let Some(id) = word(0) else {
                return Err(broken("a side record of the wrong size"));
            };
            let repaired_task = kind == SIDE_REPAIR_TASK;
            let got = side::fetch(core.side_rx.as_fd(), id)?;
            record.consume();
            match got {
                Some(msg) => Ok(Step::Taken(Taken::Side(msg))),
                // A message taken by a consumer that died with it (or, for a repair's
                // record, one never sent, or taken through its own record before):
                // go on. A repair's task for a message nobody had is done: the task
                // was counted with the record, and nobody would mark it done.
                None => {
                    if repaired_task {
                        core.task_given_up();
                    }
                    Ok(Step::Again)
                }
            }
        }
    }
}

/// A receiver's count, held by an encoding of it on its way (see [`Encoded`]).
impl codec::InFlight for Core {
    fn add(&self) {
        self.header().receivers.fetch_add(1, SeqCst);
    }
    fn give_back(&self) {
        self.header().receivers.fetch_sub(1, SeqCst);
    }
}

/// A sender counted among the sleepers (see [`RawSender::sleeping`]).
#[derive(Debug)]
pub(crate) struct SenderSleeping<'a> {
    core: &'a Core,
    armed: bool,
}

impl SenderSleeping<'_> {
    /// While armed (around an async send's wait on the doorbell), a drop is a send
    /// that went without sending (its future dropped by `select!` or a timeout): it
    /// may have silenced a ring meant for the other sleepers, and passes it on.
    pub(crate) fn arm(&mut self, armed: bool) {
        self.armed = armed;
    }
}

impl Drop for SenderSleeping<'_> {
    fn drop(&mut self) {
        let left = uncount(&self.core.header().sleepers.0.senders);
        sys::silence(self.core.send_bell.as_fd());
        if self.armed && left > 0 {
            self.core.wake_senders();
        }
    }
}

/// A receiver counted among the sleepers (see [`RawReceiver::sleeping`]).
#[derive(Debug)]
pub(crate) struct Sleeping<'a> {
    core: &'a Core,
    armed: bool,
}

impl Sleeping<'_> {
    /// As [`SenderSleeping::arm`]: a receive dropped while armed, with an item
    /// waiting, rings again for the other sleepers.
    pub(crate) fn arm(&mut self, armed: bool) {
        self.armed = armed;
    }
}

/// Takes one off a count of sleepers; the count left. Not below zero: the count is in
/// memory another process may have written (one left wrapped would have every send or
/// receive ring a doorbell, and hide the next sleeper from the other side).
fn uncount(count: &AtomicU32) -> u32 {
    count
        .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)))
        .unwrap_or_else(|n| n)
        .saturating_sub(1)
}

impl Drop for Sleeping<'_> {
    fn drop(&mut self) {
        uncount(&self.core.header().sleepers.0.receivers);
        sys::silence(self.core.recv_bell.as_fd());
        if self.armed && self.core.len() > 0 {
            self.core.wake_receivers();
        }
    }
}

/// How a handle travels: the segment's size and its descriptors, by index in the
/// message's descriptor list.
#[derive(Serialize, Deserialize)]
struct WireHandle {
    segment_len: u64,
    /// An unbounded channel (whose file grows).
    growable: bool,
    fds: [u32; 8],
}

fn serialize_core<S: Serializer>(core: &Core, token: &Token, s: S) -> Result<S::Ok, S::Error> {
    wire_handle(core, token)?.serialize(s)
}

/// The descriptors of a handle, passed with the message being encoded, and what else
/// travels with them.
fn wire_handle<E: serde::ser::Error>(core: &Core, token: &Token) -> Result<WireHandle, E> {
    if let Some(counted) = &token.counted {
        // The handle in flight counts as a receiver until the decode that makes its
        // copy takes the count over.
        let _ = codec::count_in_flight(Arc::clone(counted) as Arc<dyn codec::InFlight>);
    }
    let fds = [
        core.seg.fd(),
        core.recv_bell.as_fd(),
        core.send_bell.as_fd(),
        core.side_tx.as_fd(),
        core.side_rx.as_fd(),
        core.senders.as_fd(),
        core.receivers.as_fd(),
        token.fd.as_fd(),
    ];
    let mut indices = [0u32; 8];
    for (slot, fd) in indices.iter_mut().zip(fds) {
        *slot = codec::pass_fd(fd).map_err(E::custom)?;
    }
    Ok(WireHandle {
        segment_len: core.seg.len() as u64,
        growable: core.growable,
        fds: indices,
    })
}

/// Decodes a handle's core and token: a receiver's (`receiver`) or a sender's.
fn deserialize_core<'de, D: Deserializer<'de>>(
    d: D,
    receiver: bool,
) -> Result<(Core, OwnedFd), D::Error> {
    core_from_wire::<D::Error>(WireHandle::deserialize(d)?, receiver)
}

/// The core and token a decoded [`WireHandle`] names, checked.
fn core_from_wire<E: serde::de::Error>(
    wire: WireHandle,
    receiver: bool,
) -> Result<(Core, OwnedFd), E> {
    let mut fds = Vec::with_capacity(8);
    for index in wire.fds {
        fds.push(codec::take_fd(index).map_err(codec::refuse::<E>)?);
    }
    let [
        seg,
        recv_bell,
        send_bell,
        side_tx,
        side_rx,
        senders,
        receivers,
        token,
    ]: [OwnedFd; 8] = fds
        .try_into()
        .map_err(|_| codec::refuse::<E>("a channel handle needs 8 descriptors"))?;
    // Each descriptor is what the handle says it is: the sender chose which went where.
    // (Two swapped, a bell read as one, a pipe that nobody writes, held a timed receive
    // for ever; a sender's handle decoded as a receiver's kept its own senders alive.)
    let liveness = if receiver { &receivers } else { &senders };
    let same_pipe = matches!(
        (sys::file_id(token.as_fd()), sys::file_id(liveness.as_fd())),
        (Ok(a), Ok(b)) if a == b
    );
    let kinds = [
        (&recv_bell, sys::FdKind::Doorbell),
        (&send_bell, sys::FdKind::Doorbell),
        (&side_tx, sys::FdKind::PacketSocket),
        (&side_rx, sys::FdKind::PacketSocket),
        (&senders, sys::FdKind::PipeReader),
        (&receivers, sys::FdKind::PipeReader),
        (&token, sys::FdKind::PipeWriter),
    ];
    if !same_pipe
        || kinds
            .iter()
            .any(|(fd, kind)| sys::fd_kind(fd.as_fd()) != *kind)
    {
        return Err(codec::refuse::<E>(if receiver {
            "not a multiproc channel receiver's handle"
        } else {
            "not a multiproc channel sender's handle"
        }));
    }
    let len = usize::try_from(wire.segment_len)
        .ok()
        .filter(|&l| {
            (ChannelHeader::RING_OFFSET + MIN_RING..=ChannelHeader::RING_OFFSET + MAX_RING)
                .contains(&l)
        })
        .ok_or_else(|| codec::refuse::<E>("a channel segment of an impossible size"))?;
    let growable = wire.growable;
    let seg = if growable {
        Segment::open_growable(seg, len)
    } else {
        Segment::open(seg, len)
    }
    .map_err(codec::refuse)?;
    let h: &ChannelHeader = seg.at(0);
    let ring_len = h.ring_len.load(Acquire);
    if h.magic.load(Acquire) != ChannelHeader::MAGIC
        || usize::try_from(ring_len)
            .ok()
            .and_then(|r| r.checked_add(ChannelHeader::RING_OFFSET))
            != Some(len)
        || !ring_len.is_multiple_of(8)
        || h.growable.load(Acquire) != u64::from(growable)
        || (growable && !ring_len.is_multiple_of(overflow::PAGE as u64))
    {
        return Err(codec::refuse::<E>("not a multiproc channel"));
    }
    let max_items = h.max_items.load(Acquire).max(1);
    Ok((
        Core {
            seg,
            ring_len,
            max_items,
            growable,
            write_map: Mutex::default(),
            read_map: Mutex::default(),
            recv_bell,
            send_bell,
            side_tx,
            side_rx,
            senders,
            receivers,
            sends: AtomicU32::new(0),
        },
        token,
    ))
}

impl Serialize for RawSender {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_core(&self.core, &self._token, s)
    }
}

impl<'de> Deserialize<'de> for RawSender {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (core, token) = deserialize_core(d, false)?;
        Ok(RawSender {
            core: Arc::new(core),
            _token: Token::sender(token),
        })
    }
}

impl Serialize for RawReceiver {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_core(&self.core, &self._token, s)
    }
}

impl<'de> Deserialize<'de> for RawReceiver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (core, token) = deserialize_core(d, true)?;
        let core = Arc::new(core);
        Ok(RawReceiver {
            _token: Token::receiver(token, &core),
            core,
            adaptive: None,
        })
    }
}

/// How both halves of one channel travel together (a `Queue` handle): the channel's
/// descriptors and the receiver's token once, and the sender's token beside them: 9
/// descriptors, where the two handles one after the other took 16 (a message carries
/// at most 253: 15 queues a message then, 28 now; Python has no such limit). Decoded,
/// the two share one mapping of the channel.
#[derive(Serialize, Deserialize)]
struct WirePair {
    receiver: WireHandle,
    /// The sender's token, by index (`None`: a closed queue handle, which only gets).
    sender: Option<u32>,
}

/// Serializes a receiver and, if there is one, a sender of the same channel, as one
/// handle (see [`WirePair`]).
pub(crate) fn serialize_pair<S: Serializer>(
    tx: Option<&RawSender>,
    rx: &RawReceiver,
    s: S,
) -> Result<S::Ok, S::Error> {
    let receiver = wire_handle(&rx.core, &rx._token)?;
    let sender = match tx {
        Some(tx) => Some(codec::pass_fd(tx._token.fd.as_fd()).map_err(serde::ser::Error::custom)?),
        None => None,
    };
    WirePair { receiver, sender }.serialize(s)
}

/// Decodes what [`serialize_pair`] wrote: a receiver and, for a handle that was not
/// closed, a sender, sharing one core. The sender's token is checked as a sender's
/// handle's is: the write end of the channel's senders' liveness pipe.
pub(crate) fn deserialize_pair<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<(Option<RawSender>, RawReceiver), D::Error> {
    let wire = WirePair::deserialize(d)?;
    let (core, token) = core_from_wire::<D::Error>(wire.receiver, true)?;
    let sender = match wire.sender {
        Some(index) => {
            let fd = codec::take_fd(index).map_err(codec::refuse)?;
            let same_pipe = matches!(
                (sys::file_id(fd.as_fd()), sys::file_id(core.senders.as_fd())),
                (Ok(a), Ok(b)) if a == b
            );
            if !same_pipe || sys::fd_kind(fd.as_fd()) != sys::FdKind::PipeWriter {
                return Err(codec::refuse::<D::Error>(
                    "not a multiproc queue's handle: its sender's token is not the channel's",
                ));
            }
            Some(fd)
        }
        None => None,
    };
    let core = Arc::new(core);
    let rx = RawReceiver {
        _token: Token::receiver(token, &core),
        core: Arc::clone(&core),
        adaptive: None,
    };
    let tx = sender.map(|fd| RawSender {
        core,
        _token: Token::sender(fd),
    });
    Ok((tx, rx))
}

/// Writes `bytes` over a live channel's ring (and, from its first 16 bytes, its tail
/// and head counters), then receives until the channel stops answering. For fuzzing:
/// whatever another process writes, this must not panic, fault or hang. With an odd
/// first byte the channel is an unbounded one that has overflowed into segments (its
/// links and the producers' and consumers' ring numbers are overwritten too).
#[cfg(any(test, fuzzing))]
pub(crate) fn corrupt_and_drain(bytes: &[u8]) {
    let growable = bytes.first().is_some_and(|b| b & 1 == 1);
    let made = if growable {
        unbounded(MIN_RING)
    } else {
        channel(MIN_RING, None)
    };
    let Ok((tx, rx)) = made else {
        return;
    };
    let fill = |i: u8| Encoded::plain(vec![i; i as usize * 40]);
    for i in 0..if growable { 40u8 } else { 12 } {
        let _ = tx.send(fill(i % 12), Deadline::Now, false);
    }
    if growable && bytes.len() >= 32 {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let h = rx.core.header();
        h.produced.0.ring.store(word(16) % 8, SeqCst);
        h.consumed.0.ring.store(word(24) % 8, SeqCst);
    }
    let core = &rx.core;
    let (counters, ring) = bytes.split_at(bytes.len().min(16));
    if counters.len() == 16 {
        let word =
            |at: usize| u64::from_le_bytes(counters[at..at + 8].try_into().unwrap_or([0; 8]));
        core.header().produced.0.tail.store(word(0), SeqCst);
        core.header().consumed.0.head.store(word(8), SeqCst);
    }
    let ring = &ring[..ring.len().min(core.ring_len as usize)];
    core.seg.write(ChannelHeader::RING_OFFSET, ring);
    for _ in 0..256 {
        if rx
            .recv_with(Deadline::Now, &mut |bytes, _| bytes.len())
            .is_err()
        {
            break;
        }
    }
}

/// Tasks put on the channel of `h` and not yet marked done (`JoinableQueue`): done
/// read first, so that the count put, read after, is at least that.
pub(crate) fn tasks_unfinished(h: &ChannelHeader) -> u64 {
    let done = h.tasks_done.load(SeqCst);
    h.produced.0.tasks.load(SeqCst).saturating_sub(done)
}

/// After a task was marked done: wakes the threads waiting for every task to be done
/// (`JoinableQueue::join`) if none is left.
pub(crate) fn wake_joiners_if_done(h: &ChannelHeader) {
    if tasks_unfinished(h) == 0 {
        h.sleepers.0.join_epoch.fetch_add(1, SeqCst);
        if h.sleepers.0.joiners.load(SeqCst) > 0 {
            sys::futex_wake(&h.sleepers.0.join_epoch, u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(bytes: Vec<u8>) -> Encoded {
        Encoded::plain(bytes)
    }

    fn take(rx: &RawReceiver) -> Result<Vec<u8>, RecvFail> {
        rx.recv_with(Deadline::Now, &mut |bytes, _| bytes.to_vec())
    }

    /// A receive that frees room without taking a message (it passes over the record of
    /// a side message a consumer took off the socket and died before it consumed the
    /// record) wakes the senders waiting for room: they slept on to the end of their
    /// nap (100 ms at most). Seen on the wake-up's count, with a sender counted as
    /// napping.
    #[test]
    fn room_freed_by_passing_over_a_dead_consumers_record_wakes_the_senders() {
        let (tx, rx) = channel(MIN_RING, Some(1)).unwrap();
        tx.send(numbered(0, 3 * MIN_RING), Deadline::Now, false)
            .unwrap();
        // What a consumer killed between taking the message and consuming its record
        // leaves.
        assert!(side::fetch(rx.core.side_rx.as_fd(), 0).unwrap().is_some());
        assert!(matches!(
            tx.send(numbered(1, 100), Deadline::Now, false),
            Err((_, SendFail::Full))
        ));
        let sleepers = &rx.core.header().sleepers.0;
        sleepers.send_nappers.fetch_add(1, SeqCst);
        let before = sleepers.send_seq.load(SeqCst);
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        let after = sleepers.send_seq.load(SeqCst);
        sleepers.send_nappers.fetch_sub(1, SeqCst);
        assert_ne!(before, after, "no wake-up for the room passed over");
        tx.send(numbered(1, 100), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 1);
    }

    /// A message on the side socket (larger than half the ring) holds room in a bounded
    /// channel's ring as its bytes would, up to half of it: two wait at most, whatever
    /// their number could be in the socket (each holds a memory file of its size).
    /// An unbounded channel takes them on.
    #[test]
    fn a_bounded_channel_counts_side_messages_by_their_size() {
        let big = MIN_RING * 3;
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        let mut sent = 0u32;
        while sent < 10 && tx.send(numbered(sent, big), Deadline::Now, false).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 2, "side messages a bounded channel took at once");
        assert!(matches!(
            tx.send(numbered(sent, big), Deadline::Now, false),
            Err((_, SendFail::Full))
        ));
        // Small ones still fit beside them only once a big one is taken.
        assert_eq!(number(&take(&rx).unwrap()), 0);
        tx.send(numbered(2, big), Deadline::Now, false).unwrap();
        tx.send(numbered(3, 100), Deadline::Now, false).unwrap_err();
        let got: Vec<(u32, usize)> = (0..2)
            .map(|_| take(&rx).map(|b| (number(&b), b.len())).unwrap())
            .collect();
        assert_eq!(got, [(1, big), (2, big)]);
        tx.send(numbered(3, 100), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 3);
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        for n in 0..10 {
            tx.send(numbered(n, big), Deadline::Now, false).unwrap();
        }
        for n in 0..10 {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
    }

    /// A send waiting for room on a full side socket goes once a consumer has taken a
    /// message: the kernel says such a socket is writable only once three quarters of
    /// it have been read, so the send naps for the wake-up every take gives. It waited
    /// for the three quarters (here, for its deadline).
    #[test]
    fn a_send_waiting_on_the_side_socket_goes_after_one_take() {
        // Over half the ring, and carried in the side message itself.
        let size = 12 * 1024;
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let mut sent = 0u32;
        while sent < 10_000 && tx.send(numbered(sent, size), Deadline::Now, false).is_ok() {
            sent += 1;
        }
        assert!(sent < 10_000, "the side socket never filled");
        let waiting = std::thread::spawn(move || {
            let deadline = Deadline::after(Duration::from_secs(5));
            let started = Instant::now();
            let sent = tx.send(numbered(sent, size), deadline, false).is_ok();
            (sent, started.elapsed())
        });
        // Until the sender waits (counted among the senders napping for room); a sender
        // never counted is waited for 5 s, and the take below then finds it asleep.
        let napping = || rx.core.header().sleepers.0.send_nappers.load(SeqCst);
        let until = Instant::now() + Duration::from_secs(5);
        while napping() == 0 && Instant::now() < until {
            std::thread::yield_now();
        }
        assert_eq!(number(&take(&rx).unwrap()), 0);
        let (went, took) = waiting.join().unwrap();
        assert!(
            went,
            "the send waited out its deadline after a take ({took:?})"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        for n in 1..=sent {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
    }

    #[test]
    fn a_small_ring_wraps_around_in_order() {
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        // Every message, in order, with its exact length and bytes, none twice or lost.
        let sent = |round: u32| vec![round as u8; (round as usize * 131) % 900];
        let mut next = 0u32;
        for round in 0..200u32 {
            tx.send(msg(sent(round)), Deadline::Now, false).unwrap();
            if round % 3 != 0 {
                continue;
            }
            while let Ok(got) = take(&rx) {
                assert_eq!(got, sent(next), "message {next}");
                next += 1;
            }
            assert_eq!(next, round + 1, "after round {round}");
        }
        // Items larger than half the ring go to the side socket, in order.
        tx.send(msg(vec![1; 100]), Deadline::Now, false).unwrap();
        tx.send(msg(vec![2; 3000]), Deadline::Now, false).unwrap();
        tx.send(msg(vec![3; 100]), Deadline::Now, false).unwrap();
        let mut order = Vec::new();
        while let Ok(got) = take(&rx) {
            order.push((got[0], got.len()));
        }
        assert_eq!(order[order.len() - 3..], [(1, 100), (2, 3000), (3, 100)]);
    }

    /// Where the producers are in the ring (bytes from its start).
    fn ring_position(rx: &RawReceiver) -> u64 {
        rx.core.header().produced.0.tail.load(SeqCst) % rx.core.ring_len
    }

    #[test]
    fn a_ring_whose_consumer_keeps_up_stays_in_its_first_pages() {
        let (tx, rx) = channel(DEFAULT_RING, None).unwrap();
        // 8 MiB through a 4 MiB ring, each message taken before the next is sent.
        let mut furthest = 0;
        for n in 0..8192u32 {
            let len = 64 + (n as usize * 97) % 1900;
            tx.send(numbered(n, len), Deadline::Now, false).unwrap();
            furthest = furthest.max(ring_position(&rx));
            let got = take(&rx).unwrap();
            assert_eq!((number(&got), got.len()), (n, len), "message {n}");
            assert!(
                got[4..].iter().all(|&b| b == (n % 251) as u8),
                "message {n}"
            );
        }
        let hot = 64 << 10;
        assert!(
            furthest <= hot + 4096 + 2048,
            "the producers went {furthest} bytes into the ring"
        );
        // A consumer that falls behind: the ring fills past the first pages, in order.
        for n in 0..1000u32 {
            tx.send(numbered(n, 1000), Deadline::Now, false).unwrap();
        }
        assert!(
            ring_position(&rx) > hot,
            "a ring that is not empty does not start over"
        );
        for n in 0..1000u32 {
            let got = take(&rx).unwrap();
            assert_eq!((number(&got), got.len()), (n, 1000));
        }
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
    }

    /// A ring that starts over at its beginning keeps all of its room: a burst sent
    /// right after (no consumer reading) fits as it would anywhere else, in a channel
    /// bounded by items, in one that is not, and in an unbounded one (which stays in
    /// its own ring rather than moving to an overflow segment).
    #[test]
    fn a_ring_that_starts_over_keeps_all_its_room() {
        type Make = fn() -> io::Result<(RawSender, RawReceiver)>;
        let kinds: [(&str, Make); 3] = [
            ("bounded", || channel(DEFAULT_RING, Some(1000))),
            ("plain", || channel(DEFAULT_RING, None)),
            ("unbounded", || unbounded(DEFAULT_RING)),
        ];
        for (kind, make) in kinds {
            let (tx, rx) = make().unwrap();
            // Small messages, each taken at once, until the producers are past the
            // first pages, with the ring empty.
            let mut n = 0u32;
            while ring_position(&rx) < (64 << 10) {
                tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
                take(&rx).unwrap();
                n += 1;
                assert!(
                    n < 100_000,
                    "{kind}: the producers never got past the first pages"
                );
            }
            let before = ring_position(&rx);
            // The first message of the burst reaches into a new page: the ring starts
            // over. 1000 messages, about 1 MB of a 4 MiB ring, without a consumer.
            for k in 0..1000u32 {
                let len = if k == 0 { 4000 } else { 1000 };
                if let Err((_, e)) = tx.send(numbered(k, len), Deadline::Now, false) {
                    panic!("{kind}: message {k} refused ({e:?}), the burst began at {before}");
                }
                if k == 0 {
                    assert!(
                        ring_position(&rx) < 8192,
                        "{kind}: the ring did not start over"
                    );
                }
            }
            let ring = rx.core.header().produced.0.ring.load(SeqCst);
            assert_eq!(ring, 0, "{kind}: the burst moved to an overflow segment");
            for k in 0..1000u32 {
                let got = take(&rx).unwrap();
                assert_eq!(number(&got), k, "{kind}");
            }
            assert!(matches!(take(&rx), Err(RecvFail::Empty)), "{kind}");
        }
    }

    /// A producer that starts an empty ring over does not take the consumers' lock from
    /// a consumer that died holding it: the next consumer takes it over and learns
    /// that its predecessor died (an unbounded channel's consumer then repairs a move
    /// between rings that it left half-done).
    #[test]
    fn a_start_over_leaves_a_dead_consumers_lock_to_the_next_consumer() {
        let (tx, rx) = channel(DEFAULT_RING, Some(1000)).unwrap();
        let mut n = 0u32;
        while ring_position(&rx) < (64 << 10) {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
            take(&rx).unwrap();
            n += 1;
            assert!(n < 100_000, "the producers never got past the first pages");
        }
        // A consumer dies holding the consumers' lock.
        let dying = rx.clone();
        std::thread::spawn(move || {
            ring::KEEP_LOCKS.with(|k| k.set(true));
            let held = Head::lock(dying.core.header(), LockWait::Until(None));
            assert!(held.is_some());
        })
        .join()
        .unwrap();
        // A burst whose first message starts the ring over.
        for k in 0..10u32 {
            tx.send(
                numbered(k, if k == 0 { 4000 } else { 1000 }),
                Deadline::Now,
                false,
            )
            .unwrap();
            if k == 0 {
                assert!(ring_position(&rx) < 8192, "the ring did not start over");
            }
        }
        let next = Head::lock(rx.core.header(), LockWait::Until(None)).unwrap();
        assert!(
            next.took_over,
            "the next consumer was not told that the last one died"
        );
        drop(next);
        for k in 0..10u32 {
            assert_eq!(number(&take(&rx).unwrap()), k);
        }
    }

    /// A message of `len` bytes numbered `n` (its first 4 bytes).
    fn numbered(n: u32, len: usize) -> Encoded {
        let mut bytes = vec![(n % 251) as u8; len.max(4)];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        msg(bytes)
    }

    fn number(bytes: &[u8]) -> u32 {
        u32::from_le_bytes(bytes[..4].try_into().unwrap())
    }

    /// Fills an unbounded channel's own ring with `len`-byte messages numbered from 0,
    /// up to the last one it takes without overflowing; returns how many.
    fn fill_own_ring(tx: &RawSender, len: usize) -> u32 {
        let core = &*tx.core;
        let mut n = 0;
        loop {
            let mut tail = Tail::lock(core.header(), LockWait::Until(None)).unwrap();
            let m = numbered(n, len);
            let written = core
                .write_slot(&mut tail, len, false, |mut slot| {
                    slot.payload().copy_from_slice(&m.bytes);
                    slot.publish(INLINE, false);
                })
                .unwrap();
            if written.is_none() {
                return n;
            }
            n += 1;
        }
    }

    /// An unbounded channel whose overflow maps (this process's, of each side) are held
    /// by a thread that is gone, as in a child forked (`spawn_fork`) while another
    /// thread held them: sends and receives through the overflow segments go on. They
    /// waited for ever for the maps, holding the side's shared lock, so that side of
    /// the channel stopped in every process.
    #[test]
    fn overflow_maps_held_by_a_thread_that_is_gone_are_passed_by() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let full = fill_own_ring(&tx, 100);
        // Held for ever: the guards are forgotten.
        std::mem::forget(tx.core.write_map.lock().unwrap());
        std::mem::forget(rx.core.read_map.lock().unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Into overflow segments (the own ring is full), then all of it back.
            for n in full..full + 200 {
                tx.send(numbered(n, 100), Deadline::Never, false).unwrap();
            }
            let got: Vec<u32> = (0..full + 200)
                .map(|_| number(&take(&rx).unwrap()))
                .collect();
            let _ = done.send((got, rx.core.header().overflow.0.made.load(SeqCst)));
        });
        let (got, made) = finished
            .recv_timeout(Duration::from_secs(20))
            .expect("a send or a receive waited for a map held by a thread that is gone");
        assert!(made > 0, "the sends did not overflow");
        assert_eq!(got, (0..full + 200).collect::<Vec<_>>());
    }

    #[test]
    fn an_unbounded_channel_gives_its_consumers_a_moment_before_it_overflows() {
        // Nobody takes anything: a blocking send waits `OVERFLOW_WAIT`, then overflows.
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let full = fill_own_ring(&tx, 100);
        assert!(full > 10, "{full} messages in a 4 KiB ring");
        let o = &rx.core.header().overflow.0;
        let start = Instant::now();
        tx.send(numbered(full, 100), Deadline::Never, false)
            .unwrap();
        assert!(start.elapsed() >= OVERFLOW_WAIT, "{:?}", start.elapsed());
        assert_eq!(o.made.load(SeqCst), 1);
        for n in 0..=full {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));

        // A consumer that starts taking messages once the sender waits: the message goes
        // into the room it made, no segment is made. The wait is long here, so that a
        // loaded machine cannot keep the consumer off a CPU for all of it.
        OVERFLOW_WAIT_HERE.with(|w| w.set(Duration::from_secs(10)));
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let full = fill_own_ring(&tx, 100);
        let h = rx.core.header();
        let sent = std::sync::atomic::AtomicBool::new(false);
        let (mut got, waited) = std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let end = Instant::now() + Duration::from_secs(20);
                while h.sleepers.0.send_nappers.load(SeqCst) == 0 && Instant::now() < end {
                    std::thread::yield_now();
                }
                let waited = h.sleepers.0.send_nappers.load(SeqCst) > 0;
                let mut got = Vec::new();
                while !sent.load(SeqCst) && Instant::now() < end {
                    if let Ok(m) = take(&rx) {
                        got.push(number(&m));
                    }
                }
                (got, waited)
            });
            tx.send(numbered(full, 100), Deadline::Never, false)
                .unwrap();
            sent.store(true, SeqCst);
            consumer.join().unwrap()
        });
        OVERFLOW_WAIT_HERE.with(|w| w.set(OVERFLOW_WAIT));
        assert!(waited, "the sender never waited for room");
        while let Ok(m) = take(&rx) {
            got.push(number(&m));
        }
        assert_eq!(got, (0..=full).collect::<Vec<_>>());
        assert_eq!(
            h.overflow.0.made.load(SeqCst),
            0,
            "the send overflowed although a consumer made room"
        );
    }

    #[test]
    fn an_unbounded_channel_takes_many_rings_and_gives_them_back() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        // Ten rings' worth before anyone reads: a non-blocking send never waits.
        for n in 0..400u32 {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
        }
        let o = &rx.core.header().overflow.0;
        let made = o.made.load(SeqCst);
        assert!(made >= 9, "{made} segments for ten rings' worth");
        assert_eq!(rx.len(), 400);
        for n in 0..400u32 {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        // The next send finds the channel's own ring empty and goes back to it, and so
        // does the next receive; the segments are free for the next burst.
        tx.send(numbered(7, 100), Deadline::Now, false).unwrap();
        assert_eq!(rx.core.header().produced.0.ring.load(SeqCst), 0);
        assert_eq!(number(&take(&rx).unwrap()), 7);
        assert_eq!(rx.core.header().consumed.0.ring.load(SeqCst), 0);
        for n in 0..400u32 {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
        }
        assert_eq!(o.made.load(SeqCst), made, "freed segments are reused");
        for n in 0..400u32 {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
    }

    /// Sends 300 messages on `tx`, the thread dying (keeping the producers' lock) at
    /// `step` of the first move between rings; the messages whose send returned are
    /// all received, in order, by a consumer that may itself die at its move (`4`).
    fn a_death_mid_move(step: u32, consumer_dies: bool) {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let dying = tx.clone();
        let sent = std::thread::spawn(move || {
            overflow::DIE_AT.with(|d| d.set(step));
            let mut sent = 0;
            for n in 0..300u32 {
                if dying.send(numbered(n, 100), Deadline::Now, false).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
        .join()
        .unwrap();
        if step > 0 {
            assert!(sent < 300, "the producer should have died");
            // It died in its move, not before (its lock is a dead one's).
            let leaving = tx.core.header().produced.0.leaving.load(SeqCst);
            assert_eq!(leaving, 1, "step {step}: leaving the own ring");
            assert!(sent > 10, "step {step}: {sent} sent");
        }
        // The next producer takes over the lock and finishes the move.
        for n in sent..300 {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
        }
        let mut got = Vec::new();
        if consumer_dies {
            got = receive_until_dying(&rx);
            assert!(got.len() > 10, "{} received before the death", got.len());
            assert_ne!(rx.core.header().consumed.0.ring.load(SeqCst), 0);
        }
        while let Ok(bytes) = take(&rx) {
            got.push(number(&bytes));
        }
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "step {step}");
    }

    /// Whether `e` is the failure of a test's map (`overflow::MAPS_FAIL`).
    fn failed_map(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::OutOfMemory && e.to_string().contains("a test's map")
    }

    /// A producer that takes the lock over from one that died moving from one overflow
    /// segment to the next, and cannot finish the move (the segment it leaves does not
    /// map now), lets the lock go as abandoned: the next producer finishes the move,
    /// and every message whose send returned is received, in order. (Let go as clean,
    /// the link out of the segment was never published: the consumers stopped there,
    /// and every later message was lost to them.)
    #[test]
    fn a_producer_whose_repair_fails_leaves_it_to_the_next() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let (p, o) = (&rx.core.header().produced.0, &rx.core.header().overflow.0);
        let mut first = 0u32;
        while p.ring.load(SeqCst) != 1 {
            tx.send(numbered(first, 100), Deadline::Now, false).unwrap();
            first += 1;
            assert!(first < 1000, "the producers never left their own ring");
        }
        // A producer dies at its next move, to segment 2, once it has said so in the
        // channel's header (step 2) and before the link in segment 1 is published.
        let dying = tx.clone();
        let sent = std::thread::spawn(move || {
            overflow::DIE_AT.with(|d| d.set(2));
            let mut n = first;
            while dying.send(numbered(n, 100), Deadline::Now, false).is_ok() {
                n += 1;
                assert!(n < first + 1000, "the producer never moved on");
            }
            n
        })
        .join()
        .unwrap();
        assert_eq!((p.ring.load(SeqCst), o.made.load(SeqCst)), (2, 2));
        assert_eq!(p.leaving.load(SeqCst), 2, "leaving segment 1");
        // A producer takes the lock over, and cannot map segment 1 to finish the move.
        tx.core.forget_mapped();
        let repairer = tx.clone();
        let failed = std::thread::spawn(move || {
            overflow::MAPS_FAIL.with(|f| f.set(true));
            repairer.send(numbered(sent, 100), Deadline::Now, false)
        })
        .join()
        .unwrap();
        assert!(
            matches!(&failed, Err((_, SendFail::Io(e))) if failed_map(e)),
            "{:?}",
            failed.map_err(|(_, e)| e)
        );
        let state = rx.core.header().tail_lock.0.state.load(SeqCst);
        assert_eq!(state, crate::sync::raw::ABANDONED);
        for n in sent..sent + 100 {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
        }
        let mut got = Vec::new();
        while let Ok(bytes) = take(&rx) {
            got.push(number(&bytes));
        }
        assert_eq!(got, (0..sent + 100).collect::<Vec<_>>());
        assert_eq!(rx.len(), 0);
    }

    /// A handle whose descriptors are not where they belong is refused: two swapped (a
    /// bell and the senders' liveness pipe: decoded, a timed receive read the pipe and
    /// waited for ever), a sender's handle decoded as a receiver's (it kept its own
    /// senders alive) and a receiver's as a sender's. The channel's own handles decode.
    #[test]
    fn a_handle_with_descriptors_out_of_place_is_refused() {
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        let _: RawReceiver = codec::resend(&rx).unwrap();
        let _: RawSender = codec::resend(&tx).unwrap();
        let err = codec::resend::<_, RawReceiver>(&tx).map(drop).unwrap_err();
        assert!(err.contains("receiver's handle"), "{err}");
        let err = codec::resend::<_, RawSender>(&rx).map(drop).unwrap_err();
        assert!(err.contains("sender's handle"), "{err}");
        // The descriptors' indices follow the segment's length (8 bytes) and the flag
        // (1 byte), 4 bytes each.
        let mut enc = codec::encode(&rx).unwrap();
        let at = |i: usize| 9 + 4 * i;
        assert_eq!(enc.bytes[at(1)..at(1) + 4], 1u32.to_le_bytes());
        enc.bytes[at(1)..at(1) + 4].copy_from_slice(&5u32.to_le_bytes());
        enc.bytes[at(5)..at(5) + 4].copy_from_slice(&1u32.to_le_bytes());
        let fds = std::mem::take(&mut enc.fds);
        let err = codec::decode::<RawReceiver>(&enc.bytes, fds)
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("receiver's handle"), "{err}");
    }

    /// A queue handle's two halves, as they travel together.
    struct Pair<'a>(Option<&'a RawSender>, &'a RawReceiver);

    impl Serialize for Pair<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_pair(self.0, self.1, s)
        }
    }

    struct Decoded(Option<RawSender>, RawReceiver);

    impl<'de> Deserialize<'de> for Decoded {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (tx, rx) = deserialize_pair(d)?;
            Ok(Decoded(tx, rx))
        }
    }

    /// A queue handle travels as 9 descriptors and arrives as one core shared by its
    /// halves (a closed one without a sender); one whose sender's token is another
    /// channel's is refused.
    #[test]
    fn a_queue_handle_travels_whole_and_its_tokens_are_checked() {
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        let enc = codec::encode(&Pair(Some(&tx), &rx)).unwrap();
        assert_eq!(enc.fds.len(), 9);
        let Decoded(their_tx, their_rx) = codec::decode(&enc.bytes, enc.fds)
            .map_err(|e| e.to_string())
            .unwrap();
        let their_tx = their_tx.expect("a sender");
        assert!(Arc::ptr_eq(&their_tx.core, &their_rx.core));
        their_tx.send(numbered(3, 8), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 3);
        let Decoded(none, _) = codec::resend(&Pair(None, &rx)).unwrap();
        assert!(none.is_none());
        let (other_tx, _other_rx) = channel(MIN_RING, None).unwrap();
        let err = codec::resend::<_, Decoded>(&Pair(Some(&other_tx), &rx))
            .map(drop)
            .unwrap_err();
        assert!(err.contains("sender's token is not the channel's"), "{err}");
    }

    /// A sleeping sender's count that another process zeroed is let go without a
    /// panic (it panicked in builds with overflow checks, in a `Drop`).
    #[test]
    fn a_zeroed_count_of_sleeping_senders_is_let_go() {
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        let sleeping = tx.sleeping();
        rx.core.header().sleepers.0.senders.store(0, SeqCst);
        drop(sleeping);
        assert_eq!(rx.core.header().sleepers.0.senders.load(SeqCst), 0);
        // A sleeping receiver's alike, its count left at zero (wrapped, every send rang
        // the receivers' doorbell, and the next sleeper was hidden from senders).
        let sleeping = rx.sleeping();
        rx.core.header().sleepers.0.receivers.store(0, SeqCst);
        drop(sleeping);
        assert_eq!(rx.core.header().sleepers.0.receivers.load(SeqCst), 0);
        tx.send(numbered(1, 8), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 1);
    }

    /// The free overflow segments: the warm ones, then the cold ones, each in order.
    fn free_segments(o: &crate::shm::layout::Overflow) -> (Vec<u64>, Vec<u64>) {
        let mut warm: Vec<u64> = o.warm.iter().map(|w| w.load(SeqCst)).collect();
        warm.retain(|&k| k != 0);
        warm.sort_unstable();
        let cold = (0..o.cold.len() * 64)
            .filter(|&i| o.cold[i / 64].load(SeqCst) & (1 << (i % 64)) != 0)
            .map(|i| i as u64 + 1)
            .collect();
        (warm, cold)
    }

    /// A send whose overflow segment does not map (no address space or mappings left)
    /// fails, its message not sent, and the segment stays free for the next: one made
    /// at the end of the file and a freed one with its memory alike. (Kept from the
    /// free ones, each failed send used one up for good, with its memory if it had
    /// any: a program retrying while memory was short used up all the queue's
    /// segments.)
    #[test]
    fn a_segment_that_does_not_map_stays_free() {
        let failing = |tx: &RawSender, n: u32| {
            let tx = tx.clone();
            let sent = std::thread::spawn(move || {
                overflow::MAPS_FAIL.with(|f| f.set(true));
                tx.send(numbered(n, 100), Deadline::Now, false)
                    .map_err(|(_, e)| e)
            })
            .join()
            .unwrap();
            assert!(
                matches!(&sent, Err(SendFail::Io(e)) if failed_map(e)),
                "{sent:?}"
            );
        };
        // New segments.
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let o = &rx.core.header().overflow.0;
        let full = fill_own_ring(&tx, 100);
        for _ in 0..3 {
            failing(&tx, full);
        }
        assert_eq!(free_segments(o), (vec![1], vec![]));
        tx.send(numbered(full, 100), Deadline::Now, false).unwrap();
        for n in 0..=full {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        assert_eq!(o.made.load(SeqCst), 1);

        // Freed segments, with their memory (warm) and without (cold).
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let o = &rx.core.header().overflow.0;
        for n in 0..400u32 {
            tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
        }
        for n in 0..400u32 {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
        tx.send(numbered(7, 100), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 7);
        let made = o.made.load(SeqCst);
        let free = free_segments(o);
        assert_eq!(free.0.len(), crate::shm::layout::WARM_SEGMENTS);
        assert_eq!(free.0.len() + free.1.len(), made as usize, "{free:?}");
        tx.core.forget_mapped();
        let full = fill_own_ring(&tx, 100);
        failing(&tx, full);
        assert_eq!(free_segments(o), free);
        tx.send(numbered(full, 100), Deadline::Now, false).unwrap();
        for n in 0..=full {
            assert_eq!(number(&take(&rx).unwrap()), n);
        }
        assert_eq!(o.made.load(SeqCst), made);
    }

    /// A consumer that takes the lock over from one that died consuming a message in an
    /// overflow segment, and cannot finish that consume (the segment does not map now),
    /// lets the lock go as abandoned: the next consumer finishes it, and each message
    /// is received once. (Let go as clean, the dead consumer's message was received a
    /// second time and the count of those waiting said one fewer than there were.)
    #[test]
    fn a_consumer_whose_repair_fails_leaves_it_to_the_next() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let p = &rx.core.header().produced.0;
        let mut sent = 0u32;
        while p.ring.load(SeqCst) != 1 || sent < 60 {
            tx.send(numbered(sent, 100), Deadline::Now, false).unwrap();
            sent += 1;
            assert!(sent < 1000, "the producers never left their own ring");
        }
        let c = &rx.core.header().consumed.0;
        let mut got = Vec::new();
        while c.ring.load(SeqCst) == 0 {
            got.push(number(&take(&rx).unwrap()));
        }
        // A consumer dies consuming the next message, in segment 1.
        let dying = rx.clone();
        got.push(dying_at(ring::DIES_CONSUMING, move || {
            number(&take(&dying).unwrap())
        }));
        rx.core.forget_mapped();
        let repairer = rx.clone();
        let failed = std::thread::spawn(move || {
            overflow::MAPS_FAIL.with(|f| f.set(true));
            take(&repairer)
        })
        .join()
        .unwrap();
        assert!(
            matches!(&failed, Err(RecvFail::Io(e)) if failed_map(e)),
            "{failed:?}"
        );
        let state = rx.core.header().head_lock.0.state.load(SeqCst);
        assert_eq!(state, crate::sync::raw::ABANDONED);
        assert_eq!(rx.len(), (sent as usize) - got.len());
        while let Ok(bytes) = take(&rx) {
            got.push(number(&bytes));
        }
        assert_eq!(got, (0..sent).collect::<Vec<_>>());
        assert_eq!(rx.len(), 0);
    }

    /// A consumer on another thread that receives until it dies (keeping the
    /// consumers' lock) at its first move between rings; what it received. It did die
    /// there: a consumer that ran out of messages first would have let the lock go.
    fn receive_until_dying(rx: &RawReceiver) -> Vec<u32> {
        let dying = rx.clone();
        let got = std::thread::spawn(move || {
            overflow::DIE_AT.with(|d| d.set(4));
            let mut got = Vec::new();
            while let Ok(bytes) = take(&dying) {
                got.push(number(&bytes));
            }
            got
        })
        .join()
        .unwrap();
        let holder = rx.core.header().head_lock.0.holder();
        assert!(
            holder.is_some_and(|h| h != crate::sync::raw::ABANDONED),
            "the consumer did not die in a move ({} received)",
            got.len()
        );
        got
    }

    /// Runs `f` on a thread that "dies" at `point` of a publish or a consume (it stops
    /// there, keeping the channel's lock), and returns what `f` returned.
    fn dying_at<R: Send + 'static>(point: u32, f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::spawn(move || {
            ring::DIES_IN.with(|d| d.set(point));
            ring::KEEP_LOCKS.with(|k| k.set(true));
            f()
        })
        .join()
        .unwrap()
    }

    /// Sends message `n` (a task, with `task`) from a thread of its own (holding a
    /// sender of its own) that dies at `point` of the publish.
    fn send_dying(tx: &RawSender, point: u32, n: u32, task: bool) {
        send_dying_encoded(tx, point, numbered(n, 100), task);
    }

    /// Sends `m` (a task, with `task`) from a thread of its own that dies at `point`.
    fn send_dying_encoded(tx: &RawSender, point: u32, m: Encoded, task: bool) {
        let dying = tx.clone();
        dying_at(point, move || {
            dying.send(m, Deadline::Now, task).unwrap();
        });
    }

    /// A producer that dies publishing (between the item count and the position), then
    /// a consumer that dies consuming: the next ones finish what each began, and the
    /// counts agree with the records after (an empty channel says so; a bounded one
    /// keeps its whole bound).
    #[test]
    fn a_death_mid_publish_or_mid_consume_leaves_the_counts_right() {
        for growable in [false, true] {
            let (tx, rx) = bounded_or_not(growable);
            send_dying(&tx, ring::DIES_PUBLISHING, 0, false);
            for n in 1..3 {
                tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
            }
            assert_eq!(rx.len(), 3, "unbounded: {growable}");
            let dying = rx.clone();
            let first = dying_at(ring::DIES_CONSUMING, move || number(&take(&dying).unwrap()));
            assert_eq!(
                first, 0,
                "the dead producer's message, unbounded: {growable}"
            );
            for n in 1..3 {
                assert_eq!(number(&take(&rx).unwrap()), n, "unbounded: {growable}");
            }
            assert!(
                matches!(take(&rx), Err(RecvFail::Empty)),
                "unbounded: {growable}"
            );
            assert_eq!(rx.len(), 0, "unbounded: {growable}");
            assert!(!rx.ready(), "unbounded: {growable}");
            // A death mid-publish with the channel empty: a wait for readiness sees the
            // message (it is not waiting for the next receive to finish the publish).
            send_dying(&tx, ring::DIES_PUBLISHING, 9, false);
            assert!(rx.ready(), "unbounded: {growable}");
            assert_eq!(number(&take(&rx).unwrap()), 9, "unbounded: {growable}");
            assert!(!rx.ready(), "unbounded: {growable}");
            for n in 0..3 {
                tx.send(numbered(n, 100), Deadline::Now, false).unwrap();
            }
            if !growable {
                assert!(matches!(
                    tx.send(numbered(3, 100), Deadline::Now, false),
                    Err((_, SendFail::Full))
                ));
            }
            assert_eq!(rx.len(), 3, "unbounded: {growable}");
        }
    }

    /// An unbounded channel, or one bounded to 3 items.
    fn bounded_or_not(growable: bool) -> (RawSender, RawReceiver) {
        if growable {
            unbounded(MIN_RING)
        } else {
            channel(MIN_RING, Some(3))
        }
        .unwrap()
    }

    /// Tasks put and not marked done (`JoinableQueue`), as the channel counts them.
    fn tasks(rx: &RawReceiver) -> u64 {
        let h = rx.header();
        h.produced.0.tasks.load(SeqCst) - h.tasks_done.load(SeqCst)
    }

    /// Producers that die publishing a task (`JoinableQueue`): one that dies before its
    /// publish changed anything counts no task (it counted one, for good: `join` then
    /// waited for ever for a task no consumer could get), and one that dies between the
    /// counts and the position counts it once its publish is finished by the next.
    #[test]
    fn a_producer_that_dies_publishing_a_task_counts_it_only_with_its_message() {
        for growable in [false, true] {
            let (tx, rx) = bounded_or_not(growable);
            send_dying(&tx, ring::DIES_BEFORE_PUBLISHING, 0, true);
            tx.send(numbered(1, 100), Deadline::Now, true).unwrap();
            assert_eq!(tasks(&rx), 1, "unbounded: {growable}");
            send_dying(&tx, ring::DIES_PUBLISHING, 2, true);
            tx.send(numbered(3, 100), Deadline::Now, false).unwrap();
            assert_eq!(tasks(&rx), 2, "unbounded: {growable}");
            let got: Vec<u32> = (0..3).map(|_| number(&take(&rx).unwrap())).collect();
            assert_eq!(got, [1, 2, 3], "unbounded: {growable}");
            assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        }
    }

    /// Message `n` carrying the write end of a new pipe (so it travels on the side
    /// socket), and the read end, which sees the end of the pipe once that write end is
    /// closed everywhere.
    fn numbered_with_pipe(n: u32) -> (Encoded, OwnedFd) {
        let (r, w) = sys::pipe().unwrap();
        let mut m = numbered(n, 100);
        m.fds.push(w);
        (m, r)
    }

    /// Whether every copy of the pipe's write end is closed (its read end sees the end).
    fn pipe_closed(r: &OwnedFd) -> bool {
        sys::poll_now(r.as_fd()).unwrap().hangup
    }

    /// A producer that dies between sending a side message and publishing its record
    /// (a message with descriptors): the next send, or a receive that finds nothing else
    /// (the producer was the last), publishes a record for it, and the message comes
    /// through with its descriptors. They stayed open on the side socket until a later
    /// side message's receive dropped them, for as long as none came (the write end
    /// here stood for a reply channel's sender, whose receiver never saw the end).
    #[test]
    fn a_side_message_whose_producer_died_before_its_record_comes_through() {
        for growable in [false, true] {
            for later in [false, true] {
                let (tx, rx) = bounded_or_not(growable);
                let (m, r) = numbered_with_pipe(0);
                let dying = tx.clone();
                dying_at(ring::DIES_BEFORE_PUBLISHING, move || {
                    dying.send(m, Deadline::Now, false).unwrap();
                });
                if later {
                    tx.send(numbered(1, 100), Deadline::Now, false).unwrap();
                }
                let (n, fds) = rx
                    .recv_with(Deadline::Now, &mut |b, fds| (number(b), fds))
                    .unwrap_or_else(|e| panic!("{e:?}, unbounded: {growable}, later: {later}"));
                assert_eq!(
                    (n, fds.len()),
                    (0, 1),
                    "unbounded: {growable}, later: {later}"
                );
                assert!(!pipe_closed(&r));
                drop(fds);
                assert!(pipe_closed(&r), "unbounded: {growable}, later: {later}");
                if later {
                    assert_eq!(number(&take(&rx).unwrap()), 1);
                }
                assert!(matches!(take(&rx), Err(RecvFail::Empty)));
                assert_eq!(rx.len(), 0, "unbounded: {growable}, later: {later}");
                // The channel goes on: a side message, then one in the ring.
                let (m, r) = numbered_with_pipe(2);
                tx.send(m, Deadline::Now, false).unwrap();
                tx.send(numbered(3, 100), Deadline::Now, false).unwrap();
                let (n, fds) = rx
                    .recv_with(Deadline::Now, &mut |b, fds| (number(b), fds))
                    .unwrap();
                assert_eq!((n, fds.len()), (2, 1));
                drop(fds);
                assert!(pipe_closed(&r));
                assert_eq!(number(&take(&rx).unwrap()), 3);
            }
        }
    }

    /// A producer that dies between taking a side message's number and sending it,
    /// and one that dies once its record is published (the repair then publishes a
    /// second record for the message): the record the repair publishes is passed over,
    /// and a task it counts (`JoinableQueue`) is marked done, since nobody has it; a
    /// task that did come through counts once.
    #[test]
    fn a_repaired_side_record_without_its_message_is_passed_over() {
        for growable in [false, true] {
            let (tx, rx) = bounded_or_not(growable);
            let (m, r) = numbered_with_pipe(0);
            let dying = tx.clone();
            dying_at(ring::DIES_BEFORE_SENDING, move || {
                dying.send(m, Deadline::Now, true).unwrap();
            });
            // The message was never sent: its descriptor went with the dead thread's
            // copy.
            assert!(pipe_closed(&r));
            assert!(
                matches!(take(&rx), Err(RecvFail::Empty)),
                "unbounded: {growable}"
            );
            assert_eq!(tasks(&rx), 0, "unbounded: {growable}");
            assert_eq!(rx.len(), 0, "unbounded: {growable}");
            // Dies with its publish done (a task), and a repair repeats its record.
            let (m, r) = numbered_with_pipe(1);
            send_dying_encoded(&tx, ring::DIES_PUBLISHING, m, true);
            tx.send(numbered(2, 100), Deadline::Now, true).unwrap();
            let (n, fds) = rx
                .recv_with(Deadline::Now, &mut |b, fds| (number(b), fds))
                .unwrap();
            assert_eq!((n, fds.len()), (1, 1), "unbounded: {growable}");
            drop(fds);
            assert!(pipe_closed(&r));
            assert_eq!(number(&take(&rx).unwrap()), 2, "unbounded: {growable}");
            assert!(
                matches!(take(&rx), Err(RecvFail::Empty)),
                "unbounded: {growable}"
            );
            assert_eq!(tasks(&rx), 2, "unbounded: {growable}");
            assert_eq!(rx.len(), 0, "unbounded: {growable}");
        }
    }

    /// A bounded channel with room for one small record only, whose producer dies
    /// between sending a small side message (its record the smallest, 16 bytes) and
    /// publishing it: the record the next send publishes for it fits where the dead
    /// one's did, and the message comes through, in its place. (The repair's record
    /// was larger, did not fit, and the next side message took the next number: the
    /// receive that reached it dropped the dead producer's as an orphan.) And a send
    /// whose own message then finds no room waits, writing nothing.
    #[test]
    fn a_repair_fits_where_the_dead_producers_record_did() {
        let (tx, rx) = channel(MIN_RING, None).unwrap();
        let mut n = 0;
        while tx.send(numbered(n, 8), Deadline::Now, false).is_ok() {
            n += 1;
        }
        assert_eq!(number(&take(&rx).unwrap()), 0);
        let (m, r) = numbered_with_pipe(1000);
        let m = Encoded {
            bytes: m.bytes[..4].to_vec(),
            ..m
        };
        send_dying_encoded(&tx, ring::DIES_BEFORE_PUBLISHING, m, false);
        let (second, r2) = numbered_with_pipe(1001);
        let second = Encoded {
            bytes: second.bytes[..4].to_vec(),
            ..second
        };
        let (second, e) = tx.send(second, Deadline::Now, false).unwrap_err();
        assert!(matches!(e, SendFail::Full), "{e:?}");
        for k in 1..n {
            assert_eq!(number(&take(&rx).unwrap()), k);
        }
        let (k, fds) = rx
            .recv_with(Deadline::Now, &mut |b, fds| (number(b), fds))
            .unwrap();
        assert_eq!((k, fds.len()), (1000, 1));
        drop(fds);
        assert!(pipe_closed(&r));
        tx.send(second, Deadline::Now, false).unwrap();
        let (k, fds) = rx
            .recv_with(Deadline::Now, &mut |b, fds| (number(b), fds))
            .unwrap();
        assert_eq!((k, fds.len()), (1001, 1));
        drop(fds);
        assert!(pipe_closed(&r2));
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
    }

    /// A send that publishes a dead producer's side record, then finds no room for its
    /// own message, wakes the receivers for the record: they slept on to the end of
    /// their nap (100 ms at most), the record counted as an item meanwhile. Seen on the
    /// wake-up's count, with a receiver counted as napping.
    #[test]
    fn a_repair_by_a_send_that_waits_wakes_the_receivers() {
        let (tx, rx) = channel(MIN_RING, Some(1)).unwrap();
        let (m, _r) = numbered_with_pipe(0);
        send_dying_encoded(&tx, ring::DIES_BEFORE_SENDING, m, false);
        let sleepers = &rx.core.header().sleepers.0;
        sleepers.recv_nappers.fetch_add(1, SeqCst);
        let before = sleepers.recv_seq.load(SeqCst);
        assert!(matches!(
            tx.send(numbered(1, 100), Deadline::Now, false),
            Err((_, SendFail::Full))
        ));
        let after = sleepers.recv_seq.load(SeqCst);
        sleepers.recv_nappers.fetch_sub(1, SeqCst);
        assert_ne!(before, after, "no wake-up for the record published");
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        tx.send(numbered(1, 100), Deadline::Now, false).unwrap();
        assert_eq!(number(&take(&rx).unwrap()), 1);
    }

    /// A live producer stopped half-way through a publish (its lock is not taken over)
    /// holds up a receiver of an unbounded channel, whose counts say a message waits:
    /// the receiver waits out its timeout mostly asleep (it spun, a whole CPU, for as
    /// long as the producer stayed stopped), and gets the message once the producer is
    /// gone and its publish finished.
    #[test]
    fn a_receiver_held_up_by_a_stopped_publish_sleeps() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        let producer = {
            let tx = tx.clone();
            std::thread::spawn(move || {
                ring::DIES_IN.with(|d| d.set(ring::DIES_PUBLISHING));
                ring::KEEP_LOCKS.with(|k| k.set(true));
                tx.send(numbered(5, 100), Deadline::Now, false).unwrap();
                stopped_tx.send(()).unwrap();
                let _ = resumed.recv_timeout(Duration::from_secs(60));
            })
        };
        stopped.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(rx.core.has_data(), "the message is counted");
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let before = cpu();
        let held = rx.recv_with(Deadline::after(Duration::from_millis(400)), &mut |b, _| {
            b.to_vec()
        });
        let used = cpu() - before;
        assert!(matches!(held, Err(RecvFail::Empty)), "{held:?}");
        assert!(
            used < Duration::from_millis(200),
            "a receive held up for 400 ms used {used:?} of CPU"
        );
        resume.send(()).unwrap();
        producer.join().unwrap();
        let holder = rx.header().tail_lock.0.state.load(SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::sys::identity_alive(holder) {
            assert!(
                Instant::now() < deadline,
                "the producer's thread still lives"
            );
            std::thread::yield_now();
        }
        assert_eq!(number(&take(&rx).unwrap()), 5);
        drop(tx);
    }

    /// The last producer of a channel dies publishing a task, and no other sends: a
    /// receiver finishes the publish and gets the message (at its first look, even one
    /// that does not wait), then sees the channel empty.
    /// Before, an unbounded channel's receiver spun until its deadline (the counts said
    /// a message waited, the ring held none), and a bounded one's found it empty, with
    /// the task counted for good once the dead producer had counted it.
    #[test]
    fn a_receiver_finishes_the_publish_of_the_last_producer_that_died() {
        for growable in [false, true] {
            let (tx, rx) = bounded_or_not(growable);
            send_dying(&tx, ring::DIES_PUBLISHING, 7, true);
            drop(tx);
            // A joined thread is still a task for a moment (it is told to its joiner
            // before it has left the kernel); once it is gone, the first look, which
            // does not wait, finishes its publish and has the message.
            let holder = rx.header().tail_lock.0.state.load(SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while crate::sys::identity_alive(holder) {
                assert!(Instant::now() < deadline, "the dead thread still lives");
                std::thread::yield_now();
            }
            let got = take(&rx).unwrap();
            assert_eq!(number(&got), 7, "unbounded: {growable}");
            assert!(
                !rx.core.has_data(),
                "the dead producer's message was taken, unbounded: {growable}"
            );
            assert_eq!(tasks(&rx), 1, "unbounded: {growable}");
            let t = Instant::now();
            let empty = rx.recv_with(Deadline::after(Duration::from_millis(50)), &mut |b, _| {
                b.len()
            });
            assert!(
                matches!(empty, Err(RecvFail::Disconnected)),
                "{empty:?}, unbounded: {growable}"
            );
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn a_producer_that_dies_moving_between_rings_loses_nothing() {
        for step in 1..=3 {
            a_death_mid_move(step, false);
        }
    }

    #[test]
    fn a_consumer_that_dies_moving_between_rings_loses_nothing() {
        a_death_mid_move(0, true);
    }

    /// A consumer dies reading an overflow segment (the channel's own ring empty behind
    /// it); the producers then come back to the own ring, and their next record does
    /// not fit it after their link back (it is near half the ring, and the own ring's
    /// position just past half of it), so they link on to a new segment from there. The
    /// next consumer skipped that fresh link as the one the dead consumer had followed
    /// out, and then found the link back naming a place before the own ring's head:
    /// "corrupt", the message after it out of reach.
    #[test]
    fn a_consumer_dead_in_a_segment_keeps_the_producers_next_link() {
        let (tx, rx) = unbounded(MIN_RING).unwrap();
        let ring_len = rx.core.ring_len;
        // The inline record nearest half the ring, and one of 16 bytes.
        let half = (ring_len / 2 - ring::HEADER) as usize;
        let small = 4;
        let send = |n: u32, len: usize| tx.send(numbered(n, len), Deadline::Now, false);
        send(0, half).unwrap();
        send(1, small).unwrap();
        // Does not fit the own ring: a link to segment 1 there, the message in it.
        send(2, half).unwrap();
        let o = &rx.core.header().overflow.0;
        assert_eq!(o.made.load(SeqCst), 1);
        assert_eq!(number(&take(&rx).unwrap()), 0);
        assert_eq!(number(&take(&rx).unwrap()), 1);
        // A consumer follows the link into segment 1, takes message 2, and dies there
        // (keeping the consumers' lock).
        let dying = rx.clone();
        let got = std::thread::spawn(move || {
            ring::KEEP_LOCKS.with(|k| k.set(true));
            number(&take(&dying).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(got, 2);
        let own = rx.core.ring();
        assert_eq!(rx.core.header().consumed.0.ring.load(SeqCst), 1);
        assert_eq!(own.head(), own.tail(), "the own ring is empty");
        let pos = own.tail() % ring_len;
        assert!(
            pos > ring_len / 2 && pos < ring_len / 2 + 2 * ring::link_room(),
            "own ring at {pos} of {ring_len}"
        );
        // Back to the own ring, where message 3 does not fit after the link back: a
        // link on to segment 2 there.
        send(3, half).unwrap();
        assert_eq!(o.made.load(SeqCst), 2);
        assert_eq!(number(&take(&rx).unwrap()), 3);
        assert!(matches!(take(&rx), Err(RecvFail::Empty)));
    }

    /// A consumer dies moving from one overflow segment to the next, after the producers
    /// went back to the channel's own ring, where their first record follows a wrap
    /// marker: the consumer that takes over reads everything, in order.
    #[test]
    fn a_consumer_that_dies_between_segments_after_producers_came_back_loses_nothing() {
        for ring in [16 << 10, 256 << 10] {
            let (tx, rx) = unbounded(ring).unwrap();
            // The channel's own ring and more than one overflow segment's worth.
            let per_ring = (ring / 1008) as u32;
            let total = per_ring * 2 + per_ring / 2;
            for n in 0..total {
                tx.send(numbered(n, 1000), Deadline::Now, false).unwrap();
            }
            let h = rx.core.header();
            assert!(h.overflow.0.made.load(SeqCst) >= 2, "ring {ring}");
            // One consumer reads the own ring and into the first segment.
            let mut next = 0;
            while next < per_ring + per_ring / 4 {
                assert_eq!(number(&take(&rx).unwrap()), next, "ring {ring}");
                next += 1;
            }
            assert_ne!(h.consumed.0.ring.load(SeqCst), 0, "ring {ring}");
            // Another reads on and dies moving to the next segment, holding the lock.
            let got = receive_until_dying(&rx);
            assert_eq!(got, (next..next + got.len() as u32).collect::<Vec<_>>());
            next += got.len() as u32;
            // The own ring is empty: the producers go back to it, and the first record
            // there does not fit before the ring's end.
            for n in total..total + 5 {
                tx.send(numbered(n, 1000), Deadline::Now, false).unwrap();
            }
            assert_eq!(h.produced.0.ring.load(SeqCst), 0, "ring {ring}");
            while next < total + 5 {
                match take(&rx) {
                    Ok(bytes) => assert_eq!(number(&bytes), next, "ring {ring}"),
                    Err(e) => panic!("ring {ring}, message {next}: {e:?}"),
                }
                next += 1;
            }
            assert!(matches!(take(&rx), Err(RecvFail::Empty)));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// An unbounded channel against a `VecDeque`: any sends (small, ring-sized, and
        /// some larger than half a ring, which go on the side) and receives, in any
        /// order.
        #[test]
        fn an_unbounded_channel_is_a_fifo(
            ring in prop_oneof![Just(MIN_RING), Just(256 << 10)],
            ops in prop::collection::vec((any::<bool>(), 0usize..2040, 1usize..40), 1..60),
        ) {
            // (The larger ring starts over early when empty, between overflows.)
            let (tx, rx) = unbounded(ring).unwrap();
            let mut model = std::collections::VecDeque::new();
            let mut n = 0u32;
            for (put, len, count) in ops {
                for _ in 0..count {
                    if put {
                        // Every 50th goes on the side (whose socket holds a few dozen).
                        let len = if n % 50 == 49 { 3000 } else { len };
                        let sent = tx.send(numbered(n, len), Deadline::Now, false);
                        prop_assert!(sent.is_ok(), "send {n} of {len} bytes failed");
                        model.push_back((n, len.max(4)));
                        n += 1;
                    } else {
                        match take(&rx) {
                            Ok(bytes) => prop_assert_eq!(Some((number(&bytes), bytes.len())), model.pop_front()),
                            Err(RecvFail::Empty) => prop_assert!(model.is_empty()),
                            Err(e) => prop_assert!(false, "{e:?}"),
                        }
                    }
                }
                prop_assert_eq!(rx.len(), model.len());
            }
            while let Some(expected) = model.pop_front() {
                let bytes = take(&rx).unwrap();
                prop_assert_eq!((number(&bytes), bytes.len()), expected);
            }
        }

        /// A bounded channel against a `VecDeque`, with a ring large enough to start
        /// over when it is empty: any sends and receives, in any order, the records
        /// wrapping at the end and starting over early mixed.
        #[test]
        fn a_ring_that_starts_over_early_is_a_fifo(ops in prop::collection::vec((any::<bool>(), 0usize..40_000, 1usize..12), 1..80)) {
            let (tx, rx) = channel(256 << 10, None).unwrap();
            let mut model = std::collections::VecDeque::new();
            let mut n = 0u32;
            for (put, len, count) in ops {
                for _ in 0..count {
                    if put {
                        match tx.send(numbered(n, len), Deadline::Now, false) {
                            Ok(()) => {
                                model.push_back((n, len.max(4)));
                                n += 1;
                            }
                            Err((_, SendFail::Full)) => prop_assert!(!model.is_empty()),
                            Err((_, e)) => prop_assert!(false, "send {n} of {len} bytes: {e:?}"),
                        }
                    } else {
                        match take(&rx) {
                            Ok(bytes) => prop_assert_eq!(Some((number(&bytes), bytes.len())), model.pop_front()),
                            Err(RecvFail::Empty) => prop_assert!(model.is_empty()),
                            Err(e) => prop_assert!(false, "{e:?}"),
                        }
                    }
                }
            }
            while let Some(expected) = model.pop_front() {
                let bytes = take(&rx).unwrap();
                prop_assert_eq!((number(&bytes), bytes.len()), expected);
            }
        }

        /// Positions near the top of the counter's range, with a record that reaches past
        /// it: refused as corrupt, not an arithmetic overflow (a panic where overflow is
        /// checked, as in tests and fuzzing).
        #[test]
        fn positions_at_the_end_of_the_range_never_overflow(growable in any::<bool>(), back in 1u64..512) {
            // The consumers' position `8 * back` bytes short of the counter's end, at
            // the ring's start, and there a record as long as the ring.
            let head = u64::MAX - (MIN_RING as u64 - 1);
            let tail = head + 8 * back - 1;
            // The first byte of the counters picks the kind of channel (odd: unbounded).
            let tail = if growable { tail | 1 } else { tail & !1 };
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&tail.to_le_bytes());
            bytes.extend_from_slice(&head.to_le_bytes());
            let mut ring = vec![0u8; MIN_RING];
            ring[..4].copy_from_slice(&(MIN_RING as u32 - 8).to_le_bytes());
            ring[4..8].copy_from_slice(&INLINE.to_le_bytes());
            bytes.extend_from_slice(&ring);
            corrupt_and_drain(&bytes);
        }

        /// A producer whose positions another process set near the top of the
        /// counter's range (an empty ring there) sends without an arithmetic overflow
        /// (a panic where overflow is checked, as in tests and fuzzing: the positions
        /// past its record were added unchecked), and the receiver answers.
        #[test]
        fn a_send_at_the_end_of_the_counters_range_never_overflows(
            growable in any::<bool>(),
            short in 0u64..64,
            len in 0usize..200,
        ) {
            let made = if growable { unbounded(MIN_RING) } else { channel(MIN_RING, None) };
            let (tx, rx) = made.unwrap();
            let h = rx.core.header();
            let at = u64::MAX - 8 * short;
            h.produced.0.tail.store(at, SeqCst);
            h.produced.0.seen_head.store(at, SeqCst);
            h.consumed.0.head.store(at, SeqCst);
            for i in 0..4u8 {
                let _ = tx.send(msg(vec![i; len]), Deadline::Now, false);
            }
            for _ in 0..8 {
                if take(&rx).is_err() {
                    break;
                }
            }
        }

        /// Whatever another process writes into the counters senders read (the
        /// positions and their copies, the item counts, the side messages' number, the
        /// overflow segments' bookkeeping), sends return, the message sent or an error:
        /// no panic, no access outside the segment (a position out of line with the
        /// records put a wrap marker past the ring's end; a side number or a segment
        /// count at the top of its range overflowed).
        #[test]
        fn corrupt_counters_never_make_a_send_panic(
            growable in any::<bool>(),
            // Both positions (and the producers' copy of the consumers') at one place,
            // an empty ring there, `short` bytes before a multiple of the ring's length.
            at in prop::option::of((0u64..4, 0u64..64)),
            words in prop::collection::vec(
                (0usize..20, prop_oneof![
                    any::<u64>(),
                    0u64..4 * MIN_RING as u64,
                    (u64::MAX - 64)..=u64::MAX,
                    Just(u64::MAX),
                ]),
                0..6,
            ),
            lens in prop::collection::vec(prop::sample::select(vec![0usize, 40, 1000, MIN_RING / 2 + 8, MIN_RING * 2]), 1..8),
        ) {
            let made = if growable { unbounded(MIN_RING) } else { channel(MIN_RING, None) };
            let (tx, rx) = made.unwrap();
            for i in 0..6u8 {
                let _ = tx.send(msg(vec![i; 300]), Deadline::Now, false);
            }
            let h = rx.core.header();
            let (p, c, o) = (&h.produced.0, &h.consumed.0, &h.overflow.0);
            if let Some((laps, short)) = at {
                let at = (laps + 1) * MIN_RING as u64 - short;
                for word in [&p.tail, &p.seen_head, &c.head] {
                    word.store(at, SeqCst);
                }
                p.seen_taken.store(p.items.load(SeqCst), SeqCst);
                c.items.store(p.items.load(SeqCst), SeqCst);
            }
            for (field, value) in words {
                let word = match field {
                    0 => &p.tail,
                    1 => &p.items,
                    2 => &p.next_side_id,
                    3 => &p.seen_head,
                    4 => &p.seen_taken,
                    5 => &p.ring,
                    6 => &p.leaving,
                    7 => &p.tasks,
                    8 => &c.head,
                    9 => &c.items,
                    10 => &c.ring,
                    11 => &o.made,
                    12 => &o.link_at,
                    13 => &o.link_end,
                    14 => &o.link_to,
                    15 => &o.warm[0],
                    16 => &o.cold[0],
                    17 => &p.publishing_tail,
                    18 => &p.side_pending,
                    _ => &c.seen_tail,
                };
                word.store(value, SeqCst);
            }
            for (i, len) in lens.into_iter().enumerate() {
                let _ = tx.send(msg(vec![i as u8; len]), Deadline::Now, false);
            }
            for _ in 0..16 {
                if take(&rx).is_err() {
                    break;
                }
            }
        }

        /// The fuzz target's property: arbitrary bytes over the ring and its counters.
        #[test]
        fn arbitrary_bytes_in_the_ring_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
            corrupt_and_drain(&bytes);
        }

        /// Whatever another process writes into the ring and its counters, a receiver
        /// returns values or errors: no panic, no access outside the segment, no hang.
        #[test]
        fn a_corrupt_ring_never_panics(
            writes in prop::collection::vec((any::<usize>(), prop::collection::vec(any::<u8>(), 1..64)), 0..12),
            tail in prop::option::of(any::<u64>()),
            head in prop::option::of(any::<u64>()),
        ) {
            let (tx, rx) = channel(MIN_RING, None).unwrap();
            for i in 0..12u8 {
                let _ = tx.send(msg(vec![i; i as usize * 40]), Deadline::Now, false);
            }
            // Something with a side message too.
            let _ = tx.send(msg(vec![9; 2000]), Deadline::Now, false);
            let core = &rx.core;
            for (at, bytes) in writes {
                let at = at % (core.ring_len as usize - bytes.len());
                core.seg.write(ChannelHeader::RING_OFFSET + at, &bytes);
            }
            let h = core.header();
            if let Some(t) = tail {
                h.produced.0.tail.store(t, SeqCst);
            }
            if let Some(hd) = head {
                h.consumed.0.head.store(hd, SeqCst);
            }
            for _ in 0..64 {
                match take(&rx) {
                    Ok(_) => {}
                    Err(RecvFail::Empty | RecvFail::Disconnected | RecvFail::Broken(_) | RecvFail::Io(_)) => break,
                }
            }
        }
    }
}
