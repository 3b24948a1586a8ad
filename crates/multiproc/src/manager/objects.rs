//! The objects a manager serves, and what each operation does to them.
//!
//! Every object is a `Mutex` over its state and a `Condvar` that is notified whenever the
//! state changes. A blocking operation (a queue get, a lock acquire, a barrier wait)
//! waits on the condvar in slices, checking between slices that its client is still
//! connected: a client that dies while the server waits for it releases its server
//! thread within a slice, and a waiter never holds anything on a dead client's behalf.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use indexmap::{IndexMap, IndexSet};

use super::wire::{Fault, Kind, Op, Response};
use super::{ErasedObject, SharedObject};
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
pub(crate) struct Object {
    pub(crate) kind: Kind,
    pub(crate) tag: String,
    state: Mutex<State>,
    changed: Condvar,
}

/// A lock's ownership: Lock, RLock and a Condition's lock.
#[derive(Default)]
struct Owned {
    owner: Option<Owner>,
    count: u64,
    died: bool,
}

enum State {
    Dict {
        map: IndexMap<Vec<u8>, (u64, Vec<u8>)>,
        clock: u64,
    },
    List(Vec<Vec<u8>>),
    Set(IndexSet<Vec<u8>>),
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
    Event(bool),
    Condition {
        lock: Owned,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        notified: HashSet<u64>,
    },
    Barrier {
        parties: u64,
        count: u64,
        generation: u64,
        broken: bool,
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

impl Object {
    /// A new object of `kind` from its encoded initial state.
    pub(crate) fn new(
        kind: Kind,
        tag: String,
        init_bytes: &[u8],
        custom: Option<Box<dyn ErasedObject>>,
    ) -> Result<Object, Fault> {
        let state = match kind {
            Kind::Dict => State::Dict {
                map: IndexMap::new(),
                clock: 0,
            },
            Kind::List => State::List(Vec::new()),
            Kind::Set => State::Set(IndexSet::new()),
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
            Kind::Event => State::Event(false),
            Kind::Condition => State::Condition {
                lock: Owned::default(),
                next_ticket: 0,
                waiting: VecDeque::new(),
                notified: HashSet::new(),
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
                }
            }
            Kind::Custom => {
                State::Custom(custom.ok_or_else(|| Fault::BadInit("no constructor".into()))?)
            }
        };
        Ok(Object {
            kind,
            tag,
            state: Mutex::new(state),
            changed: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `attempt` gives a value, the timeout passes, or the client goes.
    fn block<T>(
        &self,
        peer: &Peer<'_>,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&mut State) -> Option<T>,
    ) -> Blocked<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.state();
        loop {
            if let Some(v) = attempt(&mut state) {
                self.changed.notify_all();
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
            state = self
                .changed
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
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
            drop(state);
            self.changed.notify_all();
        }
    }

    /// Carries out `op` for `peer`.
    pub(crate) fn call(&self, op: Op, peer: &Peer<'_>) -> Response {
        match op {
            Op::Acquire { thread, timeout } => {
                return self.acquire((peer.session, thread), timeout, peer);
            }
            Op::Take { timeout } => {
                return match self.block(peer, timeout, |s| match s {
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
                return match self.block(peer, timeout, |s| match s {
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
                return match self.block(peer, timeout, |s| match s {
                    State::Event(true) => Some(true),
                    State::Event(false) => None,
                    _ => Some(false),
                }) {
                    Blocked::Done(true) => Response::Bool(true),
                    Blocked::Done(false) => self.unsupported("wait"),
                    Blocked::TimedOut | Blocked::Gone => Response::Bool(false),
                };
            }
            Op::CondWait { thread, timeout } => {
                return self.cond_wait((peer.session, thread), timeout, peer);
            }
            Op::BarrierWait { timeout } => return self.barrier_wait(timeout, peer),
            _ => {}
        }
        let mut state = self.state();
        let (response, changed) = apply(&mut state, op, peer.session);
        drop(state);
        if changed {
            self.changed.notify_all();
        }
        match response {
            Ok(r) => r,
            Err(Unfit(op)) => self.unsupported(&op),
        }
    }

    fn unsupported(&self, op: &str) -> Response {
        Response::Fault(Fault::Unsupported {
            op: op.into(),
            kind: self.kind.name().into(),
        })
    }

    fn acquire(&self, me: Owner, timeout: Option<Duration>, peer: &Peer<'_>) -> Response {
        let kind = self.kind.name();
        let r = self.block(peer, timeout, |s| match s {
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
            let ticket = *next_ticket;
            *next_ticket += 1;
            waiting.push_back(ticket);
            drop(state);
            self.changed.notify_all();
            (ticket, saved)
        };
        let woken = self.block(peer, timeout, |s| match s {
            State::Condition { notified, .. } => notified.remove(&ticket).then_some(()),
            _ => Some(()),
        });
        let notified = match woken {
            Blocked::Done(()) => true,
            Blocked::TimedOut | Blocked::Gone => {
                if let State::Condition {
                    waiting, notified, ..
                } = &mut *self.state()
                {
                    waiting.retain(|t| *t != ticket);
                    // A notification that raced the timeout still counts.
                    notified.remove(&ticket)
                } else {
                    false
                }
            }
        };
        if matches!(woken, Blocked::Gone) {
            return Response::TimedOut;
        }
        let back = self.block(peer, None, |s| match s {
            State::Condition { lock, .. } if lock.owner.is_none() => {
                lock.owner = Some(me);
                lock.count = saved;
                Some(std::mem::take(&mut lock.died))
            }
            State::Condition { .. } => None,
            _ => Some(false),
        });
        match back {
            Blocked::Done(true) => Response::Fault(Fault::OwnerDied),
            Blocked::Done(false) => Response::Bool(notified),
            Blocked::TimedOut | Blocked::Gone => Response::TimedOut,
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
                *generation += 1;
                drop(state);
                self.changed.notify_all();
                return Response::Arrived(index);
            }
            (*generation, index)
        };
        let r = self.block(peer, timeout, |s| match s {
            State::Barrier {
                generation: g,
                broken,
                ..
            } => {
                if *g != generation {
                    Some(true)
                } else if *broken {
                    Some(false)
                } else {
                    None
                }
            }
            _ => Some(false),
        });
        match r {
            Blocked::Done(true) => Response::Arrived(index),
            Blocked::Done(false) => Response::Fault(Fault::BrokenBarrier),
            Blocked::TimedOut | Blocked::Gone => {
                // A waiter that gives up (or whose client died) breaks the barrier for
                // the others, as a thread barrier does.
                if let State::Barrier {
                    generation: g,
                    broken,
                    ..
                } = &mut *self.state()
                {
                    if *g != generation {
                        return Response::Arrived(index);
                    }
                    *broken = true;
                }
                self.changed.notify_all();
                Response::TimedOut
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
            Some(Ok(false))
        }
        Some(o) if o == me => Some(Err(Fault::WouldDeadlock)),
        Some(_) => None,
    }
}

/// An operation the object's kind does not have.
struct Unfit(String);

fn unfit(op: &Op) -> Unfit {
    let name = format!("{op:?}");
    let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
    Unfit(name)
}

fn bytes_to_vec(items: impl IntoIterator<Item = Vec<u8>>) -> Vec<Bytes> {
    items.into_iter().map(Bytes).collect()
}

/// The non-blocking operations: the response, and whether the state changed.
fn apply(state: &mut State, op: Op, session: u64) -> (Result<Response, Unfit>, bool) {
    use Response as R;
    let r = match (state, op) {
        (State::Dict { map, .. }, Op::Len) => R::Len(map.len() as u64),
        (State::List(v), Op::Len) => R::Len(v.len() as u64),
        (State::Set(s), Op::Len) => R::Len(s.len() as u64),
        (State::Queue { items, .. }, Op::Len) => R::Len(items.len() as u64),
        (State::Dict { map, .. }, Op::Clear) => {
            map.clear();
            return (Ok(R::Unit), true);
        }
        (State::List(v), Op::Clear) => {
            v.clear();
            return (Ok(R::Unit), true);
        }
        (State::Set(s), Op::Clear) => {
            s.clear();
            return (Ok(R::Unit), true);
        }
        (State::Queue { items, .. }, Op::Clear) => {
            items.clear();
            return (Ok(R::Unit), true);
        }
        (State::Dict { map, .. }, Op::Values) => {
            R::Items(map.values().map(|(_, v)| Bytes(v.clone())).collect())
        }
        (State::List(v), Op::Values) => R::Items(bytes_to_vec(v.iter().cloned())),
        (State::Set(s), Op::Values) => R::Items(bytes_to_vec(s.iter().cloned())),
        (State::Queue { items, .. }, Op::Values) => R::Items(bytes_to_vec(items.iter().cloned())),
        (State::Dict { map, .. }, Op::Keys) => R::Items(bytes_to_vec(map.keys().cloned())),
        (State::Dict { map, .. }, Op::Items) => R::Pairs(
            map.iter()
                .map(|(k, (_, v))| (Bytes(k.clone()), Bytes(v.clone())))
                .collect(),
        ),
        (State::Dict { map, .. }, Op::Get { key, versioned }) => match map.get(&key.0) {
            Some((ver, v)) if versioned => R::Versioned(Some((*ver, Bytes(v.clone())))),
            Some((_, v)) => R::Item(Some(Bytes(v.clone()))),
            None if versioned => R::Versioned(None),
            None => R::Item(None),
        },
        (State::Dict { map, clock }, Op::Insert { key, value }) => {
            *clock += 1;
            let old = map.insert(key.0, (*clock, value.0));
            return (Ok(R::Item(old.map(|(_, v)| Bytes(v)))), true);
        }
        (State::Dict { map, .. }, Op::Remove(key)) => {
            // `shift_remove` keeps the others in insertion order, as Python's dict does.
            let old = map.shift_remove(&key.0);
            let changed = old.is_some();
            return (Ok(R::Item(old.map(|(_, v)| Bytes(v)))), changed);
        }
        (State::Set(s), Op::Remove(key)) => {
            let was = s.shift_remove(&key.0);
            return (Ok(R::Bool(was)), was);
        }
        (State::Dict { map, .. }, Op::Contains(key)) => R::Bool(map.contains_key(&key.0)),
        (State::Set(s), Op::Contains(key)) => R::Bool(s.contains(&key.0)),
        (State::Dict { map, clock }, Op::Update(pairs)) => {
            for (k, v) in pairs {
                *clock += 1;
                map.insert(k.0, (*clock, v.0));
            }
            return (Ok(R::Unit), true);
        }
        (
            State::Dict { map, clock },
            Op::Swap {
                key: Some(key),
                version,
                value,
            },
        ) => {
            let current = map.get(&key.0).map(|(ver, _)| *ver);
            if current != version {
                let now = map.get(&key.0).map(|(ver, v)| (*ver, Bytes(v.clone())));
                return (Ok(R::Versioned(now)), false);
            }
            *clock += 1;
            map.insert(key.0, (*clock, value.0));
            return (Ok(R::Bool(true)), true);
        }
        (
            State::Value { version, bytes },
            Op::Swap {
                key: None,
                version: expected,
                value,
            },
        ) => {
            if expected != Some(*version) {
                return (
                    Ok(R::Versioned(Some((*version, Bytes(bytes.clone()))))),
                    false,
                );
            }
            *version += 1;
            *bytes = value.0;
            return (Ok(R::Bool(true)), true);
        }
        (State::Value { version, bytes }, Op::Load) => {
            R::Versioned(Some((*version, Bytes(bytes.clone()))))
        }
        (State::Value { version, bytes }, Op::Store(value)) => {
            *version += 1;
            *bytes = value.0;
            return (Ok(R::Unit), true);
        }
        (State::List(v), Op::Push(item)) => {
            v.push(item.0);
            return (Ok(R::Unit), true);
        }
        (State::Set(s), Op::Push(item)) => {
            let new = s.insert(item.0);
            return (Ok(R::Bool(new)), new);
        }
        (State::List(v), Op::Pop) => {
            let item = v.pop();
            let changed = item.is_some();
            return (Ok(R::Item(item.map(Bytes))), changed);
        }
        (State::List(v), Op::Index(i)) => R::Item(
            usize::try_from(i)
                .ok()
                .and_then(|i| v.get(i))
                .map(|b| Bytes(b.clone())),
        ),
        (State::List(v), Op::SetIndex(i, item)) => {
            let len = v.len() as u64;
            return match usize::try_from(i).ok().and_then(|i| v.get_mut(i)) {
                Some(slot) => (
                    Ok(R::Item(Some(Bytes(std::mem::replace(slot, item.0))))),
                    true,
                ),
                None => (
                    Ok(R::Fault(Fault::IndexOutOfRange { index: i, len })),
                    false,
                ),
            };
        }
        (State::List(v), Op::Extend(items)) => {
            v.extend(items.into_iter().map(|b| b.0));
            return (Ok(R::Unit), true);
        }
        (State::Lock { lock, .. } | State::Condition { lock, .. }, Op::Release { thread }) => {
            if lock.owner != Some((session, thread)) {
                return (Ok(R::Fault(Fault::NotOwner)), false);
            }
            lock.count -= 1;
            if lock.count == 0 {
                lock.owner = None;
            }
            return (Ok(R::Unit), true);
        }
        (State::Semaphore(n), Op::Release { .. }) => {
            *n = n.saturating_add(1);
            return (Ok(R::Unit), true);
        }
        (State::Event(e), Op::Set) => {
            *e = true;
            return (Ok(R::Unit), true);
        }
        (State::Event(e), Op::Unset) => {
            *e = false;
            return (Ok(R::Unit), true);
        }
        (State::Event(e), Op::IsSet) => R::Bool(*e),
        (
            State::Condition {
                lock,
                waiting,
                notified,
                ..
            },
            Op::Notify { thread, n },
        ) => {
            if lock.owner != Some((session, thread)) {
                return (Ok(R::Fault(Fault::NotOwner)), false);
            }
            let mut woke = 0;
            while woke < n {
                let Some(t) = waiting.pop_front() else { break };
                notified.insert(t);
                woke += 1;
            }
            return (Ok(R::Len(woke)), woke > 0);
        }
        (State::Barrier { broken, .. }, Op::Abort) => {
            *broken = true;
            return (Ok(R::Unit), true);
        }
        (
            State::Barrier {
                parties,
                count,
                broken,
                ..
            },
            Op::BarrierState,
        ) => R::BarrierState {
            parties: *parties,
            waiting: *count,
            broken: *broken,
        },
        (State::Custom(obj), Op::Custom(request)) => {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| obj.call(&request.0)));
            return match r {
                Ok(Ok(bytes)) => (Ok(R::Item(Some(Bytes(bytes)))), true),
                Ok(Err(e)) => (Ok(R::Fault(Fault::Codec(e))), false),
                Err(payload) => (
                    Ok(R::Fault(Fault::Panicked(
                        crate::bootstrap::caught_panic(&*payload)
                            .message()
                            .to_owned(),
                    ))),
                    true,
                ),
            };
        }
        (_, op) => return (Err(unfit(&op)), false),
    };
    (Ok(r), false)
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
