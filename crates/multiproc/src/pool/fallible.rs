//! Tasks that fail with their own error (`submit_fallible`): a `fn(A) -> Result<T, E>`
//! whose `Err` is the task's failure ([`TaskError::Failed`]), not its value.
//!
//! A worker process runs the function like any other and sends the encoded `Result`;
//! the pool's engine, which knows the task is fallible, looks at the first byte (the
//! variant: the format writes `Ok` as 0 and `Err` as 1, a single varint byte) and, for an
//! `Err`, decodes the `E` that follows to keep its text, its encoding and the value. So
//! the retry policy sees the failure where it sees any other, and nothing changes in
//! the worker.

use std::any::type_name;
use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskError;
use super::error::Failure;
use super::task;
use crate::ipc::channel::Received;
use crate::wire::codec;

/// The variant byte of an encoded `Result::Err`.
const ERR: u8 = 1;

/// The bounds on a fallible task's error type.
pub(crate) trait TaskErrorValue:
    Serialize + DeserializeOwned + Display + Send + Sync + 'static
{
}

impl<E: Serialize + DeserializeOwned + Display + Send + Sync + 'static> TaskErrorValue for E {}

/// Runs an error type's own code (`Deserialize`, `Display`, `Serialize`), which may
/// panic, where a panic would otherwise end a pool's thread (its engine's, which routes
/// every task's outcome, or a caller's wait): the panic comes back as text.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    crate::bootstrap::catching(f).map_err(|caught| format!("{what} panicked: {caught}"))
}

/// The error's `Display` text; if that panics, its type and the panic.
fn describe<E: Display>(e: &E) -> String {
    guarded("its `Display`", || e.to_string())
        .unwrap_or_else(|why| format!("an error of type `{}` ({why})", type_name::<E>()))
}

/// Finds the `Err` in a fallible task's encoded `Result<T, E>` (a `FailureCheck`).
pub(crate) fn failure_in<E: TaskErrorValue>(body: &[u8]) -> Option<Failure> {
    let (&ERR, encoded) = body.split_first()? else {
        return None;
    };
    let decoded = guarded("decoding the task's error", || {
        codec::decode::<E>(encoded, Vec::new())
    });
    Some(match decoded {
        Ok(Ok(e)) => Failure::from_parts(
            describe(&e),
            Some(type_name::<E>().to_string()),
            encoded.to_vec(),
        )
        .with_value(e),
        Ok(Err(why)) => Failure::message_only(format!("the task's error does not decode: {why}")),
        Err(panicked) => Failure::message_only(panicked),
    })
}

/// Decodes a fallible task's value (its `Ok`; an `Err` was made a failure already).
pub(crate) fn decode_ok<T: DeserializeOwned, E: TaskErrorValue>(
    received: Received,
) -> Result<T, TaskError> {
    task::decode::<Result<T, E>>(received)?.map_err(|e| failed(e))
}

/// The failure a thread pool's task (or any local code) returned.
pub(crate) fn failed<E: TaskErrorValue>(e: E) -> TaskError {
    let message = describe(&e);
    TaskError::Failed(
        match guarded("encoding the task's error", || Failure::new(e)) {
            Ok(Ok(f)) => f,
            Ok(Err(why)) => {
                Failure::message_only(format!("{message} (the error does not encode: {why})"))
            }
            Err(panicked) => Failure::message_only(format!("{message} ({panicked})")),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_is_one_byte() {
        let ok: Result<u64, String> = Ok(7);
        let err: Result<u64, String> = Err("no".into());
        let ok = codec::encode(&ok).unwrap().bytes;
        let err = codec::encode(&err).unwrap().bytes;
        assert_eq!(ok[0], 0);
        assert_eq!(err[0], ERR);
        assert!(failure_in::<String>(&ok).is_none());
        let f = failure_in::<String>(&err).unwrap();
        assert_eq!(f.message(), "no");
        assert_eq!(f.decode::<String>().unwrap(), "no");
        assert_eq!(f.downcast_ref::<String>().map(String::as_str), Some("no"));
    }
}
