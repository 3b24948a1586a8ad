//! The local transport. Over a Unix socket, once the handshake is done, the client asks
//! for a pair of shared-memory channels (the channel under pipes and queues, see
//! `ipc/channel/README.md`) and its requests and responses travel through them from then
//! on: a round trip costs no system call while both sides run, where a socket costs two
//! on each side and a sleep and a wake-up for each message.
//!
//! The server makes the channels and passes the client's ends over the socket with
//! `SCM_RIGHTS`, as the answer to [`Request::Local`]. The socket stays open beside them:
//! while a client waits in a lock or a queue get, the server watches it to learn that
//! the client has gone. Either side learns that the other died from the channels' own
//! liveness pipes, which the kernel closes with the process.
//!
//! Over TCP, descriptors cannot travel: a server on a TCP address answers with the name
//! of the listener it keeps beside the TCP one in the abstract socket namespace (see
//! `accept.rs`), and a client on the same machine connects there, asks again, and
//! leaves the TCP connection.
//!
//! A server that cannot make the channels (out of memory or descriptors, or a platform
//! without them) answers with its reason instead, and the connection goes on over the
//! socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ManagerError;
use super::client::CallDeadline;
use super::protocol::{FrameError, Framed, Request, Response};
use crate::ipc::channel::{self, Deadline, RawReceiver, RawSender, RecvFail};
use crate::ipc::pipe::{self, Failed, Missed};
use crate::wire::codec;

/// Bytes of ring in each direction. Messages up to half of it travel in the ring;
/// larger ones (a big dict's `items`, say) in a memory file of their own.
const RING: usize = 256 * 1024;

/// The most a client waiting for its response spins before it yields between looks:
/// the server's dispatcher answers a quick request within a microsecond or two while it
/// runs on another CPU, and a client that yields at once gives up its CPU every call.
/// The spin adapts: while the dispatcher does not answer within it (it waits for this
/// client's CPU), the client yields at once.
const CLIENT_SPIN: std::time::Duration = std::time::Duration::from_micros(3);

/// How often a server thread waiting for room to answer a client that does not read
/// looks whether the server stops.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// One side's ends of the two channels: the client sends requests and receives
/// responses, the server the other way round.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Local {
    tx: RawSender,
    rx: RawReceiver,
}

/// Descriptors one side of a local connection holds: about 8 per channel, and the
/// socket. Both sides cap their local connections by it, so that many connections do
/// not exhaust a process's descriptors; connections past the cap stay on the socket.
pub(crate) const FDS_PER_LOCAL: usize = 18;

/// One of a limited number of local connections; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, if fewer than `max` are taken from `count`.
    pub(crate) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Relaxed) < max {
            Some(Slot(Arc::clone(count)))
        } else {
            count.fetch_sub(1, Relaxed);
            None
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A server's nearby listener: its name in the abstract socket namespace, and who
/// listens there (the server's process and user ids), which a client checks on the
/// connection it makes there (`SO_PEERCRED`) before it says anything: another process
/// of the client's network namespace could have bound the same name, to relay the
/// handshake and read the calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Nearby {
    pub(crate) name: Vec<u8>,
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// What the server answers to [`Request::Local`].
#[derive(Serialize, Deserialize)]
enum Offer {
    /// The client's ends of the channels.
    Channels(Local),
    /// Over TCP: the server's listener in the abstract socket namespace, where a
    /// client on this machine connects to get the channels.
    Nearby(Nearby),
    /// Why the connection stays on the socket.
    Refused(String),
}

/// What the client got for [`Request::Local`].
pub(crate) enum Answer {
    /// The channels: the connection moves onto them.
    Channels(Local),
    /// The server's nearby listener; this connection stays on the socket.
    Nearby(Nearby),
    /// The connection stays on the socket.
    Socket,
}

/// Why a local connection ended on the server's side.
#[derive(Debug)]
pub(crate) enum LocalEnd {
    /// The client closed it or died.
    Closed,
    /// The client broke the rules; the connection is closed and this is logged.
    Refused(String),
}

/// The client's side: asks for the channels on a connection that has just been
/// authenticated.
pub(crate) fn request(conn: &mut Framed, until: Instant) -> Result<Answer, ManagerError> {
    conn.send(&Request::Local).map_err(ManagerError::from_io)?;
    let max = super::protocol::HANDSHAKE_MAX;
    let got = if conn.stream().passes_descriptors() {
        conn.recv_passed(max)
    } else {
        // Over TCP: no descriptors, at most the name of the nearby listener.
        conn.recv_by(max, Some(until)).map(|()| Vec::new())
    };
    let fds = match got {
        Ok(fds) => fds,
        Err(FrameError::Closed) => return Err(ManagerError::Disconnected),
        Err(FrameError::Oversized(n)) => {
            return Err(ManagerError::Protocol(format!(
                "an answer of {n} bytes to a request for the local transport"
            )));
        }
        Err(FrameError::Io(e)) => return Err(ManagerError::from_io(e)),
        Err(FrameError::TimedOut) => {
            return Err(ManagerError::Io(std::io::ErrorKind::WouldBlock.into()));
        }
    };
    match codec::decode::<Offer>(&conn.body, fds) {
        Ok(Offer::Channels(mut local)) => {
            local.rx.spin_adaptively(CLIENT_SPIN);
            Ok(Answer::Channels(local))
        }
        Ok(Offer::Nearby(nearby)) => Ok(Answer::Nearby(nearby)),
        Ok(Offer::Refused(why)) => {
            tracing::debug!("manager: staying on the socket: the server says {why}");
            Ok(Answer::Socket)
        }
        Err(e) => Err(ManagerError::Protocol(format!(
            "the server's answer to a request for the local transport: {e}"
        ))),
    }
}

/// The server's side of [`Request::Local`]: makes the channels and passes the client's
/// ends; over TCP, tells the client `nearby` (the name of the server's listener in the
/// abstract socket namespace, if it has one); or answers why not (`refused`: the reason
/// the server takes on no more local connections). `Ok(None)`: the connection stays on
/// the socket. An error is a connection that failed.
pub(crate) fn offer(
    conn: &mut Framed,
    refused: Option<&str>,
    nearby: Option<&Nearby>,
) -> std::io::Result<Option<Local>> {
    let made = (|| {
        if let Some(why) = refused {
            return Err(std::io::Error::other(why.to_owned()));
        }
        if !conn.stream().passes_descriptors() {
            return match nearby {
                Some(nearby) => Ok(Err(nearby)),
                None => Err(std::io::Error::other("the connection is not a Unix socket")),
            };
        }
        let (requests, incoming) = channel::channel(RING, None)?;
        let (outgoing, responses) = channel::channel(RING, None)?;
        let theirs = codec::encode(&Offer::Channels(Local {
            tx: requests,
            rx: responses,
        }))
        .map_err(std::io::Error::other)?;
        let ours = Local {
            tx: outgoing,
            rx: incoming,
        };
        Ok::<_, std::io::Error>(Ok((ours, theirs)))
    })();
    match made {
        Ok(Err(nearby)) => {
            let answer =
                codec::encode(&Offer::Nearby(nearby.clone())).map_err(std::io::Error::other)?;
            conn.send_raw(&answer.bytes)?;
            Ok(None)
        }
        Ok(Ok((ours, theirs))) => {
            conn.send_passing(&theirs.bytes, &crate::sys::borrow_all(&theirs.fds))?;
            // `theirs` (the duplicates this process made to send) closes here: from
            // now on the client's process alone holds its ends.
            Ok(Some(ours))
        }
        Err(e) => {
            let why = format!("no shared-memory channels: {e}");
            tracing::debug!("manager: {why}");
            let answer = codec::encode(&Offer::Refused(why)).map_err(std::io::Error::other)?;
            conn.send_raw(&answer.bytes)?;
            Ok(None)
        }
    }
}

impl Local {
    /// The client's side: sends `request` and waits for the response until `deadline`
    /// (`None`: as long as it takes); past it, [`ManagerError::Unresponsive`] with
    /// `waited`. The deadline is asked for only if the request has to wait for room,
    /// or once it is sent (see [`CallDeadline`]).
    pub(crate) fn call(
        &self,
        request: &Request,
        deadline: &CallDeadline,
        waited: std::time::Duration,
    ) -> Result<Response, ManagerError> {
        let by = || deadline.get().map_or(Deadline::Never, Deadline::At);
        let sent = match pipe::send(&self.tx, request, Deadline::Now, false) {
            Err((_, Failed::Full)) => pipe::send(&self.tx, request, by(), false),
            sent => sent,
        };
        sent.map_err(|(_, f)| match f {
            Failed::Disconnected => ManagerError::Disconnected,
            Failed::Codec(e) => ManagerError::Codec(e),
            Failed::Io(e) => ManagerError::from_io(e),
            Failed::Full => ManagerError::Unresponsive(waited),
        })?;
        let deadline = by();
        pipe::recv::<Response>(&self.rx, deadline).map_err(|m| match m {
            Missed::Empty if matches!(deadline, Deadline::At(_)) => {
                ManagerError::Unresponsive(waited)
            }
            Missed::Empty | Missed::Disconnected => ManagerError::Disconnected,
            Missed::Codec(e) => {
                ManagerError::Protocol(format!("the server sent a malformed response: {e}"))
            }
            Missed::Io(e) => ManagerError::from_io(e),
        })
    }

    /// The server's side: whether a request is waiting (one look at shared memory).
    pub(crate) fn has_request(&self) -> bool {
        self.rx.has_message()
    }

    /// The server's side: the next request, or `Ok(None)` if none came within `wait`.
    /// A request over `max` bytes, or one that does not decode, ends the connection.
    pub(crate) fn next_request(
        &self,
        max: u32,
        wait: Deadline,
    ) -> Result<Option<Request>, LocalEnd> {
        let mut decode = |bytes: &[u8], fds| {
            if bytes.len() > max as usize {
                return Err(format!(
                    "a request of {} bytes is over the limit of {max}",
                    bytes.len()
                ));
            }
            codec::decode::<Request>(bytes, fds).map_err(|e| format!("malformed request: {e}"))
        };
        match self.rx.recv_with(wait, &mut decode) {
            Ok(Ok(request)) => Ok(Some(request)),
            Ok(Err(why)) => Err(LocalEnd::Refused(why)),
            Err(RecvFail::Empty) => Ok(None),
            Err(RecvFail::Disconnected) => Err(LocalEnd::Closed),
            Err(RecvFail::Broken(why)) => Err(LocalEnd::Refused(why)),
            Err(RecvFail::Io(e)) => Err(LocalEnd::Refused(format!("the channel failed: {e}"))),
        }
    }

    /// The server's side: sends a response, waiting for room as long as it takes, or
    /// until `stopping` says the server stops; false if it was not sent (the client is
    /// gone, or the server stops).
    pub(crate) fn respond(&self, response: &Response, stopping: impl Fn() -> bool) -> bool {
        loop {
            match pipe::send(&self.tx, response, Deadline::after(STOP_CHECK), false) {
                Ok(()) => return true,
                Err((_, Failed::Full)) if !stopping() => {}
                Err(_) => return false,
            }
        }
    }

    /// The server's side: sends a response if there is room for it now. `Err(Some(_))`:
    /// no room (a client that sends without reading its answers), the response back;
    /// `Err(None)`: the client is gone.
    pub(crate) fn respond_now(&self, response: Response) -> Result<(), Option<Response>> {
        match pipe::send(&self.tx, response, Deadline::Now, false) {
            Ok(()) => Ok(()),
            Err((response, Failed::Full)) => Err(Some(response)),
            Err(_) => Err(None),
        }
    }

    /// What to poll, while counted among the sleepers (see [`sleeping`](Self::sleeping)),
    /// to learn that a request came or the client went.
    pub(crate) fn readiness(&self) -> [crate::sys::BorrowedFd<'_>; 2] {
        self.rx.readiness()
    }

    /// Counts the caller among the request channel's sleepers until the guard drops,
    /// so that the client rings its doorbell.
    pub(crate) fn sleeping(&self) -> channel::Sleeping<'_> {
        self.rx.sleeping()
    }

    /// For tests: the client's side of a call that never reads its answer; false if
    /// there was no room for it.
    #[cfg(test)]
    pub(crate) fn send_only(&self, request: &Request) -> bool {
        pipe::send(&self.tx, request, Deadline::Now, false).is_ok()
    }

    /// For tests: sends `bytes` as a request, whatever they are; false if there was no
    /// room.
    #[cfg(test)]
    pub(crate) fn send_raw(&self, bytes: &[u8]) -> bool {
        let mut fill = |buf: &mut [u8]| {
            buf.copy_from_slice(bytes);
            true
        };
        self.tx
            .send_inline(bytes.len(), &mut fill, Deadline::Now, false)
            .is_ok()
    }

    /// For tests: whether the server dropped its end (closed the connection).
    #[cfg(test)]
    pub(crate) fn server_gone(&self) -> bool {
        self.rx.senders_gone()
    }

    /// For tests: answers waiting to be read.
    #[cfg(test)]
    pub(crate) fn answers_waiting(&self) -> usize {
        self.rx.len()
    }

    /// The server's side: whether the client dropped its end.
    pub(crate) fn client_gone(&self) -> bool {
        self.rx.senders_gone()
    }
}
