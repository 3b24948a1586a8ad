//! The client side: one `Client` per (address, key) in a process, holding idle
//! authenticated connections. A call takes an idle connection (or opens one), so threads
//! call concurrently and a call that blocks on the server (a lock, a queue get) holds
//! only its own connection.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Address;
use super::ManagerError;
use super::local::{self, Local, Slot};
use super::protocol::{self, FrameError, Framed, Request, Response, Stream};
use crate::sync::unpoisoned;
use crate::wire::codec;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Local connections (on shared-memory channels) a process keeps to one server, at
/// most: a process whose many threads call at once opens as many connections, and each
/// local one holds [`local::FDS_PER_LOCAL`] descriptors. Connections past it stay on
/// the socket.
const MAX_LOCAL: usize = 16;

/// This process's session id (new in a forked child): how the server tells client
/// processes apart, to release the locks of one that dies.
fn session() -> u64 {
    static SESSION: Mutex<Option<(u32, u64)>> = Mutex::new(None);
    let pid = crate::sys::process_id();
    let mut s = unpoisoned::lock(&SESSION);
    match *s {
        Some((p, id)) if p == pid => id,
        _ => {
            let mut bytes = [0u8; 8];
            // Randomness failing leaves a pid-derived id, unique among live processes.
            let id = match getrandom::fill(&mut bytes) {
                Ok(()) => u64::from_le_bytes(bytes),
                Err(_) => u64::from(pid) << 32 | u64::from(fastrand::u32(..)),
            };
            *s = Some((pid, id));
            id
        }
    }
}

/// This thread's id within its process: with the session, a lock's owner.
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

pub(crate) struct Client {
    pub(crate) address: Address,
    pub(crate) key: Vec<u8>,
    /// Idle connections, and the pid that opened them (a forked child must not share
    /// its parent's connections).
    idle: Mutex<(u32, Vec<ClientConn>)>,
    /// Local connections open.
    locals: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The process's client for `address` and `key`.
    pub(crate) fn get(address: &Address, key: &[u8]) -> Arc<Client> {
        static CLIENTS: Mutex<Vec<Weak<Client>>> = Mutex::new(Vec::new());
        let mut clients = unpoisoned::lock(&CLIENTS);
        clients.retain(|c| c.strong_count() > 0);
        for c in clients.iter().filter_map(Weak::upgrade) {
            if c.address == *address && c.key == key {
                return c;
            }
        }
        let c = Arc::new(Client {
            address: address.clone(),
            key: key.to_vec(),
            idle: Mutex::new((crate::sys::process_id(), Vec::new())),
            locals: Arc::new(AtomicUsize::new(0)),
        });
        clients.push(Arc::downgrade(&c));
        c
    }

    fn checkout(&self) -> Result<ClientConn, ManagerError> {
        {
            let mut idle = unpoisoned::lock(&self.idle);
            let pid = crate::sys::process_id();
            if idle.0 != pid {
                *idle = (pid, Vec::new());
            }
            if let Some(conn) = idle.1.pop() {
                return Ok(conn);
            }
        }
        self.open()
    }

    fn checkin(&self, conn: ClientConn) {
        let mut idle = unpoisoned::lock(&self.idle);
        if idle.0 == crate::sys::process_id() {
            idle.1.push(conn);
        }
    }

    /// Opens and authenticates a new connection; over a Unix socket, moves it onto
    /// shared-memory channels.
    pub(crate) fn open(&self) -> Result<ClientConn, ManagerError> {
        let stream = connect(&self.address).map_err(ManagerError::from_io)?;
        let mut framed = Framed::new(stream);
        framed
            .stream()
            .set_read_timeout(Some(protocol::HANDSHAKE_TIMEOUT))
            .map_err(ManagerError::Io)?;
        protocol::client_handshake(&mut framed, &self.key, session())?;
        let slot = self
            .address
            .is_local()
            .then(|| Slot::take(&self.locals, MAX_LOCAL))
            .flatten();
        let local = match slot {
            Some(slot) => local::request(&mut framed)?.map(|l| (l, slot)),
            None => None,
        };
        framed
            .stream()
            .set_read_timeout(None)
            .map_err(ManagerError::Io)?;
        Ok(ClientConn { framed, local })
    }

    /// Checks that the server answers.
    pub(crate) fn ping(&self) -> Result<(), ManagerError> {
        match self.call(&Request::Ping)? {
            Response::Unit => Ok(()),
            r => Err(ManagerError::Protocol(format!(
                "unexpected answer to a ping: {r:?}"
            ))),
        }
    }

    /// Sends `request` and waits for the response; a fault is an error.
    pub(crate) fn call(&self, request: &Request) -> Result<Response, ManagerError> {
        let mut conn = self.checkout()?;
        let response = conn.call(request)?;
        self.checkin(conn);
        match response {
            Response::Fault(f) => Err(f.into()),
            r => Ok(r),
        }
    }
}

/// An authenticated connection: its socket, and for a local client the shared-memory
/// channels its calls travel through.
#[derive(Debug)]
pub(crate) struct ClientConn {
    framed: Framed,
    local: Option<(Local, Slot)>,
}

impl ClientConn {
    fn call(&mut self, request: &Request) -> Result<Response, ManagerError> {
        if let Some((local, _)) = &self.local {
            return local.call(request);
        }
        let conn = &mut self.framed;
        conn.send(request).map_err(ManagerError::from_io)?;
        match conn.recv(u32::MAX) {
            Ok(()) => {}
            Err(FrameError::Closed) => return Err(ManagerError::Disconnected),
            Err(FrameError::Oversized(_)) => unreachable!("no frame is over u32::MAX"),
            Err(FrameError::Io(e)) => return Err(ManagerError::from_io(e)),
        }
        codec::decode(&conn.body, Vec::new()).map_err(|e| {
            ManagerError::Protocol(format!("the server sent a malformed response: {e}"))
        })
    }
}

fn connect(address: &Address) -> io::Result<Stream> {
    match address {
        Address::Tcp(a) => {
            let s = std::net::TcpStream::connect_timeout(a, CONNECT_TIMEOUT)?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        #[cfg(unix)]
        Address::Unix(path) => Ok(Stream::Unix(std::os::unix::net::UnixStream::connect(path)?)),
        #[cfg(unix)]
        Address::Abstract(name) => {
            let a = crate::sys::abstract_socket_addr(name)?;
            Ok(Stream::Unix(std::os::unix::net::UnixStream::connect_addr(
                &a,
            )?))
        }
        #[allow(unreachable_patterns)]
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kind of address is not supported on this platform",
        )),
    }
}
