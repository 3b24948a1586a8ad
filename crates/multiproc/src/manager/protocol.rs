//! The manager's wire: length-prefixed frames over a byte stream (TCP or Unix), the
//! mutual HMAC-SHA256 handshake, and the typed requests and responses.
//!
//! A frame is a little-endian `u32` body length and the body. Before authentication a
//! frame is at most [`HANDSHAKE_MAX`] bytes; afterwards at most the server's
//! `max_frame`. Bodies are read as their bytes arrive, so a peer that announces a huge
//! frame and sends nothing makes the reader allocate nothing.
//!
//! Requests and responses are enums of plain data in multiproc's format
//! (`wire/encoder.rs`): values are opaque byte strings to the server (it compares keys
//! by their encoding and never decodes a user's value), so nothing a peer sends can make
//! the server construct an object or run code beyond the fixed operations below and the
//! custom types registered with it.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use super::ManagerError;
use crate::wire::codec::Bytes;

/// Largest frame accepted before the handshake completes.
pub(crate) const HANDSHAKE_MAX: u32 = 256;
/// The default largest frame after it.
pub(crate) const DEFAULT_MAX_FRAME: u32 = 64 * 1024 * 1024;
/// How long either side gives the other to complete the handshake, in all (not per
/// byte: a peer that sends one byte at a time gains nothing).
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The body of the client's answer: its proof, its own challenge, its session id.
const ANSWER_LEN: usize = TAG_LEN + CHALLENGE_LEN + 8;

const HELLO: &[u8; 4] = b"MPM4";
const ACCEPTED: &[u8; 4] = b"OKAY";
const DENIED: &[u8; 4] = b"DENY";
/// Sent to a connection the server drops in its handshake to make room for others (a
/// flood of connections): the client tries again, rather than take the close for a
/// refusal of its key.
const BUSY: &[u8; 4] = b"BUSY";

/// The frame that tells a client its handshake was dropped to make room (see `BUSY`).
pub(crate) fn busy_frame() -> Vec<u8> {
    frame(BUSY).unwrap_or_default()
}
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

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(timeout),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// Turns on TCP keepalive (see `sys::set_keepalive`); nothing for a Unix socket,
    /// whose peer is on this machine and whose death the kernel reports.
    pub(crate) fn set_keepalive(&self, give_up: Option<Duration>) -> io::Result<()> {
        match (self, give_up) {
            #[cfg(unix)]
            (Stream::Tcp(s), Some(d)) => {
                use std::os::fd::AsFd;
                crate::sys::set_keepalive(s.as_fd(), d)
            }
            _ => Ok(()),
        }
    }

    /// The descriptor, to poll.
    #[cfg(unix)]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    /// Waits until the stream can be written (true; or failed: the write says how) or
    /// `until` passes (false).
    pub(crate) fn wait_writable(&self, until: Instant) -> io::Result<bool> {
        #[cfg(unix)]
        {
            crate::sys::wait_writable(self.fd(), None, Some(until))
        }
        #[cfg(not(unix))]
        {
            let _ = until;
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Whether the peer has closed its end (or sent bytes nobody asked for) while this
    /// side waits to answer it: for a server blocked on a client's behalf.
    pub(crate) fn peer_gone(&self) -> bool {
        #[cfg(unix)]
        {
            match crate::sys::poll_now(self.fd()) {
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

    /// The process and user ids at the other end of a Unix socket.
    pub(crate) fn peer_credentials(&self) -> io::Result<(u32, u32)> {
        match self {
            Stream::Tcp(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(unix)]
            Stream::Unix(s) => {
                use std::os::fd::AsFd;
                crate::sys::peer_credentials(s.as_fd())
            }
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
    /// The deadline passed first.
    TimedOut,
}

/// Largest piece of a body read at once: an announced length allocates no more than
/// what has arrived, plus this.
const READ_CHUNK: usize = 64 * 1024;
/// The most room a connection's buffers keep between messages: a larger one (a large
/// `update`, `items` of a large dict) is freed once used, or an idle pooled connection
/// (and its server thread) kept it as long as the connection lived.
const KEPT_ROOM: usize = 1 << 20;

/// Frees `buf` if it holds more room than [`KEPT_ROOM`].
fn shed(buf: &mut Vec<u8>) {
    if buf.capacity() > KEPT_ROOM {
        *buf = Vec::new();
    }
}

/// One end of a framed connection, with a read buffer and a reusable write buffer.
#[derive(Debug)]
pub(crate) struct Framed {
    reader: BufReader<Stream>,
    out: Vec<u8>,
    pub(crate) body: Vec<u8>,
    /// Whether the socket has a read timeout set (for a deadline).
    timed: bool,
}

impl Framed {
    pub(crate) fn new(stream: Stream) -> Self {
        Framed {
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::new(),
            body: Vec::new(),
            timed: false,
        }
    }

    /// Makes the socket's reads give up at `deadline` (`None`: never). An error is
    /// [`FrameError::TimedOut`] if the deadline has passed.
    pub(crate) fn arm(&mut self, deadline: Option<Instant>) -> Result<(), FrameError> {
        let timeout = match deadline {
            None if !self.timed => return Ok(()),
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FrameError::TimedOut);
                }
                // A zero timeout means "none" to the socket.
                Some(left.max(Duration::from_millis(1)))
            }
        };
        self.stream()
            .set_read_timeout(timeout)
            .map_err(FrameError::Io)?;
        self.timed = timeout.is_some();
        Ok(())
    }

    /// One read into `buf`, honouring `deadline` (armed with [`arm`](Self::arm)): a
    /// read that times out before it is re-armed for what is left.
    fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<usize, FrameError> {
        loop {
            match self.reader.read(buf) {
                Ok(n) => {
                    if deadline.is_some_and(|d| n > 0 && Instant::now() >= d) {
                        // Bytes trickling in do not stretch the deadline.
                        return Err(FrameError::TimedOut);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The read timeout (`SO_RCVTIMEO` reports `EAGAIN`); `ETIMEDOUT` is
                // keepalive giving the peer up, an error like any other.
                Err(e) if deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => {
                    self.arm(deadline)?;
                }
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    pub(crate) fn stream(&self) -> &Stream {
        self.reader.get_ref()
    }

    /// The stream, for a connection that reads nothing more.
    pub(crate) fn into_stream(self) -> Stream {
        self.reader.into_inner()
    }

    /// Frees the buffers' room beyond [`KEPT_ROOM`]: once a message received has been
    /// decoded (the body is not needed any more).
    pub(crate) fn shed(&mut self) {
        shed(&mut self.body);
        shed(&mut self.out);
    }

    /// Sends one frame holding `bytes`.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out
            .extend_from_slice(&frame_len(bytes.len())?.to_le_bytes());
        self.out.extend_from_slice(bytes);
        let sent = (self.reader.get_ref()).write_all(&self.out);
        shed(&mut self.out);
        sent
    }

    /// Sends one frame holding `value`, encoded.
    pub(crate) fn send<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        let out = std::mem::take(&mut self.out);
        self.out = crate::wire::encoder::to_vec(value, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let len = frame_len(self.out.len() - 4)?;
        self.out[..4].copy_from_slice(&len.to_le_bytes());
        let sent = (self.reader.get_ref()).write_all(&self.out);
        shed(&mut self.out);
        sent
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
        let sent =
            crate::sys::send_with_fds(socket.as_fd(), &[io::IoSlice::new(&self.out)], fds, false)?;
        // The descriptors went with the first byte; the rest of the frame follows.
        let rest = (self.reader.get_ref()).write_all(&self.out[sent..]);
        shed(&mut self.out);
        rest
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

    /// Reads one frame into `self.body`, waiting as long as it takes.
    pub(crate) fn recv(&mut self, max: u32) -> Result<(), FrameError> {
        self.recv_by(max, None)
    }

    /// Reads one frame into `self.body`, giving up at `deadline` (`None`: never): the
    /// whole frame, however slowly its bytes come.
    pub(crate) fn recv_by(
        &mut self,
        max: u32,
        deadline: Option<Instant>,
    ) -> Result<(), FrameError> {
        self.arm(deadline)?;
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.read_by(&mut len[got..], deadline)? {
                0 if got == 0 => return Err(FrameError::Closed),
                0 => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
                n => got += n,
            }
        }
        let len = u32::from_le_bytes(len);
        if len > max {
            return Err(FrameError::Oversized(len));
        }
        let len = len as usize;
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        while body.len() < len {
            let start = body.len();
            body.resize(start + (len - start).min(READ_CHUNK), 0);
            let n = self.read_by(&mut body[start..], deadline);
            match n {
                Ok(n) if n > 0 => body.truncate(start + n),
                Ok(_) => {
                    self.body = body;
                    return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(e) => {
                    self.body = body;
                    return Err(e);
                }
            }
        }
        self.body = body;
        Ok(())
    }
}

/// `bytes` as one frame: its length, then itself.
pub(crate) fn frame(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&frame_len(bytes.len())?.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
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

/// The server's side of one handshake, fed with the bytes of the client's answer as
/// they arrive (by the accepting thread, which runs many at once without blocking).
pub(crate) struct Handshake {
    ours: [u8; CHALLENGE_LEN],
    /// The answer's frame so far.
    got: Vec<u8>,
}

/// Where a handshake stands after some bytes.
#[derive(Debug)]
pub(crate) enum Step {
    /// The answer is not complete yet.
    More,
    /// The client holds the key: send `reply`; the connection belongs to `session`.
    Accepted { session: u64, reply: Vec<u8> },
    /// The client failed; send `reply` (if any) and close.
    Refused(Refused, Option<Vec<u8>>),
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("got", &self.got.len())
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake with a fresh challenge, and the frame to send first.
    pub(crate) fn start() -> io::Result<(Handshake, Vec<u8>)> {
        let ours = challenge()?;
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(&ours);
        let hello = frame(&hello)?;
        Ok((
            Handshake {
                ours,
                got: Vec::with_capacity(4 + ANSWER_LEN),
            },
            hello,
        ))
    }

    /// How many more bytes the answer has. The server reads no more than this, so that
    /// what the client sends after its answer stays in the socket for the connection's
    /// thread.
    pub(crate) fn wanted(&self) -> usize {
        if self.got.len() < 4 {
            4 - self.got.len()
        } else {
            4 + ANSWER_LEN - self.got.len()
        }
    }

    /// Takes bytes of the answer (at most [`wanted`](Self::wanted)). The acceptance
    /// tells the client `max_frame`, the largest request this server takes, so that a
    /// larger one fails in the client with its size rather than as a dropped connection.
    pub(crate) fn feed(&mut self, bytes: &[u8], key: &[u8], max_frame: u32) -> Step {
        self.got.extend_from_slice(bytes);
        if self.got.len() >= 4 {
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.got[..4]);
            let len = u32::from_le_bytes(len) as usize;
            if len != ANSWER_LEN {
                return Step::Refused(
                    Refused::Broken(format!("handshake answer of {len} bytes")),
                    None,
                );
            }
        }
        if self.got.len() < 4 + ANSWER_LEN {
            return Step::More;
        }
        let body = &self.got[4..];
        let (tag, rest) = body.split_at(TAG_LEN);
        let (theirs, session) = rest.split_at(CHALLENGE_LEN);
        // `verify_slice` compares in constant time.
        if proof(key, CLIENT_LABEL, &self.ours)
            .verify_slice(tag)
            .is_err()
        {
            return Step::Refused(Refused::BadKey, frame(DENIED).ok());
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(session);
        let answer = proof(key, SERVER_LABEL, theirs).finalize().into_bytes();
        let mut accepted = ACCEPTED.to_vec();
        accepted.extend_from_slice(&answer);
        accepted.extend_from_slice(&max_frame.to_le_bytes());
        match frame(&accepted) {
            Ok(reply) => Step::Accepted {
                session: u64::from_le_bytes(id),
                reply,
            },
            Err(e) => Step::Refused(Refused::Broken(e.to_string()), None),
        }
    }
}

/// The client's side: prove the key, and make the server prove it too, all by
/// `deadline`. Returns the largest request the server takes (its `max_frame`).
pub(crate) fn client_handshake(
    conn: &mut Framed,
    key: &[u8],
    session: u64,
    deadline: Instant,
) -> Result<u32, ManagerError> {
    let io = |e: FrameError| match e {
        FrameError::Closed => ManagerError::Disconnected,
        FrameError::Oversized(n) => {
            ManagerError::Protocol(format!("a handshake frame of {n} bytes"))
        }
        FrameError::Io(e) => ManagerError::from_io(e),
        // The caller knows how long it gave the server.
        FrameError::TimedOut => ManagerError::Unresponsive(Duration::ZERO),
    };
    conn.recv_by(HANDSHAKE_MAX, Some(deadline)).map_err(io)?;
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
    match conn.recv_by(HANDSHAKE_MAX, Some(deadline)) {
        Ok(()) => {}
        // A server that refuses the key says so before it closes (`DENIED`, a few
        // bytes into an empty socket buffer). A close without a word is a handshake
        // cut short: a server that stopped, or dropped it (its deadline passed, or to
        // make room): tried again, as after `BUSY`.
        Err(FrameError::Closed) => return Err(ManagerError::Disconnected),
        Err(e) => return Err(io(e)),
    }
    let body = &conn.body;
    if body.as_slice() == DENIED {
        return Err(ManagerError::Auth("the server refused the key".into()));
    }
    if body.as_slice() == BUSY {
        // Dropped to make room for other handshakes: cut short, and tried again.
        return Err(ManagerError::Disconnected);
    }
    if body.len() != ACCEPTED.len() + TAG_LEN + 4 || &body[..4] != ACCEPTED {
        return Err(ManagerError::Protocol("unexpected handshake answer".into()));
    }
    let (tag, max_frame) = body[4..].split_at(TAG_LEN);
    if proof(key, SERVER_LABEL, &ours).verify_slice(tag).is_err() {
        return Err(ManagerError::Auth(
            "the server could not prove it holds the key".into(),
        ));
    }
    let mut max = [0u8; 4];
    max.copy_from_slice(max_frame);
    Ok(u32::from_le_bytes(max))
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
    /// Changes to the references this client session holds (see `refs.rs`). Not
    /// answered: a client sends these from `Drop` and never waits for them.
    Refs(Vec<RefOp>),
    /// How many objects the server holds.
    Count,
}

/// A change to the references a client session holds on objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RefOp {
    /// The session holds one more reference to `id`. `from`: it came in a proxy that
    /// session sent, and settles one of that session's proxies in flight.
    Hold { id: u64, from: Option<u64> },
    /// The session drops one reference to `id`; `sent` proxies of it that the session
    /// serialized while it held the reference are in flight, each keeping the object
    /// until its receiver holds it (or the sending session ends).
    Release { id: u64, sent: u64 },
    /// `id` is stored inside a managed value, where the server cannot see it: it is
    /// kept as long as the server runs.
    Pin { id: u64 },
    /// The session's process lets go of the server on purpose (its last proxy is
    /// dropped) and lives on: when its connections close, its proxies in flight stay
    /// until their receivers settle them (a process that dies takes them with it).
    Leave,
}

/// How long the server may take to answer an operation, beyond the client's call
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// It answers at once.
    None,
    /// It may wait up to this long first (a timed get, acquire, event wait).
    Up(Duration),
    /// It may wait as long as it takes (an untimed get, lock, wait).
    Unbounded,
}

impl Op {
    /// How long the server may wait before it answers.
    pub(crate) fn wait(&self) -> Wait {
        let timed = |t: &Option<Duration>| t.map_or(Wait::Unbounded, Wait::Up);
        match self {
            Op::Put { timeout, .. }
            | Op::Take { timeout }
            | Op::Acquire { timeout, .. }
            | Op::Wait { timeout }
            | Op::BarrierWait { timeout } => timed(timeout),
            // After its timeout, a condition's waiter takes the lock back, however long
            // another holder keeps it.
            Op::CondWait { .. } => Wait::Unbounded,
            _ => Wait::None,
        }
    }
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
    /// Barrier: back to its initial state (waits in progress end broken).
    Reset,
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A large message's room is not kept once it was sent, or received and decoded.
    #[test]
    fn a_connection_keeps_no_large_buffer_between_messages() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut a, b) = (Framed::new(Stream::Unix(a)), Framed::new(Stream::Unix(b)));
        let large = vec![7u8; 4 * KEPT_ROOM];
        let mut b = std::thread::scope(|s| {
            let sending = s.spawn(|| {
                a.send_raw(&large).unwrap();
                a.send(&large).unwrap();
                a.out.capacity()
            });
            // Here, so that a failed assert closes it, and the sender's wait ends.
            let mut b = b;
            b.recv(u32::MAX).unwrap();
            assert_eq!(b.body, large);
            b.recv(u32::MAX).unwrap();
            assert!(b.body.len() > large.len());
            b.shed();
            assert!(b.body.capacity() <= KEPT_ROOM, "{}", b.body.capacity());
            let out = sending.join().unwrap();
            assert!(out <= KEPT_ROOM, "{out}");
            b
        });
        // Small ones keep their room.
        a.send_raw(b"small").unwrap();
        b.recv(u32::MAX).unwrap();
        b.shed();
        assert_eq!(b.body, b"small");
    }
}
