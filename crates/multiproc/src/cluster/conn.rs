//! Reaching Redis: the URL, connections with their timeouts, reconnection, and reading
//! replies.
//!
//! Every connection has a response timeout, so a server that stops answering (paused,
//! partitioned) is an error, never a hang; a blocking read (`XREADGROUP BLOCK`,
//! `BLPOP`) has a connection of its own whose timeout is longer than the block
//! (redis-rs #453, #806: a shared connection or a shorter timeout breaks both).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;

use super::error::{ClusterError, redis_err};
use super::keys::{Keys, valid_name};
use crate::deadline;

/// How long a command may wait for its reply.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a blocking read may wait past its block time before the connection is
/// considered broken.
pub(crate) const BLOCK_MARGIN: Duration = Duration::from_secs(5);

/// What a client and a worker both need to reach a queue.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) queue: String,
    pub(crate) namespace: String,
    pub(crate) result_ttl: Duration,
    pub(crate) max_message: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls_root: Option<Vec<u8>>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &mask(&self.url))
            .field("queue", &self.queue)
            .field("namespace", &self.namespace)
            .field("result_ttl", &self.result_ttl)
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The defaults: queue `default`, namespace `multiproc`, outcomes kept a day,
    /// messages up to 64 MiB, a second to connect, the system's TLS roots.
    pub(crate) fn new(url: &str) -> Settings {
        Settings {
            url: url.to_string(),
            queue: "default".into(),
            namespace: "multiproc".into(),
            result_ttl: Duration::from_secs(24 * 3600),
            max_message: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            tls_root: None,
        }
    }

    /// How long outcomes are kept, in seconds, as Redis takes it: a century at most
    /// (`Duration::MAX`, "for ever", is past the range of Redis's expiry times, which
    /// then refuses the command).
    pub(crate) fn result_ttl_secs(&self) -> u64 {
        self.result_ttl.min(deadline::FOREVER).as_secs().max(1)
    }

    /// Checks the settings and parses the URL.
    pub(crate) fn open(&self) -> Result<(Server, Keys), ClusterError> {
        for (what, name) in [("queue", &self.queue), ("namespace", &self.namespace)] {
            check_name(what, name)?;
        }
        if self.result_ttl < Duration::from_secs(1) {
            return Err(ClusterError::InvalidArgument(
                "result_ttl must be at least a second".into(),
            ));
        }
        let server = Server::open(&self.url, self.tls_root.as_deref(), self.connect_timeout)?;
        Ok((server, Keys::new(&self.namespace, &self.queue)))
    }
}

/// Refuses a queue or namespace name that would break the key layout.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ClusterError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ClusterError::InvalidArgument(format!(
            "{what} {name:?}: use 1 to 200 printable characters, without spaces, ':', '{{' or '}}'"
        )))
    }
}

/// `n` random bytes in hex (for client and worker names).
pub(crate) fn random_hex(n: usize) -> Result<String, ClusterError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| ClusterError::Io(std::io::Error::other(e)))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What the server's limits leave for a call: each value is at most its
/// `proto-max-bulk-len` (a task goes as one; an outcome as itself and inside its
/// reply), and the whole call at most its `client-query-buffer-limit`. A command over
/// either is refused and its connection closed: a worker would take that for a server
/// it cannot reach, and send the outcome again for ever; a client would report a lost
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The largest task or outcome: one value, and twice it in one call.
    pub(crate) outcome: usize,
    /// The most bytes one call carries.
    pub(crate) call: usize,
}

impl Limits {
    /// Redis's defaults: 512 MB per value, 1 GB per command.
    pub(crate) const DEFAULT: Limits = Limits::of(512 << 20, 1 << 30);

    /// What a server with these limits leaves, besides the task ids, entry ids and
    /// keys a finish sends with its outcome (64 KiB left for them).
    pub(crate) const fn of(bulk: usize, query: usize) -> Limits {
        const ROOM: usize = 64 << 10;
        let per_value = bulk.saturating_sub(ROOM);
        let call = query.saturating_sub(ROOM);
        Limits {
            outcome: if per_value < call / 2 {
                per_value
            } else {
                call / 2
            },
            call,
        }
    }
}

/// The server's [`Limits`] (`CONFIG GET`); `None` if it refuses to say (the command not
/// allowed to the user, or renamed), Redis's defaults for a limit it does not name.
pub(crate) fn server_limits(conn: &mut redis::Connection) -> redis::RedisResult<Option<Limits>> {
    Ok(server_config(conn)?.map(|(limits, _)| limits))
}

/// The server's [`Limits`] and its `maxmemory-policy` where it may evict (it names one
/// other than `noeviction`, and a `maxmemory` above zero: with none, nothing is ever
/// evicted), in one `CONFIG GET`; `None` if it refuses to say, as for
/// [`server_limits`].
pub(crate) fn server_config(
    conn: &mut redis::Connection,
) -> redis::RedisResult<Option<(Limits, Option<String>)>> {
    let mut config: HashMap<String, String> = match redis::cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .arg("client-query-buffer-limit")
        .arg("maxmemory-policy")
        .arg("maxmemory")
        .query(conn)
    {
        Ok(config) => config,
        // An error reply that is not the server being busy or loading: a refusal.
        Err(e) if e.code().is_some() && !redis_err(&e).is_transient() => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let limit = |name: &str, default: usize| {
        config
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
    };
    let limits = Limits::of(
        limit("proto-max-bulk-len", 512 << 20),
        limit("client-query-buffer-limit", 1 << 30),
    );
    let bounded = config
        .get("maxmemory")
        .and_then(|m| m.parse::<u64>().ok())
        .is_some_and(|m| m > 0);
    let evicting = config
        .remove("maxmemory-policy")
        .filter(|p| bounded && p != "noeviction");
    Ok(Some((limits, evicting)))
}

/// Warns (once per client or node, as it starts) when the server may evict keys to make
/// room (`policy`, from [`server_config`]): the queue's promises rest on Redis keeping
/// what it acknowledged, and an evicting server drops keys without a word once it is
/// full. Says nothing where the server does not say (`CONFIG` refused or renamed).
pub(crate) fn warn_if_evicting(policy: Option<&str>, who: &str) {
    if let Some(policy) = policy {
        let what = if policy.starts_with("volatile") {
            "results, replies, cancel flags and heartbeats (the keys with a time to live)"
        } else {
            "any of the queue's keys, waiting tasks included"
        };
        tracing::warn!(
            "{who}: the Redis server's maxmemory-policy is {policy}: once it holds its \
             maxmemory, it evicts {what}, without an error, and their callers wait (set \
             maxmemory-policy noeviction, which refuses writes instead)"
        );
    }
}

/// The queue's epoch token, set to a fresh one if it has none (see [`Keys::epoch`]).
pub(crate) fn epoch(conn: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<String> {
    let mut pipe = redis::pipe();
    with_epoch(&mut pipe, keys);
    let (epoch,): (String,) = pipe.query(&mut Piped(conn))?;
    Ok(epoch)
}

/// Adds to `pipe` what sets the queue's epoch token if it has none, then reads it (one
/// reply: the token).
pub(crate) fn with_epoch(pipe: &mut redis::Pipeline, keys: &Keys) {
    pipe.cmd("SET")
        .arg(keys.epoch())
        .arg(epoch_token())
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(keys.epoch());
}

/// A fresh epoch token (random).
pub(crate) fn epoch_token() -> String {
    let mut token = [0u8; 8];
    let _ = getrandom::fill(&mut token);
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Redis server, as a URL names it.
#[derive(Clone)]
pub(crate) struct Server {
    client: redis::Client,
    /// The URL with its password masked, for messages.
    shown: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The URL with the password masked: the user information's, and a `pass` or
/// `password` query parameter's (where a Unix socket's URL gives it). Read as the
/// connection reads it (redis-rs's parser): one that does not read as a URL shows only
/// its scheme if it holds an `@` or a `pass` (a password may be anywhere in it).
pub(crate) fn mask(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        if url.contains('@') || url.to_ascii_lowercase().contains("pass") {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            return format!("{scheme}://***");
        }
        return url.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    } else if parsed.path().contains('@') || parsed.fragment().is_some_and(|f| f.contains('@')) {
        // A password written with a `/` or `#` unescaped reads as a host, a port and a
        // path: shown as the scheme only.
        return format!("{}://***", parsed.scheme());
    }
    let secret = |key: &str| matches!(key, "pass" | "password");
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl Server {
    /// Parses `url` (`redis://[user:password@]host[:port][/db]`, `rediss://...` for
    /// TLS, `unix:///path` or `redis+unix:///path`), trusting `root_pem` (PEM
    /// certificates) instead of the system's roots for TLS when given. Connections
    /// speak RESP2 whatever the URL's `protocol` parameter says.
    pub(crate) fn open(
        url: &str,
        root_pem: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Server, ClusterError> {
        let shown = mask(url);
        let invalid = |reason: String| ClusterError::InvalidUrl {
            url: shown.clone(),
            reason,
        };
        if redis::parse_redis_url(url).is_none() {
            return Err(invalid(
                "expected redis://, rediss://, unix:// or redis+unix://".into(),
            ));
        }
        // RESP2 whatever the URL asks for (`?protocol=resp3`): every reply is read in
        // its RESP2 shape (a stream read as an array of streams, not a map), and one
        // read in the wrong shape would look empty rather than fail.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| invalid(e.to_string()))?;
        let resp2 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP2);
        let info = info.set_redis_settings(resp2);
        let client = match root_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Server {
            client,
            shown,
            connect_timeout,
        })
    }

    /// A new connection whose replies may take `response` at most.
    pub(crate) fn connect(&self, response: Duration) -> Result<redis::Connection, ClusterError> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)
            .map_err(|e| match e.kind() {
                redis::ErrorKind::AuthenticationFailed => ClusterError::Auth(e.to_string()),
                _ if e.to_string().contains("WRONGPASS") || e.to_string().contains("NOAUTH") => {
                    ClusterError::Auth(e.to_string())
                }
                _ => ClusterError::Connect {
                    addr: self.shown.clone(),
                    reason: e.to_string(),
                },
            })?;
        conn.set_read_timeout(Some(response))
            .and_then(|()| conn.set_write_timeout(Some(RESPONSE_TIMEOUT)))
            .map_err(|e| redis_err(&e))?;
        Ok(conn)
    }

    /// A command connection, after checking that the server is recent enough.
    pub(crate) fn connect_checked(&self) -> Result<redis::Connection, ClusterError> {
        let mut conn = self.connect(RESPONSE_TIMEOUT)?;
        let refused = |e: redis::RedisError| {
            if e.to_string().contains("NOAUTH") {
                ClusterError::Auth(e.to_string())
            } else {
                redis_err(&e)
            }
        };
        let version = match redis::cmd("INFO").arg("server").query::<String>(&mut conn) {
            Ok(info) => info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(|v| v.trim().to_string()),
            // A user whose rules leave out what is `@dangerous` (`INFO` is, in Redis
            // 7), or a server that renamed `INFO`: `HELLO` (`@connection`) says the
            // version too.
            Err(info) if matches!(info.kind(), redis::ErrorKind::Server(_)) => {
                let hello: Vec<Value> = redis::cmd("HELLO").query(&mut conn).map_err(|e| {
                    // Both refusals said (a server older than `HELLO`, say); a
                    // connection lost stays one.
                    let hello = refused(e);
                    match &hello {
                        ClusterError::Redis(why) if !hello.is_unanswered() => {
                            ClusterError::Redis(format!("INFO: {info}; HELLO: {why}"))
                        }
                        _ => hello,
                    }
                })?;
                hello
                    .chunks(2)
                    .find(|kv| text(&kv[0]).as_deref() == Some("version"))
                    .and_then(|kv| kv.get(1).and_then(text))
            }
            Err(e) => return Err(refused(e)),
        };
        let version = version.as_deref().unwrap_or("0");
        let major = version
            .split('.')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        // The contract and the tests are Redis 7.0's (and Valkey's, which reports 7.2):
        // how an error a script's command raises (OOM, BUSY) reaches the caller, which
        // tells a server that cannot serve for now from a broken call, is checked there
        // only. An older server is refused rather than trusted to behave alike.
        if major < 7 {
            return Err(ClusterError::Unsupported(format!(
                "version {version}; the cluster needs Redis 7.0 or later, or Valkey"
            )));
        }
        Ok(conn)
    }
}

/// A connection that is made again after it breaks.
pub(crate) struct Link {
    server: Server,
    response: Duration,
    conn: Option<redis::Connection>,
    /// Connections made so far (a reader notices reconnections by it).
    connects: u64,
    /// When a write refused as a replica's last dropped the connection (see
    /// [`broken`]).
    readonly_reset: Option<Instant>,
}

impl Link {
    pub(crate) fn new(server: Server, response: Duration) -> Link {
        Link {
            server,
            response,
            conn: None,
            connects: 0,
            readonly_reset: None,
        }
    }

    pub(crate) fn with(server: Server, response: Duration, conn: redis::Connection) -> Link {
        Link {
            server,
            response,
            conn: Some(conn),
            connects: 1,
            readonly_reset: None,
        }
    }

    /// Runs `f` on the connection (connecting first if needed). A broken connection is
    /// dropped and `f` runs once more on a new one: a connection that broke while idle
    /// (the server restarted) costs the caller nothing. (A command whose reply was lost
    /// may so run twice; everything here is at least once.)
    pub(crate) fn run<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let mut tries = 0;
        loop {
            tries += 1;
            if self.conn.is_none() {
                self.conn = Some(self.server.connect(self.response)?);
                self.connects += 1;
            }
            let Some(conn) = self.conn.as_mut() else {
                return Err(ClusterError::Redis("no connection".into()));
            };
            CUT_SHORT.with(|c| c.set(false));
            let done = f(conn);
            // A pipeline left replies unread (see `Piped`): the connection goes, however
            // `f` reported that.
            let cut_short = CUT_SHORT.with(std::cell::Cell::take);
            match done {
                Ok(v) => {
                    if cut_short {
                        self.conn = None;
                    }
                    return Ok(v);
                }
                Err(e) => {
                    let readonly = refused_as_a_replica(&e);
                    let broken = broken(&e)
                        || !redis::ConnectionLike::is_open(conn)
                        || readonly && self.readonly_reset_due();
                    if broken || cut_short {
                        self.conn = None;
                    }
                    // A write refused as a replica's is made again only if none of it
                    // went through: a pipeline whose first commands were applied before
                    // the server became a replica would apply them twice (a batch of
                    // tasks sent again, those run twice).
                    let again = broken && (!readonly || refused_from_the_first(&e));
                    if !again || tries >= 2 || e.is_timeout() {
                        return Err(redis_err(&e));
                    }
                }
            }
        }
    }

    /// Whether a connection is open (a call that failed without dropping it got an
    /// answer: an error the server sent).
    pub(crate) fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// As [`run`](Self::run), waiting at most `response` for each reply (a server that
    /// is paused holds a call for the whole response timeout otherwise).
    pub(crate) fn run_within<T>(
        &mut self,
        response: Duration,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let normal = self.response;
        if response >= normal {
            return self.run(f);
        }
        // As `Server::connect` sets them: the response timeout for reads, the usual one
        // for writes.
        let set = |conn: &Option<redis::Connection>, read: Duration, write: Duration| {
            if let Some(c) = conn {
                let _ = c.set_read_timeout(Some(read));
                let _ = c.set_write_timeout(Some(write));
            }
        };
        self.response = response;
        set(&self.conn, response, response);
        let r = self.run(f);
        self.response = normal;
        set(&self.conn, normal, RESPONSE_TIMEOUT);
        r
    }

    /// How many connections were made so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects
    }

    /// Drops the connection (the next call makes a new one).
    pub(crate) fn reset(&mut self) {
        self.conn = None;
    }

    /// Whether a write refused as a replica's drops the connection now: at most once a
    /// second, so that a URL that names a replica for good does not make a connection
    /// at every call (each thread of a worker calls several times a second).
    fn readonly_reset_due(&mut self) -> bool {
        let due = self
            .readonly_reset
            .is_none_or(|at| at.elapsed() >= READONLY_RESET_EVERY);
        if due {
            self.readonly_reset = Some(Instant::now());
        }
        due
    }
}

/// How often at most a write refused as a replica's drops its connection.
const READONLY_RESET_EVERY: Duration = Duration::from_secs(1);

/// Whether the server refused a write as a replica's (`READONLY`; a pipeline's first
/// error).
fn refused_as_a_replica(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY")
}

/// Whether a pipeline's (or a command's) first command is among those refused: a server
/// that becomes a replica refuses every write after its first refusal, so none of the
/// pipeline's writes went through.
fn refused_from_the_first(e: &redis::RedisError) -> bool {
    e.clone()
        .into_server_errors()
        .is_some_and(|errors| errors.first().is_some_and(|(i, _)| *i == 0))
}

/// Whether an error leaves the connection unusable. (`Link::run` drops it too for a
/// write refused as a replica's, `READONLY`, at most once a second: the server was the primary when the
/// connection was made and has become a replica, and a new connection to the same
/// address may reach the new primary (a failover behind a virtual IP, a DNS name, a
/// cloud's endpoint, or a proxy that keeps its sessions open); kept, the connection had
/// every write refused for ever.)
fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// A connection whose pipelines stop reading at the first reply that does not come:
/// redis-rs reads every reply of a pipeline whatever happened to the one before, each
/// read waiting out the read timeout against a server that does not answer (a pipeline
/// of 513 commands to a stopped server waited 513 response timeouts, 85 minutes,
/// rather than one). The replies left unread make the connection unusable: the error
/// then says so (an I/O error), and [`Link::run`] drops the connection whatever its
/// caller made of the error (`CUT_SHORT`: a caller that turned it into another kind of
/// error, or into a value, kept the connection, and each later command read the reply
/// of the one before).
pub(crate) struct Piped<'c>(pub(crate) &'c mut redis::Connection);

thread_local! {
    /// Set by a [`Piped`] pipeline that left replies unread, for the [`Link::run`] it
    /// ran in to drop the connection.
    static CUT_SHORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl redis::ConnectionLike for Piped<'_> {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        // A transaction's replies (`MULTI` ... `EXEC`) are read as redis-rs reads them.
        if offset > 0 {
            return self.0.req_packed_commands(cmd, offset, count);
        }
        self.0.send_packed_command(cmd)?;
        let mut replies = Vec::with_capacity(count);
        let mut left = count;
        while left > 0 {
            match self.0.recv_response() {
                // RESP3 may put pushed data between replies.
                Ok(Value::Push { .. }) => {}
                Ok(reply) => {
                    replies.push(reply);
                    left -= 1;
                }
                Err(e) if left > 1 => {
                    CUT_SHORT.with(|c| c.set(true));
                    if broken(&e) {
                        return Err(e);
                    }
                    return Err(redis::RedisError::from(std::io::Error::other(format!(
                        "a pipeline's reply failed, {} left unread: {e}",
                        left - 1
                    ))));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(replies)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// Runs a script (by its hash, loading it when the server does not know it).
pub(crate) fn invoke<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    script: &redis::Script,
    keys: &[String],
    args: &[&[u8]],
) -> redis::RedisResult<T> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    for a in args {
        inv.arg(*a);
    }
    inv.invoke(conn)
}

/// Reading replies by hand (streams and scripts answer in nested arrays).
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A stream entry's fields as pairs (a flat array `[field, value, ...]`, or a map).
pub(crate) fn fields(v: &Value) -> Vec<(&[u8], &[u8])> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
            .collect(),
        other => array(other)
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((bytes(k)?, bytes(v)?)),
                _ => None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake server on loopback: answers every command `+OK`, but a `SET` only after
    /// 400 ms, a `GET` with `abc` and an `ECHO` with its argument. Serves one
    /// connection, for at most 10 s.
    fn slow_set_server() -> (String, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let serving = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream);
            let mut line = String::new();
            let mut read_line = |line: &mut String| {
                line.clear();
                lines.read_line(line).is_ok_and(|n| n > 0)
            };
            while read_line(&mut line) {
                let n: usize = line.trim_start_matches('*').trim().parse().unwrap();
                let mut args = Vec::new();
                for _ in 0..n {
                    assert!(read_line(&mut line));
                    assert!(read_line(&mut line));
                    args.push(line.trim_end().to_string());
                }
                let reply = match args[0].to_ascii_uppercase().as_str() {
                    "SET" => {
                        std::thread::sleep(Duration::from_millis(400));
                        "+OK\r\n".to_string()
                    }
                    "GET" => "$3\r\nabc\r\n".to_string(),
                    "ECHO" => format!("${}\r\n{}\r\n", args[1].len(), args[1]),
                    _ => "+OK\r\n".to_string(),
                };
                if out.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        });
        (url, serving)
    }

    /// A pipeline whose first reply does not come in time leaves the rest unread: the
    /// connection goes, also when the caller turns the error into another kind (it was
    /// kept, and each later command read the reply of the one before: an `ECHO` got
    /// the pipeline's `GET`).
    #[test]
    fn a_pipeline_cut_short_drops_its_connection() {
        let (url, serving) = slow_set_server();
        let server = Server::open(&url, None, Duration::from_secs(5)).unwrap();
        let conn = server.connect(Duration::from_millis(150)).unwrap();
        let mut link = Link::with(server, Duration::from_millis(150), conn);
        let failed = link.run(|c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg("k").arg("v").cmd("GET").arg("k");
            pipe.query::<(String, String)>(&mut Piped(c)).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "setup", e.to_string()))
            })
        });
        assert!(failed.is_err(), "{failed:?}");
        assert!(!link.is_connected(), "the connection was kept");
        drop(link);
        serving.join().unwrap();
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(mask("redis://:secret@host"), "redis://:***@host");
        assert_eq!(mask("redis://host:6379"), "redis://host:6379");
        assert_eq!(mask("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        // A Unix socket's URL gives the password in its query.
        assert_eq!(
            mask("unix:///tmp/r.sock?user=me&pass=s3cret&db=1"),
            "unix:///tmp/r.sock?user=me&pass=***&db=1"
        );
        assert_eq!(
            mask("redis+unix:///r.sock?password=s3cret"),
            "redis+unix:///r.sock?password=***"
        );
        assert_eq!(
            mask("redis://u:s3cret@host/0?protocol=resp2"),
            "redis://u:***@host/0?protocol=resp2"
        );
        // A password that holds a `?` or a `/` (no URL: shown as its scheme only), and a
        // key written with an escape.
        assert_eq!(mask("redis://u:pa?ss@host"), "redis://***");
        assert_eq!(mask("redis://u:pa/ss@host"), "redis://***");
        assert_eq!(mask("redis://u:1234/x@host"), "redis://***");
        assert_eq!(mask("not a url"), "not a url");
        assert_eq!(
            mask("unix:///r.sock?p%61ss=s3cret"),
            "unix:///r.sock?pass=***"
        );
        // An `@` in the query is no end of credentials, and the host stays.
        assert_eq!(
            mask("unix:///r.sock?pass=abc@def"),
            "unix:///r.sock?pass=***"
        );
        let masked = mask("redis://u:pw@host/0?x=a@b&pass=c@d");
        assert!(masked.starts_with("redis://u:***@host/0?x=a"), "{masked}");
        assert!(masked.ends_with("&pass=***"), "{masked}");
        assert_eq!(mask("redis://host?pass=abc@def"), "redis://host?pass=***");
        assert_eq!(
            mask("redis://:pw@host:6379?protocol=resp3"),
            "redis://:***@host:6379?protocol=resp3"
        );
        assert_eq!(
            mask("rediss://u:pw@[::1]:6380/2"),
            "rediss://u:***@[::1]:6380/2"
        );
    }
}
