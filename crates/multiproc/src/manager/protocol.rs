//! The manager's wire: length-prefixed frames over a byte stream (TCP or Unix), the
//! mutual HMAC-SHA256 handshake, and the typed requests and responses.
//!
//! A frame is a little-endian `u32` body length and the body. Before authentication a
//! frame is at most [`HANDSHAKE_MAX`] bytes; afterwards at most the server's
//! `max_frame`. Bodies are read as their bytes arrive, so a peer that announces a huge
//! frame and sends nothing makes the reader allocate nothing.
//!
//! Requests and responses are postcard-encoded enums of plain data: values are opaque
//! byte strings to the server (it compares keys by their encoding and never decodes a
//! user's value), so nothing a peer sends can make the server construct an object or run
//! code beyond the fixed operations below and the custom types registered with it.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use super::ManagerError;
use crate::wire::codec::Bytes;

/// Largest frame accepted before the handshake completes.
pub(crate) const HANDSHAKE_MAX: u32 = 256;
/// The default largest frame after it.
pub(crate) const DEFAULT_MAX_FRAME: u32 = 64 * 1024 * 1024;
/// How long either side waits for the other's handshake frames.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const HELLO: &[u8; 4] = b"MPM1";
const ACCEPTED: &[u8; 4] = b"OKAY";
const DENIED: &[u8; 4] = b"DENY";
/// Labels bound into each side's proof, so a proof can never be replayed the other way.
const CLIENT_LABEL: &[u8] = b"multiproc-manager client v1";
const SERVER_LABEL: &[u8] = b"multiproc-manager server v1";
const CHALLENGE_LEN: usize = 32;
const TAG_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A connected stream: TCP or a Unix socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            #[cfg(unix)]
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Whether the peer has closed its end (or sent bytes nobody asked for) while this
    /// side waits to answer it: for a server blocked on a client's behalf.
    pub(crate) fn peer_gone(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let fd = match self {
                Stream::Tcp(s) => s.as_fd(),
                Stream::Unix(s) => s.as_fd(),
            };
            match crate::sys::poll_now(fd) {
                Ok(r) => r.readable || r.hangup,
                Err(_) => true,
            }
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Whether descriptors can be passed over it: a Unix socket.
    pub(crate) fn passes_descriptors(&self) -> bool {
        #[cfg(unix)]
        {
            self.unix().is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// The Unix socket under this stream, for passing descriptors.
    #[cfg(unix)]
    pub(crate) fn unix(&self) -> Option<&std::os::unix::net::UnixStream> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Unix(s) => Some(s),
        }
    }

    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "tcp peer".into(), |a: SocketAddr| a.to_string()),
            #[cfg(unix)]
            Stream::Unix(_) => "local peer".into(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why no frame was read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed the stream between frames.
    Closed,
    /// The announced length is above the limit.
    Oversized(u32),
    /// The stream failed or ended inside a frame.
    Io(io::Error),
}

/// One end of a framed connection, with a read buffer and a reusable write buffer.
#[derive(Debug)]
pub(crate) struct Framed {
    reader: BufReader<Stream>,
    out: Vec<u8>,
    pub(crate) body: Vec<u8>,
}

impl Framed {
    pub(crate) fn new(stream: Stream) -> Self {
        Framed {
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(crate) fn stream(&self) -> &Stream {
        self.reader.get_ref()
    }

    /// Sends one frame holding `bytes`.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out
            .extend_from_slice(&frame_len(bytes.len())?.to_le_bytes());
        self.out.extend_from_slice(bytes);
        (self.reader.get_ref()).write_all(&self.out)
    }

    /// Sends one frame holding `value`, postcard-encoded.
    pub(crate) fn send<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        let out = std::mem::take(&mut self.out);
        self.out = postcard::to_extend(value, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let len = frame_len(self.out.len() - 4)?;
        self.out[..4].copy_from_slice(&len.to_le_bytes());
        (self.reader.get_ref()).write_all(&self.out)
    }

    /// Sends one frame holding `bytes`, with `fds` passed along (a Unix socket only).
    #[cfg(unix)]
    pub(crate) fn send_passing(
        &mut self,
        bytes: &[u8],
        fds: &[crate::sys::BorrowedFd<'_>],
    ) -> io::Result<()> {
        use std::os::fd::AsFd;
        let socket = self
            .reader
            .get_ref()
            .unix()
            .ok_or(io::ErrorKind::Unsupported)?;
        self.out.clear();
        self.out
            .extend_from_slice(&frame_len(bytes.len())?.to_le_bytes());
        self.out.extend_from_slice(bytes);
        let sent = crate::sys::send_with_fds(socket.as_fd(), &[io::IoSlice::new(&self.out)], fds)?;
        // The descriptors went with the first byte; the rest of the frame follows.
        (self.reader.get_ref()).write_all(&self.out[sent..])
    }

    /// Reads one frame into `self.body`, straight from a Unix socket, with the
    /// descriptors passed along with it. Nothing may be buffered ahead of it (the
    /// peer sends it as the answer to this side's last frame).
    #[cfg(unix)]
    pub(crate) fn recv_passed(&mut self, max: u32) -> Result<Vec<crate::sys::OwnedFd>, FrameError> {
        use std::os::fd::AsFd;
        if !self.reader.buffer().is_empty() {
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes arrived ahead of a frame with descriptors",
            )));
        }
        let socket = self
            .reader
            .get_ref()
            .unix()
            .ok_or(FrameError::Io(io::ErrorKind::Unsupported.into()))?;
        let mut fds = Vec::new();
        let fill = |buf: &mut [u8], fds: &mut Vec<_>| -> Result<usize, FrameError> {
            let mut got = 0;
            while got < buf.len() {
                match crate::sys::recv_with_fds(socket.as_fd(), &mut buf[got..], fds, false) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => return Err(FrameError::Io(e)),
                }
            }
            Ok(got)
        };
        let mut len = [0u8; 4];
        match fill(&mut len, &mut fds)? {
            0 => return Err(FrameError::Closed),
            4 => {}
            _ => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
        }
        let len = u32::from_le_bytes(len);
        if len > max {
            return Err(FrameError::Oversized(len));
        }
        self.body.clear();
        self.body.resize(len as usize, 0);
        if fill(&mut self.body, &mut fds)? != len as usize {
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(fds)
    }

    /// Descriptors cannot be passed on this platform.
    #[cfg(not(unix))]
    pub(crate) fn send_passing(
        &mut self,
        _: &[u8],
        _: &[crate::sys::BorrowedFd<'_>],
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Descriptors cannot be passed on this platform.
    #[cfg(not(unix))]
    pub(crate) fn recv_passed(&mut self, _: u32) -> Result<Vec<crate::sys::OwnedFd>, FrameError> {
        Err(FrameError::Io(io::ErrorKind::Unsupported.into()))
    }

    /// Reads one frame into `self.body`.
    pub(crate) fn recv(&mut self, max: u32) -> Result<(), FrameError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.reader.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Err(FrameError::Closed),
                Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        let len = u32::from_le_bytes(len);
        if len > max {
            return Err(FrameError::Oversized(len));
        }
        self.body.clear();
        let read = (&mut self.reader)
            .take(u64::from(len))
            .read_to_end(&mut self.body)
            .map_err(FrameError::Io)?;
        if read != len as usize {
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

fn frame_len(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame is limited to 4 GiB"))
}

fn proof(key: &[u8], label: &[u8], challenge: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(label);
    mac.update(challenge);
    mac
}

fn challenge() -> io::Result<[u8; CHALLENGE_LEN]> {
    let mut c = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut c).map_err(io::Error::other)?;
    Ok(c)
}

/// A fresh random authentication key (32 bytes from the operating system).
pub(crate) fn random_key() -> io::Result<Vec<u8>> {
    Ok(challenge()?.to_vec())
}

/// Why a handshake failed on the server's side.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The client's proof did not match: wrong key.
    BadKey,
    /// The client broke the protocol or the stream failed.
    Broken(String),
}

/// The server's side: challenge the client, check its proof in constant time, answer
/// its challenge. Returns the client's session id.
pub(crate) fn server_handshake(conn: &mut Framed, key: &[u8]) -> Result<u64, Refused> {
    let broken = |e: &dyn std::fmt::Display| Refused::Broken(e.to_string());
    let ours = challenge().map_err(|e| broken(&e))?;
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&ours);
    conn.send_raw(&hello).map_err(|e| broken(&e))?;
    conn.recv(HANDSHAKE_MAX)
        .map_err(|e| broken(&format!("{e:?}")))?;
    let body = &conn.body;
    if body.len() != TAG_LEN + CHALLENGE_LEN + 8 {
        return Err(Refused::Broken(format!(
            "handshake answer of {} bytes",
            body.len()
        )));
    }
    let (tag, rest) = body.split_at(TAG_LEN);
    let (theirs, session) = rest.split_at(CHALLENGE_LEN);
    // `verify_slice` compares in constant time.
    if proof(key, CLIENT_LABEL, &ours).verify_slice(tag).is_err() {
        let _ = conn.send_raw(DENIED);
        return Err(Refused::BadKey);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(session);
    let session = u64::from_le_bytes(id);
    let answer = proof(key, SERVER_LABEL, theirs).finalize().into_bytes();
    let mut accepted = ACCEPTED.to_vec();
    accepted.extend_from_slice(&answer);
    conn.send_raw(&accepted).map_err(|e| broken(&e))?;
    Ok(session)
}

/// The client's side: prove the key, and make the server prove it too.
pub(crate) fn client_handshake(
    conn: &mut Framed,
    key: &[u8],
    session: u64,
) -> Result<(), ManagerError> {
    let io = |e: FrameError| match e {
        FrameError::Closed => ManagerError::Disconnected,
        FrameError::Oversized(n) => {
            ManagerError::Protocol(format!("a handshake frame of {n} bytes"))
        }
        FrameError::Io(e) => ManagerError::from_io(e),
    };
    conn.recv(HANDSHAKE_MAX).map_err(io)?;
    let body = &conn.body;
    if body.len() != HELLO.len() + CHALLENGE_LEN || &body[..4] != HELLO {
        return Err(ManagerError::Protocol(
            "the peer is not a multiproc manager (or speaks another version)".into(),
        ));
    }
    let mut theirs = [0u8; CHALLENGE_LEN];
    theirs.copy_from_slice(&body[4..]);
    let ours = challenge().map_err(ManagerError::Io)?;
    let mut answer = proof(key, CLIENT_LABEL, &theirs)
        .finalize()
        .into_bytes()
        .to_vec();
    answer.extend_from_slice(&ours);
    answer.extend_from_slice(&session.to_le_bytes());
    conn.send_raw(&answer).map_err(ManagerError::from_io)?;
    match conn.recv(HANDSHAKE_MAX) {
        Ok(()) => {}
        // A server that refuses the key may close before the refusal is read.
        Err(FrameError::Closed) => {
            return Err(ManagerError::Auth(
                "the server closed the connection (wrong key?)".into(),
            ));
        }
        Err(e) => return Err(io(e)),
    }
    let body = &conn.body;
    if body.as_slice() == DENIED {
        return Err(ManagerError::Auth("the server refused the key".into()));
    }
    if body.len() != ACCEPTED.len() + TAG_LEN || &body[..4] != ACCEPTED {
        return Err(ManagerError::Protocol("unexpected handshake answer".into()));
    }
    if proof(key, SERVER_LABEL, &ours)
        .verify_slice(&body[4..])
        .is_err()
    {
        return Err(ManagerError::Auth(
            "the server could not prove it holds the key".into(),
        ));
    }
    Ok(())
}

/// What a served object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Set,
    Queue,
    Value,
    Lock,
    RLock,
    Semaphore,
    Event,
    Condition,
    Barrier,
    Custom,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Dict => "dict",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::Queue => "queue",
            Kind::Value => "value",
            Kind::Lock => "lock",
            Kind::RLock => "rlock",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Condition => "condition",
            Kind::Barrier => "barrier",
            Kind::Custom => "custom object",
        }
    }
}

/// A request from a client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Create an object (or, with a name that exists, find it). `tag` names the value
    /// types, so a proxy of other types cannot open it.
    Create {
        kind: Kind,
        name: Option<String>,
        tag: String,
        init: Bytes,
    },
    /// An operation on an object.
    Call { id: u64, op: Op },
    /// Nothing: a round trip to check that the server answers.
    Ping,
    /// Move this connection onto a pair of shared-memory channels (a Unix socket only;
    /// see `local.rs`). Answered out of band: one frame with descriptors passed along.
    Local,
}

/// An operation. Keys and values are encoded bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Len,
    Clear,
    /// Every element (list, set, queue) or every value (dict).
    Values,
    /// Dict: every key.
    Keys,
    /// Dict: every (key, value).
    Items,
    /// Dict: a value; with its version when `versioned`.
    Get {
        key: Bytes,
        versioned: bool,
    },
    /// Dict: insert, giving back the old value.
    Insert {
        key: Bytes,
        value: Bytes,
    },
    /// Dict and set: remove, giving back the old value (dict) or whether it was there.
    Remove(Bytes),
    /// Dict and set: membership.
    Contains(Bytes),
    /// Dict: insert many.
    Update(Vec<(Bytes, Bytes)>),
    /// Dict (with a key) and value (without): store `value` if the current version is
    /// `version` (`None`: absent).
    Swap {
        key: Option<Bytes>,
        version: Option<u64>,
        value: Bytes,
    },
    /// List: append; set: insert.
    Push(Bytes),
    /// List: remove the last.
    Pop,
    /// List: read one.
    Index(u64),
    /// List: replace one, giving back the old.
    SetIndex(u64, Bytes),
    /// List: append many.
    Extend(Vec<Bytes>),
    /// Queue: put, waiting for room up to `timeout` (`None`: for ever).
    Put {
        item: Bytes,
        timeout: Option<Duration>,
    },
    /// Queue: take the oldest, waiting up to `timeout` (`None`: for ever).
    Take {
        timeout: Option<Duration>,
    },
    /// Value: read, with its version.
    Load,
    /// Value: overwrite.
    Store(Bytes),
    /// Lock, rlock, condition, semaphore: acquire for the client's `thread`.
    Acquire {
        thread: u64,
        timeout: Option<Duration>,
    },
    /// Lock, rlock, condition, semaphore: release.
    Release {
        thread: u64,
    },
    /// Event: set.
    Set,
    /// Event: clear.
    Unset,
    /// Event: whether set.
    IsSet,
    /// Event: wait until set.
    Wait {
        timeout: Option<Duration>,
    },
    /// Condition: release, wait for a notification, reacquire.
    CondWait {
        thread: u64,
        timeout: Option<Duration>,
    },
    /// Condition: wake up to `n` waiters.
    Notify {
        thread: u64,
        n: u64,
    },
    /// Barrier: wait for the other parties.
    BarrierWait {
        timeout: Option<Duration>,
    },
    /// Barrier: break it.
    Abort,
    /// Barrier: (parties, waiting, broken).
    BarrierState,
    /// Custom object: its request, encoded.
    Custom(Bytes),
}

/// A response to a request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Unit,
    Id(u64),
    Bool(bool),
    Len(u64),
    Item(Option<Bytes>),
    Versioned(Option<(u64, Bytes)>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    /// A lock was taken; `owner_died` if its previous owner died holding it.
    Acquired {
        owner_died: bool,
    },
    TimedOut,
    /// Barrier passed: this party's arrival index.
    Arrived(u64),
    BarrierState {
        parties: u64,
        waiting: u64,
        broken: bool,
    },
    Fault(Fault),
}

/// A request the server could not carry out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Fault {
    NoSuchObject(u64),
    WrongType {
        name: String,
        expected: String,
        found: String,
    },
    Unsupported {
        op: String,
        kind: String,
    },
    IndexOutOfRange {
        index: u64,
        len: u64,
    },
    NotOwner,
    WouldDeadlock,
    BrokenBarrier,
    BadInit(String),
    Codec(String),
    Unregistered(String),
    Panicked(String),
    OwnerDied,
}

impl From<Fault> for ManagerError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::NoSuchObject(id) => ManagerError::NoSuchObject(id),
            Fault::WrongType {
                name,
                expected,
                found,
            } => ManagerError::WrongType {
                name,
                expected,
                found,
            },
            Fault::Unsupported { op, kind } => {
                ManagerError::Protocol(format!("a {kind} has no operation {op}"))
            }
            Fault::IndexOutOfRange { index, len } => ManagerError::IndexOutOfRange { index, len },
            Fault::NotOwner => ManagerError::NotOwner,
            Fault::WouldDeadlock => ManagerError::WouldDeadlock,
            Fault::BrokenBarrier => ManagerError::BrokenBarrier,
            Fault::BadInit(why) => ManagerError::InvalidArgument(why),
            Fault::Codec(why) => ManagerError::Codec(crate::wire::codec::CodecError::new(why)),
            Fault::Unregistered(name) => ManagerError::Unregistered(name),
            Fault::Panicked(why) => ManagerError::Panicked(why),
            Fault::OwnerDied => ManagerError::OwnerDied,
        }
    }
}
