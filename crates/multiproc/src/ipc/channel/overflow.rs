//! An unbounded channel's overflow: when its ring is full, producers go on in overflow
//! segments of the same memory file (which grows; it cannot shrink), linked by link
//! records; consumers follow the links, and free each segment they leave. The
//! protocol, and what a process that dies half-way leaves, is in `README.md` here.

use std::io;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::ring::{Head, LINK, LINK_PAYLOAD, Ring, Slot, Tail, link_room};
use super::{Core, RecvFail, Step, Taken, broken, take_record};
use crate::shm::layout::{ChannelHeader, MAX_SEGMENTS, SegmentHeader};
use crate::shm::segment::Region;
#[cfg(test)]
use crate::sync::unpoisoned;
use crate::sys;

/// Overflow segments are mapped one by one, so each starts on a page.
pub(super) const PAGE: usize = 4096;

/// Overflow segments a process keeps mapped per side (producers, consumers): the
/// segments in use and the freed ones about to be reused stay mapped, so that a segment
/// is mapped (and its pages entered in this process's tables) once, not at each reuse.
const MAPPED: usize = 8;

/// The overflow segments one side of this process has mapped, most recent last.
#[derive(Debug, Default)]
pub(super) struct Mapped {
    segments: Vec<(u64, Region)>,
}

/// This process's mapped segments of one side, taken by a thread that holds that side's
/// shared lock (the producers' for `write_map`, the consumers' for `read_map`), and
/// only then: no other thread of this process can hold them while it does, but one
/// that held them as another thread forked it (`spawn_fork`), and does not exist in
/// the child. The child then maps the segments it uses for the time of the call: a
/// wait for the cache would last for ever, and, the shared lock held through it, stop
/// that side of the channel in every process.
enum MapCache<'a> {
    Cached(MutexGuard<'a, Mapped>),
    Fresh(Mapped),
}

impl MapCache<'_> {
    fn of(cache: &Mutex<Mapped>) -> MapCache<'_> {
        match cache.try_lock() {
            Ok(held) => MapCache::Cached(held),
            Err(TryLockError::Poisoned(p)) => MapCache::Cached(p.into_inner()),
            Err(TryLockError::WouldBlock) => {
                tracing::debug!(
                    "an overflow map held by a thread that is not in this process (forked while it held it)"
                );
                MapCache::Fresh(Mapped::default())
            }
        }
    }
}

impl std::ops::Deref for MapCache<'_> {
    type Target = Mapped;
    fn deref(&self) -> &Mapped {
        match self {
            MapCache::Cached(held) => held,
            MapCache::Fresh(fresh) => fresh,
        }
    }
}

impl std::ops::DerefMut for MapCache<'_> {
    fn deref_mut(&mut self) -> &mut Mapped {
        match self {
            MapCache::Cached(held) => held,
            MapCache::Fresh(fresh) => fresh,
        }
    }
}

impl Core {
    /// The distance from one overflow segment to the next: a header page and a ring.
    fn stride(&self) -> u64 {
        SegmentHeader::RING_OFFSET as u64 + self.ring_len
    }

    /// Where overflow segment `k` (from 1) starts in the file.
    fn segment_offset(&self, k: u64) -> Option<u64> {
        let first = ChannelHeader::RING_OFFSET as u64 + self.ring_len;
        k.checked_sub(1)?
            .checked_mul(self.stride())?
            .checked_add(first)
    }

    /// Maps overflow segment `k`, which must exist; with `populate`, its pages are
    /// entered in this process's tables at once (allocated where the file has none).
    fn map_segment(&self, k: u64, populate: bool) -> io::Result<Region> {
        #[cfg(test)]
        if MAPS_FAIL.with(std::cell::Cell::get) {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "a test's map that fails",
            ));
        }
        let made = self.header().overflow.0.made.load(Acquire);
        let offset = self
            .segment_offset(k)
            .filter(|_| (1..=made.min(MAX_SEGMENTS)).contains(&k))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("overflow segment {k} does not exist ({made} made)"),
                )
            })?;
        self.seg.map_range(offset, self.stride() as usize, populate)
    }

    /// Segment `k`, from `cache` (which then keeps it) or mapped now (`populate`d, see
    /// [`map_segment`](Self::map_segment)).
    fn segment<'m>(&self, cache: &'m mut Mapped, k: u64, populate: bool) -> io::Result<&'m Region> {
        let segments = &mut cache.segments;
        match segments.iter().position(|(i, _)| *i == k) {
            Some(at) if at + 1 == segments.len() => {}
            Some(at) => {
                let found = segments.remove(at);
                segments.push(found);
            }
            None => {
                let region = self.map_segment(k, populate)?;
                if segments.len() >= MAPPED {
                    segments.remove(0);
                }
                segments.push((k, region));
            }
        }
        segments
            .last()
            .map(|(_, r)| r)
            .ok_or_else(|| io::Error::other("no overflow segment mapped"))
    }

    /// For tests: forgets the overflow segments this process has mapped, so that the
    /// next use of each maps it again.
    #[cfg(test)]
    pub(super) fn forget_mapped(&self) {
        unpoisoned::lock(&self.write_map).segments.clear();
        unpoisoned::lock(&self.read_map).segments.clear();
    }

    /// The ring of a mapped overflow segment.
    fn segment_ring<'r>(&'r self, region: &'r Region) -> Ring<'r> {
        let sh: &SegmentHeader = region.at(0);
        Ring::new(
            region,
            SegmentHeader::RING_OFFSET,
            self.ring_len,
            (&sh.produced.0, &sh.consumed.0),
            self.header(),
        )
    }

    /// The ring `k` (0: the channel's own), mapped through `cache`.
    fn ring_at<'r>(&'r self, cache: &'r mut Mapped, k: u64) -> io::Result<Ring<'r>> {
        if k == 0 {
            return Ok(self.ring());
        }
        let region = self.segment(cache, k, false)?;
        Ok(self.segment_ring(region))
    }

    /// [`write_slot`](Core::write_slot) of an unbounded channel: room in the ring
    /// producers write to, moving to a new overflow segment when it is full (`None`
    /// instead when that ring is the channel's own and not `may_overflow`), and back to
    /// the channel's own ring once consumers have emptied it.
    pub(super) fn write_growable<R>(
        &self,
        tail: &mut Tail<'_>,
        len: usize,
        may_overflow: bool,
        write: impl FnOnce(Slot<'_, '_>) -> R,
    ) -> io::Result<Option<R>> {
        let p = &self.header().produced.0;
        // Room for a link record (and a wrap marker before it) stays free in every
        // ring, so a producer can always leave.
        let keep = 2 * link_room();
        // The hot path: the channel's own ring has room.
        if p.ring.load(Relaxed) == 0 {
            if let Some(slot) = self.ring().reserve(tail, len, u64::MAX, keep, Some(0))? {
                return Ok(Some(write(slot)));
            }
            if !may_overflow {
                return Ok(None);
            }
        }
        let mut cache = MapCache::of(&self.write_map);
        loop {
            let w = p.ring.load(Relaxed);
            if w != 0 && !self.ring().has_data() {
                // Consumers have emptied the channel's own ring: back to it, after
                // whatever is in the segments.
                let resume = self.ring().tail();
                self.move_to(tail, &mut cache, w, 0, resume)?;
                continue;
            }
            let ring = self.ring_at(&mut cache, w)?;
            if let Some(slot) = ring.reserve(tail, len, u64::MAX, keep, (w == 0).then_some(0))? {
                return Ok(Some(write(slot)));
            }
            let next = self.take_segment(tail, &mut cache)?;
            self.move_to(tail, &mut cache, w, next, 0)?;
        }
    }

    /// After taking the producers' lock over from a producer that died: finishes the
    /// move between rings or the publish it was in, if any.
    pub(super) fn finish_dead_producer(&self, tail: &mut Tail<'_>) -> io::Result<()> {
        let p = &self.header().produced.0;
        let mut cache = MapCache::of(&self.write_map);
        // Read once: another process may write the word between two reads.
        if let Some(from) = p.leaving.load(Acquire).checked_sub(1) {
            self.finish_move(tail, &mut cache, from)?;
        }
        let w = p.ring.load(Relaxed);
        self.ring_at(&mut cache, w)?.finish_publish(tail);
        Ok(())
    }

    /// Moves the producers from ring `from` to ring `to`: a link record in `from` says
    /// where readers go on (`resume`: where in the channel's own ring). The move is
    /// recorded before the link is published, so that a producer that dies half-way is
    /// finished by the next ([`finish_move`](Self::finish_move)).
    fn move_to(
        &self,
        tail: &mut Tail<'_>,
        cache: &mut Mapped,
        from: u64,
        to: u64,
        resume: u64,
    ) -> io::Result<()> {
        let h = self.header();
        let (p, o) = (&h.produced.0, &h.overflow.0);
        let ring = self.ring_at(cache, from)?;
        let Some(mut slot) = ring.reserve(tail, LINK_PAYLOAD, u64::MAX, 0, None)? else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no room left for a link record: the channel's memory was overwritten",
            ));
        };
        let payload = slot.payload();
        payload[..8].copy_from_slice(&to.to_le_bytes());
        payload[8..16].copy_from_slice(&resume.to_le_bytes());
        let (at, end) = slot.stage_link();
        o.link_at.store(at, Relaxed);
        o.link_end.store(end, Relaxed);
        o.link_to.store(to, Relaxed);
        p.leaving.store(from + 1, Release);
        die_here(1)?;
        p.ring.store(to, Release);
        die_here(2)?;
        ring.set_tail(tail, end);
        die_here(3)?;
        p.leaving.store(0, Release);
        Ok(())
    }

    /// Finishes the move of a producer that died in it (taken over with the lock), from
    /// ring `from`: publishes its link record unless it was, and moves on as it would
    /// have.
    fn finish_move(&self, tail: &mut Tail<'_>, cache: &mut Mapped, from: u64) -> io::Result<()> {
        let h = self.header();
        let (p, o) = (&h.produced.0, &h.overflow.0);
        let (at, end, to) = (
            o.link_at.load(Relaxed),
            o.link_end.load(Relaxed),
            o.link_to.load(Relaxed),
        );
        let ring = self.ring_at(cache, from)?;
        if ring.tail() == at {
            ring.set_tail(tail, end);
        }
        p.ring.store(to, Release);
        p.leaving.store(0, Release);
        tracing::debug!(
            from,
            to,
            "finished the move between rings of a producer that died"
        );
        Ok(())
    }

    /// A segment for producers to move to: a freed one (with its memory first), or a
    /// new one at the end of the file. Its ring is emptied.
    fn take_segment(&self, tail: &mut Tail<'_>, cache: &mut Mapped) -> io::Result<u64> {
        let o = &self.header().overflow.0;
        let made = o.made.load(Acquire);
        let valid = |k: u64| (1..=made).contains(&k);
        let mut found = o
            .warm
            .iter()
            .map(|slot| slot.swap(0, AcqRel))
            .find(|&k| valid(k));
        if found.is_none() {
            found = o.cold.iter().enumerate().find_map(|(i, word)| {
                let bits = word.load(Acquire);
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                let was = word.fetch_and(!(1 << bit), AcqRel);
                let k = i as u64 * 64 + u64::from(bit) + 1;
                (was & (1 << bit) != 0 && valid(k)).then_some(k)
            });
        }
        let k = match found {
            Some(k) => k,
            None => {
                // Saturating: the count is another process's to write (past the
                // maximum, it is refused below).
                let k = made.saturating_add(1);
                let end = self
                    .segment_offset(k)
                    .filter(|_| k <= MAX_SEGMENTS)
                    .and_then(|at| at.checked_add(self.stride()))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::OutOfMemory,
                            format!(
                                "an unbounded queue holds at most {MAX_SEGMENTS} overflow segments of {} bytes",
                                self.ring_len
                            ),
                        )
                    })?;
                sys::grow(self.seg.fd(), end)?;
                o.made.store(k, Release);
                k
            }
        };
        // The producers are about to fill it from start to end: its pages are entered
        // at once, one system call for its 1025 pages instead of a fault each (100 MiB
        // put before the consumer starts: 28,000 faults gone, 15% less time on an idle
        // machine, 6% with one busy loop). Consumers read with the kernel's fault-around
        // (16 pages a fault) and map without it.
        let region = match self.segment(cache, k, true) {
            Ok(region) => region,
            Err(e) => {
                // Not mapped here (no address space or mappings left for it): nothing
                // uses it, so it goes back among the free ones. Kept from them, each
                // failed send used one up for good, with its memory if it was warm.
                self.release_segment(k);
                return Err(e);
            }
        };
        let sh: &SegmentHeader = region.at(0);
        self.segment_ring(region).reset(tail);
        sh.index.store(k, Relaxed);
        sh.magic.store(SegmentHeader::MAGIC, Release);
        Ok(k)
    }

    /// Frees segment `k`, which no producer or consumer uses any more: kept with its
    /// memory for reuse while few are, otherwise its memory is given back.
    fn release_segment(&self, k: u64) {
        let o = &self.header().overflow.0;
        if o.warm
            .iter()
            .any(|slot| slot.compare_exchange(0, k, AcqRel, Acquire).is_ok())
        {
            return;
        }
        if let Some(at) = self.segment_offset(k)
            && let Err(e) = sys::punch_hole(self.seg.fd(), at, self.stride())
        {
            tracing::debug!("cannot free an overflow segment's memory: {e}");
        }
        let i = (k - 1) as usize;
        if let Some(word) = o.cold.get(i / 64) {
            word.fetch_or(1 << (i % 64), AcqRel);
        }
    }

    /// [`take_next`](super::RawReceiver) of an unbounded channel: the next message,
    /// following links from ring to ring (under the consumers' lock `head`).
    pub(super) fn take_growable(&self, head: &mut Head<'_>) -> Result<Option<Taken>, RecvFail> {
        let c = &self.header().consumed.0;
        if head.took_over {
            let r = c.ring.load(Acquire);
            if r == 0 {
                self.ring().finish_consume(head);
            } else {
                // Should the segment not map now, the lock goes back as abandoned
                // (`Head::took_over`), and the next consumer repairs in its turn.
                self.skip_left_link(head, r);
                let mut cache = MapCache::of(&self.read_map);
                let region = self.segment(&mut cache, r, false).map_err(RecvFail::Io)?;
                self.segment_ring(region).finish_consume(head);
            }
        }
        // The hot path: reading the channel's own ring, which holds the next record.
        if c.ring.load(Relaxed) == 0 {
            match take_record(self, &self.ring(), head)? {
                Step::Taken(t) => return Ok(Some(t)),
                Step::Empty => return Ok(None),
                Step::Again | Step::Link(..) => {}
            }
        }
        let mut cache = MapCache::of(&self.read_map);
        loop {
            let r = c.ring.load(Relaxed);
            let ring = if r == 0 {
                self.ring()
            } else {
                let region = self.segment(&mut cache, r, false).map_err(RecvFail::Io)?;
                let sh: &SegmentHeader = region.at(0);
                if sh.magic.load(Acquire) != SegmentHeader::MAGIC || sh.index.load(Acquire) != r {
                    return Err(broken("an overflow segment that was not made as one"));
                }
                self.segment_ring(region)
            };
            match take_record(self, &ring, head)? {
                Step::Taken(t) => return Ok(Some(t)),
                Step::Empty => return Ok(None),
                Step::Again => {}
                Step::Link(0, resume) => {
                    // Back to the channel's own ring, where producers went on.
                    let own = self.ring();
                    if r == 0
                        || resume < own.head()
                        || resume > own.tail()
                        || !resume.is_multiple_of(8)
                    {
                        return Err(broken("a link back to a place outside the ring"));
                    }
                    own.set_head(head, resume);
                    c.ring.store(0, Release);
                    self.release_segment(r);
                }
                Step::Link(to, _) => {
                    let made = self.header().overflow.0.made.load(Acquire);
                    if to == r || to > made {
                        return Err(broken("a link to an overflow segment that does not exist"));
                    }
                    // Where to read is recorded before the link is consumed: a consumer
                    // that dies in between leaves the link in the channel's own ring,
                    // which the next one skips (`skip_left_link`).
                    c.ring.store(to, Release);
                    die_here(4).map_err(RecvFail::Io)?;
                    if r == 0 {
                        let own = self.ring();
                        own.set_head(head, own.head().wrapping_add(link_room()));
                    } else {
                        self.release_segment(r);
                    }
                }
            }
        }
    }

    /// After taking over from a consumer that died reading overflow segment `r`: the
    /// link to `r` it followed out of the channel's own ring may still be there; skip
    /// it. Anything else is left where it is, wrap markers before it included:
    /// producers that came back to the own ring link back to the position before them.
    /// So is a link to another segment, which producers that came back wrote since
    /// (the record after their link back did not fit the own ring): the consumers
    /// follow it once back.
    fn skip_left_link(&self, head: &mut Head<'_>, r: u64) {
        let own = self.ring();
        if let Ok(Some(record)) = own.peek(head)
            && record.kind == LINK
            && record.link().is_some_and(|(to, _)| to == r)
        {
            record.skip();
        }
    }
}

#[cfg(test)]
thread_local! {
    /// For tests: the step of a move between rings at which this thread "dies" (stops,
    /// keeping the channel's lock, as a killed process would).
    pub(super) static DIE_AT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// For tests: this thread's maps of overflow segments fail, as the kernel's refusal
    /// would (out of memory, or of mappings).
    pub(super) static MAPS_FAIL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Stops here if a test asked this thread to die at `step`: from then on, the locks its
/// guards hold are kept when dropped (its earlier sends and receives let theirs go, as
/// a live process's do).
fn die_here(step: u32) -> io::Result<()> {
    #[cfg(test)]
    if DIE_AT.with(std::cell::Cell::get) == step {
        super::ring::KEEP_LOCKS.with(|k| k.set(true));
        return Err(io::Error::other(format!("died at step {step}")));
    }
    let _ = step;
    Ok(())
}
