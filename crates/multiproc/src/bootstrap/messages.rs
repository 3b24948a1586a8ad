//! What parent, fork server and child say to each other (see `README.md` here).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::RemotePanic;
use super::child::ChildCall;
use crate::sys::{Entry, WaitStatus};

/// Where a process started by the fork server finds its call channel (or a fork
/// server started by exec its connection) and its parent's death pipe.
pub(crate) const CHANNEL_FD: i32 = 3;
pub(crate) const DEATH_FD: i32 = 4;

/// Version of the call layout; a child refuses any other.
pub(crate) const PROTOCOL: u32 = 2;

/// Parent → child: the call. Body: [`CallPrefix`] then the encoded arguments.
pub(crate) const CALL: u8 = 1;
/// Child → parent: the arguments decoded, the function is running.
pub(crate) const STARTED: u8 = 2;
/// Child → parent: the function returned; the body is the encoded value.
pub(crate) const RETURNED: u8 = 3;
/// Child → parent: the function panicked; the body is an encoded [`RemotePanic`].
pub(crate) const PANICKED: u8 = 4;
/// Child → parent: the call could not start; the body is a UTF-8 reason.
pub(crate) const FAILED: u8 = 5;
/// Child → parent: the function returned a value that could not be encoded (UTF-8 reason).
pub(crate) const UNENCODABLE: u8 = 6;
/// Child → parent: the function returned; the encoded value is in a sealed memory file,
/// the first descriptor passed (the value's own follow), and the body is its length
/// (u64, little-endian). For values of [`IN_FILE_FROM`] bytes and more (fewer where the
/// socket's send buffer is small: see `child::send_returned`): a value sent
/// on the socket itself kept the child from ending until its parent read it all (its
/// `is_alive` said yes, its pidfd never became readable, until a join).
pub(crate) const RETURNED_IN_FILE: u8 = 7;
/// Child → parent: its resource limits are in force (sent only by a child that has
/// some, before it decodes its arguments): an end by one of their signals from then on
/// is reported as the limit, even before the call started.
pub(crate) const LIMITED: u8 = 8;
/// Child → parent: as [`PANICKED`], the report in a sealed memory file, as
/// [`RETURNED_IN_FILE`] carries a value (a long backtrace, or a socket whose send buffer
/// is small).
pub(crate) const PANICKED_IN_FILE: u8 = 9;
/// The size from which a returned value travels in a memory file: well under what a
/// socket's buffer holds by default (about 200 KiB; less where `net.core.wmem_default`
/// is set lower, and then the size is less too).
pub(crate) const IN_FILE_FROM: usize = 64 << 10;

/// Parent → fork server: start a child. Body: an encoded [`ForkRequest`]; descriptors:
/// the child's end of the call channel, the status pipe's write end, stdin, stdout, stderr.
pub(crate) const FORK: u8 = 16;
/// Fork server → parent: an encoded [`ForkReply`]; with `Ok`, one descriptor: a pidfd.
pub(crate) const FORKED: u8 = 17;

/// Parent → its segment tracker: remember a named shared-memory segment this process
/// created; unlink it when this process is gone. Body: an encoded [`Tracked`].
pub(crate) const TRACK: u8 = 18;
/// Parent → its segment tracker: forget a segment (its creator unlinked it). Body: as
/// `TRACK`.
pub(crate) const UNTRACK: u8 = 19;
/// Parent → fork server: fork a segment tracker for this process. No body; one
/// descriptor: the tracker's end of its connection to the parent. The reply is
/// [`FORKED`] (the tracker's pid and a pidfd for it).
pub(crate) const START_TRACKER: u8 = 20;

pub(crate) use crate::shm::named::Tracked;

/// Largest call the child accepts through its channel (arguments included).
pub(crate) const MAX_CALL: u64 = 1 << 40;
/// Largest outcome the parent accepts (the return value included).
pub(crate) const MAX_OUTCOME: u64 = 1 << 40;
/// Largest fork-server message.
pub(crate) const MAX_CONTROL: u64 = 64 << 20;

/// Bytes before the call header: protocol version (`u32`), executable identity (6 × `u64`)
/// and the header's length (`u32`), all little-endian. Fixed, so a child can refuse a
/// call from another executable before decoding anything else.
pub(crate) const PREFIX_LEN: usize = 4 + 6 * 8 + 4;

/// Who the child is and what it runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallHeader {
    pub(crate) entry: Entry<ChildCall>,
    /// The setup function given to `init_with`, as an offset like the entry's: a child
    /// started by executing the program never ran `init_with` itself.
    pub(crate) setup: Option<u64>,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// Position among its ancestors' children, as in Python (`Process-1:2`).
    pub(crate) lineage: Vec<u32>,
    pub(crate) depth: u32,
    pub(crate) parent_pid: u32,
    pub(crate) parent_name: String,
    /// Resource limits the child sets on itself before its function runs.
    pub(crate) limits: Option<ChildLimits>,
}

/// Resource limits (`setrlimit`) a child sets on itself before its function runs: the
/// soft and hard limits both, except for CPU time (see [`ChildLimits::cpu`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChildLimits {
    /// Address space beyond what the child has mapped when it sets the limit: a memory
    /// cap where no cgroup enforces it.
    pub(crate) memory: Option<u64>,
    /// Address space, in all.
    pub(crate) address_space: Option<u64>,
    /// CPU time from the moment it is set: the soft limit moves (a pool worker moves it
    /// before each task), and the hard one stays, so that the process may move it.
    pub(crate) cpu: Option<std::time::Duration>,
    pub(crate) open_files: Option<u64>,
    pub(crate) processes: Option<u64>,
}

/// Encodes the fixed prefix and the header of a call.
pub(crate) fn encode_call_prefix(
    identity: &[u64; 6],
    header: &CallHeader,
) -> Result<Vec<u8>, postcard::Error> {
    let header = postcard::to_stdvec(header)?;
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len());
    out.extend_from_slice(&PROTOCOL.to_le_bytes());
    for word in identity {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&header);
    Ok(out)
}

/// A call's parts, borrowed from its frame body.
#[derive(Debug)]
pub(crate) struct CallParts<'a> {
    pub(crate) identity: [u64; 6],
    pub(crate) header: &'a [u8],
    pub(crate) payload: &'a [u8],
}

/// Splits a call body; checks the version and the lengths, not the identity.
pub(crate) fn split_call(body: &[u8]) -> Result<CallParts<'_>, String> {
    if body.len() < PREFIX_LEN {
        return Err(format!(
            "call of {} bytes is shorter than its prefix",
            body.len()
        ));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let version = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    if version != PROTOCOL {
        return Err(format!("call protocol {version}, expected {PROTOCOL}"));
    }
    let mut identity = [0u64; 6];
    for (i, w) in identity.iter_mut().enumerate() {
        *w = word(4 + 8 * i);
    }
    let at = 4 + 6 * 8;
    let header_len =
        u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
    let rest = &body[PREFIX_LEN..];
    if header_len > rest.len() {
        return Err(format!(
            "call header of {header_len} bytes overruns the call"
        ));
    }
    let (header, payload) = rest.split_at(header_len);
    Ok(CallParts {
        identity,
        header,
        payload,
    })
}

/// How a child is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Launch {
    /// The fork server forks and the child runs the call.
    Fork,
    /// The fork server forks and the child executes `/proc/self/exe` afresh.
    Exec,
}

/// Parent → fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ForkRequest {
    pub(crate) launch: Launch,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// The child leads a new process group.
    pub(crate) process_group: bool,
    /// Directory to run in (the parent's current one unless the builder set another).
    pub(crate) cwd: Option<Bytes>,
    /// The complete environment of the child: `KEY=VALUE` entries, each ended by a NUL
    /// (the layout of `environ`, so a child can compare it with its own in one go).
    pub(crate) env: Bytes,
    /// A memory cap of this many bytes, through a cgroup the server makes for the child.
    pub(crate) memory_cgroup: Option<u64>,
    /// The cgroup the child moves itself into before anything else (the server fills
    /// it in).
    pub(crate) cgroup: Option<Bytes>,
    /// The parent's soft limit on open descriptors (`None`: unlimited or unknown): the
    /// child gets it back, where the server raised its own to the hard limit.
    pub(crate) open_files: Option<u64>,
    /// The parent ignores SIGPIPE (as Rust programs do): so does the child, also where
    /// the server was started by executing the program (`Command` gave it SIGPIPE's
    /// default action, which is all the server could pass on).
    pub(crate) sigpipe_ignored: bool,
    /// The parent gives SIGPIPE its default action (a command-line program that ends
    /// quietly in a closed pipe): so does the child, where the server ignored it.
    pub(crate) sigpipe_default: bool,
    /// The parent's users and groups now: the child takes them where the server's (the
    /// program's when it started the server) differ, as in a program that drops its
    /// privileges after `init`.
    pub(crate) ids: Option<crate::sys::Ids>,
}

pub(crate) use crate::wire::codec::Bytes;

/// Encodes an environment as [`ForkRequest::env`] does. Entries whose key is empty or
/// holds `=` or NUL, or whose value holds NUL, cannot exist in an environment and are
/// left out.
pub(crate) fn env_block<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Bytes
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut out = Vec::new();
    for (k, v) in vars {
        let (k, v) = (k.as_ref().as_encoded_bytes(), v.as_ref().as_encoded_bytes());
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
            continue;
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(0);
    }
    Bytes(out)
}

/// The entries of an environment block, as `(key, value)`.
pub(crate) fn env_entries(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|entry| {
            let at = entry.iter().position(|&b| b == b'=')?;
            Some((&entry[..at], &entry[at + 1..]))
        })
}

/// Fork server → parent: the child's pid, or why there is none.
pub(crate) type ForkReply = Result<u32, Refusal>;

/// Why the fork server could not start a child: the system error's number when there
/// was one (so the parent's error keeps its kind: out of processes, out of memory) and
/// what failed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Refusal {
    pub(crate) errno: Option<i32>,
    pub(crate) why: String,
}

impl Refusal {
    /// A refusal because `what` failed with `e`.
    pub(crate) fn os(what: &str, e: &std::io::Error) -> Self {
        Refusal {
            errno: e.raw_os_error(),
            why: format!("{what}: {e}"),
        }
    }

    /// A refusal without a system error.
    pub(crate) fn other(why: String) -> Self {
        Refusal { errno: None, why }
    }

    /// The error the parent reports: of the system error's kind, with the whole story.
    pub(crate) fn into_io(self) -> std::io::Error {
        let kind = self.errno.map_or(std::io::ErrorKind::Other, |n| {
            std::io::Error::from_raw_os_error(n).kind()
        });
        std::io::Error::new(kind, self.why)
    }
}

/// Converts a path to bytes for the wire (paths need not be UTF-8).
pub(crate) fn path_bytes(p: PathBuf) -> Bytes {
    Bytes(p.into_os_string().into_encoded_bytes())
}

/// Decodes a panic report, for the parent.
pub(crate) fn decode_panic(body: &[u8]) -> Result<RemotePanic, postcard::Error> {
    postcard::from_bytes(body)
}

/// How a child of the fork server ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub(crate) status: WaitStatus,
    /// The out-of-memory killer killed a process of its memory cgroup: it went over its
    /// cap.
    pub(crate) oom_killed: bool,
}

/// Bytes of a [`Reaped`] on a status pipe.
pub(crate) const STATUS_LEN: usize = 6;

/// A child's end as the fork server writes it on the child's status pipe: a kind byte
/// (0: exited, 1: killed), the code or signal, and a flags byte (1: out-of-memory kill).
pub(crate) fn status_to_bytes(reaped: Reaped) -> [u8; STATUS_LEN] {
    let (kind, value) = match reaped.status {
        WaitStatus::Exited(code) => (0u8, code),
        WaitStatus::Signaled(sig) => (1u8, sig),
    };
    let v = value.to_le_bytes();
    [kind, v[0], v[1], v[2], v[3], u8::from(reaped.oom_killed)]
}

/// Inverse of [`status_to_bytes`]; `None` for an unknown kind.
pub(crate) fn status_from_bytes(b: [u8; STATUS_LEN]) -> Option<Reaped> {
    let value = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    let status = match b[0] {
        0 => WaitStatus::Exited(value),
        1 => WaitStatus::Signaled(value),
        _ => return None,
    };
    Some(Reaped {
        status,
        oom_killed: b[5] & 1 != 0,
    })
}
