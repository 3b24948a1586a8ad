//! Managers: shared objects served by a process, over a local socket or TCP.
//!
//! See [`Manager`] for the tour, and `README.md` beside this file for the design.
//!
//! # Object lifetimes
//!
//! An object lives while a proxy of it exists in some process, as in Python: the
//! server counts, per client process, the proxies that process made or received, and
//! frees the object when none is left. Clones within a process cost nothing and count
//! once; dropping the last proxy in a process tells the server without waiting for it.
//!
//! - **Proxies in flight.** A proxy serialized into a message ([`spawn`](crate::spawn)
//!   arguments, a [`Queue`](crate::Queue), a pool task, any serde format) keeps its
//!   object alive until the receiving process decodes it and holds it (or drops it), even
//!   if the sender drops its own proxy first. Each encoding counts once, so a message
//!   encoded but never decoded keeps the object until the sending process is killed,
//!   or, if it ends normally, as long as the server runs.
//! - **A process that ends**, however it ends (`SIGKILL` included), lets go of every
//!   proxy it held: the server sees its connections close. One killed takes the proxies
//!   it had in flight with it; one that exits normally (its `main` returns, `exit()`, a
//!   child's function returns, a `spawn_fork` child passing on a proxy it inherited
//!   included) tells the server about them first, and they keep their objects until
//!   their receivers decode them: a program that called [`init`](crate::init), and
//!   every process multiproc starts (any other ends as a killed one does). A client cut
//!   off by the network counts as ended once keepalive gives it up.
//! - **Named objects** ([`Manager::named`]) stay as long as the server runs: any client
//!   may open the name again at any time.
//! - **Proxies stored inside managed objects** (a dict of locks, a list of dicts) pin
//!   their object for as long as the server runs: the server never decodes stored
//!   values, so it cannot count what they hold. (Python's managers keep such objects
//!   too.)
//!
//! [`Manager::object_count`] tells how many objects a server holds.
//!
//! # Slow and lost peers
//!
//! A server runs every handshake on one thread, without blocking, under one deadline
//! for the whole of it ([`ManagerBuilder::handshake_timeout`]), and holds at most
//! [`ManagerBuilder::max_handshakes`] of them (the oldest is dropped past it): clients
//! that connect slowly, or never finish, cost the others nothing but a little CPU.
//! Clients wait for an answer at most the call timeout beyond the operation's own wait
//! ([`ManagerBuilder::call_timeout`], [`ManagerError::Unresponsive`]), and TCP keepalive
//! ([`ManagerBuilder::keepalive`]) on both sides gives up a peer whose machine stops
//! answering: the client's calls fail with [`ManagerError::Disconnected`], and the
//! server releases the client's locks (the next holder gets
//! [`OwnerDied`](crate::OwnerDied)) and references.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod accept;
mod client;
mod dispatch;
mod error;
mod local;
mod objects;
mod protocol;
mod proxy;
mod refs;
mod server;

pub use error::ManagerError;
pub use proxy::{
    BarrierProxy, ConditionGuard, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy,
    ObjectProxy, ProxyGuard, QueueProxy, RLockProxy, SemaphoreProxy, SetProxy, ValueProxy,
};

use crate::process::{Builder, JoinHandle};
use crate::wire::codec::{self, Bytes};
use accept::{Listener, SocketFile};
use client::{Client, ClientSettings};
use protocol::{Kind, Request, Response};
use server::{Ctor, ServerSettings, Shared};

/// Where a manager listens.
///
/// Parsed from a string: `tcp://127.0.0.1:5000` or a bare socket address for TCP,
/// `unix:/run/app.sock` for a Unix socket file, `unix:@name` for a socket in Linux's
/// abstract namespace (no file; the default for [`Manager::start`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A TCP address. Port 0 picks a free port; [`Server::address`] tells which.
    Tcp(SocketAddr),
    /// A Unix socket file. The server removes it when it stops (unless the path names
    /// another's by then); one left by a server that could not (killed, or ended by a
    /// signal while it served for ever) is removed by the next server at the path, once
    /// a connection to it is refused (nobody listens there). Two servers starting at
    /// one path at the same moment can still meet: one that has bound and does not yet
    /// listen looks stale to the other for those microseconds. A relative path is bound
    /// as given, and the server's [`address`](Manager::address) (what its proxies
    /// carry) is the path from the root, so that a client in another directory finds
    /// it.
    Unix(PathBuf),
    /// A name in Linux's abstract socket namespace: no file is created, and nothing is
    /// left behind however the server ends.
    Abstract(Vec<u8>),
}

impl Address {
    /// Whether it is a Unix socket: a client on the same machine, whose calls can
    /// travel through shared memory.
    pub(crate) fn is_local(&self) -> bool {
        !matches!(self, Address::Tcp(_))
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

impl From<&std::path::Path> for Address {
    fn from(p: &std::path::Path) -> Self {
        Address::Unix(p.to_path_buf())
    }
}

impl FromStr for Address {
    type Err = ManagerError;

    fn from_str(s: &str) -> Result<Self, ManagerError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            return Ok(match rest.strip_prefix('@') {
                Some(name) => Address::Abstract(name.as_bytes().to_vec()),
                None => Address::Unix(PathBuf::from(rest)),
            });
        }
        let tcp = s.strip_prefix("tcp://").unwrap_or(s);
        tcp.parse().map(Address::Tcp).map_err(|_| {
            ManagerError::InvalidArgument(format!(
                "{s:?} is not an address (tcp://HOST:PORT with a numeric host, \
                 unix:/path or unix:@name)"
            ))
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Abstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// A type of your own that a manager serves: Python's `BaseManager.register`.
///
/// The server keeps one value of the type per object and calls [`handle`] for each
/// request, one at a time; clients hold an [`ObjectProxy`] and send typed requests. The
/// wire carries only these types' serde data, so a peer can make the server do nothing
/// but what `handle` does. Register the type on the builder that starts (or serves) the
/// manager: [`ManagerBuilder::register`].
///
/// [`handle`]: SharedObject::handle
///
/// # Examples
///
/// ```
/// use multiproc::manager::SharedObject;
/// use serde::{Deserialize, Serialize};
///
/// /// A counter that hands out tickets.
/// struct Tickets(u64);
///
/// #[derive(Serialize, Deserialize)]
/// enum Ask { Next, Peek }
///
/// impl SharedObject for Tickets {
///     type Init = u64;
///     type Request = Ask;
///     type Response = u64;
///
///     fn new(first: u64) -> Self {
///         Tickets(first)
///     }
///
///     fn handle(&mut self, ask: Ask) -> u64 {
///         match ask {
///             Ask::Next => { self.0 += 1; self.0 - 1 }
///             Ask::Peek => self.0,
///         }
///     }
/// }
/// ```
pub trait SharedObject: Send + 'static {
    /// What a new object is made from.
    type Init: Serialize + DeserializeOwned;
    /// What clients send.
    type Request: Serialize + DeserializeOwned;
    /// What the object answers.
    type Response: Serialize + DeserializeOwned;

    /// Makes the object (in the server). A panic here fails the creation with
    /// [`ManagerError::Panicked`]; the server serves on.
    fn new(init: Self::Init) -> Self;

    /// Answers one request (in the server; requests to one object are handled one at a
    /// time). A panic here fails that request with [`ManagerError::Panicked`]; the object
    /// stays served.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
}

pub(crate) use sealed::{ErasedObject, NotMade};

/// Public but unnameable outside the crate: `Registry` is sealed.
mod sealed {
    use std::collections::HashMap;

    /// A custom object behind encoded requests and responses.
    pub trait ErasedObject: Send {
        fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, String>;
    }

    pub trait Registry: 'static {
        fn add(ctors: &mut HashMap<String, super::Ctor>);
    }

    /// Why a registered type's object was not made.
    #[derive(Debug)]
    pub enum NotMade {
        /// Its `Init` did not decode.
        BadInit(String),
        /// Its constructor (or its `Init`'s `Deserialize`) panicked: the message.
        Panicked(String),
    }
}

/// The custom types registered on a [`ManagerBuilder`]: `()` for none, `(T, R)` for `T`
/// and the types of `R`. Built by [`ManagerBuilder::register`]; you do not name it.
pub trait Registry: sealed::Registry {}

impl sealed::Registry for () {
    fn add(_: &mut HashMap<String, Ctor>) {}
}
impl Registry for () {}

impl<T: SharedObject, R: Registry> sealed::Registry for (T, R) {
    fn add(ctors: &mut HashMap<String, Ctor>) {
        ctors.insert(std::any::type_name::<T>().to_owned(), construct::<T>);
        R::add(ctors);
    }
}
impl<T: SharedObject, R: Registry> Registry for (T, R) {}

/// Makes a registered type's object: a panic in `new` (or in the `Deserialize` of its
/// `Init`) fails the creation with `Panicked`, as one in `handle` fails its request,
/// rather than end the connection (which the client read as the server gone).
fn construct<T: SharedObject>(init: &[u8]) -> Result<Box<dyn ErasedObject>, sealed::NotMade> {
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        codec::decode::<T::Init>(init, Vec::new()).map(T::new)
    }));
    match made {
        Ok(Ok(object)) => Ok(Box::new(object)),
        Ok(Err(e)) => Err(sealed::NotMade::BadInit(e.to_string())),
        Err(payload) => Err(sealed::NotMade::Panicked(
            crate::bootstrap::caught_panic(payload).message().to_owned(),
        )),
    }
}

fn ctors<R: Registry>() -> HashMap<String, Ctor> {
    let mut ctors = HashMap::new();
    <R as sealed::Registry>::add(&mut ctors);
    ctors
}

/// Builds a [`Manager`]: starts a server process ([`build`](Self::build)), serves from
/// this process ([`serve`](Self::serve), which gives a [`Server`]), or connects to a
/// manager served elsewhere ([`connect`](Self::connect)).
///
/// `R` lists the custom types registered with [`register`](Self::register).
///
/// # Examples
///
/// A client that gives up on a server that does not answer within 5 s, and on a peer
/// that stops answering at the network level within 20 s:
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::Manager;
///
/// let manager = Manager::builder()
///     .address("tcp://10.0.0.5:5000".parse::<multiproc::manager::Address>()?)
///     .authkey(b"secret".to_vec())
///     .call_timeout(Some(Duration::from_secs(5)))
///     .keepalive(Some(Duration::from_secs(20)))
///     .connect()?;
/// let jobs = manager.named("jobs").queue::<String>()?;
/// match jobs.get_timeout(Duration::from_secs(1)) {
///     Ok(job) => println!("{job:?}"),
///     // Waited 1 s for a job, then 5 s for the server's answer.
///     Err(multiproc::ManagerError::Unresponsive(_)) => eprintln!("the server is stuck"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # Ok::<(), multiproc::ManagerError>(())
/// ```
#[must_use = "a builder does nothing until `build`, `serve` or `connect` is called"]
pub struct ManagerBuilder<R = ()> {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    max_frame: u32,
    client: ClientSettings,
    handshake_timeout: Duration,
    max_handshakes: Option<usize>,
    _registry: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ManagerBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("address", &self.address)
            .field("max_frame", &self.max_frame)
            .field("call_timeout", &self.client.call_timeout)
            .field("keepalive", &self.client.keepalive)
            .field("local_transport", &self.client.local_transport)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

impl Default for ManagerBuilder<()> {
    fn default() -> Self {
        ManagerBuilder {
            address: None,
            authkey: None,
            max_frame: protocol::DEFAULT_MAX_FRAME,
            client: ClientSettings::default(),
            handshake_timeout: protocol::DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: None,
            _registry: PhantomData,
        }
    }
}

impl<R: Registry> ManagerBuilder<R> {
    /// Where to listen. The default is a fresh name in Linux's abstract socket
    /// namespace, reachable from this machine only.
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The key clients must prove they hold (HMAC-SHA256 challenge and response, both
    /// ways, on every connection). The default is 32 random bytes; proxies carry the key,
    /// so processes they are passed to can connect.
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.authkey = Some(key.into());
        self
    }

    /// The largest request the server accepts, in bytes (default 64 MiB). The server
    /// tells each client as it connects, and a call whose request is larger fails in the
    /// client with [`ManagerError::InvalidArgument`], saying so, before anything is sent
    /// (the connection stays usable); a peer that sends one anyway is disconnected.
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a client's call waits for the server's answer, beyond the operation's
    /// own wait (the timeout of a `get_timeout`, say), before it fails with
    /// [`ManagerError::Unresponsive`] (default 30 s; `None`: for ever). It covers the
    /// server's work too (a custom object's handler, a large dict's items). Untimed
    /// waits ([`QueueProxy::get`], [`LockProxy::lock`], a condition's wait, which takes
    /// its lock back however long that takes) wait as long as it takes, as their names
    /// say; keepalive still ends them when the server's machine stops answering, but a
    /// server process that is stopped (`SIGSTOP`) holds them until it runs again.
    ///
    /// It applies to the [`Manager`] this builder gives, and to every proxy made from
    /// it, in whatever process the proxy is sent to.
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.client.call_timeout = timeout;
        self
    }

    /// TCP keepalive (default 30 s; `None`: off): a peer whose machine stops answering
    /// (a network partition, a host that died) is given up about this long after it
    /// last answered. On the client side its calls then fail with
    /// [`ManagerError::Disconnected`]; on the server side (for [`build`](Self::build)
    /// and [`serve`](Self::serve)) the client counts as gone, so the managed locks it
    /// held are released (the next holder gets [`OwnerDied`](crate::OwnerDied)) and
    /// the objects only it referred to are freed. Unix sockets need none: the kernel
    /// reports a local peer's death at once. The kernel's limits hold a longer time
    /// (`Duration::MAX` included) to about 36 hours.
    pub fn keepalive(mut self, give_up_after: Option<Duration>) -> Self {
        self.client.keepalive = give_up_after;
        self
    }

    /// Whether a client on the same machine as its server moves its connections onto
    /// shared-memory channels (default: yes). Over a Unix socket the server passes the
    /// channels at once; over TCP a server tells the client the name of a listener it
    /// keeps beside its TCP one in Linux's abstract socket namespace, and a client that
    /// can connect there (it is on the same machine, in the same network namespace)
    /// does, and moves. A call then makes no system call while both sides run, several
    /// times faster than a frame on a TCP socket each way (`BENCHMARKS.md`, "Manager
    /// dict operations"). Off, every call is a frame on the socket, as it is for a
    /// client on another machine.
    ///
    /// It applies to the [`Manager`] this builder gives, and to every proxy made from
    /// it, in whatever process the proxy is sent to.
    pub fn local_transport(mut self, on: bool) -> Self {
        self.client.local_transport = on;
        self
    }

    /// How long a new connection has to complete the authentication handshake, in all
    /// (default 10 s); a client sending its answer a byte at a time gains nothing. For
    /// a server (a client gives any server 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many connections may be in their handshake at once (default: a quarter of
    /// the descriptor limit, at most 1024): a new connection past it drops the oldest
    /// one still in its handshake. For a server.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = Some(n);
        self
    }

    /// Serves objects of type `T` too: [`Manager::object`] makes them.
    pub fn register<T: SharedObject>(self) -> ManagerBuilder<(T, R)> {
        ManagerBuilder {
            address: self.address,
            authkey: self.authkey,
            max_frame: self.max_frame,
            client: self.client,
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.max_handshakes,
            _registry: PhantomData,
        }
    }

    fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            max_frame: self.max_frame,
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.max_handshakes,
            keepalive: self.client.keepalive,
        }
    }

    fn settings(&self) -> Result<(Address, Vec<u8>), ManagerError> {
        if self.max_frame < 1024 {
            return Err(ManagerError::InvalidArgument(
                "max_frame must be at least 1024 bytes".into(),
            ));
        }
        if self.handshake_timeout.is_zero() || self.max_handshakes == Some(0) {
            return Err(ManagerError::InvalidArgument(
                "the handshake timeout and max_handshakes must be above zero".into(),
            ));
        }
        if self.client.call_timeout.is_some_and(|t| t.is_zero())
            || self.client.keepalive.is_some_and(|t| t.is_zero())
        {
            return Err(ManagerError::InvalidArgument(
                "a call timeout or keepalive of zero (use None for none)".into(),
            ));
        }
        let key = match &self.authkey {
            Some(k) if k.is_empty() => {
                return Err(ManagerError::InvalidArgument(
                    "the authentication key is empty".into(),
                ));
            }
            Some(k) => k.clone(),
            None => protocol::random_key().map_err(ManagerError::Io)?,
        };
        let address = match &self.address {
            Some(a) => a.clone(),
            None => {
                let mut tag = [0u8; 8];
                getrandom::fill(&mut tag)
                    .map_err(|e| ManagerError::Io(std::io::Error::other(e)))?;
                Address::Abstract(
                    format!(
                        "multiproc-manager-{}-{:016x}",
                        std::process::id(),
                        u64::from_le_bytes(tag)
                    )
                    .into_bytes(),
                )
            }
        };
        Ok((address, key))
    }

    /// Starts the server in a daemon child process and connects to it. The server dies
    /// with this process (however it ends) and is stopped when the [`Manager`] is
    /// dropped.
    pub fn build(self) -> Result<Manager, ManagerError> {
        let (address, key) = self.settings()?;
        let (listener, address) = Listener::bind(&address).map_err(ManagerError::Io)?;
        let args = ServerArgs {
            listener: server::PassedListener(listener),
            key: Bytes(key.clone()),
            max_frame: self.max_frame,
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.max_handshakes,
            keepalive: self.client.keepalive,
        };
        let unlink = match &address {
            Address::Unix(p) => SocketFile::of(p),
            _ => None,
        };
        let child = match Builder::new()
            .name("SyncManager")
            .daemon(true)
            .spawn(serve_child::<R>, args)
        {
            Ok(child) => child,
            Err(e) => {
                // The socket file is this build's: a later one at the same address
                // would find it and fail with `AddrInUse`.
                if let Some(file) = &unlink {
                    file.remove();
                }
                return Err(e.into());
            }
        };
        let manager = Manager {
            client: Client::get(&address, &key, self.client),
            server: Some(child),
            unlink,
        };
        manager.client.ping()?;
        Ok(manager)
    }

    /// Connects to a manager served elsewhere, at [`address`](Self::address) (which
    /// must be set) with [`authkey`](Self::authkey) (which must be set), with the
    /// client settings of this builder ([`call_timeout`](Self::call_timeout),
    /// [`keepalive`](Self::keepalive)). Fails with [`ManagerError::Auth`] if the key is
    /// wrong, [`ManagerError::Disconnected`] if nothing listens there.
    pub fn connect(self) -> Result<Manager, ManagerError> {
        let (Some(address), Some(key)) = (&self.address, &self.authkey) else {
            return Err(ManagerError::InvalidArgument(
                "connecting needs the server's address and key".into(),
            ));
        };
        self.settings()?;
        let client = Client::get(address, key, self.client);
        client.ping()?;
        Ok(Manager {
            client,
            server: None,
            unlink: None,
        })
    }

    /// Serves from this process, on background threads, until the [`Server`] is
    /// dropped or shut down: Python's `BaseManager.get_server().serve_forever()`.
    pub fn serve(self) -> Result<Server, ManagerError> {
        let (address, key) = self.settings()?;
        let (listener, address) = Listener::bind(&address).map_err(ManagerError::Io)?;
        let unlink = match &address {
            Address::Unix(p) => SocketFile::of(p),
            _ => None,
        };
        let shared = Shared::new(key.clone(), self.server_settings(), ctors::<R>());
        let runner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("multiproc-manager-accept".into())
            .spawn(move || runner.run(&listener))
            .map_err(|e| {
                // The listener went with the thread that did not start: its file, left
                // there, would make the next bind at the address fail (`AddrInUse`).
                if let Some(file) = &unlink {
                    file.remove();
                }
                ManagerError::Io(e)
            })?;
        Ok(Server {
            shared,
            key,
            client: self.client,
            unlink,
            address,
            thread: Some(thread),
        })
    }
}

/// What the server process is started with.
#[derive(Serialize, Deserialize)]
struct ServerArgs {
    listener: server::PassedListener,
    key: Bytes,
    max_frame: u32,
    handshake_timeout: Duration,
    max_handshakes: Option<usize>,
    keepalive: Option<Duration>,
}

fn serve_child<R: Registry>(args: ServerArgs) {
    crate::sys::leave_interrupts_to_owner();
    // Each client connection costs descriptors here (a local one about 18); sized now,
    // while this process has one thread, the table does not grow under a connection.
    crate::sys::raise_fd_limit();
    crate::sys::reserve_fd_table(4096);
    let settings = ServerSettings {
        max_frame: args.max_frame,
        handshake_timeout: args.handshake_timeout,
        max_handshakes: args.max_handshakes,
        keepalive: args.keepalive,
    };
    let shared = Shared::new(args.key.0, settings, ctors::<R>());
    shared.run(&args.listener.0);
}

/// A manager: a process that holds shared objects, and the handle that creates them.
///
/// Python's `multiprocessing.Manager()`. [`start`](Manager::start) starts the server as
/// a daemon child (it never outlives this process, even one that is SIGKILLed); each
/// method below creates an object in it and returns a typed proxy. Proxies are `Clone +
/// Serialize + Deserialize`: pass them to [`spawn`](crate::spawn), to pool tasks, or put
/// them in a queue, and every process (and thread) works on the same object.
///
/// What Python lacks: [`DictProxy::update_with`] is an atomic read-modify-write, so
/// `d[k] += 1` from many processes does not lose updates; a client that dies holding a
/// managed lock releases it, and the next holder is told ([`OwnerDied`](crate::OwnerDied));
/// when the server dies every call returns [`ManagerError::Disconnected`] instead of
/// hanging, and a server that stops answering makes calls fail with
/// [`ManagerError::Unresponsive`] after the call timeout. Objects are freed when no
/// proxy in any process refers to them any more (see
/// [object lifetimes](crate::manager#object-lifetimes)).
///
/// Across machines: serve with [`ManagerBuilder::serve`] (or [`Manager::serve`]) on a TCP
/// address with a key, and [`Manager::connect`] from elsewhere; [`Manager::named`]
/// gives objects names that other clients open.
///
/// On one machine (a Unix socket, the default, or a TCP address whose server turns out
/// to be on this machine, see [`ManagerBuilder::local_transport`]), each connection moves onto a pair of
/// shared-memory channels once authenticated, so a call costs no system call while both
/// sides run: two processes sharing a dict do more than ten times as many operations
/// per second as with Python's manager on the same machine (`BENCHMARKS.md`). A process
/// keeps at most 16 such connections to one server with one set of client settings
/// (one per thread calling at once); more stay on the socket.
///
/// The server leaves Ctrl-C to this process: a terminal's `SIGINT` reaches the whole
/// foreground group, and the server does nothing with it (as Python's ignores it), so a
/// program that handles Ctrl-C keeps its objects.
///
/// # Examples
///
/// ```no_run
/// use multiproc::Manager;
///
/// fn count(hits: multiproc::manager::DictProxy<String, u64>) {
///     for _ in 0..100 {
///         hits.update_with("visits".to_string(), |n| n.unwrap_or(0) + 1).unwrap();
///     }
/// }
///
/// fn main() {
///     multiproc::init();
///     let manager = Manager::start().unwrap();
///     let hits = manager.dict::<String, u64>().unwrap();
///     let workers: Vec<_> = (0..4)
///         .map(|_| multiproc::spawn(count, hits.clone()).unwrap())
///         .collect();
///     for w in workers {
///         w.join().unwrap();
///     }
///     assert_eq!(hits.get("visits").unwrap(), Some(400));
/// }
/// ```
pub struct Manager {
    client: Arc<Client>,
    server: Option<JoinHandle<()>>,
    unlink: Option<SocketFile>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.client.address)
            .field("server_pid", &self.server.as_ref().map(JoinHandle::pid))
            .finish_non_exhaustive()
    }
}

/// The methods that create objects, for [`Manager`] (anonymous objects) and [`Named`]
/// (objects other clients open by name).
macro_rules! creators {
    () => {
        /// A dict: Python's `manager.dict()`.
        pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, ManagerError>
        where
            K: Serialize + DeserializeOwned,
            V: Serialize + DeserializeOwned,
        {
            self.create(Kind::Dict, proxy::tag2::<K, V>(), Bytes::default())
                .map(DictProxy::new)
        }

        /// A list: Python's `manager.list()`.
        pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>, ManagerError> {
            self.create(Kind::List, proxy::tag::<T>(), Bytes::default())
                .map(ListProxy::new)
        }

        /// A set.
        pub fn set<T: Serialize + DeserializeOwned>(&self) -> Result<SetProxy<T>, ManagerError> {
            self.create(Kind::Set, proxy::tag::<T>(), Bytes::default())
                .map(SetProxy::new)
        }

        /// An unbounded FIFO queue: Python's `manager.Queue()`.
        pub fn queue<T: Serialize + DeserializeOwned>(
            &self,
        ) -> Result<QueueProxy<T>, ManagerError> {
            self.bounded_queue(0)
        }

        /// A queue that holds at most `max` items (0: unbounded); `put` waits for room.
        pub fn bounded_queue<T: Serialize + DeserializeOwned>(
            &self,
            max: u64,
        ) -> Result<QueueProxy<T>, ManagerError> {
            self.create(Kind::Queue, proxy::tag::<T>(), proxy::encode(&max)?)
                .map(QueueProxy::new)
        }

        /// A single value: Python's `manager.Value(typecode, v)`, for any serde type.
        pub fn value<T: Serialize + DeserializeOwned>(
            &self,
            initial: T,
        ) -> Result<ValueProxy<T>, ManagerError> {
            self.create(Kind::Value, proxy::tag::<T>(), proxy::encode(&initial)?)
                .map(ValueProxy::new)
        }

        /// A lock: Python's `manager.Lock()`.
        pub fn lock(&self) -> Result<LockProxy, ManagerError> {
            self.create(Kind::Lock, String::new(), Bytes::default())
                .map(LockProxy::new)
        }

        /// A re-entrant lock: Python's `manager.RLock()`.
        pub fn rlock(&self) -> Result<RLockProxy, ManagerError> {
            self.create(Kind::RLock, String::new(), Bytes::default())
                .map(RLockProxy::new)
        }

        /// A counting semaphore starting at `permits`.
        pub fn semaphore(&self, permits: u64) -> Result<SemaphoreProxy, ManagerError> {
            self.create(Kind::Semaphore, String::new(), proxy::encode(&permits)?)
                .map(SemaphoreProxy::new)
        }

        /// An event: Python's `manager.Event()`.
        pub fn event(&self) -> Result<EventProxy, ManagerError> {
            self.create(Kind::Event, String::new(), Bytes::default())
                .map(EventProxy::new)
        }

        /// A condition variable with its own re-entrant lock.
        pub fn condition(&self) -> Result<ConditionProxy, ManagerError> {
            self.create(Kind::Condition, String::new(), Bytes::default())
                .map(ConditionProxy::new)
        }

        /// A barrier for `parties` parties (at least 1).
        pub fn barrier(&self, parties: u64) -> Result<BarrierProxy, ManagerError> {
            self.create(Kind::Barrier, String::new(), proxy::encode(&parties)?)
                .map(BarrierProxy::new)
        }

        /// An object of a custom type registered on the builder.
        pub fn object<T: SharedObject>(
            &self,
            init: T::Init,
        ) -> Result<ObjectProxy<T>, ManagerError> {
            self.create(
                Kind::Custom,
                std::any::type_name::<T>().to_owned(),
                proxy::encode(&init)?,
            )
            .map(ObjectProxy::new)
        }
    };
}

impl Manager {
    /// Starts a manager with the defaults: a server process on a fresh local socket with
    /// a random key.
    pub fn start() -> Result<Manager, ManagerError> {
        ManagerBuilder::default().build()
    }

    /// A builder: address, key, frame limit, custom types.
    pub fn builder() -> ManagerBuilder<()> {
        ManagerBuilder::default()
    }

    /// Serves from this process on `address` with `authkey` (see
    /// [`ManagerBuilder::serve`]).
    pub fn serve(address: impl Into<Address>, authkey: &[u8]) -> Result<Server, ManagerError> {
        ManagerBuilder::default()
            .address(address)
            .authkey(authkey)
            .serve()
    }

    /// Connects to a manager served elsewhere, with the default call timeout and
    /// keepalive ([`ManagerBuilder::connect`] sets them). Fails with
    /// [`ManagerError::Auth`] if the key is wrong, [`ManagerError::Disconnected`] if
    /// nothing listens there.
    pub fn connect(address: impl Into<Address>, authkey: &[u8]) -> Result<Manager, ManagerError> {
        ManagerBuilder::default()
            .address(address)
            .authkey(authkey)
            .connect()
    }

    /// How many objects the server holds: Python's `_number_of_objects()`. An object
    /// is freed when no proxy in any process refers to it any more (see the
    /// [module docs](crate::manager#object-lifetimes)).
    pub fn object_count(&self) -> Result<usize, ManagerError> {
        match self.client.call(&Request::Count)? {
            Response::Len(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            r => Err(proxy::unexpected(r)),
        }
    }

    /// Where the server listens.
    pub fn address(&self) -> &Address {
        &self.client.address
    }

    /// The key clients authenticate with.
    pub fn authkey(&self) -> &[u8] {
        &self.client.key
    }

    /// The server process's pid, for a manager this handle started.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(JoinHandle::pid)
    }

    /// Objects with a name: created by the first client that asks, opened by the others.
    /// Opening a name with other types (or another kind of object) than it was created
    /// with is [`ManagerError::WrongType`].
    pub fn named<'a>(&'a self, name: &'a str) -> Named<'a> {
        Named {
            manager: self,
            name,
        }
    }

    fn create(
        &self,
        kind: Kind,
        tag: String,
        init: Bytes,
    ) -> Result<(Arc<Client>, u64), ManagerError> {
        create(&self.client, kind, None, tag, init)
    }

    creators!();

    /// Stops the server (for a manager this handle started; a connected one just
    /// disconnects). Proxies then fail with [`ManagerError::Disconnected`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Stops the server process: SIGTERM, then SIGKILL if it is still there after 2 s,
    /// and reaps it.
    fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let _ = child.terminate();
        let ended = child.join_timeout(Duration::from_secs(2));
        if ended.as_ref().is_err_and(|e| e.is_timeout()) {
            let _ = child.kill();
            let _ = child.join_timeout(Duration::from_secs(2));
        }
        if let Some(file) = self.unlink.take() {
            file.remove();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop();
    }
}

fn create(
    client: &Arc<Client>,
    kind: Kind,
    name: Option<&str>,
    tag: String,
    init: Bytes,
) -> Result<(Arc<Client>, u64), ManagerError> {
    match client.call(&Request::Create {
        kind,
        name: name.map(str::to_owned),
        tag,
        init,
    })? {
        Response::Id(id) => Ok((Arc::clone(client), id)),
        r => Err(proxy::unexpected(r)),
    }
}

/// Named objects of a [`Manager`]: see [`Manager::named`].
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    manager: &'a Manager,
    name: &'a str,
}

impl Named<'_> {
    fn create(
        &self,
        kind: Kind,
        tag: String,
        init: Bytes,
    ) -> Result<(Arc<Client>, u64), ManagerError> {
        create(&self.manager.client, kind, Some(self.name), tag, init)
    }

    creators!();
}

/// A manager served by this process: see [`ManagerBuilder::serve`].
///
/// Dropping it (or [`shutdown`](Server::shutdown)) stops accepting, closes every
/// connection (clients see [`ManagerError::Disconnected`]) and removes a Unix socket
/// file.
pub struct Server {
    shared: Arc<Shared>,
    key: Vec<u8>,
    client: ClientSettings,
    address: Address,
    unlink: Option<SocketFile>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Where it listens (with the port picked, for TCP port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// A client of this server, to create objects in it (with the builder's call
    /// timeout and keepalive).
    pub fn manager(&self) -> Result<Manager, ManagerError> {
        let client = Client::get(&self.address, &self.key, self.client);
        client.ping()?;
        Ok(Manager {
            client,
            server: None,
            unlink: None,
        })
    }

    /// Blocks this thread while the server serves, until the process ends: Python's
    /// `serve_forever`. (To stop a server later, keep it and drop it instead.)
    pub fn serve_forever(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops serving.
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stop();
        // Wake the accept loop with a connection of our own.
        let _ = client::connect(
            &self.address,
            std::time::Instant::now() + Duration::from_secs(1),
        );
        let _ = thread.join();
        if let Some(file) = self.unlink.take() {
            file.remove();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
