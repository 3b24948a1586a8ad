//! Typed proxies: what clients hold. Each is an object id and the process's connection
//! to its manager; values are encoded here and decoded here, so the server never needs
//! the types.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ManagerError;
use super::client::{Client, ClientSettings, session, thread_token};
use super::protocol::{Op, RefOp, Request, Response};
use super::{Address, SharedObject};
use crate::sync::{LockResult, OwnerDied};
use crate::wire::codec::{self, Bytes};

type Result<T> = std::result::Result<T, ManagerError>;

thread_local! {
    /// Set while a value is encoded for a manager to store: a proxy inside it is pinned
    /// (the server cannot look into stored values to count it).
    static STORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Encodes a value for the server. Handles that carry descriptors (pipes, queues, locks
/// of this crate) cannot be stored in a manager: their descriptors cannot cross a
/// socket to another machine.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    struct Storing(bool);
    impl Drop for Storing {
        fn drop(&mut self) {
            STORING.with(|s| s.set(self.0));
        }
    }
    let _restore = Storing(STORING.with(|s| s.replace(true)));
    let Some(bytes) = codec::encode(value)?.into_plain() else {
        return Err(ManagerError::Codec(crate::wire::codec::CodecError::new(
            format!(
                "a `{}` holds descriptors (a pipe, queue or lock of this crate), which a \
             manager cannot store; store a manager proxy instead",
                std::any::type_name::<T>()
            ),
        )));
    };
    Ok(Bytes(bytes))
}

fn decode<T: DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    Ok(codec::decode(&bytes.0, Vec::new())?)
}

fn decode_all<T: DeserializeOwned>(items: &[Bytes]) -> Result<Vec<T>> {
    items.iter().map(decode).collect()
}

pub(crate) fn unexpected(r: Response) -> ManagerError {
    ManagerError::Protocol(format!("unexpected response from the server: {r:?}"))
}

pub(crate) fn tag<T>() -> String {
    std::any::type_name::<T>().to_owned()
}

pub(crate) fn tag2<K, V>() -> String {
    format!(
        "{} => {}",
        std::any::type_name::<K>(),
        std::any::type_name::<V>()
    )
}

/// A process's reference to an object on its server: proxies share it (a clone costs
/// nothing), and the server is told when the last one goes.
///
/// The reference belongs to the process that made it. A forked child that uses an
/// inherited proxy takes a reference of its own first (its parent's stays the
/// parent's), and an inherited reference that is dropped unused tells nobody.
struct Ref {
    client: Arc<Client>,
    id: u64,
    /// The process whose session holds this reference.
    pid: AtomicU32,
    /// Proxies of it in flight from this process (serialized for anything but a manager
    /// to store, counted by the encodings that carry them: see `Handle`'s `Serialize`):
    /// each keeps the object alive until its receiver holds it.
    sent: AtomicU64,
    /// How many lists kept for forked children hold it (see [`hold_across_fork`]).
    kept: AtomicUsize,
}

impl Ref {
    /// A reference the server counted already (a create or an open by name).
    fn counted(client: Arc<Client>, id: u64) -> Arc<Ref> {
        // Later releases go out from `Drop`, which never opens connections.
        client.anchor();
        Ref::live(client, id)
    }

    /// A reference of this process's, listed in [`LIVE`].
    fn live(client: Arc<Client>, id: u64) -> Arc<Ref> {
        hold_across_forks();
        let r = Arc::new(Ref {
            client,
            id,
            pid: AtomicU32::new(crate::sys::process_id()),
            sent: AtomicU64::new(0),
            kept: AtomicUsize::new(0),
        });
        let mut live = crate::sync::unpoisoned::lock(&LIVE);
        if live.len() == live.capacity() {
            // Dropped ones are forgotten, and room doubles while over half are alive.
            live.retain(|w| w.strong_count() > 0);
            let len = live.len();
            live.reserve(len.max(8));
        }
        live.push(Arc::downgrade(&r));
        r
    }

    /// Makes sure this process holds the reference: a forked child takes its own.
    fn adopt(&self) {
        let pid = crate::sys::process_id();
        if self.pid.swap(pid, Ordering::Relaxed) != pid {
            self.sent.store(0, Ordering::Relaxed);
            self.client.send_refs([RefOp::Hold {
                id: self.id,
                from: None,
            }]);
        }
    }
}

/// Every reference this process made or received (dropped ones until the list is next
/// pruned), for [`hold_across_fork`].
static LIVE: Mutex<Vec<Weak<Ref>>> = Mutex::new(Vec::new());

/// Has `spawn_fork` hold the references' list and the clients' state across its forks
/// ([`hold_across_fork`]), from the first client or reference on (a process with a
/// client and no proxy yet calls its server too: `Manager::start`'s and `connect`'s
/// first call, `object_count`).
pub(crate) fn hold_across_forks() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| crate::process::set_hold_across_fork(hold_across_fork));
}

/// What a parent keeps for a child it forks (`Builder::spawn_fork`): a proxy moved into
/// the closure goes from the parent as the fork returns, and with it the parent's
/// reference, while the child takes its own only at its first call: the object would be
/// freed in between. So the parent keeps the references its proxies hold until the child
/// has ended (its end seen by a join, `is_alive`, `active_children`, or the next spawn
/// for a handle dropped unjoined). Only those some
/// proxy holds: one that only earlier children's lists keep is not kept again (each
/// spawn's list would take in the last one's, and a program that forks again and again
/// would free nothing). Holds the list's lock until after the fork, so that the child
/// finds it unlocked.
fn hold_across_fork() -> Box<dyn crate::process::HeldAcrossFork> {
    struct Held {
        live: MutexGuard<'static, Vec<Weak<Ref>>>,
        clients: super::client::HeldClients,
        kept: Kept,
        /// References looked at and not kept, let go only once the lists are: one that
        /// another thread's drop left to this look alone ends as it drops, and its end
        /// takes the lists' locks (a client's last handle going looks at the clients),
        /// which this thread holds.
        passed: Vec<Arc<Ref>>,
    }
    impl crate::process::HeldAcrossFork for Held {
        fn forked(self: Box<Self>) -> (Box<dyn Send + Sync>, Box<dyn Send>) {
            let Held {
                live,
                clients,
                kept,
                passed,
            } = *self;
            let clients = clients.release();
            drop(live);
            (Box::new(kept), Box::new((passed, clients)))
        }

        fn in_child(self: Box<Self>) {
            let Held {
                live,
                clients,
                kept,
                passed,
            } = *self;
            drop(live);
            // The parent's, as the kept ones are; but a reference others hold here too
            // is only counted down (one held by this look alone would end, and its end
            // take locks another thread of the parent may have held at the fork).
            // Forgotten, each would stay counted once too often, and never end here.
            for r in passed {
                if Arc::strong_count(&r) > 1 {
                    drop(r);
                } else {
                    std::mem::forget(r);
                }
            }
            std::mem::forget(kept);
            super::client::forget_parents_connections(clients);
        }
    }
    let live = crate::sync::unpoisoned::lock(&LIVE);
    // After the references' list, as a reference dropped under it takes it (a client's
    // last handle going, whose `Drop` looks at the clients).
    let clients = super::client::hold_clients();
    let me = crate::sys::process_id();
    // Held by more than this look and the kept lists. (A proxy dropped meanwhile on
    // another thread may be counted: kept once more, then let go.)
    let (kept, passed): (Vec<_>, Vec<_>) = live.iter().filter_map(Weak::upgrade).partition(|r| {
        r.pid.load(Ordering::Relaxed) == me
            && Arc::strong_count(r) > 1 + r.kept.load(Ordering::Relaxed)
    });
    for r in &kept {
        r.kept.fetch_add(1, Ordering::Relaxed);
    }
    Box::new(Held {
        live,
        clients,
        kept: Kept(kept),
        passed,
    })
}

/// What this process's live references of `client` that sent proxies say at its exit:
/// for each, a `Hold` then a `Release` with the proxies of it in flight (the hold stays
/// as it was: a thread still running may still use it, until the process ends), and
/// its count starts again from nothing. Only a `Drop` reports what a reference sent,
/// and one alive at the exit never drops: in a `spawn_fork` child (the parent's memory
/// holds it: a proxy the child inherited and passed on, returned, put on a queue), a
/// static, a leaked value or another thread; its proxies in flight then went with the
/// session before their receivers took them in. Empty if another thread holds the
/// list (it is never waited for at the exit).
pub(crate) fn in_flight_at_exit(client: &Arc<Client>) -> Vec<RefOp> {
    let Some(live) = crate::sync::unpoisoned::try_lock(&LIVE) else {
        return Vec::new();
    };
    let me = crate::sys::process_id();
    let mut report = Vec::new();
    for r in live.iter().filter_map(Weak::upgrade) {
        if Arc::ptr_eq(&r.client, client) && r.pid.load(Ordering::Relaxed) == me {
            let sent = r.sent.swap(0, Ordering::Relaxed);
            if sent > 0 {
                // Held first: the release alone could free the object (the count of
                // proxies in flight, added by the same release, keeps it).
                report.push(RefOp::Hold {
                    id: r.id,
                    from: None,
                });
                report.push(RefOp::Release { id: r.id, sent });
            }
        }
        // Not dropped here: the last handle of a reference, or of its client, ends with
        // a word to the server (under locks the caller holds).
        std::mem::forget(r);
    }
    report
}

/// References kept for a forked child (see [`hold_across_fork`]).
struct Kept(Vec<Arc<Ref>>);

impl Drop for Kept {
    fn drop(&mut self) {
        for r in &self.0 {
            r.kept.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Ref {
    fn drop(&mut self) {
        if *self.pid.get_mut() == crate::sys::process_id() {
            self.client.send_refs([RefOp::Release {
                id: self.id,
                sent: *self.sent.get_mut(),
            }]);
        }
    }
}

/// A proxy in flight, counted by the encoding that carries it (see `Handle`'s
/// `Serialize`).
impl codec::InFlight for Ref {
    fn add(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back(&self) {
        // Never below zero: a forked child that adopted the reference counts afresh.
        let _ = self
            .sent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// An object id and the connection to its manager.
#[derive(Clone)]
struct Handle {
    r: Arc<Ref>,
}

impl Handle {
    fn id(&self) -> u64 {
        self.r.id
    }

    fn client(&self) -> &Client {
        &self.r.client
    }

    fn call(&self, op: Op) -> Result<Response> {
        self.r.adopt();
        self.r.client.call(&Request::Call { id: self.r.id, op })
    }

    fn len(&self) -> Result<usize> {
        match self.call(Op::Len)? {
            Response::Len(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            r => Err(unexpected(r)),
        }
    }

    fn unit(&self, op: Op) -> Result<()> {
        match self.call(op)? {
            Response::Unit => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn flag(&self, op: Op) -> Result<bool> {
        match self.call(op)? {
            Response::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    fn item<T: DeserializeOwned>(&self, op: Op) -> Result<Option<T>> {
        match self.call(op)? {
            Response::Item(item) => item.as_ref().map(decode).transpose(),
            r => Err(unexpected(r)),
        }
    }

    fn items<T: DeserializeOwned>(&self, op: Op) -> Result<Vec<T>> {
        match self.call(op)? {
            Response::Items(items) => decode_all(&items),
            r => Err(unexpected(r)),
        }
    }

    /// Read-modify-write by compare-and-swap on versions: `read` gives the current
    /// version and value; `f` runs here, in the client; the server stores its result
    /// only if nothing changed meanwhile, and otherwise sends the newer state to retry
    /// with.
    fn update<T: Serialize + DeserializeOwned>(
        &self,
        key: Option<Bytes>,
        read: Op,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<T> {
        let keyed = key.is_some();
        let mut current = match self.call(read)? {
            Response::Versioned(v) => v,
            r => return Err(unexpected(r)),
        };
        loop {
            if current.is_none() && !keyed {
                return Err(ManagerError::Protocol("the server lost a value".into()));
            }
            let (version, old) = match &current {
                Some((version, bytes)) => (Some(*version), Some(decode(bytes)?)),
                None => (None, None),
            };
            let new = f(old);
            let op = Op::Swap {
                key: key.clone(),
                version,
                value: encode(&new)?,
            };
            match self.call(op)? {
                Response::Bool(true) => return Ok(new),
                Response::Versioned(now) => current = now,
                r => return Err(unexpected(r)),
            }
        }
    }
}

/// A proxy's wire form: where its manager is, the key, how to talk to it, the object's
/// id, and the session that sent it (none for one stored in a manager, which is
/// pinned).
#[derive(Serialize, Deserialize)]
struct Wire {
    address: Address,
    key: Bytes,
    settings: ClientSettings,
    id: u64,
    from: Option<u64>,
}

impl Serialize for Handle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.r.adopt();
        let from = if STORING.with(std::cell::Cell::get) {
            if !codec::measuring() {
                self.r.client.send_refs([RefOp::Pin { id: self.r.id }]);
            }
            None
        } else {
            // Counted by the encoding that carries it, as a channel's receiver is: an
            // encoding that is never sent (a put refused as full, a failed spawn, a
            // retry's copy kept and never used) gives its count back, one sent twice
            // counts twice. Only such an encoding can: measured outside one, a proxy
            // refuses (as a handle with a descriptor does), so that a message with a
            // proxy is always encoded in one.
            if codec::measuring() {
                return Err(serde::ser::Error::custom(
                    "a manager proxy is counted by the encoding that carries it",
                ));
            }
            if !codec::count_in_flight(Arc::clone(&self.r) as Arc<dyn codec::InFlight>) {
                // Another serde format: counted here, for good.
                self.r.sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(session())
        };
        let client = &self.r.client;
        Wire {
            address: client.address.clone(),
            key: Bytes(client.key.clone()),
            settings: client.settings,
            id: self.r.id,
            from,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let client = Client::get(&w.address, &w.key.0, w.settings);
        // Sent at the first call (or drop) at the latest: until then the sender's
        // proxy in flight keeps the object.
        client.send_refs([RefOp::Hold {
            id: w.id,
            from: w.from,
        }]);
        Ok(Handle {
            r: Ref::live(client, w.id),
        })
    }
}

/// Clone, Debug, Serialize and Deserialize for a proxy, without bounds on its type
/// parameters.
macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident $(<$($t:ident),*>)?) => {
        $(#[$doc])*
        pub struct $name $(<$($t),*>)? {
            h: Handle,
            $(_types: PhantomData<fn() -> ($($t,)*)>,)?
        }

        impl $(<$($t),*>)? $name $(<$($t),*>)? {
            pub(crate) fn new((client, id): (Arc<Client>, u64)) -> Self {
                $name {
                    h: Handle { r: Ref::counted(client, id) },
                    $(_types: PhantomData::<fn() -> ($($t,)*)>,)?
                }
            }
        }

        impl $(<$($t),*>)? Clone for $name $(<$($t),*>)? {
            fn clone(&self) -> Self {
                $name {
                    h: self.h.clone(),
                    $(_types: PhantomData::<fn() -> ($($t,)*)>,)?
                }
            }
        }

        impl $(<$($t),*>)? fmt::Debug for $name $(<$($t),*>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("manager", &self.h.client().address)
                    .field("id", &self.h.id())
                    .finish()
            }
        }

        impl $(<$($t),*>)? Serialize for $name $(<$($t),*>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }

        impl<'de, $($($t),*)?> Deserialize<'de> for $name $(<$($t),*>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($name {
                    h: Handle::deserialize(d)?,
                    $(_types: PhantomData::<fn() -> ($($t,)*)>,)?
                })
            }
        }
    };
}

proxy! {
    /// A dict served by a [`Manager`](crate::Manager): Python's `DictProxy`, typed.
    ///
    /// Keys are compared by their serde encoding (equal for equal values of the usual
    /// key types: integers, strings, tuples, plain structs and enums); entries keep
    /// insertion order, as in Python. Every method is one round trip to the server,
    /// except [`update_with`](DictProxy::update_with).
    DictProxy<K, V>
}

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// The value for `key`.
    pub fn get<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        self.h.item(Op::Get {
            key: encode(key)?,
            versioned: false,
        })
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.h.item(Op::Insert {
            key: encode(&key)?,
            value: encode(&value)?,
        })
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        self.h.item(Op::Remove(encode(key)?))
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
    {
        self.h.flag(Op::Contains(encode(key)?))
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        self.h.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.h.items(Op::Keys)
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>> {
        self.h.items(Op::Values)
    }

    /// The entries, in insertion order (one consistent snapshot).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.h.call(Op::Items)? {
            Response::Pairs(pairs) => pairs
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    /// Inserts every pair, in one request (atomically: no client sees half of them).
    pub fn update(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok((encode(&k)?, encode(&v)?)))
            .collect::<Result<Vec<_>>>()?;
        self.h.unit(Op::Update(pairs))
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        self.h.unit(Op::Clear)
    }

    /// Atomically replaces the value of `key` with `f(old)` (`None` if absent), and
    /// returns the new value: `d[k] += 1` that no other client can interleave with.
    ///
    /// `f` runs in this process. If another client changed the entry between the read
    /// and the write, the write is refused and `f` runs again on the newer value, so `f`
    /// may run more than once and should have no side effects.
    pub fn update_with(&self, key: K, f: impl FnMut(Option<V>) -> V) -> Result<V> {
        let key = encode(&key)?;
        let read = Op::Get {
            key: key.clone(),
            versioned: true,
        };
        self.h.update(Some(key), read, f)
    }
}

proxy! {
    /// A list served by a [`Manager`](crate::Manager): Python's `ListProxy`, typed.
    ListProxy<T>
}

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends an item.
    pub fn push(&self, item: T) -> Result<()> {
        self.h.unit(Op::Push(encode(&item)?))
    }

    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>> {
        self.h.item(Op::Pop)
    }

    /// The item at `index`.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        self.h.item(Op::Index(index as u64))
    }

    /// Replaces the item at `index`, returning the old one;
    /// [`ManagerError::IndexOutOfRange`] past the end.
    pub fn set(&self, index: usize, item: T) -> Result<T> {
        self.h
            .item(Op::SetIndex(index as u64, encode(&item)?))?
            .ok_or_else(|| ManagerError::Protocol("no old item".into()))
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize> {
        self.h.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Appends every item, in one request.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<()> {
        let items = items
            .into_iter()
            .map(|i| encode(&i))
            .collect::<Result<Vec<_>>>()?;
        self.h.unit(Op::Extend(items))
    }

    /// A copy of the whole list.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.h.items(Op::Values)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<()> {
        self.h.unit(Op::Clear)
    }
}

proxy! {
    /// A set served by a [`Manager`](crate::Manager) (members compared by their
    /// encoding; insertion order kept).
    SetProxy<T>
}

impl<T: Serialize + DeserializeOwned> SetProxy<T> {
    /// Adds an item; false if it was already there.
    pub fn insert(&self, item: T) -> Result<bool> {
        self.h.flag(Op::Push(encode(&item)?))
    }

    /// Removes an item; false if it was not there.
    pub fn remove<Q: Serialize + ?Sized>(&self, item: &Q) -> Result<bool>
    where
        T: Borrow<Q>,
    {
        self.h.flag(Op::Remove(encode(item)?))
    }

    /// Whether `item` is a member.
    pub fn contains<Q: Serialize + ?Sized>(&self, item: &Q) -> Result<bool>
    where
        T: Borrow<Q>,
    {
        self.h.flag(Op::Contains(encode(item)?))
    }

    /// The number of members.
    pub fn len(&self) -> Result<usize> {
        self.h.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The members, in insertion order.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.h.items(Op::Values)
    }

    /// Removes every member.
    pub fn clear(&self) -> Result<()> {
        self.h.unit(Op::Clear)
    }
}

proxy! {
    /// A FIFO queue served by a [`Manager`](crate::Manager): Python's `manager.Queue()`.
    ///
    /// Slower than [`Queue`](crate::Queue) (every operation is a round trip to the
    /// server) but reachable over TCP, and it can be created after the processes that
    /// use it have started.
    QueueProxy<T>
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Adds an item, waiting for room in a bounded queue.
    pub fn put(&self, item: T) -> Result<()> {
        match self.h.flag(Op::Put {
            item: encode(&item)?,
            timeout: None,
        })? {
            true => Ok(()),
            false => Err(ManagerError::Disconnected),
        }
    }

    /// Adds an item, waiting up to `timeout` for room; false if there was none.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<bool> {
        self.h.flag(Op::Put {
            item: encode(&item)?,
            timeout: Some(timeout),
        })
    }

    /// Takes the oldest item, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.h
            .item(Op::Take { timeout: None })?
            .ok_or(ManagerError::Disconnected)
    }

    /// Takes the oldest item, waiting up to `timeout`; `None` if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        self.h.item(Op::Take {
            timeout: Some(timeout),
        })
    }

    /// Takes the oldest item if there is one.
    pub fn try_get(&self) -> Result<Option<T>> {
        self.get_timeout(Duration::ZERO)
    }

    /// The number of items queued.
    pub fn len(&self) -> Result<usize> {
        self.h.len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

proxy! {
    /// A value served by a [`Manager`](crate::Manager): Python's `manager.Value`, for
    /// any serde type.
    ValueProxy<T>
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The current value.
    pub fn get(&self) -> Result<T> {
        match self.h.call(Op::Load)? {
            Response::Versioned(Some((_, bytes))) => decode(&bytes),
            r => Err(unexpected(r)),
        }
    }

    /// Replaces the value.
    pub fn set(&self, value: T) -> Result<()> {
        self.h.unit(Op::Store(encode(&value)?))
    }

    /// Atomically replaces the value with `f(old)` and returns the new value. As with
    /// [`DictProxy::update_with`], `f` runs here and may run again if another client
    /// wrote in between.
    pub fn update_with(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        // Without a key, `update` fails rather than hand `f` an absent value.
        self.h.update(None, Op::Load, |old: Option<T>| match old {
            Some(v) => f(v),
            None => unreachable!("update checks that a value is present"),
        })
    }
}

/// The held state of a managed lock: releases it when dropped.
///
/// Dropping cannot report a failure (the server being gone); [`unlock`](Self::unlock)
/// can. It stays on the thread that took the lock (it is not `Send`, as std's
/// `MutexGuard`): the server knows the holder as that thread.
pub struct ProxyGuard<'a> {
    h: &'a Handle,
    thread: u64,
    held: bool,
    /// The server knows the holder as this session's thread that took it (`thread`):
    /// the guard stays on that thread, as std's `MutexGuard` and multiproc's own lock
    /// guards do (moved to another, that thread would unlock another's lock, and the
    /// taking thread re-enter a lock another holds).
    _thread_bound: std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl fmt::Debug for ProxyGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyGuard")
            .field("id", &self.h.id())
            .finish_non_exhaustive()
    }
}

impl ProxyGuard<'_> {
    /// Releases the lock, reporting whether the server took the release.
    pub fn unlock(mut self) -> Result<()> {
        self.held = false;
        self.h.unit(Op::Release {
            thread: self.thread,
        })
    }
}

impl Drop for ProxyGuard<'_> {
    fn drop(&mut self) {
        if self.held
            && let Err(e) = self.h.unit(Op::Release {
                thread: self.thread,
            })
        {
            tracing::debug!("releasing a managed lock failed: {e}");
        }
    }
}

fn acquire(h: &Handle, timeout: Option<Duration>) -> Result<Option<LockResult<ProxyGuard<'_>>>> {
    let thread = thread_token();
    match h.call(Op::Acquire { thread, timeout })? {
        Response::Acquired { owner_died } => {
            let guard = ProxyGuard {
                h,
                thread,
                held: true,
                _thread_bound: std::marker::PhantomData,
            };
            Ok(Some(if owner_died {
                Err(OwnerDied::new(guard))
            } else {
                Ok(guard)
            }))
        }
        Response::TimedOut => Ok(None),
        r => Err(unexpected(r)),
    }
}

fn acquired<G>(r: Option<LockResult<G>>) -> Result<LockResult<G>> {
    r.ok_or_else(|| ManagerError::Protocol("an untimed acquire timed out".into()))
}

macro_rules! lock_methods {
    () => {
        /// Takes the lock, waiting as long as it takes. The outer error is the manager
        /// failing; the inner [`OwnerDied`] means the previous holder's process died
        /// holding it (the guard inside holds the lock).
        pub fn lock(&self) -> Result<LockResult<ProxyGuard<'_>>> {
            acquired(acquire(&self.h, None)?)
        }

        /// Takes the lock if it is free: `None` if another thread holds it;
        /// [`ManagerError::WouldDeadlock`] if this thread does (a plain lock), as for
        /// [`lock`](Self::lock).
        pub fn try_lock(&self) -> Result<Option<LockResult<ProxyGuard<'_>>>> {
            acquire(&self.h, Some(Duration::ZERO))
        }

        /// Takes the lock, waiting up to `timeout`: `None` if it stayed held;
        /// [`ManagerError::WouldDeadlock`] at once if this thread holds it (a plain
        /// lock), as for [`lock`](Self::lock).
        pub fn lock_timeout(
            &self,
            timeout: Duration,
        ) -> Result<Option<LockResult<ProxyGuard<'_>>>> {
            acquire(&self.h, Some(timeout))
        }
    };
}

proxy! {
    /// A lock served by a [`Manager`](crate::Manager): Python's `manager.Lock()`.
    ///
    /// Held by one thread of one process at a time. If that process dies holding it, the
    /// server releases it and the next [`lock`](Self::lock) returns
    /// [`OwnerDied`]. Taking it again from the thread that holds it is
    /// [`ManagerError::WouldDeadlock`], not a hang.
    LockProxy
}

impl LockProxy {
    lock_methods!();
}

proxy! {
    /// A re-entrant lock served by a [`Manager`](crate::Manager): Python's
    /// `manager.RLock()`. The thread that holds it may take it again; it is free when
    /// every guard is dropped.
    RLockProxy
}

impl RLockProxy {
    lock_methods!();
}

proxy! {
    /// A counting semaphore served by a [`Manager`](crate::Manager).
    SemaphoreProxy
}

impl SemaphoreProxy {
    /// Takes a permit, waiting for one.
    pub fn acquire(&self) -> Result<()> {
        acquire_permit(&self.h, None).map(drop)
    }

    /// Takes a permit, waiting up to `timeout`; false if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        acquire_permit(&self.h, Some(timeout))
    }

    /// Returns a permit.
    pub fn release(&self) -> Result<()> {
        self.h.unit(Op::Release {
            thread: thread_token(),
        })
    }
}

fn acquire_permit(h: &Handle, timeout: Option<Duration>) -> Result<bool> {
    match h.call(Op::Acquire {
        thread: thread_token(),
        timeout,
    })? {
        Response::Acquired { .. } => Ok(true),
        Response::TimedOut if timeout.is_some() => Ok(false),
        r => Err(unexpected(r)),
    }
}

proxy! {
    /// An event served by a [`Manager`](crate::Manager): Python's `manager.Event()`.
    EventProxy
}

impl EventProxy {
    /// Sets the flag, waking every waiter: each waiting at that moment returns `true`,
    /// even if the flag is cleared again before it looks (as Python's).
    pub fn set(&self) -> Result<()> {
        self.h.unit(Op::Set)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        self.h.unit(Op::Unset)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        self.h.flag(Op::IsSet)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<()> {
        match self.h.flag(Op::Wait { timeout: None })? {
            true => Ok(()),
            false => Err(ManagerError::Disconnected),
        }
    }

    /// Waits up to `timeout` for the flag: true if it was set meanwhile (or already),
    /// even if cleared again since; false if the timeout passed first.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.h.flag(Op::Wait {
            timeout: Some(timeout),
        })
    }
}

proxy! {
    /// A condition variable served by a [`Manager`](crate::Manager), with its own
    /// re-entrant lock: Python's `manager.Condition()`.
    ConditionProxy
}

impl ConditionProxy {
    /// Takes the condition's lock (see [`LockProxy::lock`]).
    pub fn acquire(&self) -> Result<LockResult<ConditionGuard<'_>>> {
        Ok(match acquired(acquire(&self.h, None)?)? {
            Ok(g) => Ok(ConditionGuard(g)),
            Err(died) => Err(OwnerDied::new(ConditionGuard(died.into_inner()))),
        })
    }
}

/// The held lock of a [`ConditionProxy`]: wait and notify through it.
#[derive(Debug)]
pub struct ConditionGuard<'a>(ProxyGuard<'a>);

impl ConditionGuard<'_> {
    /// Releases the lock, waits for a notification, and takes the lock back.
    /// [`ManagerError::OwnerDied`] if, meanwhile, a holder died holding it (the lock is
    /// held again).
    pub fn wait(&mut self) -> Result<()> {
        self.wait_for(None).map(drop)
    }

    /// As [`wait`](Self::wait), giving up after `timeout`; whether it was notified. The
    /// lock is held again either way.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.wait_for(Some(timeout))
    }

    /// Waits until `condition()` is true, checking it (with the lock held) before each
    /// wait.
    pub fn wait_while(&mut self, mut condition: impl FnMut() -> Result<bool>) -> Result<()> {
        while condition()? {
            self.wait()?;
        }
        Ok(())
    }

    fn wait_for(&mut self, timeout: Option<Duration>) -> Result<bool> {
        match self.0.h.call(Op::CondWait {
            thread: self.0.thread,
            timeout,
        })? {
            Response::Bool(notified) => Ok(notified),
            r => Err(unexpected(r)),
        }
    }

    /// Wakes up to `n` waiters; how many were woken.
    pub fn notify(&self, n: usize) -> Result<usize> {
        match self.0.h.call(Op::Notify {
            thread: self.0.thread,
            n: n as u64,
        })? {
            Response::Len(woken) => Ok(usize::try_from(woken).unwrap_or(usize::MAX)),
            r => Err(unexpected(r)),
        }
    }

    /// Wakes every waiter; how many were woken.
    pub fn notify_all(&self) -> Result<usize> {
        self.notify(usize::MAX)
    }

    /// Releases the lock, reporting failures.
    pub fn unlock(self) -> Result<()> {
        self.0.unlock()
    }
}

proxy! {
    /// A barrier served by a [`Manager`](crate::Manager): Python's `manager.Barrier(n)`.
    ///
    /// A party that times out, or whose process dies while waiting, breaks the barrier
    /// for the others: they get [`ManagerError::BrokenBarrier`] rather than waiting for
    /// ever, and so does every later wait until the barrier is [`reset`](Self::reset).
    BarrierProxy
}

impl BarrierProxy {
    /// Waits for every party; this party's arrival index (0 for the first).
    pub fn wait(&self) -> Result<usize> {
        self.wait_for(None)
    }

    /// As [`wait`](Self::wait), giving up after `timeout` with
    /// [`ManagerError::Timeout`] (which breaks the barrier).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        self.wait_for(Some(timeout))
    }

    fn wait_for(&self, timeout: Option<Duration>) -> Result<usize> {
        match self.h.call(Op::BarrierWait { timeout })? {
            Response::Arrived(i) => Ok(i as usize),
            Response::TimedOut => Err(ManagerError::Timeout),
            r => Err(unexpected(r)),
        }
    }

    /// Breaks the barrier: current and future waiters get
    /// [`ManagerError::BrokenBarrier`], until [`reset`](Self::reset).
    pub fn abort(&self) -> Result<()> {
        self.h.unit(Op::Abort)
    }

    /// Returns the barrier to its initial state, as Python's `reset`: the parties
    /// waiting now get [`ManagerError::BrokenBarrier`], and a broken barrier works
    /// again for the parties that wait next.
    pub fn reset(&self) -> Result<()> {
        self.h.unit(Op::Reset)
    }

    fn state(&self) -> Result<(u64, u64, bool)> {
        match self.h.call(Op::BarrierState)? {
            Response::BarrierState {
                parties,
                waiting,
                broken,
            } => Ok((parties, waiting, broken)),
            r => Err(unexpected(r)),
        }
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<usize> {
        Ok(self.state()?.0 as usize)
    }

    /// How many parties wait now (0 once the barrier is broken, as in Python).
    pub fn n_waiting(&self) -> Result<usize> {
        Ok(self.state()?.1 as usize)
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> Result<bool> {
        Ok(self.state()?.2)
    }
}

proxy! {
    /// An object of a registered [`SharedObject`] type.
    ObjectProxy<T>
}

impl<T: SharedObject> ObjectProxy<T> {
    /// Sends `request` to the object and returns its response.
    pub fn call(&self, request: T::Request) -> Result<T::Response> {
        self.h
            .item(Op::Custom(encode(&request)?))?
            .ok_or_else(|| ManagerError::Protocol("no response".into()))
    }
}
