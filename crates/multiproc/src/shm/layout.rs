//! Every structure that lives in shared memory, in one place: each is `#[repr(C)]`, made
//! of atomics only, and marked [`SharedWords`] here with the reason it may be.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64};

use super::segment::SharedWords;

/// The words of a process-shared lock (the algorithm is in `sync::raw`).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LockWords {
    /// 0 when free; otherwise the owner's thread identity.
    pub(crate) state: AtomicU64,
    /// Bumped by a release when someone sleeps; sleepers wait on it.
    pub(crate) epoch: AtomicU32,
    /// Threads, in any process, asleep (or about to be) on `epoch`.
    pub(crate) sleepers: AtomicU32,
    /// 1 when a sleeper wants the next release to wake it; the release that wakes
    /// someone clears it, so a holder that releases and retakes the lock in a loop makes
    /// one wake-up call per sleep, not one per release.
    pub(crate) wake: AtomicU32,
    pub(crate) _reserved: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics: any bytes are a valid value.
unsafe impl SharedWords for LockWords {}

/// Keeps what one side writes off the other side's cache line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct CacheLine<T>(pub(crate) T);

// SAFETY: `repr(C)` around one `SharedWords` value; the alignment adds only padding.
unsafe impl<T: SharedWords> SharedWords for CacheLine<T> {}

/// What producers advance (under the tail lock).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Produced {
    /// Bytes ever published into the ring (its position is this modulo the ring size).
    pub(crate) tail: AtomicU64,
    /// Items ever published.
    pub(crate) items: AtomicU64,
    /// Next id for a message that travels on the side socket.
    pub(crate) next_side_id: AtomicU64,
    /// The consumers' `head` and item count as last seen: producers look at the
    /// consumers' cache line only when these say the ring might be full.
    pub(crate) seen_head: AtomicU64,
    pub(crate) seen_taken: AtomicU64,
    /// The ring producers write to: 0 for the channel's own, `k` for overflow segment
    /// `k` (an unbounded channel's).
    pub(crate) ring: AtomicU64,
    /// While a producer moves to another ring: 1 + the ring it leaves, whose link record
    /// is written but may not be published yet (see `Overflow`); 0 otherwise.
    pub(crate) leaving: AtomicU64,
    /// While a producer publishes a record (written whole): the `tail` it moves the
    /// ring producers write to on to, and the item count it sets; 0 otherwise. A
    /// producer that takes the lock over from one that died finishes the publish
    /// (`Ring::finish_publish`), so that the count and the records agree.
    pub(crate) publishing_tail: AtomicU64,
    pub(crate) publishing_items: AtomicU64,
    /// Tasks ever put (`JoinableQueue`: items that count until marked done), set with
    /// the item count by the publish that adds one; and, while such a publish is in
    /// progress, the count it sets (0 otherwise). An absolute count, logged like the
    /// item count, so that a producer that dies publishing leaves it right: one more
    /// exactly when its record is published.
    pub(crate) tasks: AtomicU64,
    pub(crate) publishing_tasks: AtomicU64,
    /// While a producer holds a side message's number (`next_side_id` - 1) whose record
    /// it has not published: 1, or 2 for a task (`JoinableQueue`); 0 otherwise. A live
    /// producer clears it before it lets the lock go, so the next holder that finds it
    /// set took the lock from a producer that died between taking the number and its
    /// publish: it publishes a record for the number (`Core::repair`), and the message
    /// comes through if it was sent.
    pub(crate) side_pending: AtomicU64,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for Produced {}

/// What consumers advance (under the head lock).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Consumed {
    /// Bytes ever consumed from the ring.
    pub(crate) head: AtomicU64,
    /// Items ever consumed.
    pub(crate) items: AtomicU64,
    /// The producers' `tail` as last seen: consumers look at the producers' cache line
    /// only when this says the ring might be empty.
    pub(crate) seen_tail: AtomicU64,
    /// The ring consumers read from: 0 for the channel's own, `k` for overflow segment
    /// `k`.
    pub(crate) ring: AtomicU64,
    /// While a consumer consumes a record: the `head` it moves the ring consumers read
    /// from on to, and the item count it sets; 0 otherwise (see `publishing_tail`).
    pub(crate) consuming_head: AtomicU64,
    pub(crate) consuming_items: AtomicU64,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for Consumed {}

/// Who sleeps where: a producer or consumer rings the other side's doorbell only when
/// someone sleeps on it, so the fast path makes no system call.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Sleepers {
    /// Consumers waiting for an item.
    pub(crate) receivers: AtomicU32,
    /// Producers waiting for room.
    pub(crate) senders: AtomicU32,
    /// Processes waiting in `JoinableQueue::join`.
    pub(crate) joiners: AtomicU32,
    /// Bumped when the tasks unfinished reach zero; joiners wait on it.
    pub(crate) join_epoch: AtomicU32,
    /// Consumers napping on `recv_seq`, a futex word producers bump (and wake) after
    /// publishing while one naps.
    pub(crate) recv_nappers: AtomicU32,
    pub(crate) recv_seq: AtomicU32,
    /// Producers napping on `send_seq`, bumped by consumers that made room.
    pub(crate) send_nappers: AtomicU32,
    pub(crate) send_seq: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for Sleepers {}

/// Overflow segments that an unbounded channel keeps freed: reused before the file grows.
/// `warm` ones still have their memory (a producer that cycles through a few segments
/// does not fault their pages in again); the bits of `cold` mark ones whose memory was
/// given back.
pub(crate) const WARM_SEGMENTS: usize = 4;
pub(crate) const COLD_WORDS: usize = 384;
/// The most overflow segments an unbounded channel has (one bit each in `cold`).
pub(crate) const MAX_SEGMENTS: u64 = (COLD_WORDS * 64) as u64;

/// An unbounded channel's overflow: the segments its file holds after the ring, and a
/// producer's move from one ring to another in progress (written before it publishes
/// the link record, so that a producer that dies half-way is finished by the next).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Overflow {
    /// Segments the file has room for (1 to `made`).
    pub(crate) made: AtomicU64,
    /// The move in progress (`Produced::leaving` says whether there is one): where the
    /// link record starts in the ring left, where it ends, and the ring moved to.
    pub(crate) link_at: AtomicU64,
    pub(crate) link_end: AtomicU64,
    pub(crate) link_to: AtomicU64,
    /// Freed segments with their memory (0: an empty place).
    pub(crate) warm: [AtomicU64; WARM_SEGMENTS],
    /// Freed segments without it: bit `k - 1`.
    pub(crate) cold: [AtomicU64; COLD_WORDS],
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for Overflow {}

/// The head of an overflow segment (its first page); its ring follows.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct SegmentHeader {
    /// `MPSEG001` once initialised by the producer that made or reused it.
    pub(crate) magic: AtomicU64,
    /// Its number, `k`.
    pub(crate) index: AtomicU64,
    /// Its ring's positions (only `tail`, `seen_head`, `head` and `seen_tail` are used;
    /// item counts are the channel's).
    pub(crate) produced: CacheLine<Produced>,
    pub(crate) consumed: CacheLine<Consumed>,
}

// SAFETY: `repr(C)`, made only of atomics and other `SharedWords`.
unsafe impl SharedWords for SegmentHeader {}

impl SegmentHeader {
    /// `MPSEG001`.
    pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MPSEG001");
    /// Where the segment's ring starts.
    pub(crate) const RING_OFFSET: usize = 4096;
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= SegmentHeader::RING_OFFSET);

/// The head of a channel's segment; the ring of messages follows at `RING_OFFSET`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ChannelHeader {
    pub(crate) magic: AtomicU64,
    /// Size of the ring in bytes (a multiple of 8).
    pub(crate) ring_len: AtomicU64,
    /// Most items the channel holds at once (`u64::MAX`: as many as fit).
    pub(crate) max_items: AtomicU64,
    /// Tasks marked done (`JoinableQueue`); never more than `produced.tasks`, and the
    /// tasks unfinished are the difference.
    pub(crate) tasks_done: AtomicU64,
    /// Receiving handles: one per process holding one, plus one per handle in flight to
    /// another process. Zero means no receiver can exist; a process killed while holding
    /// one leaves it counted, so non-zero only means "maybe".
    pub(crate) receivers: AtomicU64,
    pub(crate) tail_lock: CacheLine<LockWords>,
    pub(crate) head_lock: CacheLine<LockWords>,
    pub(crate) produced: CacheLine<Produced>,
    pub(crate) consumed: CacheLine<Consumed>,
    pub(crate) sleepers: CacheLine<Sleepers>,
    /// 1 for an unbounded channel (its ring overflows into segments), 0 otherwise.
    pub(crate) growable: AtomicU64,
    pub(crate) overflow: CacheLine<Overflow>,
}

// SAFETY: `repr(C)`, made only of atomics and other `SharedWords`.
unsafe impl SharedWords for ChannelHeader {}

impl ChannelHeader {
    /// `MPCHAN01`.
    pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MPCHAN01");
    /// Where the ring starts in the segment (the header fits in one page).
    pub(crate) const RING_OFFSET: usize = 4096;
}

const _: () = assert!(std::mem::size_of::<ChannelHeader>() <= ChannelHeader::RING_OFFSET);

/// The head of a shared object's segment (a lock, an event, a value, ...): what it is,
/// and for values and arrays, the layout of the element type, checked by every process
/// that maps it. The object's own words follow at `WORDS_OFFSET`, its data (if any) at
/// `data_offset`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ObjectHeader {
    /// [`ObjectHeader::MAGIC`] once the creator has initialised the object.
    pub(crate) magic: AtomicU64,
    pub(crate) kind: AtomicU32,
    pub(crate) version: AtomicU32,
    /// Size and alignment of the element type, and a hash of its name (0 if none).
    pub(crate) elem_size: AtomicU64,
    pub(crate) elem_align: AtomicU64,
    pub(crate) type_hash: AtomicU64,
    /// Elements in the data area.
    pub(crate) len: AtomicU64,
    pub(crate) data_offset: AtomicU64,
    /// The element type's name, truncated, for error messages.
    pub(crate) type_name: [AtomicU64; 8],
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for ObjectHeader {}

impl ObjectHeader {
    /// `MPOBJ001`.
    pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MPOBJ001");
    /// The layout of the header and of the words after it: 2 since a lock's words
    /// grew a word that says a sleeper wants waking (a process of layout 1 read it as
    /// the word that says the holder died, and said so of a lock no holder of had), and
    /// data moved to a 16-byte boundary.
    pub(crate) const VERSION: u32 = 2;
    /// Where the object's words start.
    pub(crate) const WORDS_OFFSET: usize = 128;
}

const _: () = assert!(std::mem::size_of::<ObjectHeader>() <= ObjectHeader::WORDS_OFFSET);

// SAFETY: an array of `SharedWords` is laid out as its elements, with no padding.
unsafe impl<T: SharedWords, const N: usize> SharedWords for [T; N] {}

/// A lock as `Lock`, `RLock`, `Value` and `Array` use it.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct MutexWords {
    pub(crate) lock: LockWords,
    /// Set when the lock was taken over from a dead owner by an operation that cannot
    /// report it (`Value::load`): the next `lock()` reports it instead.
    pub(crate) died: AtomicU32,
    /// How many times the owner holds it (`RLock`).
    pub(crate) count: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics and `SharedWords`.
unsafe impl SharedWords for MutexWords {}

/// A counting semaphore.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct SemaphoreWords {
    /// Permits available; waiters sleep on it.
    pub(crate) value: AtomicU32,
    /// Threads asleep (or about to be) on `value`.
    pub(crate) sleepers: AtomicU32,
    /// Highest count `release` may reach.
    pub(crate) bound: AtomicU32,
    pub(crate) _reserved: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for SemaphoreWords {}

/// An event flag.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct EventWords {
    /// Bit 0: set. The bits above count the times it was raised, so that a waiter
    /// sees a `set` that a `clear` undid before it woke. Waiters sleep on it.
    pub(crate) flag: AtomicU32,
    pub(crate) sleepers: AtomicU32,
    /// Async waiters (`wait_async`), which poll the event's doorbell instead.
    pub(crate) async_sleepers: AtomicU32,
    pub(crate) _reserved: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for EventWords {}

/// A condition variable (its lock is a separate object).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ConditionWords {
    /// Bumped by every notification; waiters sleep on it.
    pub(crate) seq: AtomicU32,
    pub(crate) waiters: AtomicU32,
    /// Waiters notified and not yet awake to it: each wakes and takes one, and one still
    /// there long after (its waiter was killed as it woke) goes to another waiter.
    pub(crate) unclaimed: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for ConditionWords {}

/// A barrier's state, changed under `lock`; its slots follow at `SLOTS_OFFSET`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct BarrierWords {
    pub(crate) lock: LockWords,
    pub(crate) parties: AtomicU32,
    /// Parties waiting in the current generation.
    pub(crate) arrived: AtomicU32,
    /// Even, and moved on by 2 whenever a generation ends (passed or broken), under
    /// `lock`; made odd by a party that gave up on the round without `lock` (see
    /// `sync::barrier`). Waiters sleep on it.
    pub(crate) generation: AtomicU32,
    /// 1 while broken.
    pub(crate) broken: AtomicU32,
    pub(crate) sleepers: AtomicU32,
    /// The odd number after the generation a release is writing passes for, until it
    /// moves the generation on (0 otherwise): a holder that dies in between left passes
    /// nobody may read (see `sync::barrier`).
    pub(crate) releasing: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics and `SharedWords`.
unsafe impl SharedWords for BarrierWords {}

/// One party of a barrier: the thread that uses it, and how its current wait ended.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct BarrierSlot {
    /// The party's thread identity; 0 while the slot is free.
    pub(crate) identity: AtomicU64,
    /// 1 while the party waits.
    pub(crate) waiting: AtomicU32,
    /// How its last wait ended: 0 pending, 1 passed, 2 broken.
    pub(crate) outcome: AtomicU32,
    /// Its place in the order of arrival of its generation.
    pub(crate) index: AtomicU32,
    pub(crate) _reserved: AtomicU32,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for BarrierSlot {}

impl BarrierWords {
    pub(crate) const SLOTS_OFFSET: usize = ObjectHeader::WORDS_OFFSET + 64;
}

const _: () = assert!(std::mem::size_of::<BarrierWords>() <= 64);

/// One pool task in flight: who may run it (see `pool::tickets`).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct TicketWords {
    /// `generation << 8 | state`.
    pub(crate) state: AtomicU64,
    /// When a worker started it (`CLOCK_MONOTONIC`, nanoseconds).
    pub(crate) started_ns: AtomicU64,
    /// When the item of a map's chunk that runs now started (0 before the second): the
    /// pool's timeout counts from it, its service time and stealing from `started_ns`.
    pub(crate) item_ns: AtomicU64,
}

// SAFETY: `repr(C)`, made only of atomics.
unsafe impl SharedWords for TicketWords {}
