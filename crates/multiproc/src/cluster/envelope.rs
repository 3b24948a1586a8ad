//! What travels through Redis: a task's envelope (one stream entry field), its outcome
//! (the result key's value) and the reply a waiting client is woken with.
//!
//! Everything is serde data in multiproc's format (`wire/encoder.rs`) with a version
//! byte first: nothing from the wire names code, and a client and a worker of
//! different versions refuse each other's messages with an error instead of misreading
//! them.

use serde::{Deserialize, Serialize};

use crate::bootstrap::RemotePanic;
use crate::pool::{Failure, TaskError};
use crate::pool::{Jitter, RetryPolicy};
use crate::process::ExitStatus;
use crate::wire::codec::{self, CodecError};

/// The version of the envelope, outcome and reply layouts. 2: a failure carries the
/// task's error value (its type name and encoding) besides its text. 3: integers wider
/// than a byte are written whole, little-endian (they were varints). 4: an envelope
/// begins with its [`Addressee`], in a layout every later version keeps.
pub(crate) const VERSION: u8 = 4;

/// The first version whose envelopes begin with an [`Addressee`].
const ADDRESSED_SINCE: u8 = 4;

/// The stream entry field that holds an envelope.
pub(crate) const FIELD: &str = "m";

/// The stream field that marks an entry moved there from the delayed set (a countdown,
/// an eta, a retry, a task handed back).
pub(crate) const PROMOTED: &str = "p";

/// One task on its way to a worker.
///
/// Encoded as the version byte, the [`Addressee`] (the task's id and the client to
/// wake), then the other fields in multiproc's format. The first two parts keep their
/// layout across versions, so that a worker that cannot read the rest (an envelope of
/// another version, or a corrupt one) can still answer the task's client.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Envelope {
    /// The task's id: the client's id and a sequence number, or `k:` and the
    /// idempotency key.
    pub task: String,
    /// The [`TaskDef`](super::TaskDef) name.
    pub name: String,
    /// The hash of the argument and result types the client was built with.
    pub schema: u64,
    /// The encoded argument.
    pub args: Vec<u8>,
    /// The client to wake with the outcome (its id), if one waits.
    pub reply: Option<String>,
    /// Runs so far that failed (0 for a first run), as the retry policy counts them.
    pub attempt: u32,
    /// Deliveries so far whose run crashed its process or lost its worker (the
    /// delivery cap counts these).
    pub lost: u32,
    /// How failed runs are retried.
    pub retry: Option<RetryWire>,
    /// A run that takes longer is stopped and fails with `TimedOut`.
    pub timeout_ms: Option<u64>,
    /// The argument is a chunk of a `map`: a list of arguments, each run as its own
    /// pool task; the value is the list of their outcomes.
    pub chunk: bool,
}

/// `d` in whole milliseconds, as the wire and Redis take them: a duration past
/// `u64::MAX` milliseconds (585 million years) counts as that much, not as what is left
/// over after the wrap.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A [`RetryPolicy`] as data (its `retry_if` predicate is code and stays behind: the
/// worker uses the default predicate).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RetryWire {
    pub max_attempts: u32,
    pub base_ms: u64,
    pub factor: f32,
    pub max_delay_ms: u64,
    pub jitter: u8,
}

impl RetryWire {
    pub(crate) fn from_policy(p: &RetryPolicy) -> Self {
        let (base, factor, max_delay, jitter) = p.parts();
        RetryWire {
            max_attempts: p.max_attempts(),
            base_ms: millis(base),
            factor,
            max_delay_ms: millis(max_delay),
            jitter: match jitter {
                Jitter::None => 0,
                Jitter::Full => 1,
                Jitter::Equal => 2,
            },
        }
    }

    pub(crate) fn to_policy(self) -> RetryPolicy {
        use std::time::Duration;
        RetryPolicy::attempts(self.max_attempts)
            .backoff(
                Duration::from_millis(self.base_ms),
                self.factor,
                Duration::from_millis(self.max_delay_ms),
            )
            .jitter(match self.jitter {
                1 => Jitter::Full,
                2 => Jitter::Equal,
                _ => Jitter::None,
            })
    }
}

/// How a task ended, as its result key holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// No value.
    Failed(ErrorWire),
}

/// A [`TaskError`] as data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ErrorWire {
    Panicked(RemotePanic),
    WorkerDied {
        code: Option<i32>,
        signal: Option<i32>,
    },
    TimedOut,
    Cancelled,
    Codec(String),
    DeadLettered(String),
    /// A fallible task's `Err` (its text, type name and encoding), or another failure
    /// by its text only.
    Failed {
        message: String,
        type_name: Option<String>,
        #[serde(with = "serde_bytes")]
        encoded: Option<Vec<u8>>,
    },
}

impl ErrorWire {
    pub(crate) fn from_error(e: &TaskError) -> Self {
        match e {
            TaskError::Panicked(p) => ErrorWire::Panicked(p.clone()),
            TaskError::WorkerDied(status) => ErrorWire::WorkerDied {
                code: status.and_then(ExitStatus::code),
                signal: status.and_then(|s| s.signal()).map(|s| s.as_raw()),
            },
            TaskError::TimedOut => ErrorWire::TimedOut,
            TaskError::Cancelled => ErrorWire::Cancelled,
            TaskError::Codec(c) => ErrorWire::Codec(c.message().to_string()),
            TaskError::DeadLettered(why) => ErrorWire::DeadLettered(why.clone()),
            TaskError::Failed(f) => ErrorWire::Failed {
                message: f.message().to_string(),
                type_name: f.type_name().map(str::to_string),
                encoded: f.encoded().map(<[u8]>::to_vec),
            },
            other => ErrorWire::Failed {
                message: other.to_string(),
                type_name: None,
                encoded: None,
            },
        }
    }

    pub(crate) fn into_error(self) -> TaskError {
        match self {
            ErrorWire::Panicked(p) => TaskError::Panicked(p),
            ErrorWire::WorkerDied { code, signal } => {
                TaskError::WorkerDied(ExitStatus::from_parts(code, signal))
            }
            ErrorWire::TimedOut => TaskError::TimedOut,
            ErrorWire::Cancelled => TaskError::Cancelled,
            ErrorWire::Codec(m) => TaskError::Codec(CodecError::new(m)),
            ErrorWire::DeadLettered(why) => TaskError::DeadLettered(why),
            ErrorWire::Failed {
                message,
                type_name,
                encoded,
            } => TaskError::Failed(match encoded {
                Some(encoded) => Failure::from_parts(message, type_name, encoded),
                None => Failure::message_only(message),
            }),
        }
    }
}

/// What a waiting client is woken with: the task and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub task: String,
    #[serde(with = "serde_bytes")]
    pub outcome: Vec<u8>,
}

/// Encodes a value for another machine: handles that carry descriptors (a `Queue`, a
/// `Lock`) cannot go there.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_after(&[], value)
}

fn encode_after<T: Serialize + ?Sized>(prefix: &[u8], value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode_with_prefix(prefix, value)?
        .into_plain()
        .ok_or_else(|| {
            CodecError::new(format!(
                "a `{}` holds a handle (a queue, a lock, shared memory...) that cannot leave this machine",
                std::any::type_name::<T>()
            ))
        })
}

fn versioned<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_after(&[VERSION], value)
}

fn unversioned<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::new(format!("an empty {what}"))),
        Some((&VERSION, body)) => {
            codec::decode_seed(std::marker::PhantomData::<T>, body, Vec::new())
                .map_err(|e| CodecError::new(format!("a {what} that does not decode: {e}")))
        }
        Some((v, _)) => Err(CodecError::new(format!(
            "a {what} of layout version {v} (this build reads version {VERSION})"
        ))),
    }
}

/// The fields of an [`Envelope`] after its addressee, in order.
type Body = (
    String,
    u64,
    serde_bytes::ByteBuf,
    u32,
    u32,
    Option<RetryWire>,
    Option<u64>,
    bool,
);

/// Who a task's outcome is for: the task's id and the client waiting for it (if one
/// does). Every envelope since version 4 begins with it, written the same way: after
/// the version byte, the id's length (4 bytes, little-endian) and its UTF-8 bytes, then
/// the client's id likewise, or the length `u32::MAX` for none.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Addressee {
    pub task: String,
    pub reply: Option<String>,
}

const NO_REPLY: u32 = u32::MAX;

impl Addressee {
    /// Reads the addressee at the start of an envelope of any version from 4 on;
    /// returns it and the bytes after it.
    pub(crate) fn read(bytes: &[u8]) -> Result<(Addressee, &[u8]), CodecError> {
        let bad = |why: &str| CodecError::new(format!("a task message whose addressee {why}"));
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(CodecError::new("an empty task message"));
        };
        if version < ADDRESSED_SINCE {
            return Err(CodecError::new(format!(
                "a task message of layout version {version} (this build reads version {VERSION})"
            )));
        }
        fn text<'a>(
            bytes: &'a [u8],
            bad: &dyn Fn(&str) -> CodecError,
        ) -> Result<(Option<String>, &'a [u8]), CodecError> {
            let (len, rest) = bytes
                .split_first_chunk::<4>()
                .ok_or_else(|| bad("is cut short"))?;
            let len = u32::from_le_bytes(*len);
            if len == NO_REPLY {
                return Ok((None, rest));
            }
            let len = len as usize;
            if len > rest.len() {
                return Err(bad("is cut short"));
            }
            let (text, rest) = rest.split_at(len);
            let text = std::str::from_utf8(text).map_err(|_| bad("is not UTF-8"))?;
            Ok((Some(text.to_string()), rest))
        }
        let (task, rest) = text(rest, &bad)?;
        let task = task
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("has no task id"))?;
        let (reply, rest) = text(rest, &bad)?;
        Ok((Addressee { task, reply }, rest))
    }

    fn write(task: &str, reply: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + task.len() + reply.map_or(0, str::len));
        out.push(VERSION);
        out.extend_from_slice(&(task.len() as u32).to_le_bytes());
        out.extend_from_slice(task.as_bytes());
        match reply {
            Some(r) => {
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r.as_bytes());
            }
            None => out.extend_from_slice(&NO_REPLY.to_le_bytes()),
        }
        out
    }
}

impl Envelope {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CodecError> {
        // Ids are made by clients and are far shorter; a length of 4 GiB would not fit
        // the layout (and is over any message cap).
        if self.task.len() >= NO_REPLY as usize
            || self
                .reply
                .as_ref()
                .is_some_and(|r| r.len() >= NO_REPLY as usize)
        {
            return Err(CodecError::new("a task or client id over 4 GiB"));
        }
        let head = Addressee::write(&self.task, self.reply.as_deref());
        let body = (
            &self.name,
            self.schema,
            serde_bytes::Bytes::new(&self.args),
            self.attempt,
            self.lost,
            &self.retry,
            self.timeout_ms,
            self.chunk,
        );
        encode_after(&head, &body)
    }

    /// Decodes an envelope of at most `max` bytes.
    pub(crate) fn decode(bytes: &[u8], max: usize) -> Result<Envelope, CodecError> {
        if bytes.len() > max {
            return Err(CodecError::new(format!(
                "a message of {} bytes (the cap is {max})",
                bytes.len()
            )));
        }
        if let Some(&v) = bytes.first()
            && v != VERSION
        {
            return Err(CodecError::new(format!(
                "a task message of layout version {v} (this build reads version {VERSION})"
            )));
        }
        let (to, body) = Addressee::read(bytes)?;
        let (name, schema, args, attempt, lost, retry, timeout_ms, chunk): Body =
            codec::decode(body, Vec::new()).map_err(|e| {
                CodecError::new(format!("a task message that does not decode: {e}"))
            })?;
        Ok(Envelope {
            task: to.task,
            name,
            schema,
            args: args.into_vec(),
            reply: to.reply,
            attempt,
            lost,
            retry,
            timeout_ms,
            chunk,
        })
    }

    /// Who its outcome is for.
    pub(crate) fn addressee(&self) -> Addressee {
        Addressee {
            task: self.task.clone(),
            reply: self.reply.clone(),
        }
    }
}

impl Outcome {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CodecError> {
        versioned(self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Outcome, CodecError> {
        unversioned(bytes, "task outcome")
    }

    /// The outcome as the value of type `R`, or its error.
    pub(crate) fn into_result<R: serde::de::DeserializeOwned>(self) -> Result<R, TaskError> {
        match self {
            // A result type's `Deserialize` that panics is the task's error: it runs
            // where a panic would stop the delivery (and the task would never end).
            Outcome::Value(bytes) => {
                crate::bootstrap::catching(|| codec::decode(&bytes, Vec::new()))
                    .unwrap_or_else(|caught| {
                        Err(CodecError::new(format!(
                            "decoding the result panicked: {caught}"
                        )))
                    })
                    .map_err(TaskError::Codec)
            }
            Outcome::Failed(f) => Err(f.into_error()),
        }
    }
}

impl Reply {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CodecError> {
        versioned(self)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Reply, CodecError> {
        unversioned(bytes, "reply")
    }
}

/// Decodes anything a peer could write where an envelope, an outcome or a reply is
/// expected (the fuzz target's entry point): an error, never a panic.
#[cfg(any(fuzzing, test))]
pub(crate) fn decode_any(bytes: &[u8]) {
    let _ = Envelope::decode(bytes, 1 << 20);
    let _ = Addressee::read(bytes);
    if let Ok(o) = Outcome::decode(bytes) {
        let _ = o.into_result::<(u64, String)>();
    }
    let _ = Reply::decode(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            task: "c1-7".into(),
            name: "demo.square".into(),
            schema: 0xdead_beef,
            args: vec![1, 2, 3, 200],
            reply: Some("c1".into()),
            attempt: 2,
            lost: 1,
            retry: Some(RetryWire::from_policy(&RetryPolicy::attempts(3))),
            timeout_ms: Some(1500),
            chunk: false,
        }
    }

    #[test]
    fn an_endless_backoff_stays_endless_on_the_wire() {
        use std::time::Duration;
        // Past u64::MAX milliseconds: wrapped, the wire said 2^64 ms less, a base of
        // about a minute here and a cap of a few hours.
        let huge = Duration::from_millis(u64::MAX) + Duration::from_millis(65_536);
        let policy = RetryPolicy::attempts(3).backoff(huge, 2.0, Duration::MAX);
        let wire = RetryWire::from_policy(&policy);
        assert_eq!((wire.base_ms, wire.max_delay_ms), (u64::MAX, u64::MAX));
        let (base, _, max_delay, _) = wire.to_policy().parts();
        assert_eq!(
            (base, max_delay),
            (
                Duration::from_millis(u64::MAX),
                Duration::from_millis(u64::MAX)
            )
        );
        assert_eq!(millis(Duration::from_micros(2_999)), 2);
    }

    #[test]
    fn envelope_round_trip_and_cap() {
        let e = envelope();
        let bytes = e.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes, 1 << 20).unwrap(), e);
        let err = Envelope::decode(&bytes, 4).unwrap_err();
        assert!(err.message().contains("cap"), "{err}");
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut bytes = envelope().encode().unwrap();
        bytes[0] = 9;
        assert!(
            Envelope::decode(&bytes, 1 << 20)
                .unwrap_err()
                .message()
                .contains("version 9")
        );
        assert!(Envelope::decode(&[], 10).is_err());
        assert!(Envelope::decode(&[VERSION, 0xff, 0xff], 10).is_err());
    }

    #[test]
    fn the_addressee_is_read_from_any_later_version() {
        let e = envelope();
        let mut bytes = e.encode().unwrap();
        bytes[0] = 200;
        bytes.truncate(bytes.len() - 2);
        let err = Envelope::decode(&bytes, 1 << 20).unwrap_err();
        assert!(err.message().contains("version 200"), "{err}");
        assert_eq!(Addressee::read(&bytes).unwrap().0, e.addressee());
        // No client waits.
        let quiet = Envelope {
            reply: None,
            ..e.clone()
        };
        let bytes = quiet.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes, 1 << 20).unwrap(), quiet);
        assert_eq!(Addressee::read(&bytes).unwrap().0.reply, None);
        // Before version 4 there is none; one cut short or not UTF-8 is an error.
        let mut old = e.encode().unwrap();
        old[0] = 3;
        assert!(Addressee::read(&old).is_err());
        let good = e.encode().unwrap();
        assert!(Addressee::read(&good[..7]).is_err());
        let mut bad = good.clone();
        bad[5] = 0xff;
        assert!(Addressee::read(&bad).is_err());
        assert!(Addressee::read(&[]).is_err());
        // No task id, or an empty one.
        assert!(Addressee::read(&[4, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Addressee::read(&[4, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn failures_round_trip() {
        for e in [
            TaskError::TimedOut,
            TaskError::Cancelled,
            TaskError::DeadLettered("poison".into()),
            TaskError::Failed(Failure::message_only("no")),
            TaskError::Failed(Failure::new("typed".to_string()).unwrap()),
            TaskError::Codec(CodecError::new("bad")),
        ] {
            let o = Outcome::Failed(ErrorWire::from_error(&e));
            let o = Outcome::decode(&o.encode().unwrap()).unwrap();
            assert_eq!(o.into_result::<u64>().unwrap_err(), e);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            decode_any(&bytes);
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            decode_any(&versioned);
        }
    }
}
