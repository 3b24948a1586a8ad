//! The objects a manager serves, and what each operation does to them.
//!
//! Every object is a `Mutex` over its state and a `Condvar` that is notified whenever the
//! state changes. A blocking operation (a queue get, a lock acquire, a barrier wait)
//! waits on the condvar in slices, checking between slices that its client is still
//! connected: a client that dies while the server waits for it releases its server
//! thread within a slice, and a waiter never holds anything on a dead client's behalf.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use indexmap::{IndexMap, IndexSet};

use super::protocol::{Fault, Kind, Op, Response};
use super::{ErasedObject, SharedObject};
use crate::sync::unpoisoned;
use crate::wire::codec::{self, Bytes};

/// How often a blocked operation checks that its client is still there.
const SLICE: Duration = Duration::from_millis(50);

/// Who holds a lock: (client session, client thread).
type Owner = (u64, u64);

/// The client an operation runs for.
pub(crate) struct Peer<'a> {
    pub(crate) session: u64,
    pub(crate) gone: &'a dyn Fn() -> bool,
}

/// A served object.
pub(crate) struct Served {
    pub(crate) kind: Kind,
    pub(crate) tag: String,
    state: Mutex<State>,
    changed: Condvar,
    /// Operations waiting on `changed`, counted under the `state` lock: a change
    /// notifies only when one waits (a notification is a system call).
    waiters: AtomicUsize,
}

/// A lock's ownership: Lock, RLock and a Condition's lock.
#[derive(Default)]
struct Owned {
    owner: Option<Owner>,
    count: u64,
    died: bool,
    /// A condition's lock taken back by a wait that took a notification (its horizon,
    /// see `pass_on_notification`), its owning thread having made no call on the
    /// condition since: should the owner's client die now, it may never have learned that it was
    /// woken (a client killed just before the notification, whose connection the
    /// kernel had not yet closed), and the notification goes on to the next waiter as
    /// well. A waiter must allow for a wake-up that finds nothing to do, so one more is
    /// harmless; one lost leaves a waiter asleep.
    woken: Option<u64>,
}

/// How dict keys and set members (encoded bytes, chosen by clients) are hashed:
/// foldhash, seeded at random per map, a few times faster than std's SipHash on short
/// keys, and still not predictable from outside the server.
type KeyHasher = foldhash::fast::RandomState;

enum State {
    Dict {
        map: IndexMap<Vec<u8>, (u64, Vec<u8>), KeyHasher>,
        clock: u64,
    },
    List(Vec<Vec<u8>>),
    Set(IndexSet<Vec<u8>, KeyHasher>),
    Queue {
        items: VecDeque<Vec<u8>>,
        max: usize,
    },
    Value {
        version: u64,
        bytes: Vec<u8>,
    },
    Lock {
        lock: Owned,
        reentrant: bool,
    },
    Semaphore(u64),
    /// Whether it is set, and how many times it was raised (set while clear): a waiter
    /// returns once either says a `set` came since it began, so that a `set` followed at
    /// once by a `clear` still releases the waiters of the moment (as Python's does).
    Event {
        set: bool,
        raised: u64,
    },
    Condition {
        lock: Owned,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        /// Tickets notified and not yet woken, each with the first ticket that was not
        /// yet waiting when it was notified (a notification passed on from a waiter
        /// whose client is gone goes only to a ticket before that).
        notified: HashMap<u64, u64>,
    },
    Barrier {
        parties: u64,
        /// Parties that arrived in this generation.
        count: u64,
        generation: u64,
        broken: bool,
        /// Parties of this generation still waiting for it to end.
        blocked: u64,
        /// Generations ended by a reset, with how many of their parties have yet to
        /// read that (their waits end broken).
        reset: Vec<(u64, u64)>,
    },
    Custom(Box<dyn ErasedObject>),
}

enum Blocked<T> {
    Done(T),
    TimedOut,
    Gone,
}

fn init<T: serde::de::DeserializeOwned>(kind: Kind, init: &[u8]) -> Result<T, Fault> {
    codec::decode(init, Vec::new()).map_err(|e| Fault::BadInit(format!("{}: {e}", kind.name())))
}

impl Served {
    /// A new object of `kind` from its encoded initial state.
    pub(crate) fn new(
        kind: Kind,
        tag: String,
        init_bytes: &[u8],
        custom: Option<Box<dyn ErasedObject>>,
    ) -> Result<Served, Fault> {
        let state = match kind {
            Kind::Dict => State::Dict {
                map: IndexMap::default(),
                clock: 0,
            },
            Kind::List => State::List(Vec::new()),
            Kind::Set => State::Set(IndexSet::default()),
            Kind::Queue => {
                let max: u64 = init(kind, init_bytes)?;
                State::Queue {
                    items: VecDeque::new(),
                    max: usize::try_from(max).unwrap_or(usize::MAX),
                }
            }
            Kind::Value => State::Value {
                version: 1,
                bytes: init_bytes.to_vec(),
            },
            Kind::Lock | Kind::RLock => State::Lock {
                lock: Owned::default(),
                reentrant: kind == Kind::RLock,
            },
            Kind::Semaphore => State::Semaphore(init(kind, init_bytes)?),
            Kind::Event => State::Event {
                set: false,
                raised: 0,
            },
            Kind::Condition => State::Condition {
                lock: Owned::default(),
                next_ticket: 0,
                waiting: VecDeque::new(),
                notified: HashMap::new(),
            },
            Kind::Barrier => {
                let parties: u64 = init(kind, init_bytes)?;
                if parties == 0 {
                    return Err(Fault::BadInit("a barrier needs at least one party".into()));
                }
                State::Barrier {
                    parties,
                    count: 0,
                    generation: 0,
                    broken: false,
                    blocked: 0,
                    reset: Vec::new(),
                }
            }
            Kind::Custom => {
                State::Custom(custom.ok_or_else(|| Fault::BadInit("no constructor".into()))?)
            }
        };
        Ok(Served {
            kind,
            tag,
            state: Mutex::new(state),
            changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        unpoisoned::lock(&self.state)
    }

    /// Wakes the operations waiting for a change, if any (call after changing the
    /// state under its lock).
    fn notify(&self) {
        if self.waiters.load(Relaxed) > 0 {
            self.changed.notify_all();
        }
    }

    /// Waits until `attempt` gives a value, the timeout passes, or the client goes.
    fn block<T>(
        &self,
        held: Option<MutexGuard<'_, State>>,
        peer: &Peer<'_>,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&mut State) -> Option<T>,
    ) -> Blocked<T> {
        // A client's timeout too long to add to the clock waits a century.
        let deadline = timeout.map(crate::deadline::later);
        let mut state = held.unwrap_or_else(|| self.state());
        loop {
            if let Some(v) = attempt(&mut state) {
                self.notify();
                return Blocked::Done(v);
            }
            let mut slice = SLICE;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Blocked::TimedOut;
                }
                slice = slice.min(left);
            }
            // Counted before the lock is let go in the wait, uncounted once it is held
            // again: whoever changes the state under the lock after this sees the count.
            self.waiters.fetch_add(1, Relaxed);
            state = unpoisoned::wait_timeout(&self.changed, state, slice);
            self.waiters.fetch_sub(1, Relaxed);
            if (peer.gone)() {
                return Blocked::Gone;
            }
        }
    }

    /// Releases whatever the dead client session held: its locks are marked so the
    /// next owner is told.
    pub(crate) fn session_ended(&self, session: u64) {
        let mut state = self.state();
        let lock = match &mut *state {
            State::Lock { lock, .. } | State::Condition { lock, .. } => lock,
            _ => return,
        };
        if lock.owner.is_some_and(|(s, _)| s == session) {
            lock.owner = None;
            lock.count = 0;
            lock.died = true;
            let woken = lock.woken.take();
            drop(state);
            self.notify();
            self.pass_on_notification(woken);
        }
    }

    /// Carries out `op` for `peer`.
    pub(crate) fn call(&self, op: Op, peer: &Peer<'_>) -> Response {
        self.call_held(op, peer, None)
    }

    /// As [`call`](Self::call), with the object's lock `held` already (or not).
    fn call_held(&self, op: Op, peer: &Peer<'_>, held: Option<MutexGuard<'_, State>>) -> Response {
        match op {
            Op::Acquire { thread, timeout } => {
                return self.acquire(held, (peer.session, thread), timeout, peer);
            }
            Op::Take { timeout } => {
                return match self.block(held, peer, timeout, |s| match s {
                    State::Queue { items, .. } => items.pop_front().map(Ok),
                    _ => Some(Err(())),
                }) {
                    Blocked::Done(Ok(item)) => Response::Item(Some(Bytes(item))),
                    Blocked::Done(Err(())) => self.unsupported("get"),
                    Blocked::TimedOut | Blocked::Gone => Response::Item(None),
                };
            }
            Op::Put { item, timeout } => {
                let mut item = Some(item.0);
                return match self.block(held, peer, timeout, |s| match s {
                    State::Queue { items, max } if *max == 0 || items.len() < *max => {
                        items.extend(item.take());
                        Some(true)
                    }
                    State::Queue { .. } => None,
                    _ => Some(false),
                }) {
                    Blocked::Done(true) => Response::Bool(true),
                    Blocked::Done(false) => self.unsupported("put"),
                    Blocked::TimedOut | Blocked::Gone => Response::Bool(false),
                };
            }
            Op::Wait { timeout } => {
                // The raises counted when the wait began: one more is a `set` since.
                let mut began = None;
                return match self.block(held, peer, timeout, |s| match s {
                    State::Event { set: true, .. } => Some(true),
                    State::Event { raised, .. } => {
                        (*began.get_or_insert(*raised) != *raised).then_some(true)
                    }
                    _ => Some(false),
                }) {
                    Blocked::Done(true) => Response::Bool(true),
                    Blocked::Done(false) => self.unsupported("wait"),
                    Blocked::TimedOut | Blocked::Gone => Response::Bool(false),
                };
            }
            Op::CondWait { thread, timeout } => {
                drop(held);
                return self.cond_wait((peer.session, thread), timeout, peer);
            }
            Op::BarrierWait { timeout } => {
                drop(held);
                return self.barrier_wait(timeout, peer);
            }
            _ => {}
        }
        let state = held.unwrap_or_else(|| self.state());
        self.apply_locked(state, op, peer)
    }

    /// As [`call`](Self::call), for a caller that must not wait for the object's lock
    /// (the dispatcher, which serves every local client): `Err(op)` back while another
    /// operation holds it (one copying a big dict's items, say).
    pub(crate) fn try_call(&self, op: Op, peer: &Peer<'_>) -> Result<Response, Op> {
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(op),
        };
        // Those that may wait (here with no time to: the dispatcher serves only those
        // whose timeout is zero) look under the lock already held: let go and taken
        // again, it could be taken in between by a connection's thread (one copying a
        // big queue's items, say), and the dispatcher, and every local client with it,
        // waited for that.
        Ok(self.call_held(op, peer, Some(state)))
    }

    /// A non-blocking operation, under the object's lock.
    fn apply_locked(&self, mut state: MutexGuard<'_, State>, op: Op, peer: &Peer<'_>) -> Response {
        let applied = apply(&mut state, op, peer.session);
        drop(state);
        match applied {
            Ok(Applied { response, changed }) => {
                if changed {
                    self.notify();
                }
                response
            }
            Err(Unfit(op)) => self.unsupported(&op),
        }
    }

    fn unsupported(&self, op: &str) -> Response {
        Response::Fault(Fault::Unsupported {
            op: op.into(),
            kind: self.kind.name().into(),
        })
    }

    fn acquire(
        &self,
        held: Option<MutexGuard<'_, State>>,
        me: Owner,
        timeout: Option<Duration>,
        peer: &Peer<'_>,
    ) -> Response {
        let kind = self.kind.name();
        let r = self.block(held, peer, timeout, |s| match s {
            State::Semaphore(n) if *n > 0 => {
                *n -= 1;
                Some(Ok(false))
            }
            State::Semaphore(_) => None,
            State::Lock { lock, reentrant } => take(lock, me, *reentrant),
            State::Condition { lock, .. } => take(lock, me, true),
            _ => Some(Err(Fault::Unsupported {
                op: "acquire".into(),
                kind: kind.into(),
            })),
        });
        match r {
            Blocked::Done(Ok(owner_died)) => Response::Acquired { owner_died },
            Blocked::Done(Err(f)) => Response::Fault(f),
            // Nothing was taken; a client that is gone reads no answer.
            Blocked::TimedOut | Blocked::Gone => Response::TimedOut,
        }
    }

    fn cond_wait(&self, me: Owner, timeout: Option<Duration>, peer: &Peer<'_>) -> Response {
        let (ticket, saved) = {
            let mut state = self.state();
            let State::Condition {
                lock,
                next_ticket,
                waiting,
                ..
            } = &mut *state
            else {
                return self.unsupported("wait");
            };
            if lock.owner != Some(me) {
                return Response::Fault(Fault::NotOwner);
            }
            let saved = lock.count;
            lock.owner = None;
            lock.count = 0;
            lock.woken = None;
            let ticket = *next_ticket;
            *next_ticket += 1;
            waiting.push_back(ticket);
            drop(state);
            self.notify();
            (ticket, saved)
        };
        let woken = self.block(None, peer, timeout, |s| match s {
            State::Condition { notified, .. } => notified.remove(&ticket).map(Some),
            _ => Some(None),
        });
        // The horizon of the notification this wait took, if it took one.
        let notified = match woken {
            Blocked::Done(horizon) => horizon,
            Blocked::TimedOut | Blocked::Gone => {
                if let State::Condition {
                    waiting, notified, ..
                } = &mut *self.state()
                {
                    waiting.retain(|t| *t != ticket);
                    // A notification that raced the timeout still counts.
                    notified.remove(&ticket)
                } else {
                    None
                }
            }
        };
        if matches!(woken, Blocked::Gone) {
            self.pass_on_notification(notified);
            return Response::TimedOut;
        }
        let back = self.block(None, peer, None, |s| match s {
            State::Condition { lock, .. } if lock.owner.is_none() => {
                lock.owner = Some(me);
                lock.count = saved;
                lock.woken = notified;
                Some(std::mem::take(&mut lock.died))
            }
            State::Condition { .. } => None,
            _ => Some(false),
        });
        match back {
            // A client gone by the time the lock was taken back for it (the wait
            // looks for the lock before it looks at the client) lets it go again, as
            // it had it in the wait, with whatever a dead owner left said for the next.
            Blocked::Done(died) if (peer.gone)() => {
                if let State::Condition { lock, .. } = &mut *self.state()
                    && lock.owner == Some(me)
                {
                    lock.owner = None;
                    lock.count = 0;
                    lock.died |= died;
                    lock.woken = None;
                }
                self.notify();
                self.pass_on_notification(notified);
                Response::TimedOut
            }
            Blocked::Done(true) => Response::Fault(Fault::OwnerDied),
            Blocked::Done(false) => Response::Bool(notified.is_some()),
            Blocked::TimedOut | Blocked::Gone => {
                self.pass_on_notification(notified);
                Response::TimedOut
            }
        }
    }

    /// A waiter whose client is gone had taken a notification (made when the tickets
    /// before `horizon` were waiting): it goes to the next waiter of those instead, so
    /// that `notify(n)` wakes `n` clients that can act on it, and none that began
    /// waiting after it. (A client's death is seen by the thread serving its wait
    /// within `SLICE`; a notification sent to it before then would otherwise be lost.)
    fn pass_on_notification(&self, horizon: Option<u64>) {
        let Some(horizon) = horizon else { return };
        let mut state = self.state();
        if let State::Condition {
            waiting, notified, ..
        } = &mut *state
            && waiting.front().is_some_and(|&next| next < horizon)
            && let Some(next) = waiting.pop_front()
        {
            notified.insert(next, horizon);
            drop(state);
            self.notify();
        }
    }

    fn barrier_wait(&self, timeout: Option<Duration>, peer: &Peer<'_>) -> Response {
        let (generation, index) = {
            let mut state = self.state();
            let State::Barrier {
                parties,
                count,
                generation,
                broken,
                blocked,
                ..
            } = &mut *state
            else {
                return self.unsupported("wait");
            };
            if *broken {
                return Response::Fault(Fault::BrokenBarrier);
            }
            let index = *count;
            *count += 1;
            if *count == *parties {
                *count = 0;
                *blocked = 0;
                *generation += 1;
                drop(state);
                self.notify();
                return Response::Arrived(index);
            }
            *blocked += 1;
            (*generation, index)
        };
        // How this party's wait ended, once it has: `Some(true)` passed, `Some(false)`
        // broken (or reset). Counted out of the generation's waiting parties.
        let ended = |s: &mut State, giving_up: bool| match s {
            State::Barrier {
                generation: g,
                broken,
                blocked,
                reset,
                ..
            } => {
                if *g != generation {
                    let Some(at) = reset.iter().position(|&(r, _)| r == generation) else {
                        return Some(true);
                    };
                    reset[at].1 -= 1;
                    if reset[at].1 == 0 {
                        reset.swap_remove(at);
                    }
                    Some(false)
                } else if *broken || giving_up {
                    *blocked -= 1;
                    // A waiter that gives up (or whose client died) breaks the barrier
                    // for the others, as a thread barrier does.
                    *broken = true;
                    Some(false)
                } else {
                    None
                }
            }
            _ => Some(false),
        };
        match self.block(None, peer, timeout, |s| ended(s, false)) {
            Blocked::Done(true) => Response::Arrived(index),
            Blocked::Done(false) => Response::Fault(Fault::BrokenBarrier),
            Blocked::TimedOut | Blocked::Gone => {
                let passed = ended(&mut self.state(), true);
                self.notify();
                match passed {
                    Some(true) => Response::Arrived(index),
                    _ => Response::TimedOut,
                }
            }
        }
    }
}

/// Takes `lock` for `me` if it is free (or already `me`'s and re-entrant): `Some(Ok(died))`.
fn take(lock: &mut Owned, me: Owner, reentrant: bool) -> Option<Result<bool, Fault>> {
    match lock.owner {
        None => {
            lock.owner = Some(me);
            lock.count = 1;
            Some(Ok(std::mem::take(&mut lock.died)))
        }
        Some(o) if o == me && reentrant => {
            lock.count += 1;
            lock.woken = None;
            Some(Ok(false))
        }
        Some(o) if o == me => Some(Err(Fault::WouldDeadlock)),
        Some(_) => None,
    }
}

/// An operation the object's kind does not have.
struct Unfit(String);

fn unfit(op: &Op) -> Unfit {
    Unfit(variant_name(op))
}

/// The name of an enum's variant as its derived `Debug` writes it, without formatting
/// its fields: a request's may be a payload of megabytes, and this runs on the
/// dispatcher, which every local client waits for.
fn variant_name(value: &dyn std::fmt::Debug) -> String {
    /// Keeps what comes before the first field, then stops the formatting.
    struct UpToFields(String);
    impl std::fmt::Write for UpToFields {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if matches!(c, ' ' | '(' | '{') || self.0.len() >= 64 {
                    return Err(std::fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut name = UpToFields(String::new());
    // Cut short by the writer: the error is how it stops.
    let _ = std::fmt::Write::write_fmt(&mut name, format_args!("{value:?}"));
    if name.0.is_empty() {
        "?".to_owned()
    } else {
        name.0
    }
}

fn bytes_to_vec(items: impl IntoIterator<Item = Vec<u8>>) -> Vec<Bytes> {
    items.into_iter().map(Bytes).collect()
}

/// What a non-blocking operation did: its response, and whether it changed the object
/// (then the object's waiters are woken).
struct Applied {
    response: Response,
    changed: bool,
}

impl Applied {
    /// A response that changed nothing.
    fn read(response: Response) -> Self {
        Applied {
            response,
            changed: false,
        }
    }

    /// A response after a change.
    fn wrote(response: Response) -> Self {
        Applied {
            response,
            changed: true,
        }
    }

    /// A response after a change, if there was one.
    fn wrote_if(changed: bool, response: Response) -> Self {
        Applied { response, changed }
    }
}

type Handled = Result<Applied, Unfit>;

/// The non-blocking operations, handed to the handler of the object's family.
fn apply(state: &mut State, op: Op, session: u64) -> Handled {
    match state {
        State::Dict { map, clock } => dict(map, clock, op),
        State::List(v) => list(v, op),
        State::Set(s) => set(s, op),
        State::Queue { items, .. } => queue(items, op),
        State::Value { version, bytes } => value(version, bytes, op),
        State::Lock { lock, .. } => lock_ops(lock, op, session),
        State::Semaphore(n) => semaphore(n, op),
        State::Event { set, raised } => event(set, raised, op),
        State::Condition {
            lock,
            next_ticket,
            waiting,
            notified,
        } => condition(lock, *next_ticket, waiting, notified, op, session),
        State::Barrier {
            parties,
            count,
            generation,
            broken,
            blocked,
            reset,
        } => barrier(*parties, count, generation, broken, blocked, reset, op),
        State::Custom(obj) => custom(obj.as_mut(), op),
    }
}

fn dict(
    map: &mut IndexMap<Vec<u8>, (u64, Vec<u8>), KeyHasher>,
    clock: &mut u64,
    op: Op,
) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Len => Applied::read(R::Len(map.len() as u64)),
        Op::Clear => {
            map.clear();
            Applied::wrote(R::Unit)
        }
        Op::Values => Applied::read(R::Items(
            map.values().map(|(_, v)| Bytes(v.clone())).collect(),
        )),
        Op::Keys => Applied::read(R::Items(bytes_to_vec(map.keys().cloned()))),
        Op::Items => Applied::read(R::Pairs(
            map.iter()
                .map(|(k, (_, v))| (Bytes(k.clone()), Bytes(v.clone())))
                .collect(),
        )),
        Op::Get { key, versioned } => Applied::read(match map.get(&key.0) {
            Some((ver, v)) if versioned => R::Versioned(Some((*ver, Bytes(v.clone())))),
            Some((_, v)) => R::Item(Some(Bytes(v.clone()))),
            None if versioned => R::Versioned(None),
            None => R::Item(None),
        }),
        Op::Insert { key, value } => {
            *clock += 1;
            let old = map.insert(key.0, (*clock, value.0));
            Applied::wrote(R::Item(old.map(|(_, v)| Bytes(v))))
        }
        Op::Remove(key) => {
            // `shift_remove` keeps the others in insertion order, as Python's dict does.
            let old = map.shift_remove(&key.0);
            Applied::wrote_if(old.is_some(), R::Item(old.map(|(_, v)| Bytes(v))))
        }
        Op::Contains(key) => Applied::read(R::Bool(map.contains_key(&key.0))),
        Op::Update(pairs) => {
            for (k, v) in pairs {
                *clock += 1;
                map.insert(k.0, (*clock, v.0));
            }
            Applied::wrote(R::Unit)
        }
        Op::Swap {
            key: Some(key),
            version,
            value,
        } => {
            let current = map.get(&key.0).map(|(ver, _)| *ver);
            if current != version {
                let now = map.get(&key.0).map(|(ver, v)| (*ver, Bytes(v.clone())));
                return Ok(Applied::read(R::Versioned(now)));
            }
            *clock += 1;
            map.insert(key.0, (*clock, value.0));
            Applied::wrote(R::Bool(true))
        }
        op => return Err(unfit(&op)),
    })
}

fn list(v: &mut Vec<Vec<u8>>, op: Op) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Len => Applied::read(R::Len(v.len() as u64)),
        Op::Clear => {
            v.clear();
            Applied::wrote(R::Unit)
        }
        Op::Values => Applied::read(R::Items(bytes_to_vec(v.iter().cloned()))),
        Op::Push(item) => {
            v.push(item.0);
            Applied::wrote(R::Unit)
        }
        Op::Pop => {
            let item = v.pop();
            Applied::wrote_if(item.is_some(), R::Item(item.map(Bytes)))
        }
        Op::Index(i) => Applied::read(R::Item(
            usize::try_from(i)
                .ok()
                .and_then(|i| v.get(i))
                .map(|b| Bytes(b.clone())),
        )),
        Op::SetIndex(i, item) => {
            let len = v.len() as u64;
            match usize::try_from(i).ok().and_then(|i| v.get_mut(i)) {
                Some(slot) => Applied::wrote(R::Item(Some(Bytes(std::mem::replace(slot, item.0))))),
                None => Applied::read(R::Fault(Fault::IndexOutOfRange { index: i, len })),
            }
        }
        Op::Extend(items) => {
            v.extend(items.into_iter().map(|b| b.0));
            Applied::wrote(R::Unit)
        }
        op => return Err(unfit(&op)),
    })
}

fn set(s: &mut IndexSet<Vec<u8>, KeyHasher>, op: Op) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Len => Applied::read(R::Len(s.len() as u64)),
        Op::Clear => {
            s.clear();
            Applied::wrote(R::Unit)
        }
        Op::Values => Applied::read(R::Items(bytes_to_vec(s.iter().cloned()))),
        Op::Remove(key) => {
            let was = s.shift_remove(&key.0);
            Applied::wrote_if(was, R::Bool(was))
        }
        Op::Contains(key) => Applied::read(R::Bool(s.contains(&key.0))),
        Op::Push(item) => {
            let new = s.insert(item.0);
            Applied::wrote_if(new, R::Bool(new))
        }
        op => return Err(unfit(&op)),
    })
}

/// A queue's non-blocking operations (`Take` and `Put` block: see [`Served::call`]).
fn queue(items: &mut VecDeque<Vec<u8>>, op: Op) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Len => Applied::read(R::Len(items.len() as u64)),
        Op::Clear => {
            items.clear();
            Applied::wrote(R::Unit)
        }
        Op::Values => Applied::read(R::Items(bytes_to_vec(items.iter().cloned()))),
        op => return Err(unfit(&op)),
    })
}

fn value(version: &mut u64, bytes: &mut Vec<u8>, op: Op) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Swap {
            key: None,
            version: expected,
            value,
        } => {
            if expected != Some(*version) {
                return Ok(Applied::read(R::Versioned(Some((
                    *version,
                    Bytes(bytes.clone()),
                )))));
            }
            *version += 1;
            *bytes = value.0;
            Applied::wrote(R::Bool(true))
        }
        Op::Load => Applied::read(R::Versioned(Some((*version, Bytes(bytes.clone()))))),
        Op::Store(value) => {
            *version += 1;
            *bytes = value.0;
            Applied::wrote(R::Unit)
        }
        op => return Err(unfit(&op)),
    })
}

/// A lock's (or a condition's lock's) non-blocking operation: `Release` by its owner.
fn lock_ops(lock: &mut Owned, op: Op, session: u64) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Release { thread } => {
            if lock.owner != Some((session, thread)) {
                return Ok(Applied::read(R::Fault(Fault::NotOwner)));
            }
            lock.woken = None;
            lock.count -= 1;
            if lock.count == 0 {
                lock.owner = None;
            }
            Applied::wrote(R::Unit)
        }
        op => return Err(unfit(&op)),
    })
}

fn semaphore(n: &mut u64, op: Op) -> Handled {
    Ok(match op {
        Op::Release { .. } => {
            *n = n.saturating_add(1);
            Applied::wrote(Response::Unit)
        }
        op => return Err(unfit(&op)),
    })
}

fn event(set: &mut bool, raised: &mut u64, op: Op) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Set => {
            if !*set {
                *raised = raised.wrapping_add(1);
            }
            *set = true;
            Applied::wrote(R::Unit)
        }
        Op::Unset => {
            *set = false;
            Applied::wrote(R::Unit)
        }
        Op::IsSet => Applied::read(R::Bool(*set)),
        op => return Err(unfit(&op)),
    })
}

fn condition(
    lock: &mut Owned,
    next_ticket: u64,
    waiting: &mut VecDeque<u64>,
    notified: &mut HashMap<u64, u64>,
    op: Op,
    session: u64,
) -> Handled {
    match op {
        Op::Notify { thread, n } => {
            if lock.owner != Some((session, thread)) {
                return Ok(Applied::read(Response::Fault(Fault::NotOwner)));
            }
            // The owner, calling, knows that its wait ended (see `Owned::woken`).
            lock.woken = None;
            let mut woke = 0;
            while woke < n {
                let Some(t) = waiting.pop_front() else { break };
                notified.insert(t, next_ticket);
                woke += 1;
            }
            Ok(Applied::wrote_if(woke > 0, Response::Len(woke)))
        }
        op => lock_ops(lock, op, session),
    }
}

fn barrier(
    parties: u64,
    count: &mut u64,
    generation: &mut u64,
    broken: &mut bool,
    blocked: &mut u64,
    reset: &mut Vec<(u64, u64)>,
    op: Op,
) -> Handled {
    use Response as R;
    Ok(match op {
        Op::Abort => {
            *broken = true;
            Applied::wrote(R::Unit)
        }
        // As Python's `reset`: the parties waiting now are told the barrier broke, and
        // it starts afresh, whole, for the next ones.
        Op::Reset => {
            if *blocked > 0 {
                reset.push((*generation, *blocked));
            }
            *generation += 1;
            *count = 0;
            *blocked = 0;
            *broken = false;
            Applied::wrote(R::Unit)
        }
        // As Python's `n_waiting`: nobody waits at a broken barrier (those that did
        // have been told, and later waits fail at once).
        Op::BarrierState => Applied::read(R::BarrierState {
            parties,
            waiting: if *broken { 0 } else { *count },
            broken: *broken,
        }),
        op => return Err(unfit(&op)),
    })
}

/// A registered type's request; a panic in its handler is reported, and the object
/// lives on (counted as changed: the handler may have changed it before panicking).
fn custom(obj: &mut dyn ErasedObject, op: Op) -> Handled {
    use Response as R;
    let Op::Custom(request) = op else {
        return Err(unfit(&op));
    };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| obj.call(&request.0)));
    Ok(match r {
        Ok(Ok(bytes)) => Applied::wrote(R::Item(Some(Bytes(bytes)))),
        Ok(Err(e)) => Applied::read(R::Fault(Fault::Codec(e))),
        Err(payload) => Applied::wrote(R::Fault(Fault::Panicked(
            crate::bootstrap::caught_panic(payload).message().to_owned(),
        ))),
    })
}

/// A registered custom type, behind its encoded requests and responses.
impl<T: SharedObject> ErasedObject for T {
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let request: T::Request = codec::decode(request, Vec::new()).map_err(|e| e.to_string())?;
        let response = self.handle(request);
        let encoded = codec::encode(&response).map_err(|e| e.to_string())?;
        Ok(encoded.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatcher's way in: while another operation holds the object, the
    /// operation comes back (to be served on its connection's thread) instead of
    /// waiting; once the object is free it is served.
    #[test]
    fn try_call_gives_the_operation_back_while_the_object_is_held() {
        let served = Served::new(Kind::Dict, String::new(), &[], None).unwrap();
        let gone = || false;
        let peer = Peer {
            session: 1,
            gone: &gone,
        };
        let held = served.state();
        for op in [
            Op::Len,
            Op::Take {
                timeout: Some(Duration::ZERO),
            },
        ] {
            match served.try_call(op, &peer) {
                Err(Op::Len | Op::Take { .. }) => {}
                other => panic!("served while held: {other:?}"),
            }
        }
        drop(held);
        assert!(matches!(
            served.try_call(Op::Len, &peer),
            Ok(Response::Len(0))
        ));
    }

    /// An operation the object's kind does not have is named without formatting its
    /// payload (an insert of megabytes sent to a list was formatted whole, on the
    /// dispatcher, to take the name from the front).
    #[test]
    fn an_unfit_operation_is_named_without_its_payload() {
        /// A payload that must not be formatted.
        struct Untouchable;
        impl std::fmt::Debug for Untouchable {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                panic!("the payload was formatted")
            }
        }
        #[derive(Debug)]
        enum Request {
            Insert { _key: Untouchable },
            Push(Untouchable),
            Len,
        }
        assert_eq!(
            variant_name(&Request::Insert { _key: Untouchable }),
            "Insert"
        );
        assert_eq!(variant_name(&Request::Push(Untouchable)), "Push");
        assert_eq!(variant_name(&Request::Len), "Len");
        let list = Served::new(Kind::List, String::new(), &[], None).unwrap();
        let gone = || false;
        let peer = Peer {
            session: 1,
            gone: &gone,
        };
        let insert = Op::Insert {
            key: Bytes(vec![1; 8]),
            value: Bytes(vec![2; 1 << 20]),
        };
        match list.try_call(insert, &peer) {
            Ok(Response::Fault(Fault::Unsupported { op, kind })) => {
                assert_eq!((op.as_str(), kind.as_str()), ("Insert", "list"));
            }
            other => panic!("{other:?}"),
        }
    }
}
