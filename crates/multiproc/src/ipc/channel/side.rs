//! The side socket: messages that carry descriptors, or that are too large for the ring
//! (their bytes then travel in a sealed memory file). A record in the ring keeps each
//! one's place, so order is kept: its id, and in a bounded channel room for the
//! message's bytes up to half the ring (see `Core::side_record_len`). See `README.md` for how a producer or consumer
//! that dies half-way is handled.

use std::io::{self, IoSlice};

use super::{Payload, Received, RecvFail};
use crate::shm::segment::{Room, View};
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};
use crate::wire::codec::Encoded;

/// Side message header: id (u64), payload length (u64), mode (u8), the number of
/// descriptors passed with it (u8; 0 from a sender that did not say), padding.
const HEADER: usize = 24;
/// Payload bytes carried in the message itself (mode `IN_MESSAGE`); more go in a memfd.
const IN_MESSAGE_MAX: usize = 32 * 1024;
/// The most bytes a message in a memory file may announce: a length beyond the address
/// space of any machine is a corrupt header, not a message to wait for room for.
const MEMFD_MAX: u64 = 1 << 46;
const IN_MESSAGE: u8 = 0;
const IN_MEMFD: u8 = 1;

/// A side message, ready before the producer takes the lock.
#[derive(Debug)]
pub(super) struct Outgoing {
    header: [u8; HEADER],
    memfd: Option<OwnedFd>,
    inline: bool,
}

impl Outgoing {
    pub(super) fn prepare(msg: &Encoded) -> io::Result<Self> {
        let mut header = [0u8; HEADER];
        header[8..16].copy_from_slice(&(msg.bytes.len() as u64).to_le_bytes());
        let inline = msg.bytes.len() <= IN_MESSAGE_MAX;
        let memfd = if inline {
            header[16] = IN_MESSAGE;
            None
        } else {
            header[16] = IN_MEMFD;
            Some(sys::sealed_memfd("multiproc-message", &msg.bytes)?)
        };
        Ok(Outgoing {
            header,
            memfd,
            inline,
        })
    }

    /// Sends it as message `id` (with its payload, when that travels in the message),
    /// without blocking: `WouldBlock` if the socket is full.
    pub(super) fn send(&mut self, sock: BorrowedFd<'_>, id: u64, msg: &Encoded) -> io::Result<()> {
        self.header[0..8].copy_from_slice(&id.to_le_bytes());
        let mut passed: Vec<BorrowedFd<'_>> = Vec::with_capacity(msg.fds.len() + 1);
        if let Some(memfd) = &self.memfd {
            passed.push(memfd.as_fd());
        }
        passed.extend(msg.fds.iter().map(AsFd::as_fd));
        // At most `MAX_FDS_PER_MESSAGE` (253), which `send_packet` checks.
        self.header[17] = u8::try_from(passed.len()).unwrap_or(u8::MAX);
        let body: &[u8] = if self.inline { &msg.bytes } else { &[] };
        sys::send_packet(
            sock,
            &[IoSlice::new(&self.header), IoSlice::new(body)],
            &passed,
        )
        .map(drop)
    }
}

/// Takes message `id` from the side socket. Messages before it are orphans (their
/// producer died before publishing their record) and are dropped; if the next message
/// is a later one, or there is none, message `id` was taken by a consumer that died,
/// and `Ok(None)` says so. A process without room for the message's descriptors gets
/// `EMFILE` (or `ENFILE`) and the message stays for the next receive: taken, it would
/// have lost them (its bytes too, if they travel in a memory file).
pub(super) fn fetch(sock: BorrowedFd<'_>, id: u64) -> Result<Option<Received>, RecvFail> {
    loop {
        let mut header = [0u8; HEADER];
        let Some(n) = sys::peek_packet(sock, &mut header).map_err(RecvFail::Io)? else {
            return Ok(None);
        };
        // A sequenced-packet socket whose other end is gone reads as an empty message
        // for ever (looked at again, the loop never ended): the message this record
        // names can never come. Only a forged handle gets here, as the channel's core
        // holds both ends.
        if n == 0 && sys::poll_now(sock).is_ok_and(|r| r.hangup) {
            return Err(RecvFail::Broken(format!(
                "side message {id}: the side socket's other end is gone"
            )));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (got, len, mode) = (word(0), word(8), header[16]);
        let valid = n >= HEADER
            && usize::from(header[17]) <= sys::MAX_FDS_PER_MESSAGE
            && match mode {
                IN_MESSAGE => len as usize <= IN_MESSAGE_MAX,
                IN_MEMFD => true,
                _ => false,
            };
        // Takes the message off the socket, closing what it holds.
        let drop_it = || {
            let mut sink = [0u8; HEADER];
            let mut fds = Vec::new();
            let _ = sys::recv_with_fds(sock, &mut sink, &mut fds, true);
        };
        if !valid && n >= HEADER && got == id {
            // Ours, and not what a producer writes: another process broke it. Off the
            // socket, and the next receive skips its record.
            drop_it();
            return Err(RecvFail::Broken(format!(
                "side message {id}: a header that does not hold (mode {mode}, {len} \
                 bytes, {} descriptors)",
                header[17]
            )));
        }
        if !valid || got < id {
            // Not ours and never anyone's.
            drop_it();
            continue;
        }
        if got > id {
            return Ok(None);
        }
        let memfd_len = Some(len)
            .filter(|&l| l <= MEMFD_MAX)
            .and_then(|l| usize::try_from(l).ok());
        if mode == IN_MEMFD && memfd_len.is_none() {
            // Off the socket too (left there, it would fail every receive after this
            // one); the next receive skips its record.
            drop_it();
            return Err(RecvFail::Broken(format!(
                "side message {id}: a length of {len} bytes"
            )));
        }
        let passed = usize::from(header[17]).max(usize::from(mode == IN_MEMFD));
        if passed > 0 {
            sys::room_for_descriptors(sock, passed).map_err(RecvFail::Io)?;
        }
        // The address space a message in a memory file will be mapped into, taken while
        // the message is still on the socket: a process short of it (its `RLIMIT_AS`,
        // its limit of mappings) gets the error, and the message stays for a later
        // receive, as with descriptors above (taken first, it would have been lost with
        // the failed mapping).
        let room = match memfd_len {
            Some(len) if mode == IN_MEMFD => Some(Room::take(len).map_err(RecvFail::Io)?),
            _ => None,
        };
        let body = if mode == IN_MESSAGE { len as usize } else { 0 };
        let mut buf = vec![0u8; HEADER + body];
        let mut fds = Vec::new();
        let n = sys::recv_with_fds(sock, &mut buf, &mut fds, true).map_err(RecvFail::Io)?;
        if n != HEADER + body {
            return Err(RecvFail::Broken(format!(
                "side message {id}: {n} bytes, expected {}",
                HEADER + body
            )));
        }
        let bytes = match room {
            None => {
                buf.drain(..HEADER);
                Payload::Owned(buf)
            }
            Some(room) => {
                if fds.is_empty() {
                    return Err(RecvFail::Broken(format!(
                        "side message {id} lost its memory file"
                    )));
                }
                let view = View::open_in(fds.remove(0), room)
                    .map_err(|e| RecvFail::Broken(format!("side message {id}: {e}")))?;
                Payload::Mapped(view)
            }
        };
        return Ok(Some(Received { bytes, fds }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side socket whose other end is gone (a forged handle's) fails the receive: it
    /// reads as an empty message for ever, and the look for the message never ended.
    #[test]
    fn a_side_socket_without_its_other_end_fails_the_receive() {
        let (rx, tx) = sys::packet_pair().unwrap();
        drop(tx);
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(matches!(fetch(rx.as_fd(), 1), Err(RecvFail::Broken(_))));
        });
        let failed = got.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(failed, Ok(true), "the receive goes on looking");
    }

    /// A side message whose header does not hold (a memory file of more than
    /// [`MEMFD_MAX`] bytes, an unknown mode, an in-message length over
    /// [`IN_MESSAGE_MAX`], more descriptors than a message carries) is corrupt: the
    /// receive says so and takes it off the socket, and the messages after it are
    /// received. (Left there, the first failed every receive after it; the others were
    /// dropped as if a consumer that died had taken them, and a receive of a
    /// `JoinableQueue` went on to the next message, its task counted for ever.)
    #[test]
    fn an_impossible_length_is_taken_off_the_socket() {
        // (mode, length, descriptors said, a memory file sent)
        let broken = [
            (IN_MEMFD, MEMFD_MAX + 1, 1, true),
            (7, 3, 0, false),
            (IN_MESSAGE, IN_MESSAGE_MAX as u64 + 1, 0, false),
            (IN_MESSAGE, 3, (sys::MAX_FDS_PER_MESSAGE + 1) as u8, false),
        ];
        for (mode, len, said, with_memfd) in broken {
            let case = format!("mode {mode}, {len} bytes, {said} descriptors");
            let (rx, tx) = sys::packet_pair().unwrap();
            let memfd = sys::sealed_memfd("multiproc-test", b"abc").unwrap();
            let mut header = [0u8; HEADER];
            header[0..8].copy_from_slice(&1u64.to_le_bytes());
            header[8..16].copy_from_slice(&len.to_le_bytes());
            header[16] = mode;
            header[17] = said;
            let fds = if with_memfd {
                vec![memfd.as_fd()]
            } else {
                vec![]
            };
            let body = IoSlice::new(b"abc");
            sys::send_packet(tx.as_fd(), &[IoSlice::new(&header), body], &fds).unwrap();
            let next = Encoded::plain(b"next".to_vec());
            Outgoing::prepare(&next)
                .unwrap()
                .send(tx.as_fd(), 2, &next)
                .unwrap();
            let got = fetch(rx.as_fd(), 1);
            assert!(matches!(got, Err(RecvFail::Broken(_))), "{case}: {got:?}");
            // Its record's next reader finds it gone (as a dead consumer's), and goes on.
            assert!(matches!(fetch(rx.as_fd(), 1), Ok(None)), "{case}");
            match fetch(rx.as_fd(), 2) {
                Ok(Some(Received {
                    bytes: Payload::Owned(b),
                    ..
                })) => assert_eq!(b, b"next", "{case}"),
                other => panic!("{case}: {other:?}"),
            }
        }
    }
}
