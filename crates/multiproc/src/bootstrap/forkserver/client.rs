//! The parent's side of the fork server: start it, ask it for children, read their
//! exit statuses, stop it. The protocol is in `messages.rs` and described in
//! `README.md`.

use std::io;
use std::time::{Duration, Instant};

use super::server;
use crate::bootstrap::messages::{self, CHANNEL_FD, DEATH_FD, ForkReply, ForkRequest};
use crate::bootstrap::{CHILD_TOKEN, SERVER_TOKEN, format_token, looking};
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};
use crate::wire::framing::{Conn, RecvFrameError, Until};

/// How long the server may take to take a request and answer it before it is considered
/// wedged.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server is given to answer, once the process is seen awake past the reply
/// timeout: the timeout may have passed while the program was stopped whole (`Ctrl-Z`, a
/// paused container), server and all, which is no sign of a wedged server.
const LAST_LOOK: Duration = Duration::from_secs(5);
/// How long the server may take to exit once told to.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A running fork server, a direct child of this process.
#[derive(Debug)]
pub(crate) struct ForkServer {
    pid: u32,
    pidfd: OwnedFd,
    conn: Conn,
    /// The directory the server runs in (this process's when it started it), which
    /// its children inherit: device and inode.
    cwd: Option<(u64, u64)>,
}

impl ForkServer {
    /// Forks the server from this process if it has a single thread; `Ok(None)` if not.
    /// `death` is the read end of this process's death pipe, for the server's children.
    pub(crate) fn fork_now(death: OwnedFd) -> io::Result<Option<Self>> {
        let (ours, theirs) = sys::stream_pair()?;
        let cwd = sys::cwd_id().ok();
        // Output the program left unflushed before `init` would be written again by
        // the server's every child (each inherits the buffers and flushes them at its
        // end).
        sys::flush_stdio();
        match sys::fork_if_single_threaded()? {
            None => Ok(None),
            Some(sys::Forked::Child) => {
                drop(ours);
                server::serve(theirs, Some(death), false)
            }
            Some(sys::Forked::Parent(pid)) => {
                drop(theirs);
                drop(death);
                let pidfd = sys::child_pidfd(pid)?;
                tracing::trace!(pid, "fork server forked");
                Ok(Some(ForkServer {
                    pid,
                    pidfd,
                    conn: Conn::new(ours, messages::MAX_CONTROL),
                    cwd,
                }))
            }
        }
    }

    /// Starts the server by executing this program afresh (this process has threads, so
    /// forking it would not be sound).
    pub(crate) fn exec_now(death: OwnedFd) -> io::Result<Self> {
        let (ours, theirs) = sys::stream_pair()?;
        let cwd = sys::cwd_id().ok();
        // `spawn_self` puts the connection at 3 (CHANNEL_FD) and the death pipe at 4
        // (DEATH_FD); the server knows the token is its own by the connection's identity.
        let token = format_token(CHANNEL_FD, Some(DEATH_FD), sys::file_id(theirs.as_fd())?);
        let (pid, pidfd) = sys::spawn_self(
            // Room for the server's children to put their own names in `ps`.
            &format!("multiproc-forkserver{:48}", ""),
            &[(SERVER_TOKEN, &token)],
            &[CHILD_TOKEN],
            &[theirs, death],
        )?;
        tracing::trace!(pid, "fork server started by exec");
        // Another thread may have changed directory while the server started: then which
        // directory the server got is not known, and children always change to theirs.
        let cwd = cwd.filter(|&before| sys::cwd_id().ok() == Some(before));
        Ok(ForkServer {
            pid,
            pidfd,
            conn: Conn::new(ours, messages::MAX_CONTROL),
            cwd,
        })
    }

    /// Whether this process is in the directory the server runs in (the same one, not
    /// merely one of the same name): its children need not change directory.
    pub(crate) fn shares_cwd(&self) -> bool {
        self.cwd.is_some() && sys::cwd_id().ok() == self.cwd
    }

    /// Asks for a child. `fds`: the child's call channel, the status pipe's write end,
    /// stdin, stdout, stderr. Returns the child's pid and a pidfd for it.
    pub(crate) fn fork(
        &mut self,
        request: &ForkRequest,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(u32, OwnedFd)> {
        let body = postcard::to_stdvec(request).map_err(io::Error::other)?;
        self.ask(messages::FORK, &body, fds)
    }

    /// Asks for a segment tracker for this process, connected to it through `socket`
    /// (the tracker's end). Returns the tracker's pid and a pidfd for it.
    pub(crate) fn start_tracker(&mut self, socket: BorrowedFd<'_>) -> io::Result<(u32, OwnedFd)> {
        self.ask(messages::START_TRACKER, &[], &[socket])
    }

    /// Sends a request that starts a process and reads the answer. A descriptor is
    /// held from before the request until its answer is read, for the pidfd the answer
    /// passes: a process with none free is told so before anything starts, where an
    /// answer whose pidfd found no room would leave a process started that the request
    /// said had failed (another thread may still take the descriptor meanwhile; the
    /// answer then fails, and the server is replaced, see `is_out_of_step`).
    fn ask(&mut self, tag: u8, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<(u32, OwnedFd)> {
        let room = sys::dup(self.conn.fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("no descriptor free for the new process's pidfd: {e}"),
            )
        })?;
        // Within the reply timeout too: a stopped server reads nothing, and a request
        // larger than the socket holds (a large environment) waited for ever to be sent.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let until = Until {
            deadline,
            last_look: LAST_LOOK,
        };
        self.conn
            .send_by(tag, &[body], fds, Some(until))
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fork server did not answer (nor take the whole request)",
                ),
                _ => e,
            })?;
        drop(room);
        self.forked(deadline)
    }

    /// Reads the server's answer to a request: `FORKED`, with a pid and a pidfd.
    fn forked(&mut self, deadline: Instant) -> io::Result<(u32, OwnedFd)> {
        let deadline = Some(deadline);
        let mut got = looking::recv(&mut self.conn, deadline, &looking::FORKED);
        if matches!(got, Err(RecvFrameError::Timeout)) {
            // A last look, awake: a program stopped whole for longer than the timeout
            // wakes up past it, its server with it, which would be replaced, and its
            // daemon children killed with it.
            got = looking::recv(
                &mut self.conn,
                Some(Instant::now() + LAST_LOOK),
                &looking::FORKED,
            );
        }
        let frame = got.map_err(|e| match e {
            // The request was sent: the server may have acted on it (a child
            // forked, or a spare handed it) before it died. Asked again of a new
            // server, it would start a second process on the same channel.
            RecvFrameError::Closed | RecvFrameError::Truncated => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the fork server exited before answering (the process may have started)",
            ),
            RecvFrameError::Timeout => {
                io::Error::new(io::ErrorKind::TimedOut, "the fork server did not answer")
            }
            RecvFrameError::Io(e) => e,
            RecvFrameError::Corrupt(why) => {
                io::Error::new(io::ErrorKind::InvalidData, format!("fork server: {why}"))
            }
        })?;
        if frame.tag != messages::FORKED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("fork server answered with message tag {}", frame.tag),
            ));
        }
        let reply: ForkReply = postcard::from_bytes(&frame.body).map_err(io::Error::other)?;
        let pid = reply.map_err(messages::Refusal::into_io)?;
        let pidfd = frame
            .fds
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("fork server sent no pidfd"))?;
        Ok((pid, pidfd))
    }

    /// Closes the connection, which tells the server to exit (killing any daemon children
    /// it still has), and reaps it.
    pub(crate) fn shut_down(self) {
        let ForkServer {
            pid, pidfd, conn, ..
        } = self;
        drop(conn);
        let deadline = Instant::now() + EXIT_GRACE;
        let exited = sys::wait_readable(&[pidfd.as_fd()], Some(deadline))
            .map(|r| r[0].ready())
            .unwrap_or(false);
        if !exited {
            tracing::trace!(pid, "fork server did not exit; killing it");
            let _ = sys::send_signal(pidfd.as_fd(), sys::SIGKILL);
            let _ = sys::wait_readable(&[pidfd.as_fd()], None);
        }
        let _ = sys::try_reap(pidfd.as_fd());
    }
}

/// Whether a message failed because the process at the other end is gone (the fork
/// server or the segment tracker: a new one should be started).
///
/// Not once a request was sent and its answer did not come whole because the server
/// died ([`is_answer_lost`]): that request is not sent again.
pub(crate) fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Whether the server died after a request reached it, before its answer: the request
/// may have been served.
pub(crate) fn is_answer_lost(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionAborted
}

/// Whether a request failed with its answer not read whole (none came in time, or a
/// corrupt one: the connection is out of step with the server, and must not be used
/// again), or with one whose pidfd found no descriptor free (read whole, but its child
/// started with no handle here): either way the server is replaced.
pub(crate) fn is_out_of_step(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    ) || sys::descriptors_lost(e)
}

/// Reads the status a fork server wrote for a child, or `None` at end of file (the
/// server died before reporting).
pub(crate) fn read_status(status: BorrowedFd<'_>) -> io::Result<Option<messages::Reaped>> {
    let mut buf = [0u8; messages::STATUS_LEN];
    let mut got = 0;
    while got < buf.len() {
        let n = sys::read(status, &mut buf[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    Ok(messages::status_from_bytes(buf))
}
