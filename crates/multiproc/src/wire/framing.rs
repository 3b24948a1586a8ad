//! Length-prefixed frames over a Unix stream socket, with descriptors passed alongside.
//!
//! A frame is a 16-byte header followed by its body:
//!
//! | bytes  | field                                   |
//! |--------|-----------------------------------------|
//! | 0..4   | magic `MPF1`                            |
//! | 4..12  | body length, little-endian `u64`        |
//! | 12..14 | number of descriptors, little-endian    |
//! | 14     | tag (what the body is)                  |
//! | 15     | zero                                    |
//!
//! Descriptors ride on the `sendmsg` that carries the header. A stream socket may hand
//! several frames' bytes to one `recvmsg`, and with them descriptors of several frames,
//! so the reader queues descriptors in arrival order and gives each frame as many as its
//! header declares: since a frame's descriptors arrive no later than its header, the
//! queue always holds them when the header is parsed. Nor later than the header's first
//! byte: once a frame is whole, the descriptors still queued can only be those of the
//! frames begun in what arrived after it (as many as their headers declare, and as many
//! as a message carries for a header begun only); any more came with a frame that did
//! not declare them, and the connection is corrupt (the descriptors are closed). So are
//! descriptors that arrive with a body's bytes, before the body is whole (reads stop at
//! its end, so none of them can be a later frame's). A frame whose descriptors found no room in this process (the
//! kernel closes those that do not fit) fails with an error that says so, taken whole,
//! and the frames after it are read as ever.
//!
//! The reader never trusts the header: a wrong magic, a length above the connection's
//! limit or a descriptor count the queue cannot satisfy is [`RecvFrameError::Corrupt`], and
//! bodies are allocated as their bytes arrive, so a lying length cannot make it allocate
//! more than twice what it has received (plus one bounded chunk), and an honest one gets
//! exactly its length.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::time::Instant;

use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};

const MAGIC: [u8; 4] = *b"MPF1";
/// Size of a frame header.
pub(crate) const HEADER_LEN: usize = 16;
/// The most bytes read at a time while looking for headers (bodies are read into their
/// own buffers).
const CHUNK: usize = 8 * 1024;
/// What a connection reads into at first: its buffer doubles, up to `CHUNK`, each
/// time a read fills it. A process that receives one message (a child its call, a
/// fork server's spare its assignment) writes no more memory than that message needs.
const FIRST_CHUNK: usize = 256;
/// The largest step a body's buffer grows by while it arrives.
const BODY_STEP: usize = 16 * 1024 * 1024;

/// One received frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) tag: u8,
    pub(crate) body: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Why [`Conn::recv`] returned no frame.
#[derive(Debug)]
pub(crate) enum RecvFrameError {
    /// The deadline passed first.
    Timeout,
    /// The peer closed the connection between frames.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// The bytes are not a valid frame.
    Corrupt(String),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for RecvFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvFrameError::Timeout => f.write_str("timed out"),
            RecvFrameError::Closed => f.write_str("connection closed"),
            RecvFrameError::Truncated => {
                f.write_str("connection closed in the middle of a message")
            }
            RecvFrameError::Corrupt(why) => write!(f, "corrupt message: {why}"),
            RecvFrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for RecvFrameError {
    fn from(e: io::Error) -> Self {
        RecvFrameError::Io(e)
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u64,
    pub(crate) nfds: u16,
    pub(crate) tag: u8,
}

impl Header {
    /// Encodes a header.
    pub(crate) fn encode(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..12].copy_from_slice(&self.len.to_le_bytes());
        h[12..14].copy_from_slice(&self.nfds.to_le_bytes());
        h[14] = self.tag;
        h
    }

    /// Decodes and checks a header against a body-length limit.
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN], max_body: u64) -> Result<Self, String> {
        if bytes[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}", &bytes[0..4]));
        }
        if bytes[15] != 0 {
            return Err("reserved header byte is not zero".into());
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[4..12]);
        let len = u64::from_le_bytes(len);
        if len > max_body {
            return Err(format!(
                "body of {len} bytes exceeds the limit of {max_body}"
            ));
        }
        let nfds = u16::from_le_bytes([bytes[12], bytes[13]]);
        if usize::from(nfds) > sys::MAX_FDS_PER_MESSAGE {
            return Err(format!("{nfds} descriptors declared"));
        }
        Ok(Header {
            len,
            nfds,
            tag: bytes[14],
        })
    }
}

#[cfg(test)]
thread_local! {
    /// For tests: body bytes zeroed to receive into, on this thread.
    static ZEROED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A frame whose header has arrived but whose body has not, entirely.
#[derive(Debug)]
struct Pending {
    header: Header,
    /// The body's bytes: the first `got` arrived, the rest are zeroes to receive into.
    body: Vec<u8>,
    got: usize,
}

/// How long [`Conn::send_by`] waits for room.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Until {
    pub(crate) deadline: Instant,
    /// The last look, after the deadline.
    pub(crate) last_look: std::time::Duration,
}

/// A framed connection over one end of a Unix stream socket.
///
/// Sending blocks until the bytes are in the socket (or up to a deadline:
/// [`send_by`](Self::send_by)); receiving waits up to a deadline.
/// A `Conn` is not synchronised: one sender and one receiver at a time (`&mut self`).
pub(crate) struct Conn {
    fd: OwnedFd,
    max_body: u64,
    /// Bytes received but not yet part of a frame: `buf[start..end]`. Zeroed once when
    /// it grows, not at each receive, which writes only the bytes that arrive: in a
    /// process forked from this one's owner each page written is a page copied.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled the buffer: grow it before the next.
    filled: bool,
    fds: VecDeque<OwnedFd>,
    pending: Option<Pending>,
    /// For each receive that lost descriptors passed with what it read (no descriptor
    /// was free to take them in), in order, how many of those queued then are still
    /// queued: those of the frames before the one they came with, then what arrived of
    /// its own. That frame, short of them, fails for it (known as the one that declares
    /// more than are left of the count), and the frames after it are read as ever.
    lost: VecDeque<usize>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Wraps a connected stream socket. Bodies above `max_body` bytes are refused.
    pub(crate) fn new(fd: OwnedFd, max_body: u64) -> Self {
        Conn {
            fd,
            max_body,
            buf: Vec::new(),
            start: 0,
            end: 0,
            filled: false,
            fds: VecDeque::new(),
            pending: None,
            lost: VecDeque::new(),
        }
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends one frame whose body is the concatenation of `parts`.
    pub(crate) fn send(
        &mut self,
        tag: u8,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        self.send_by(tag, parts, fds, None)
    }

    /// As [`send`](Self::send), waiting for room in the socket until `deadline` at
    /// most (`None`: as long as it takes), and then once more for `Until::last_look`,
    /// awake: a program stopped whole for longer (its peer with it) wakes past its
    /// deadline. A send that times out (`TimedOut`) may have sent part of the frame:
    /// the connection is out of step, and must not be used again.
    pub(crate) fn send_by(
        &mut self,
        tag: u8,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        until: Option<Until>,
    ) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // The peer reads with the same limit (the processes of one program): a larger
        // message would make it drop the connection, a fork server with its children.
        if len as u64 > self.max_body {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {len} bytes is larger than the {} bytes a control connection takes (a spawn's environment, name and arguments together)",
                    self.max_body
                ),
            ));
        }
        let nfds = u16::try_from(fds.len())
            .ok()
            .filter(|&n| usize::from(n) <= sys::MAX_FDS_PER_MESSAGE)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "at most {} descriptors per message",
                        sys::MAX_FDS_PER_MESSAGE
                    ),
                )
            })?;
        let header = Header {
            len: len as u64,
            nfds,
            tag,
        }
        .encode();
        // The header and up to `INLINE_PARTS - 1` parts on the stack, more in a vector.
        const INLINE_PARTS: usize = 4;
        let parts = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p));
        let mut inline = [IoSlice::new(&[]); INLINE_PARTS];
        let mut spilled: Vec<IoSlice<'_>>;
        let mut slices: &mut [IoSlice<'_>] = if parts.clone().count() < INLINE_PARTS {
            inline[0] = IoSlice::new(&header);
            let mut n = 1;
            for part in parts {
                inline[n] = part;
                n += 1;
            }
            &mut inline[..n]
        } else {
            spilled = std::iter::once(IoSlice::new(&header))
                .chain(parts)
                .collect();
            &mut spilled[..]
        };
        let mut first = true;
        let mut deadline = until.map(|u| u.deadline);
        while !slices.is_empty() {
            let passed: &[BorrowedFd<'_>] = if first { fds } else { &[] };
            let n = match sys::send_with_fds(self.fd.as_fd(), slices, passed, until.is_some()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::wait_writable(self.fd.as_fd(), None, deadline)? {
                        match (until, deadline) {
                            (Some(u), Some(d)) if d == u.deadline => {
                                deadline = Some(Instant::now() + u.last_look);
                            }
                            _ => {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "the peer did not read the message in time",
                                ));
                            }
                        }
                    }
                    continue;
                }
                r => r?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            first = false;
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Receives the next frame, waiting until `deadline` (`None`: as long as it takes).
    /// A frame whose descriptors found no room in this process (the kernel closed those
    /// that did not fit) fails with an I/O error that says so
    /// ([`sys::descriptors_lost`]), taken off the connection whole: the next receive
    /// reads the frame after it.
    pub(crate) fn recv(&mut self, deadline: Option<Instant>) -> Result<Frame, RecvFrameError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    /// A frame already received (read from the socket with an earlier one), if there
    /// is one complete; never waits.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Frame>, RecvFrameError> {
        self.parse()
    }

    /// The most descriptors the frames begun in the buffer may have brought: those their
    /// whole headers declare, and as many as a message carries for a header begun only
    /// (a frame's descriptors arrive with its header's first byte). A header that does
    /// not hold allows any (the next parse refuses it). The headers are looked at only
    /// until they allow `queued`: a buffer of many small frames is not walked whole for
    /// each.
    fn declared_ahead(&self, queued: usize) -> usize {
        let mut at = self.start;
        let mut declared = 0usize;
        while self.end - at >= HEADER_LEN && declared < queued {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf[at..at + HEADER_LEN]);
            let Ok(header) = Header::decode(&raw, self.max_body) else {
                return usize::MAX;
            };
            declared += usize::from(header.nfds);
            match usize::try_from(header.len)
                .ok()
                .and_then(|len| (at + HEADER_LEN).checked_add(len))
            {
                // Another frame begins within what arrived.
                Some(next) if next < self.end => at = next,
                _ => return declared,
            }
        }
        if at < self.end {
            declared += sys::MAX_FDS_PER_MESSAGE;
        }
        declared
    }

    /// Takes a complete frame out of what has been received, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, RecvFrameError> {
        if self.pending.is_none() {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&avail[..HEADER_LEN]);
            let header = Header::decode(&raw, self.max_body).map_err(RecvFrameError::Corrupt)?;
            self.start += HEADER_LEN;
            // Bounded by what has arrived or by one step, not by what the header claims.
            let len = usize::try_from(header.len).unwrap_or(usize::MAX);
            let have = (self.end - self.start).min(len);
            let mut body = Vec::with_capacity(have.max(len.min(BODY_STEP)));
            body.extend_from_slice(&self.buf[self.start..self.start + have]);
            self.start += have;
            self.pending = Some(Pending {
                header,
                got: body.len(),
                body,
            });
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let complete = matches!(&self.pending, Some(p) if p.got as u64 == p.header.len);
        if !complete {
            return Ok(None);
        }
        let Some(Pending {
            header,
            mut body,
            got,
        }) = self.pending.take()
        else {
            return Ok(None);
        };
        body.truncate(got);
        let nfds = usize::from(header.nfds);
        if let Some(&left) = self.lost.front() {
            // The frame whose descriptors were lost (a frame's arrive with its header's
            // first bytes): those that arrived are its own, and go with it.
            let lost = nfds > left;
            let taken = if lost { left.min(self.fds.len()) } else { nfds };
            if lost {
                self.lost.pop_front();
                self.fds.drain(..taken);
            }
            for queued in &mut self.lost {
                *queued = queued.saturating_sub(taken);
            }
            if lost {
                return Err(RecvFrameError::Io(sys::lost_descriptors_error()));
            }
        }
        if self.fds.len() < nfds {
            return Err(RecvFrameError::Corrupt(format!(
                "message declares {nfds} descriptors but {} arrived",
                self.fds.len()
            )));
        }
        let fds = self.fds.drain(..nfds).collect();
        // With nothing of a next frame received, every descriptor that arrived came with
        // a frame parsed by now: any still queued were sent with one that did not
        // declare them. Closed, or a peer could fill this process's descriptor table
        // with frames that declare none (and hand them to a later frame).
        // With the start of later frames received, no more than those frames may have
        // brought (a peer that sent each frame with the first byte of the next kept the
        // check above from ever running).
        if self.start == self.end {
            // Nor is any frame left short of descriptors a receive lost.
            self.lost.clear();
        }
        if !self.fds.is_empty() && self.fds.len() > self.declared_ahead(self.fds.len()) {
            let strays = self.fds.len();
            self.fds.clear();
            self.lost.clear();
            return Err(RecvFrameError::Corrupt(format!(
                "{strays} descriptors arrived beyond those the messages declare"
            )));
        }
        Ok(Some(Frame {
            tag: header.tag,
            body,
            fds,
        }))
    }

    /// Receives more bytes: into the pending body when one is incomplete (never past its
    /// end), otherwise into the header buffer.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), RecvFrameError> {
        let n = if let Some(p) = &mut self.pending {
            let len = usize::try_from(p.header.len).unwrap_or(usize::MAX);
            // The body grows (zeroed) a step at a time, and only when what arrived has
            // filled it: zeroing a step for every read (a socket gives ~200 KiB a
            // read) wrote 16 MiB for each, 80 GB of zeroes for a 1 GiB frame.
            if p.got == p.body.len() {
                let step = (len - p.got).min(BODY_STEP);
                // Room doubles with what arrived (few copies), but never past the
                // declared length: `resize`'s own doubling left a 129 MiB body holding
                // 256 MiB, which a child keeps through its call, within its
                // address-space limit. (Doubled from the room held, a header alone
                // that lied about its length had 32 MiB set aside, and a body four
                // times what had arrived.)
                let room = (p.got + step).max(p.got.saturating_mul(2)).min(len);
                p.body.reserve_exact(room - p.body.len());
                p.body.resize(p.got + step, 0);
                #[cfg(test)]
                ZEROED.with(|z| z.set(z.get() + step));
            }
            let got = p.got;
            let n = recv_some(
                &self.fd,
                &mut p.body[got..],
                &mut self.fds,
                &mut self.lost,
                deadline,
            )?;
            p.got += n;
            // Reads stop at the body's end, and a frame's descriptors arrive with its
            // header's first byte: what came with the body's bytes no frame declares.
            // Closed at once, or a peer could fill this process's descriptor table
            // while a long body arrives a byte at a time.
            if self.fds.len() > usize::from(p.header.nfds) {
                let strays = self.fds.len() - usize::from(p.header.nfds);
                self.fds.clear();
                self.lost.clear();
                return Err(RecvFrameError::Corrupt(format!(
                    "{strays} descriptors arrived with a message's body, which declares none there"
                )));
            }
            n
        } else {
            // Only part of a header is left (a whole one would have been parsed).
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.is_empty() {
                self.buf = vec![0; FIRST_CHUNK];
            } else if self.filled && self.buf.len() < CHUNK {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let room = self.buf.len() - self.end;
            let n = recv_some(
                &self.fd,
                &mut self.buf[self.end..],
                &mut self.fds,
                &mut self.lost,
                deadline,
            )?;
            self.filled = n == room;
            self.end += n;
            n
        };
        if n == 0 {
            let mid_frame = self.pending.is_some() || self.end > self.start;
            return Err(if mid_frame {
                RecvFrameError::Truncated
            } else {
                RecvFrameError::Closed
            });
        }
        Ok(())
    }
}

/// One `recvmsg`, waiting for readiness until `deadline`. `Ok(0)` is end of stream.
/// Notes in `lost` the descriptors queued when some passed with what it read found no
/// room here.
fn recv_some(
    fd: &OwnedFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    lost: &mut VecDeque<usize>,
    deadline: Option<Instant>,
) -> Result<usize, RecvFrameError> {
    let mut received = Vec::new();
    loop {
        match sys::recv_keeping_bytes(fd.as_fd(), buf, &mut received, true) {
            Ok((n, truncated)) => {
                fds.extend(received);
                if truncated {
                    lost.push_back(fds.len());
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                fds.extend(received.drain(..));
                let ready = sys::wait_readable(&[fd.as_fd()], deadline)?;
                if !ready[0].ready() {
                    return Err(RecvFrameError::Timeout);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(any(test, fuzzing))]
/// Feeds `bytes` to a connection and reads frames until it stops; returns how many
/// were read. Never panics, never hangs (the writer has closed), allocates at most
/// twice what arrived plus one step.
pub(crate) fn drain(bytes: &[u8], max_body: u64) -> usize {
    drain_bodies(bytes, max_body).len()
}

/// As [`drain`], returning the bodies of the frames received.
#[cfg(any(test, fuzzing))]
pub(crate) fn drain_bodies(bytes: &[u8], max_body: u64) -> Vec<Vec<u8>> {
    let (a, b) = sys::stream_pair().unwrap();
    let mut b = Conn::new(b, max_body);
    let writer = std::thread::spawn({
        let bytes = bytes.to_vec();
        move || {
            let mut sent = 0;
            while sent < bytes.len() {
                match sys::send_with_fds(a.as_fd(), &[IoSlice::new(&bytes[sent..])], &[], false) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
        }
    });
    let mut frames = Vec::new();
    while let Ok(frame) = b.recv(None) {
        frames.push(frame.body);
    }
    // Closed before the writer is waited for: a read that stopped early (a corrupt
    // header) left the writer blocked on a full socket, for ever.
    drop(b);
    writer.join().unwrap();
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, Conn) {
        let (a, b) = sys::stream_pair().unwrap();
        (Conn::new(a, 1 << 30), Conn::new(b, 1 << 30))
    }

    #[test]
    fn frames_round_trip_in_order() {
        let (mut a, mut b) = pair();
        a.send(1, &[b"hello", b" ", b"world"], &[]).unwrap();
        a.send(2, &[], &[]).unwrap();
        a.send(3, &[&[7u8; 100_000]], &[]).unwrap();
        let f = b.recv(None).unwrap();
        assert_eq!((f.tag, &f.body[..]), (1, &b"hello world"[..]));
        let f = b.recv(None).unwrap();
        assert_eq!((f.tag, f.body.len()), (2, 0));
        let f = b.recv(None).unwrap();
        assert_eq!((f.tag, f.body.len()), (3, 100_000));
        assert!(f.body.iter().all(|&x| x == 7));
    }

    /// A large frame arrives in many reads; its body is zeroed once, not a step per
    /// read.
    #[test]
    fn a_large_body_is_zeroed_once() {
        let (mut a, mut b) = pair();
        let len = 40 << 20;
        let sender = std::thread::spawn(move || {
            a.send(9, &[&vec![5u8; len]], &[]).unwrap();
            a
        });
        ZEROED.with(|z| z.set(0));
        let f = b
            .recv(Some(Instant::now() + std::time::Duration::from_secs(60)))
            .unwrap();
        drop(sender.join().unwrap());
        assert_eq!((f.tag, f.body.len()), (9, len));
        assert_eq!(f.body.capacity(), len, "room kept beyond the body");
        assert!(f.body.iter().all(|&x| x == 5));
        let zeroed = ZEROED.with(std::cell::Cell::get);
        assert!(zeroed <= len, "{zeroed} bytes zeroed for a body of {len}");
    }

    /// A header that lies about its length sets aside no more than one step before any
    /// of its body arrives.
    #[test]
    fn a_lying_length_sets_aside_one_step() {
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1 << 40);
        let header = Header {
            len: 1 << 40,
            nfds: 0,
            tag: 1,
        }
        .encode();
        sys::send_with_fds(a.as_fd(), &[IoSlice::new(&header)], &[], false).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        assert!(matches!(
            b.recv(Some(deadline)),
            Err(RecvFrameError::Timeout)
        ));
        let held = b.pending.as_ref().map(|p| p.body.capacity());
        assert!(
            held.is_some_and(|c| c <= BODY_STEP),
            "{held:?} bytes set aside"
        );
    }

    #[test]
    fn the_buffer_starts_small_and_grows_while_reads_fill_it() {
        let (mut a, mut b) = pair();
        a.send(9, &[b"one"], &[]).unwrap();
        assert_eq!(&b.recv(None).unwrap().body[..], b"one");
        // Frames that arrive one at a time never fill it.
        for i in 0..20u8 {
            a.send(i, &[&[i; 100]], &[]).unwrap();
            assert_eq!(b.recv(None).unwrap().body, [i; 100]);
        }
        assert_eq!(b.buf.len(), FIRST_CHUNK);
        // Many frames in one write: each read fills the buffer, which doubles up to
        // `CHUNK`.
        let bodies: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let bytes = valid_frames(&bodies);
        let mut sent = 0;
        while sent < bytes.len() {
            sent +=
                sys::send_with_fds(a.fd(), &[IoSlice::new(&bytes[sent..])], &[], false).unwrap();
        }
        for body in &bodies {
            assert_eq!(&b.recv(None).unwrap().body, body);
        }
        assert_eq!(b.buf.len(), CHUNK);
    }

    #[test]
    fn descriptors_go_to_their_frame() {
        let (mut a, mut b) = pair();
        let (r1, _w1) = sys::pipe().unwrap();
        let (r2, _w2) = sys::pipe().unwrap();
        a.send(1, &[b"none"], &[]).unwrap();
        a.send(2, &[b"two"], &[r1.as_fd(), r2.as_fd()]).unwrap();
        a.send(3, &[b"none again"], &[]).unwrap();
        assert_eq!(b.recv(None).unwrap().fds.len(), 0);
        assert_eq!(b.recv(None).unwrap().fds.len(), 2);
        assert_eq!(b.recv(None).unwrap().fds.len(), 0);
    }

    #[test]
    fn timeout_closed_and_truncated() {
        let (a, mut b) = pair();
        let deadline = Some(Instant::now() + std::time::Duration::from_millis(20));
        assert!(matches!(b.recv(deadline), Err(RecvFrameError::Timeout)));
        // Half a header, then the peer goes away.
        sys::send_with_fds(a.fd(), &[IoSlice::new(&MAGIC)], &[], false).unwrap();
        drop(a);
        assert!(matches!(b.recv(None), Err(RecvFrameError::Truncated)));
        let (a, mut b) = pair();
        drop(a);
        assert!(matches!(b.recv(None), Err(RecvFrameError::Closed)));
    }

    fn valid_frames(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            out.extend_from_slice(
                &Header {
                    len: body.len() as u64,
                    nfds: 0,
                    tag: i as u8,
                }
                .encode(),
            );
            out.extend_from_slice(body);
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            super::drain(&bytes, 1 << 20);
        }

        #[test]
        fn valid_frames_all_arrive(bodies in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0..20)) {
            proptest::prop_assert_eq!(super::drain_bodies(&valid_frames(&bodies), 1 << 20), bodies);
        }

        #[test]
        fn mutated_frames_never_panic(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..500), 1..10),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut bytes = valid_frames(&bodies);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let frames = super::drain(&bytes, 1 << 20);
            proptest::prop_assert!(frames <= bodies.len());
        }
    }

    /// A corrupt header followed by more bytes than a socket holds: the read stops at
    /// the header, and the feeding writer ends too (it was waited for while blocked on
    /// the full socket, for ever).
    #[test]
    fn a_drain_stopped_early_ends() {
        let bytes = [&b"XXXX"[..], &vec![0u8; 4 << 20]].concat();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(super::drain(&bytes, 1 << 20)));
        let frames = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(frames, Ok(0), "the drain did not end");
    }

    #[test]
    fn lying_headers_are_corrupt() {
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let too_long = Header {
            len: 1 << 40,
            nfds: 0,
            tag: 1,
        }
        .encode();
        sys::send_with_fds(a.as_fd(), &[IoSlice::new(&too_long)], &[], false).unwrap();
        assert!(matches!(b.recv(None), Err(RecvFrameError::Corrupt(_))));

        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let missing_fds = Header {
            len: 0,
            nfds: 3,
            tag: 1,
        }
        .encode();
        sys::send_with_fds(a.as_fd(), &[IoSlice::new(&missing_fds)], &[], false).unwrap();
        assert!(matches!(b.recv(None), Err(RecvFrameError::Corrupt(_))));

        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        sys::send_with_fds(a.as_fd(), &[IoSlice::new(b"GARBAGE GARBAGE!")], &[], false).unwrap();
        assert!(matches!(b.recv(None), Err(RecvFrameError::Corrupt(_))));
    }

    /// Descriptors sent with a frame that declares none are closed, and the connection
    /// is corrupt: kept, a peer filled this process's descriptor table with them (and
    /// the next frame that declared some was given them).
    #[test]
    fn undeclared_descriptors_are_closed() {
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let (read, write) = sys::pipe().unwrap();
        let none = Header {
            len: 3,
            nfds: 0,
            tag: 1,
        }
        .encode();
        let passed = [write.as_fd(), write.as_fd(), write.as_fd()];
        let parts = [IoSlice::new(&none), IoSlice::new(b"abc")];
        sys::send_with_fds(a.as_fd(), &parts, &passed, false).unwrap();
        match b.recv(None) {
            Err(RecvFrameError::Corrupt(why)) => assert!(why.contains("3 descriptors"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Every copy of the pipe's writer is closed: the reader sees its end.
        drop(write);
        let ready = sys::wait_readable(&[read.as_fd()], Some(Instant::now())).unwrap();
        assert!(ready[0].ready());
        assert_eq!(sys::read(read.as_fd(), &mut [0u8; 1]).unwrap(), 0);
        // Frames with descriptors still get theirs, in one send or apart.
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let (_read, write) = sys::pipe().unwrap();
        a_sends_with(&a, &write, 2);
        a_sends_with(&a, &write, 0);
        a_sends_with(&a, &write, 1);
        for n in [2, 0, 1] {
            assert_eq!(b.recv(None).unwrap().fds.len(), n);
        }
    }

    /// Descriptors sent with frames that declare none, each sent with the first byte of
    /// the next frame, do not pile up: the connection is corrupt once more are queued
    /// than the frames begun may have brought. (The check ran only with nothing of a
    /// next frame received: a peer filled this process's descriptor table so.)
    #[test]
    fn undeclared_descriptors_cannot_pile_up_behind_a_partial_header() {
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let (_read, write) = sys::pipe().unwrap();
        let frame = |tag: u8| {
            let mut f = Header {
                len: 1,
                nfds: 0,
                tag,
            }
            .encode()
            .to_vec();
            f.push(tag);
            f
        };
        for i in 0..4u8 {
            let mut bytes = frame(i)[usize::from(i > 0)..].to_vec();
            bytes.push(frame(i + 1)[0]);
            let passed = vec![write.as_fd(); 100];
            sys::send_with_fds(a.as_fd(), &[IoSlice::new(&bytes)], &passed, false).unwrap();
            match b.recv(None) {
                Ok(f) => assert!(f.fds.is_empty()),
                Err(RecvFrameError::Corrupt(_)) => return,
                Err(e) => panic!("{e}"),
            }
            assert!(
                b.fds.len() <= sys::MAX_FDS_PER_MESSAGE,
                "{} undeclared descriptors kept",
                b.fds.len()
            );
        }
        panic!("the undeclared descriptors were never refused");
    }

    #[test]
    fn undeclared_descriptors_cannot_pile_up_behind_a_partial_body() {
        let (a, b) = sys::stream_pair().unwrap();
        let mut b = Conn::new(b, 1024);
        let (_read, write) = sys::pipe().unwrap();
        let header = Header {
            len: 20,
            nfds: 0,
            tag: 1,
        }
        .encode();
        sys::send_with_fds(a.as_fd(), &[IoSlice::new(&header)], &[], false).unwrap();
        // The body a byte at a time, each byte with descriptors no frame declares (few
        // enough in flight to stay under a soft limit of 1,024 descriptors).
        for _ in 0..3 {
            let passed = vec![write.as_fd(); 100];
            sys::send_with_fds(a.as_fd(), &[IoSlice::new(b"x")], &passed, false).unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        let got = b.recv(Some(deadline));
        assert!(
            b.fds.len() <= sys::MAX_FDS_PER_MESSAGE,
            "{} undeclared descriptors kept",
            b.fds.len()
        );
        assert!(
            matches!(got, Err(RecvFrameError::Corrupt(_))),
            "{:?}",
            got.map(|f| f.tag)
        );
    }

    /// Sends, on `a`, a frame of 5 bytes with `n` copies of `fd`.
    fn a_sends_with(a: &OwnedFd, fd: &OwnedFd, n: u16) {
        let header = Header {
            len: 5,
            nfds: n,
            tag: 2,
        }
        .encode();
        let passed = vec![fd.as_fd(); usize::from(n)];
        let parts = [IoSlice::new(&header), IoSlice::new(b"hello")];
        sys::send_with_fds(a.as_fd(), &parts, &passed, false).unwrap();
    }
}
