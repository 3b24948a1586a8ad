//! The rings of a channel: variable-length records in shared memory, written by
//! producers holding the tail lock and read by consumers holding the head lock (see
//! `ipc/channel/README.md`). This is the raw layer: it hands out slices of the shared
//! mapping, and the guards below are what makes that sound.
//!
//! A channel has one ring after its header; an unbounded channel also has overflow
//! segments, each a ring of the same kind with its positions in its own header. A
//! record is `[len u32][kind u32][payload, padded to 8]`. `tail` and `head` count bytes
//! ever written and consumed; a position in a ring is the count modulo its size. A
//! record that would run past the end is preceded by a `WRAP` marker covering the rest
//! of the ring, as is a small record that starts an empty ring over early (see
//! [`Ring::reserve`]; there the producer may pass the marker for the consumers).
//! Producers advance `tail` only once a record is complete, and consumers advance
//! `head` only once they are done with one, so a process that dies in between leaves
//! the ring as it was before it started. Item counts are the channel's, across its
//! rings.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use crate::shm::layout::{ChannelHeader, Consumed, LockWords, Produced};
use crate::shm::segment::Region;
use crate::sync::raw::{ABANDONED, Acquired};

/// A record whose payload is the message.
pub(crate) const INLINE: u32 = 1;
/// A record whose payload starts with the id of a message on the side socket (in a
/// bounded channel the rest is room the message holds, never written or read).
pub(crate) const SIDE: u32 = 2;
const WRAP: u32 = 3;
/// A record that sends readers to another ring (an unbounded channel's overflow): its
/// payload is the ring (`u64`: 0 for the channel's own, `k` for segment `k`) and, for
/// the channel's own ring, the position to read on from (`u64`).
pub(crate) const LINK: u32 = 4;
/// A link record's payload.
pub(crate) const LINK_PAYLOAD: usize = 16;
/// The record of a side message published by the next holder of the producers' lock
/// for a producer that died before it published the message's own (see
/// `Core::repair`): its payload is the message's id (`u64`), as the smallest side
/// record's, so that it fits wherever the dead producer's did. The message may never
/// have been sent.
pub(crate) const SIDE_REPAIR: u32 = 5;
/// As [`SIDE_REPAIR`], for a message that counted as a task (`JoinableQueue`).
pub(crate) const SIDE_REPAIR_TASK: u32 = 6;
pub(crate) const HEADER: u64 = 8;
/// Bytes of a ring used before an empty ring starts over (see [`Ring::reserve`]).
const HOT: u64 = 64 << 10;
/// The page size the rewinding above counts in (a larger page only makes it look
/// more often).
const PAGE: u64 = 4096;

/// Bytes a record with a payload of `len` takes.
pub(crate) fn record_len(len: usize) -> u64 {
    HEADER + (len as u64).next_multiple_of(8)
}

/// Room an unbounded channel keeps free in every ring: the link record (and the wrap
/// marker before it, at worst), so that a producer can always leave a full ring.
pub(crate) fn link_room() -> u64 {
    record_len(LINK_PAYLOAD)
}

/// One ring, in this process's mapping: its bytes, its positions, and the channel it
/// belongs to (locks and item counts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring<'a> {
    mem: &'a Region,
    /// Where the ring's bytes start in `mem`.
    at: usize,
    len: u64,
    produced: &'a Produced,
    consumed: &'a Consumed,
    chan: &'a ChannelHeader,
}

/// How long to wait for one of the channel's locks. A peer stopped (`SIGSTOP`, a
/// debugger, a frozen cgroup) while it holds one must not hold up a timed or
/// non-blocking call for long (one in a frozen cgroup, which `/proc` shows as sleeping,
/// for the call's whole patience).
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockWait {
    /// Until then (`None`: as long as it takes).
    Until(Option<Instant>),
    /// For a non-blocking call: while the holder runs (it is copying, or preempted),
    /// at most this long; not at all once it is seen stopped.
    UnlessStopped(Duration),
}

impl LockWait {
    /// Takes `lock`; `None` if the wait ended first. Whether a dead holder's lock was
    /// taken over (a ring needs no repair then; an unbounded channel's move between
    /// rings may, see the channel's README).
    fn take(self, lock: &LockWords) -> Option<bool> {
        let acquired = match self {
            LockWait::Until(deadline) => lock.lock(deadline),
            LockWait::UnlessStopped(limit) => lock.lock_unless_stopped(limit),
        }?;
        Some(matches!(acquired, Acquired::OwnerDied))
    }
}

/// The producers' lock of a channel, held: the only way to write into its rings.
#[derive(Debug)]
pub(crate) struct Tail<'a> {
    chan: &'a ChannelHeader,
    /// The lock's last holder died holding it, and what it may have left half-done is
    /// not finished yet: the repair clears this once done. A guard dropped before then
    /// (the repair failed, an overflow segment that would not map) lets the lock go as
    /// abandoned, so that the next producer takes it over and repairs in its turn.
    pub(crate) took_over: bool,
}

impl<'a> Tail<'a> {
    /// Takes the producers' lock, as `wait` says (see [`LockWait`]).
    pub(crate) fn lock(chan: &'a ChannelHeader, wait: LockWait) -> Option<Self> {
        let took_over = wait.take(&chan.tail_lock.0)?;
        #[cfg(debug_assertions)]
        if STOP_HOLDING_TAIL.swap(false, std::sync::atomic::Ordering::Relaxed) {
            crate::sys::stop_self();
        }
        Some(Tail { chan, took_over })
    }
}

/// Debug builds only, for a test: the next producers' lock this process takes, it
/// takes and then stops itself (`SIGSTOP`), as an operator's `kill -STOP` could catch
/// it (see the pool worker's `MULTIPROC_TEST_STOP_HOLDING_RESULTS`).
#[cfg(debug_assertions)]
pub(crate) static STOP_HOLDING_TAIL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
thread_local! {
    /// For tests: guards dropped on this thread keep their lock, as a process killed
    /// while holding it would.
    pub(crate) static KEEP_LOCKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    /// For tests: where in a publish or a consume this thread "dies" (stops there,
    /// keeping its lock, see [`KEEP_LOCKS`]), between the item count and the position.
    pub(crate) static DIES_IN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub(crate) const DIES_PUBLISHING: u32 = 1;
pub(crate) const DIES_CONSUMING: u32 = 2;
/// Before a publish has changed anything (its record written whole).
pub(crate) const DIES_BEFORE_PUBLISHING: u32 = 3;
/// A side message's number taken, before the message is sent.
pub(crate) const DIES_BEFORE_SENDING: u32 = 4;

/// Whether a test asked this thread to die at `point`.
pub(crate) fn dies_at(point: u32) -> bool {
    #[cfg(test)]
    if DIES_IN.with(std::cell::Cell::get) == point {
        return true;
    }
    let _ = point;
    false
}

/// Whether a guard dropped now lets its lock go (always, but in tests that kill).
fn release_on_drop() -> bool {
    #[cfg(test)]
    if KEEP_LOCKS.with(std::cell::Cell::get) {
        return false;
    }
    true
}

/// Lets `lock` go: as abandoned while a dead holder's half-done work is not repaired
/// (`took_over`), so that the next taker repairs it; unless a test keeps it.
#[inline]
fn release(lock: &LockWords, took_over: bool) {
    if !release_on_drop() {
        return;
    }
    lock.unlock_to(if took_over { ABANDONED } else { 0 });
}

impl Drop for Tail<'_> {
    fn drop(&mut self) {
        release(&self.chan.tail_lock.0, self.took_over);
    }
}

/// The consumers' lock of a channel, held: the only way to read from its rings.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    chan: &'a ChannelHeader,
    /// The lock's last holder died holding it, and what it may have left half-done is
    /// not finished yet (as for [`Tail`]: a guard dropped before the repair cleared this
    /// lets the lock go as abandoned).
    pub(crate) took_over: bool,
}

impl<'a> Head<'a> {
    /// Takes the consumers' lock, as `wait` says (see [`LockWait`]).
    pub(crate) fn lock(chan: &'a ChannelHeader, wait: LockWait) -> Option<Self> {
        let took_over = wait.take(&chan.head_lock.0)?;
        Some(Head { chan, took_over })
    }

    /// Takes the consumers' lock if it is free now; not from a consumer that died
    /// holding it, whose successor must know (an unbounded channel's consumer repairs a
    /// move between rings left half-done).
    fn try_free(chan: &'a ChannelHeader) -> Option<Self> {
        // Built only once the lock is ours: dropping a guard releases the lock.
        chan.head_lock.0.try_lock_free().then(|| Head {
            chan,
            took_over: false,
        })
    }
}

impl Drop for Head<'_> {
    fn drop(&mut self) {
        release(&self.chan.head_lock.0, self.took_over);
    }
}

impl<'a> Ring<'a> {
    /// The ring whose `len` bytes start at `at` in `mem`, with its positions in
    /// `produced` and `consumed` (validated by the caller).
    pub(crate) fn new(
        mem: &'a Region,
        at: usize,
        len: u64,
        (produced, consumed): (&'a Produced, &'a Consumed),
        chan: &'a ChannelHeader,
    ) -> Self {
        debug_assert!(at as u64 + len <= mem.len() as u64);
        Ring {
            mem,
            at,
            len,
            produced,
            consumed,
            chan,
        }
    }

    /// Whether something is published here that consumers have not taken (records,
    /// links included).
    pub(crate) fn has_data(&self) -> bool {
        let head = self.consumed.head.load(Acquire);
        self.prefetch_record(head);
        self.produced.tail.load(Acquire) != head
    }

    /// Asks for the cache line of the record at `position` (a hint, which never faults):
    /// a consumer asks as it reads the producers' position, so that the record's line,
    /// which a producer has just written too, comes over with it rather than after it.
    #[inline]
    fn prefetch_record(&self, position: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let at = self.at + (position % self.len) as usize;
            // SAFETY: a prefetch only asks for a line; it reads nothing and never
            // faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.mem.ptr(at).cast_const().cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = position;
    }

    /// Whether a record of `payload` bytes would fit now, with the skip to the ring's
    /// start that [`reserve`](Self::reserve) would make (a hint, read without the
    /// producers' lock: for waiting, and for a send that may not wait). A record of half
    /// the ring (a message on the side socket holds that much) fits as soon as half is
    /// free, not only once the ring is empty, as twice its size asked before.
    pub(crate) fn has_room(&self, payload: usize, max_items: u64) -> bool {
        let tail = self.produced.tail.load(Acquire);
        let head = self.consumed.head.load(Acquire);
        let items = self.chan.produced.0.items.load(Acquire);
        let taken = self.chan.consumed.0.items.load(Acquire);
        let rec = record_len(payload);
        let pos = tail % self.len;
        let skip = if rec <= self.len - pos {
            0
        } else {
            self.len - pos
        };
        items.saturating_sub(taken) < max_items
            && tail.saturating_add(skip + rec).saturating_sub(head) <= self.len
    }

    /// The producers' position (under the tail lock, or as a hint).
    pub(crate) fn tail(&self) -> u64 {
        self.produced.tail.load(Acquire)
    }

    /// Publishes everything up to `to` (a link record written before).
    pub(crate) fn set_tail(&self, _lock: &Tail<'_>, to: u64) {
        self.produced.tail.store(to, Release);
    }

    /// Moves the consumers' position to `to` (a reader coming back to this ring).
    pub(crate) fn set_head(&self, _lock: &Head<'_>, to: u64) {
        self.consumed.head.store(to, Release);
    }

    /// The consumers' position.
    pub(crate) fn head(&self) -> u64 {
        self.consumed.head.load(Acquire)
    }

    /// Resets the positions of a ring nobody uses (an overflow segment being reused).
    pub(crate) fn reset(&self, _lock: &Tail<'_>) {
        for w in [
            &self.produced.tail,
            &self.produced.seen_head,
            &self.consumed.head,
            &self.consumed.seen_tail,
        ] {
            w.store(0, Release);
        }
    }

    /// After taking over the producers' lock from a producer that died (this ring
    /// being the one producers write to): finishes the publish it was in, if any. Its
    /// record was written whole before the publish began. The last step of a repair:
    /// the lock is then let go as any other.
    pub(crate) fn finish_publish(&self, lock: &mut Tail<'_>) {
        if self.published().finish() {
            tracing::debug!("finished the publish of a producer that died");
        }
        lock.took_over = false;
    }

    /// After taking over the consumers' lock from a consumer that died (this ring
    /// being the one consumers read from): finishes the consume it was in, if any (it
    /// had the message). The last step of a repair, as
    /// [`finish_publish`](Self::finish_publish) is.
    pub(crate) fn finish_consume(&self, lock: &mut Head<'_>) {
        if self.consumed().finish() {
            tracing::debug!("finished the consume of a consumer that died");
        }
        lock.took_over = false;
    }

    /// The producers' item count and this ring's `tail`, with their log.
    fn published(&self) -> Counted<'a> {
        let p = &self.chan.produced.0;
        Counted::new(
            &p.publishing_tail,
            &p.publishing_items,
            &p.items,
            &self.produced.tail,
        )
        .with_tasks(&p.publishing_tasks, &p.tasks)
    }

    /// The consumers' item count and this ring's `head`, with their log.
    fn consumed(&self) -> Counted<'a> {
        let c = &self.chan.consumed.0;
        Counted::new(
            &c.consuming_head,
            &c.consuming_items,
            &c.items,
            &self.consumed.head,
        )
    }

    /// The payload area of a record at `at` (a byte count), `len` bytes long.
    fn payload_offset(&self, at: u64) -> usize {
        self.at + (at % self.len) as usize + HEADER as usize
    }

    fn write_header(&self, at: u64, len: u32, kind: u32) {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&len.to_le_bytes());
        hdr[4..].copy_from_slice(&kind.to_le_bytes());
        self.mem.write(self.at + (at % self.len) as usize, &hdr);
    }

    /// Reserves a record with a payload of `len` bytes, if the ring has room for it
    /// and `keep` bytes more, and the channel holds fewer than `max_items` items.
    /// `consumers_on`: this ring's number in the channel (0: the channel's own), if an
    /// empty ring that starts over may pass its wrap marker for the consumers while
    /// they read it (see [`Ring::pass_marker`]).
    ///
    /// # Errors
    ///
    /// The producers' position is out of line with the records (a wrap marker there
    /// would end past the ring: a panic, as an access outside the segment), or so near
    /// the top of the counter's range that the record would end past it (no channel gets
    /// there: it counts bytes, 2^64 of them): another process overwrote the position.
    pub(crate) fn reserve<'t>(
        &'t self,
        _lock: &'t mut Tail<'_>,
        len: usize,
        max_items: u64,
        keep: u64,
        consumers_on: Option<u64>,
    ) -> io::Result<Option<Slot<'t, 'a>>> {
        let p = self.produced;
        let counts = &self.chan.produced.0;
        let from = p.tail.load(Relaxed);
        let items = counts.items.load(Relaxed);
        let rec = record_len(len);
        let pos = from % self.len;
        let mut skip = if rec <= self.len - pos {
            0
        } else {
            self.len - pos
        };
        if rec + keep > self.len {
            return Ok(None);
        }
        // An empty ring starts over at its beginning once the producers are past the
        // first `HOT` bytes, as if the end had come: a channel whose consumers keep up
        // keeps using the same few pages, which stay in the cache and stay mapped (a
        // fresh page of a shared mapping costs a fault in each process that touches
        // it), instead of streaming through the whole ring. Looked at only when a
        // record reaches into a new page, so a steady stream of small records reads
        // the consumers' line once per page, and taken only when the record fits
        // before the position it leaves. Records over half of `HOT` go on as they
        // did: for 1 MiB messages, writing over the pages the consumer had just read
        // measured 10–15% slower than moving on to others.
        let mut start_over = false;
        if skip == 0
            && pos >= HOT
            && rec <= pos
            && rec <= HOT / 2
            && (pos.is_multiple_of(PAGE) || pos % PAGE + rec > PAGE)
            && self.empty_at(from)
        {
            skip = self.len - pos;
            start_over = true;
        }
        // A position producers leave is a multiple of a header (records are): one that
        // is not would put a wrap marker past the ring's end.
        if !from.is_multiple_of(HEADER) || from.checked_add(skip + rec + keep).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the producers' position in the channel's ring is not one a producer leaves \
                 (out of line with the records, or at the end of its range): the channel's \
                 memory was overwritten",
            ));
        }
        // The consumers' counters live on their cache line; look at them only when the
        // copies on ours say there might be no room.
        let fits = |head: u64, taken: u64| {
            items.saturating_sub(taken) < max_items
                && from.saturating_add(skip + rec + keep).saturating_sub(head) <= self.len
        };
        if !fits(p.seen_head.load(Relaxed), counts.seen_taken.load(Relaxed)) {
            let (head, taken) = (
                self.consumed.head.load(Acquire),
                self.chan.consumed.0.items.load(Acquire),
            );
            p.seen_head.store(head, Relaxed);
            counts.seen_taken.store(taken, Relaxed);
            if !fits(head, taken) {
                return Ok(None);
            }
        }
        if skip > 0 {
            self.write_header(from, 0, WRAP);
        }
        if let Some(ring) = consumers_on.filter(|_| start_over) {
            self.pass_marker(from, from + skip, ring);
        }
        Ok(Some(Slot {
            ring: self,
            from,
            at: from + skip,
            len,
        }))
    }

    /// Moves the positions of an empty ring that starts over (under the producers'
    /// lock) past the wrap marker at `at`, to `to`, as its consumers would once they
    /// read on. Until they did, the rest of the ring counted as taken: a burst sent
    /// before a consumer came by found room only in the ring's first pages, so a
    /// bounded channel refused (or its `put` waited for a consumer) when it held 62 of
    /// its 1000 items of 1 KB, and an unbounded one moved to an overflow segment. Only
    /// while the consumers read this ring (number `ring`): a consumer still in an
    /// overflow segment may come back through a link that names a position before the
    /// marker. And only if their lock is free now: a consumer that holds it passes the
    /// marker itself, and one that died holding it is taken over by the next. The
    /// marker is published before it is passed, so a producer that dies in between
    /// leaves one for the consumers.
    fn pass_marker(&self, at: u64, to: u64, ring: u64) {
        let Some(_consumers) = Head::try_free(self.chan) else {
            return;
        };
        if self.chan.consumed.0.ring.load(Acquire) == ring && self.consumed.head.load(Acquire) == at
        {
            self.produced.tail.store(to, Release);
            self.consumed.head.store(to, Release);
            self.produced.seen_head.store(to, Relaxed);
        }
    }

    /// Whether consumers have taken everything up to `tail` (the producers' position,
    /// under their lock).
    fn empty_at(&self, tail: u64) -> bool {
        let p = self.produced;
        if p.seen_head.load(Relaxed) == tail {
            return true;
        }
        let head = self.consumed.head.load(Acquire);
        p.seen_head.store(head, Relaxed);
        head == tail
    }

    /// The next record at the consumers' position, if there is one; wrap markers are
    /// skipped (the consumers' position moves past them). An error means the shared
    /// memory does not follow the protocol.
    pub(crate) fn next<'h>(
        &'h self,
        lock: &'h mut Head<'_>,
    ) -> Result<Option<Record<'h, 'a>>, String> {
        self.find(lock, true)
    }

    /// As [`next`](Self::next), leaving the consumers' position where it is (before any
    /// wrap marker) unless the record found is consumed or skipped: for a look that may
    /// leave the record where it is. (Producers may have seen a position moved past a
    /// marker, and it could not be moved back.)
    pub(crate) fn peek<'h>(
        &'h self,
        lock: &'h mut Head<'_>,
    ) -> Result<Option<Record<'h, 'a>>, String> {
        self.find(lock, false)
    }

    fn find<'h>(
        &'h self,
        _lock: &'h mut Head<'_>,
        pass_wraps: bool,
    ) -> Result<Option<Record<'h, 'a>>, String> {
        let c = self.consumed;
        let mut head = c.head.load(Relaxed);
        loop {
            let mut tail = c.seen_tail.load(Relaxed);
            if head == tail || tail < head {
                self.prefetch_record(head);
                tail = self.produced.tail.load(Acquire);
                c.seen_tail.store(tail, Relaxed);
                if head == tail {
                    return Ok(None);
                }
            }
            if tail < head || tail - head > self.len || !head.is_multiple_of(8) {
                return Err("head and tail are inconsistent".into());
            }
            let pos = head % self.len;
            let mut hdr = [0u8; 8];
            self.mem.read(self.at + pos as usize, &mut hdr);
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let kind = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let size = match kind {
                WRAP => self.len - pos,
                INLINE | SIDE | LINK | SIDE_REPAIR | SIDE_REPAIR_TASK => record_len(len),
                other => return Err(format!("unknown record kind {other}")),
            };
            // (`tail - head` cannot underflow: checked above; `head + size` could
            // overflow on positions another process wrote.)
            if pos + size > self.len || size > tail - head {
                return Err("a record overruns the ring".into());
            }
            if kind == WRAP {
                head += size;
                if pass_wraps {
                    c.head.store(head, Release);
                }
                continue;
            }
            return Ok(Some(Record {
                ring: self,
                kind,
                at: head,
                len,
            }));
        }
    }
}

/// Room reserved for one record: its payload bytes are this producer's alone until it
/// is published (or dropped, which abandons it).
#[derive(Debug)]
pub(crate) struct Slot<'t, 'a> {
    ring: &'t Ring<'a>,
    /// The producers' position when it was reserved (before any wrap marker).
    from: u64,
    /// Where the record starts (after any wrap marker).
    at: u64,
    len: usize,
}

impl Slot<'_, '_> {
    /// The payload bytes, to fill.
    pub(crate) fn payload(&mut self) -> &mut [u8] {
        let ring = self.ring;
        let offset = ring.payload_offset(self.at);
        ring.mem.check_range(offset, self.len);
        // SAFETY: in bounds (checked). No other reference to these bytes exists: the
        // range lies between `tail` and `head + ring size`, which consumers do not read
        // (they stop at `tail`) and other producers do not touch (the slot exists only
        // while the producers' lock is held, borrowed mutably by `reserve`). Other
        // processes follow the same protocol; one that does not can garble the bytes,
        // which readers validate.
        unsafe { std::slice::from_raw_parts_mut(ring.mem.ptr(offset), self.len) }
    }

    /// Publishes the record (its payload must be filled) as `kind`, one item more; with
    /// `task`, one task more too (`JoinableQueue`).
    pub(crate) fn publish(self, kind: u32, task: bool) {
        let ring = self.ring;
        ring.write_header(self.at, self.len as u32, kind);
        if dies_at(DIES_BEFORE_PUBLISHING) {
            return;
        }
        // The counts, then the position: a producer that dies between them would leave
        // the counts one ahead of the records for good, so they are logged first and
        // the next producer finishes what the log says ([`Ring::finish_publish`]).
        ring.published()
            .advance(self.at + record_len(self.len), task, DIES_PUBLISHING);
    }

    /// Writes a link record (its payload filled) without publishing it: where the
    /// producers' position is now, and where it will be once it is published
    /// ([`Ring::set_tail`]). A link is not an item.
    pub(crate) fn stage_link(self) -> (u64, u64) {
        self.ring.write_header(self.at, self.len as u32, LINK);
        (self.from, self.at + record_len(self.len))
    }
}

/// One side's item count and ring position, which move together (a record published
/// or consumed), and the log that makes the move whole: the position and count it moves
/// to are written first and cleared last, so that whoever takes the side's lock over
/// from a process that died in between finishes the move ([`Counted::finish`]). The
/// producers' side also counts tasks (`JoinableQueue`), logged the same way.
struct Counted<'a> {
    log_pos: &'a AtomicU64,
    log_items: &'a AtomicU64,
    items: &'a AtomicU64,
    pos: &'a AtomicU64,
    /// The task count's log and the count.
    tasks: Option<(&'a AtomicU64, &'a AtomicU64)>,
}

impl<'a> Counted<'a> {
    fn new(
        log_pos: &'a AtomicU64,
        log_items: &'a AtomicU64,
        items: &'a AtomicU64,
        pos: &'a AtomicU64,
    ) -> Self {
        Counted {
            log_pos,
            log_items,
            items,
            pos,
            tasks: None,
        }
    }

    fn with_tasks(self, log_tasks: &'a AtomicU64, tasks: &'a AtomicU64) -> Self {
        Counted {
            tasks: Some((log_tasks, tasks)),
            ..self
        }
    }

    /// One item more (and with `task`, one task more), the position at `to` (under the
    /// side's lock). A record ends past the ring's start, so `to` is never 0, which
    /// means "no move" in the log; a task count set is at least 1, so 0 there means
    /// "unchanged".
    fn advance(&self, to: u64, task: bool, dies: u32) {
        let items = self.items.load(Relaxed).wrapping_add(1);
        self.log_items.store(items, Relaxed);
        let tasks = match self.tasks {
            Some((log_tasks, tasks)) => {
                let n = if task {
                    tasks.load(Relaxed).wrapping_add(1).max(1)
                } else {
                    0
                };
                log_tasks.store(n, Relaxed);
                Some((tasks, n))
            }
            None => None,
        };
        self.log_pos.store(to, Release);
        self.items.store(items, Release);
        if dies_at(dies) {
            return;
        }
        if let Some((tasks, n)) = tasks
            && n != 0
        {
            tasks.store(n, SeqCst);
        }
        self.pos.store(to, Release);
        self.log_pos.store(0, Release);
    }

    /// Finishes a move that the log says was begun (either store may have been made);
    /// whether there was one.
    fn finish(&self) -> bool {
        let to = self.log_pos.load(Acquire);
        if to == 0 {
            return false;
        }
        self.items.store(self.log_items.load(Acquire), Release);
        if let Some((log_tasks, tasks)) = self.tasks {
            let n = log_tasks.load(Acquire);
            if n != 0 {
                tasks.store(n, SeqCst);
            }
        }
        self.pos.store(to, Release);
        self.log_pos.store(0, Release);
        true
    }
}

/// One record, readable until consumed.
#[derive(Debug)]
pub(crate) struct Record<'h, 'a> {
    ring: &'h Ring<'a>,
    pub(crate) kind: u32,
    at: u64,
    len: usize,
}

impl Record<'_, '_> {
    /// The payload.
    pub(crate) fn payload(&self) -> &[u8] {
        let ring = self.ring;
        let offset = ring.payload_offset(self.at);
        ring.mem.check_range(offset, self.len);
        // SAFETY: in bounds (checked). The range lies between `head` and `tail`, which
        // producers do not write until `head` moves past it, and only this consumer
        // (holding the consumers' lock, borrowed mutably by `next` for this record's
        // life) moves `head`.
        unsafe { std::slice::from_raw_parts(ring.mem.ptr(offset), self.len) }
    }

    /// Done with this record: frees its room, one item less (logged first, as
    /// [`Slot::publish`] does; see [`Ring::finish_consume`]).
    pub(crate) fn consume(self) {
        self.ring
            .consumed()
            .advance(self.at + record_len(self.len), false, DIES_CONSUMING);
    }

    /// A link record's target ring and resume position (see [`LINK_PAYLOAD`]); `None`
    /// if the payload is not a link's.
    pub(crate) fn link(&self) -> Option<(u64, u64)> {
        let payload = self.payload();
        let word = |at: usize| {
            payload
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
        };
        Some((word(0)?, word(8)?))
    }

    /// Done with this link record: frees its room (a link is not an item).
    pub(crate) fn skip(self) {
        self.ring
            .consumed
            .head
            .store(self.at + record_len(self.len), Release);
    }
}
