//! The ring of a channel: variable-length records in shared memory, written by producers
//! holding the tail lock and read by consumers holding the head lock (see
//! `ipc/channel/README.md`). This is the raw layer: it hands out slices of the shared
//! mapping, and the guards below are what makes that sound.
//!
//! A record is `[len u32][kind u32][payload, padded to 8]`. `tail` and `head` count
//! bytes ever written and consumed; a position in the ring is the count modulo its
//! size. A record that would run past the end is preceded by a `WRAP` marker covering
//! the rest of the ring. Producers advance `tail` only once a record is complete, and
//! consumers advance `head` only once they are done with one, so a process that dies in
//! between leaves the ring as it was before it started.
#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::layout::{ChannelHeader, LockWords};
use super::segment::Segment;

/// A record whose payload is the message.
pub(crate) const INLINE: u32 = 1;
/// A record whose payload is the id of a message on the side socket.
pub(crate) const SIDE: u32 = 2;
const WRAP: u32 = 3;
const HEADER: u64 = 8;

/// Bytes a record with a payload of `len` takes.
pub(crate) fn record_len(len: usize) -> u64 {
    HEADER + (len as u64).next_multiple_of(8)
}

/// A channel's ring, in this process's mapping.
#[derive(Debug)]
pub(crate) struct Ring<'a> {
    seg: &'a Segment,
    len: u64,
}

/// How long to wait for one of the ring's locks. A peer stopped (`SIGSTOP`, a debugger,
/// a frozen cgroup) while it holds one must not hold up a timed or non-blocking call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockWait {
    /// Until then (`None`: as long as it takes).
    Until(Option<Instant>),
    /// For a non-blocking call: while the holder runs (it is copying, or preempted),
    /// at most this long; not at all once it is seen stopped.
    UnlessStopped(Duration),
}

impl LockWait {
    /// Takes `lock`; `None` if the wait ended first. (A holder that died is taken over:
    /// neither side of the ring needs repair after that, see the channel's README.)
    fn take(self, lock: &LockWords) -> Option<()> {
        match self {
            LockWait::Until(deadline) => lock.lock(deadline).map(drop),
            LockWait::UnlessStopped(limit) => lock.lock_unless_stopped(limit).map(drop),
        }
    }
}

impl<'a> Ring<'a> {
    /// The ring of `seg`, `len` bytes after its header (validated by the caller).
    pub(crate) fn new(seg: &'a Segment, len: u64) -> Self {
        debug_assert!(ChannelHeader::RING_OFFSET as u64 + len <= seg.len() as u64);
        Ring { seg, len }
    }

    fn header(&self) -> &'a ChannelHeader {
        self.seg.at(0)
    }

    /// Takes the producers' lock, as `wait` says (see [`LockWait`]).
    pub(crate) fn lock_tail(&self, wait: LockWait) -> Option<Tail<'_, 'a>> {
        wait.take(&self.header().tail_lock.0)?;
        Some(Tail { ring: self })
    }

    /// Takes the consumers' lock, as `wait` says (see [`LockWait`]).
    pub(crate) fn lock_head(&self, wait: LockWait) -> Option<Head<'_, 'a>> {
        wait.take(&self.header().head_lock.0)?;
        Some(Head { ring: self })
    }

    /// Whether something is published that consumers have not taken.
    pub(crate) fn has_data(&self) -> bool {
        let h = self.header();
        h.produced.0.tail.load(Acquire) != h.consumed.0.head.load(Acquire)
    }

    /// Whether a record of `payload` bytes would fit now (a hint, for waiting).
    pub(crate) fn has_room(&self, payload: usize, max_items: u64) -> bool {
        let h = self.header();
        let tail = h.produced.0.tail.load(Acquire);
        let head = h.consumed.0.head.load(Acquire);
        let items = h.produced.0.items.load(Acquire);
        let taken = h.consumed.0.items.load(Acquire);
        items.saturating_sub(taken) < max_items
            && (tail + 2 * record_len(payload)).saturating_sub(head) <= self.len
    }

    /// The payload area of a record at `at` (a byte count), `len` bytes long.
    fn payload_offset(&self, at: u64) -> usize {
        ChannelHeader::RING_OFFSET + (at % self.len) as usize + HEADER as usize
    }

    fn write_header(&self, at: u64, len: u32, kind: u32) {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&len.to_le_bytes());
        hdr[4..].copy_from_slice(&kind.to_le_bytes());
        self.seg
            .write(ChannelHeader::RING_OFFSET + (at % self.len) as usize, &hdr);
    }
}

/// The producers' lock, held: the only way to write into the ring.
#[derive(Debug)]
pub(crate) struct Tail<'r, 'a> {
    ring: &'r Ring<'a>,
}

/// Room reserved for one record: its payload bytes are this producer's alone until it
/// is published (or dropped, which abandons it).
#[derive(Debug)]
pub(crate) struct Slot<'t, 'r, 'a> {
    tail: &'t mut Tail<'r, 'a>,
    /// Where the record starts (after any wrap marker).
    at: u64,
    len: usize,
}

impl<'r, 'a> Tail<'r, 'a> {
    /// Reserves a record with a payload of `len` bytes, if the ring has room for it and
    /// holds fewer than `max_items` items.
    pub(crate) fn reserve(&mut self, len: usize, max_items: u64) -> Option<Slot<'_, 'r, 'a>> {
        let ring = self.ring;
        let h = ring.header();
        let p = &h.produced.0;
        let from = p.tail.load(Relaxed);
        let items = p.items.load(Relaxed);
        let rec = record_len(len);
        let pos = from % ring.len;
        let skip = if rec <= ring.len - pos {
            0
        } else {
            ring.len - pos
        };
        if rec > ring.len {
            return None;
        }
        // The consumers' counters live on their cache line; look at them only when the
        // copies on ours say there might be no room.
        let fits = |head: u64, taken: u64| {
            items.saturating_sub(taken) < max_items
                && (from + skip + rec).saturating_sub(head) <= ring.len
        };
        if !fits(p.seen_head.load(Relaxed), p.seen_taken.load(Relaxed)) {
            let (head, taken) = (
                h.consumed.0.head.load(Acquire),
                h.consumed.0.items.load(Acquire),
            );
            p.seen_head.store(head, Relaxed);
            p.seen_taken.store(taken, Relaxed);
            if !fits(head, taken) {
                return None;
            }
        }
        if skip > 0 {
            ring.write_header(from, 0, WRAP);
        }
        Some(Slot {
            tail: self,
            at: from + skip,
            len,
        })
    }
}

impl Drop for Tail<'_, '_> {
    fn drop(&mut self) {
        self.ring.header().tail_lock.0.unlock();
    }
}

impl Slot<'_, '_, '_> {
    /// The payload bytes, to fill.
    pub(crate) fn payload(&mut self) -> &mut [u8] {
        let ring = self.tail.ring;
        let offset = ring.payload_offset(self.at);
        ring.seg.check_range(offset, self.len);
        // SAFETY: in bounds (checked). No other reference to these bytes exists: the
        // range lies between `tail` and `head + ring size`, which consumers do not read
        // (they stop at `tail`) and other producers do not touch (this slot borrows the
        // producers' lock guard mutably). Other processes follow the same protocol; one
        // that does not can garble the bytes, which readers validate.
        unsafe { std::slice::from_raw_parts_mut(ring.seg.ptr(offset), self.len) }
    }

    /// Publishes the record (its payload must be filled) as `kind`.
    pub(crate) fn publish(self, kind: u32, unfinished: bool) {
        let ring = self.tail.ring;
        let h = ring.header();
        ring.write_header(self.at, self.len as u32, kind);
        if unfinished {
            h.unfinished
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let p = &h.produced.0;
        p.items.store(p.items.load(Relaxed) + 1, Release);
        p.tail.store(self.at + record_len(self.len), Release);
    }
}

/// The consumers' lock, held: the only way to read from the ring.
#[derive(Debug)]
pub(crate) struct Head<'r, 'a> {
    ring: &'r Ring<'a>,
}

/// One record, readable until consumed.
#[derive(Debug)]
pub(crate) struct Record<'h, 'r, 'a> {
    head: &'h mut Head<'r, 'a>,
    pub(crate) kind: u32,
    at: u64,
    len: usize,
}

impl<'r, 'a> Head<'r, 'a> {
    /// The next record, if there is one; wrap markers are skipped. An error means the
    /// shared memory does not follow the protocol.
    pub(crate) fn next(&mut self) -> Result<Option<Record<'_, 'r, 'a>>, String> {
        let ring = self.ring;
        let h = ring.header();
        let c = &h.consumed.0;
        loop {
            let head = c.head.load(Relaxed);
            let mut tail = c.seen_tail.load(Relaxed);
            if head == tail || tail < head {
                tail = h.produced.0.tail.load(Acquire);
                c.seen_tail.store(tail, Relaxed);
                if head == tail {
                    return Ok(None);
                }
            }
            if tail < head || tail - head > ring.len || !head.is_multiple_of(8) {
                return Err("head and tail are inconsistent".into());
            }
            let pos = head % ring.len;
            let mut hdr = [0u8; 8];
            ring.seg
                .read(ChannelHeader::RING_OFFSET + pos as usize, &mut hdr);
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let kind = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let size = match kind {
                WRAP => ring.len - pos,
                INLINE | SIDE => record_len(len),
                other => return Err(format!("unknown record kind {other}")),
            };
            if pos + size > ring.len || head + size > tail {
                return Err("a record overruns the ring".into());
            }
            if kind == WRAP {
                c.head.store(head + size, Release);
                continue;
            }
            return Ok(Some(Record {
                head: self,
                kind,
                at: head,
                len,
            }));
        }
    }
}

impl Drop for Head<'_, '_> {
    fn drop(&mut self) {
        self.ring.header().head_lock.0.unlock();
    }
}

impl Record<'_, '_, '_> {
    /// The payload.
    pub(crate) fn payload(&self) -> &[u8] {
        let ring = self.head.ring;
        let offset = ring.payload_offset(self.at);
        ring.seg.check_range(offset, self.len);
        // SAFETY: in bounds (checked). The range lies between `head` and `tail`, which
        // producers do not write until `head` moves past it, and only this consumer
        // (holding the consumers' lock, borrowed mutably by this record) moves `head`.
        unsafe { std::slice::from_raw_parts(ring.seg.ptr(offset), self.len) }
    }

    /// Done with this record: frees its room.
    pub(crate) fn consume(self) {
        let c = &self.head.ring.header().consumed.0;
        c.items.store(c.items.load(Relaxed) + 1, Release);
        c.head.store(self.at + record_len(self.len), Release);
    }
}
