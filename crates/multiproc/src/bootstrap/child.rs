//! The child's side: receive the call, run it, report the outcome, exit.

use std::any::Any;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::messages::{self, CallHeader};
use super::panic::{install_panic_hook, panic_report, payload_message};
use super::{BOOTSTRAP_FAILURE, Me, Parent};
use crate::sys::{self, OwnedFd};
use crate::wire::codec::CodecError;
use crate::wire::codec::{self, Encoded};
use crate::wire::framing::{Conn, RecvFrameError};

/// Exit code of a child whose function panicked (Rust's own code for a panicking `main`).
const PANIC_EXIT: i32 = 101;

/// How a child came to be, which decides how it may exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Executed afresh: a process of its own; its atexit handlers are its to run.
    Executed,
    /// Forked by the single-threaded fork server: every lock is free, but handlers
    /// registered before the fork belong to another process.
    Server,
    /// Forked straight from a parent that may have other threads (`spawn_fork`): any
    /// lock another thread held at the fork is held forever, so multiproc itself takes
    /// none that it does not own (no span, raw writes to stderr) but stdout's, which the
    /// parent held across the fork.
    Direct,
}

/// What the typed trampoline needs from the call in progress.
pub(crate) trait CallIo {
    /// The encoded arguments and the descriptors that came with them (asked once).
    fn args(&mut self) -> (&[u8], Vec<OwnedFd>);
    /// The arguments are decoded: free their bytes, tell the parent the call started.
    fn started(&mut self);
}

/// What came of running the function.
#[derive(Debug)]
pub(crate) enum Invoked {
    Returned(Encoded),
    BadArgs(CodecError),
    Unencodable(CodecError),
}

/// A child's call: what its entry's trampoline is given (the call in progress) and
/// gives back. The caller [`sys::call`] reaches for entries made with
/// `sys::entry::<ChildCall, _, _>`.
#[derive(Debug)]
pub(crate) struct ChildCall;

impl sys::Signature for ChildCall {
    type Input<'a> = &'a mut dyn CallIo;
    type Output = Invoked;
}

impl sys::Caller for ChildCall {
    type Sig = ChildCall;

    /// Decodes the arguments, runs `f`, encodes what it returns. Monomorphised per
    /// `(A, R)` through the trampolines in `sys`.
    fn call<A, R>(f: fn(A) -> R, io: &mut dyn CallIo) -> Invoked
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        invoke(f, io)
    }
}

fn invoke<A, R>(f: fn(A) -> R, io: &mut dyn CallIo) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    let args = {
        let (bytes, fds) = io.args();
        match codec::decode::<A>(bytes, fds) {
            Ok(args) => args,
            Err(e) => return Invoked::BadArgs(e),
        }
    };
    io.started();
    let value = f(args);
    match codec::encode(&value) {
        Ok(encoded) => Invoked::Returned(encoded),
        Err(e) => Invoked::Unencodable(e),
    }
}

struct ChildIo<'a> {
    conn: &'a mut Conn,
    body: Vec<u8>,
    payload_at: usize,
    fds: Vec<OwnedFd>,
}

impl CallIo for ChildIo<'_> {
    fn args(&mut self) -> (&[u8], Vec<OwnedFd>) {
        (&self.body[self.payload_at..], std::mem::take(&mut self.fds))
    }

    fn started(&mut self) {
        self.body = Vec::new();
        // A parent that is gone will learn nothing; the call runs regardless.
        let _ = self.conn.send(messages::STARTED, &[], &[]);
    }
}

/// Entry of a child forked by the fork server: descriptors 3 (call channel) and 4 (the
/// parent's death pipe, if any) are set up.
pub(crate) fn run_forked(channel: OwnedFd, death: Option<OwnedFd>) -> ! {
    serve_call(channel, death, Origin::Server)
}

/// Entry of a child started by executing the program afresh; `init()` found its token.
pub(crate) fn run_exec(channel: OwnedFd, death: Option<OwnedFd>) -> ! {
    serve_call(channel, death, Origin::Executed)
}

fn serve_call(channel: OwnedFd, death: Option<OwnedFd>, executed: Origin) -> ! {
    let mut conn = Conn::new(channel, messages::MAX_CALL);
    let frame = match conn.recv(None) {
        Ok(frame) if frame.tag == messages::CALL => frame,
        Ok(frame) => fail(
            &mut conn,
            &format!("expected a call, got message tag {}", frame.tag),
            executed,
        ),
        // The parent went away before sending anything: nothing to report to.
        Err(RecvFrameError::Closed) => exit(BOOTSTRAP_FAILURE, executed),
        Err(e) => fail(
            &mut conn,
            &format!("could not receive the call: {e}"),
            executed,
        ),
    };
    let parts = match messages::split_call(&frame.body) {
        Ok(parts) => parts,
        Err(e) => fail(&mut conn, &format!("malformed call: {e}"), executed),
    };
    let proof = match sys::verify_image(&parts.identity) {
        Ok(proof) => proof,
        Err(e) => fail(&mut conn, &e, executed),
    };
    let header: CallHeader = match postcard::from_bytes(parts.header) {
        Ok(h) => h,
        Err(e) => fail(&mut conn, &format!("malformed call header: {e}"), executed),
    };
    let payload_at = frame.body.len() - parts.payload.len();
    let entry = header.entry;
    let setup = match header.setup {
        Some(offset) => Some(sys::fn_at(offset, &proof)),
        None => super::setup(),
    };
    // This process's own children run it too: an image that did not run `init_with`
    // (a child started by executing the program, or one whose fork server was) has it
    // from here only.
    super::keep_setup(setup);
    let name = header.name.clone();
    {
        let mut st = super::state();
        super::become_child(
            &mut st,
            &mut super::me_lock(),
            Me {
                name: header.name,
                daemon: header.daemon,
                lineage: header.lineage,
                depth: header.depth,
                parent: Some(Parent {
                    pid: header.parent_pid,
                    name: header.parent_name,
                    death,
                }),
            },
        );
    }
    // A child of the fork server was named before it was handed its call.
    if executed == Origin::Executed {
        sys::set_name(&name);
    }
    if let Some(limits) = &header.limits {
        super::setup::default_limit_signals(limits);
    }
    if let Some(setup) = setup
        && let Err(payload) = panic::catch_unwind(setup)
    {
        let why = format!(
            "the setup function panicked: {}",
            payload_message(&*payload)
        );
        fail(&mut conn, &why, executed);
    }
    // A child of the fork server has the hook the server installed, unless a setup
    // function (which may set hooks of its own) ran first.
    if executed != Origin::Server || setup.is_some() {
        install_panic_hook();
    }
    if let Some(limits) = &header.limits {
        if let Err(why) = super::setup::apply_limits(limits) {
            fail(&mut conn, &why, executed);
        }
        // From here an end by a limit's signal is the limit's doing, the arguments'
        // decoding included (an argument too large for an address-space cap aborts it).
        let _ = conn.send(messages::LIMITED, &[], &[]);
    }
    // A `std::process::exit` in the call runs the exit work, as the end of the call does
    // (a failure before it, of the setup or the limits, does not).
    super::own_exit();
    let span = tracing::info_span!("process", name = %name);
    let mut io = ChildIo {
        conn: &mut conn,
        body: frame.body,
        payload_at,
        fds: frame.fds,
    };
    let result = span
        .in_scope(|| panic::catch_unwind(AssertUnwindSafe(|| sys::call(entry, &proof, &mut io))));
    let code = match result {
        Ok(Invoked::Returned(value)) => {
            send_returned(&mut conn, &value);
            0
        }
        Ok(Invoked::BadArgs(e)) => {
            let why = format!("could not decode the arguments: {e}");
            fail(&mut conn, &why, executed)
        }
        Ok(Invoked::Unencodable(e)) => {
            let _ = conn.send(messages::UNENCODABLE, &[e.message().as_bytes()], &[]);
            1
        }
        Err(payload) => {
            report_panic(&mut conn, &*payload);
            // Not dropped: its `Drop` is the caller's code too, and may panic.
            std::mem::forget(payload);
            PANIC_EXIT
        }
    };
    drop(conn);
    finish(code, executed)
}

/// Child side of a process forked straight from its parent
/// ([`Builder::spawn_fork`](crate::Builder::spawn_fork)): run `f`, report, exit.
pub(crate) fn run_in_fork<R: Serialize>(channel: OwnedFd, f: impl FnOnce() -> R) -> ! {
    let mut conn = Conn::new(channel, messages::MAX_CALL);
    install_panic_hook();
    super::own_exit();
    sys::set_name(&super::me().name);
    // The value's `Serialize` and `Drop` are the caller's code too: a panic in them
    // unwinding out of here would run the parent's frames (its `main`'s) in the child.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let value = f();
        codec::encode(&value)
    }));
    let code = match result {
        Ok(Ok(value)) => {
            send_returned(&mut conn, &value);
            0
        }
        Ok(Err(e)) => {
            let _ = conn.send(messages::UNENCODABLE, &[e.message().as_bytes()], &[]);
            1
        }
        Err(payload) => {
            report_panic(&mut conn, &*payload);
            // Not dropped: its `Drop` is the caller's code too, and may panic.
            std::mem::forget(payload);
            PANIC_EXIT
        }
    };
    drop(conn);
    finish(code, Origin::Direct)
}

/// Sends the value the function returned: on the socket, or from
/// [`messages::IN_FILE_FROM`] bytes (fewer where the socket's send buffer holds less:
/// half of it, less 4 KiB for what is on its way already, as a spawn's early call) in a
/// sealed memory file, so that the send never waits for the parent to read. On the
/// socket all the same when the file cannot be made, or would be one descriptor too
/// many for a message, or its send fails (the kernel refuses descriptors in flight past
/// the sender's open-files limit, counted over the user's processes): a send that passes
/// descriptors and fails sent nothing.
fn send_returned(conn: &mut Conn, value: &Encoded) {
    let tags = (messages::RETURNED, messages::RETURNED_IN_FILE);
    send_outcome(conn, tags, &value.bytes, &value.fds);
}

/// Sends an outcome as `tag`, or, from [`messages::IN_FILE_FROM`] bytes (fewer where
/// the socket holds less), as `in_file_tag` from a sealed memory file: see
/// [`send_returned`].
fn send_outcome(conn: &mut Conn, (tag, in_file_tag): (u8, u8), bytes: &[u8], fds: &[OwnedFd]) {
    let in_file_from = sys::send_room(conn.fd())
        .map_or(0, |room| room.saturating_sub(4096))
        .min(messages::IN_FILE_FROM);
    if bytes.len() >= in_file_from
        && fds.len() < sys::MAX_FDS_PER_MESSAGE
        && let Ok(file) = sys::sealed_memfd("multiproc-result", bytes)
    {
        let mut passed = vec![sys::AsFd::as_fd(&file)];
        passed.extend(sys::borrow_all(fds));
        let len = (bytes.len() as u64).to_le_bytes();
        if conn.send(in_file_tag, &[&len], &passed).is_ok() {
            return;
        }
    }
    let _ = conn.send(tag, &[bytes], &sys::borrow_all(fds));
}

/// Reports that the call could not start, and exits.
fn fail(conn: &mut Conn, why: &str, origin: Origin) -> ! {
    let _ = conn.send(messages::FAILED, &[why.as_bytes()], &[]);
    report(why);
    exit(BOOTSTRAP_FAILURE, origin)
}

/// Reports a failure to start on a raw call channel (from a forked child before it has a
/// `Conn`), and exits.
pub(crate) fn fail_on(channel: OwnedFd, why: &str) -> ! {
    let mut conn = Conn::new(channel, messages::MAX_CALL);
    let _ = conn.send(messages::FAILED, &[why.as_bytes()], &[]);
    report(why);
    sys::exit_now(BOOTSTRAP_FAILURE)
}

/// One line on stderr, written directly: `eprintln!` takes a lock that, in a child forked
/// from a threaded parent, another thread may have held at the fork.
fn report(why: &str) {
    let line = format!("multiproc: child process {}: {why}\n", sys::getpid());
    sys::write_stderr(line.as_bytes());
}

/// Joins this child's own children, flushes, exits. A child whose function returned
/// leaves the barriers it waited on (see `sync::barrier`); one that failed stays a
/// party that died.
fn finish(code: i32, origin: Origin) -> ! {
    // The exit work runs code of the program's (its `tracing` subscriber, the
    // manager's goodbye): a panic there must not unwind into the frames the child was
    // forked from (the caller of `spawn_fork`, or the fork server's loop), whose
    // destructors and code would then run in the child. Caught, as at `exit`.
    let ended = std::panic::catch_unwind(|| crate::sync::barrier::process_ends(code == 0));
    // Done here, not again at `exit`.
    super::disown_exit();
    let exited = std::panic::catch_unwind(super::exit_function);
    // The slots of its other threads that had not read their last outcome yet, now
    // that nothing of its own waits at a barrier any more.
    let left = std::panic::catch_unwind(|| crate::sync::barrier::process_ended(code == 0));
    for caught in [ended.err(), exited.err(), left.err()]
        .into_iter()
        .flatten()
    {
        super::panic::drop_payload(caught);
    }
    exit(code, origin)
}

fn exit(code: i32, origin: Origin) -> ! {
    let _ = std::io::stdout().flush();
    match origin {
        Origin::Executed => std::process::exit(code),
        Origin::Server | Origin::Direct => sys::exit_now(code),
    }
}

fn report_panic(conn: &mut Conn, payload: &(dyn Any + Send)) {
    let report = panic_report(payload);
    match postcard::to_stdvec(&report) {
        Ok(bytes) => {
            // In a file when large (a backtrace), so that the child's end does not
            // wait for its parent to read, as a returned value's.
            let tags = (messages::PANICKED, messages::PANICKED_IN_FILE);
            send_outcome(conn, tags, &bytes, &[]);
        }
        Err(e) => {
            let _ = conn.send(
                messages::FAILED,
                &[format!("panic report: {e}").as_bytes()],
                &[],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A result goes where the child's send does not wait for its parent to read,
    /// whatever the socket's send buffer (`net.core.wmem_default` may be set low): one
    /// of 30 KiB went on a socket that held 8 KiB, and its child waited there.
    #[test]
    fn a_result_is_sent_without_waiting_for_the_parent() {
        for buffer in [None, Some(4096)] {
            let (ours, theirs) = sys::stream_pair().unwrap();
            if let Some(size) = buffer {
                rustix::net::sockopt::set_socket_send_buffer_size(&ours, size).unwrap();
            }
            let mut conn = Conn::new(ours, messages::MAX_OUTCOME);
            let value = codec::encode(&vec![7u8; 30 << 10]).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let sender = std::thread::spawn(move || {
                send_returned(&mut conn, &value);
                tx.send(()).unwrap();
            });
            let sent = rx.recv_timeout(Duration::from_secs(10));
            // Ends a send that waits (it fails once the reader is gone).
            drop(theirs);
            sender.join().unwrap();
            assert!(sent.is_ok(), "{buffer:?}: the send waited for a reader");
        }
    }

    /// So does a panic's report (a long message or backtrace).
    #[test]
    fn a_panic_report_is_sent_without_waiting_for_the_parent() {
        let (ours, theirs) = sys::stream_pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&ours, 4096).unwrap();
        let mut conn = Conn::new(ours, messages::MAX_OUTCOME);
        let (tx, rx) = std::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            let payload: Box<dyn Any + Send> = Box::new("x".repeat(30 << 10));
            report_panic(&mut conn, &*payload);
            tx.send(()).unwrap();
        });
        let sent = rx.recv_timeout(Duration::from_secs(10));
        drop(theirs);
        sender.join().unwrap();
        assert!(sent.is_ok(), "the report waited for a reader");
    }
}
