//! The waits of the fork server's spawn path that look for their answer before they
//! sleep (see [`AdaptiveLook`]): the server's reply to a request, a child's first
//! message and its outcome, its exit status, and a spare child's assignment. While a
//! program spawns and joins in a loop each answer comes within a few hundred
//! microseconds, and a waiter that slept would cost its waker a wake-up and, on an idle
//! CPU, the time the CPU takes to come out of idle: a spawn + join hands on five times
//! between three processes. Each kind of wait learns on its own how long its answers
//! take, and a kind whose answers take long (a child that runs for a while) sleeps at
//! once. Measured (`multiproc-bench loop spawn 2000`, interleaved runs): 8–20% less
//! time per spawn + join on an idle machine, about 20% less under one busy loop.
//!
//! A child forked straight from its parent (`spawn_fork`) is waited for asleep: with the
//! other CPUs busy, the kernel moves the new child to its parent's CPU when that CPU goes
//! idle, which a looking parent keeps it from doing (looking measured 12% slower there
//! under one busy loop, though 20–30% faster on an idle machine).

use std::io;
use std::time::{Duration, Instant};

use crate::sync::raw::AdaptiveLook;
use crate::sys::{self, BorrowedFd};
use crate::wire::framing::{Conn, Frame, RecvFrameError};

/// The least a wait looks once looking pays off, and twice the longest answer worth
/// looking for.
const LEAST: Duration = Duration::from_micros(20);
const MOST: Duration = Duration::from_millis(2);

/// The fork server's answer to a request.
pub(crate) static FORKED: AdaptiveLook = AdaptiveLook::new(LEAST, MOST);
/// A child's first message: that its call started (or how it ended).
pub(crate) static STARTED: AdaptiveLook = AdaptiveLook::new(LEAST, MOST);
/// A child's outcome, once its call has started.
pub(crate) static OUTCOME: AdaptiveLook = AdaptiveLook::new(LEAST, MOST);
/// A child's exit status, relayed by the fork server, or its end on its pidfd.
pub(crate) static ENDED: AdaptiveLook = AdaptiveLook::new(LEAST, MOST);
/// A spare's assignment: the fork server learns how long its spares wait, and each
/// spare it forks looks for its assignment as long as that says.
pub(crate) static ASSIGNMENT: AdaptiveLook = AdaptiveLook::new(LEAST, MOST);

/// Whether `fd` is readable now.
fn readable_now(fd: BorrowedFd<'_>) -> bool {
    sys::poll_now(fd).is_ok_and(|r| r.ready())
}

/// The next frame on `conn`, looking for it as `look` says before sleeping until
/// `deadline`.
pub(crate) fn recv(
    conn: &mut Conn,
    deadline: Option<Instant>,
    look: &AdaptiveLook,
) -> Result<Frame, RecvFrameError> {
    if let Some(frame) = conn.buffered_frame()? {
        return Ok(frame);
    }
    let fd = conn.fd();
    let looked = look.look(deadline, || readable_now(fd));
    let frame = conn.recv(deadline)?;
    look.answered(looked);
    Ok(frame)
}

/// The next frame a child sends on `conn`, looking for it as `look` says (if at all)
/// before sleeping until `deadline`. `ended` is the child's pidfd: once the child has
/// ended with no whole frame left to read, the channel counts as closed
/// ([`RecvFrameError::Closed`]) even while a process it forked holds a copy of it
/// (a frame cut short by the child's death included).
pub(crate) fn recv_from_child(
    conn: &mut Conn,
    deadline: Option<Instant>,
    look: Option<&AdaptiveLook>,
    ended: BorrowedFd<'_>,
) -> Result<Frame, RecvFrameError> {
    if let Some(frame) = conn.buffered_frame()? {
        return Ok(frame);
    }
    let mut looked = {
        let fd = conn.fd();
        look.map(|l| (l, l.look(deadline, || readable_now(fd))))
    };
    let mut readable = looked.is_some_and(|(_, l)| l.found);
    loop {
        if !readable {
            // What a child sent is in the socket before it ends: a readable pidfd and
            // an empty socket mean nothing more will come from it.
            let ready =
                sys::wait_readable(&[conn.fd(), ended], deadline).map_err(RecvFrameError::Io)?;
            // One look at both is not one moment: the socket may have been seen empty
            // just before the child sent its last frame and ended. Once it has ended,
            // the socket holds all it will: looked at again, it tells.
            let sent = ready[0].ready() || (ready[1].ready() && readable_now(conn.fd()));
            if !sent {
                return Err(if ready[1].ready() {
                    RecvFrameError::Closed
                } else {
                    RecvFrameError::Timeout
                });
            }
        }
        // What is there now, without waiting: a frame still incomplete is waited for
        // above, with the pidfd, rather than in the read.
        match conn.recv(Some(Instant::now())) {
            Ok(frame) => {
                if let Some((look, looked)) = looked.take() {
                    look.answered(looked);
                }
                return Ok(frame);
            }
            Err(RecvFrameError::Timeout) => readable = false,
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `fd` is readable (true) or `deadline` passes (false), looking as `look`
/// says before sleeping.
pub(crate) fn readable(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
    look: &AdaptiveLook,
) -> io::Result<bool> {
    let looked = look.look(deadline, || readable_now(fd));
    if !looked.found && !sys::wait_readable(&[fd], deadline)?[0].ready() {
        return Ok(false);
    }
    look.answered(looked);
    Ok(true)
}

/// Looks for `fd` to become readable for as long as `look` says, without learning (a
/// spare: the server that forked it learns for it); whether it did.
pub(crate) fn look_only(fd: BorrowedFd<'_>, look: &AdaptiveLook) -> bool {
    look.look(None, || readable_now(fd)).found
}
