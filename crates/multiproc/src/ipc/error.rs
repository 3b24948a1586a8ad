//! Why a message was not sent or received.

use std::fmt;
use std::io;

use crate::wire::codec::CodecError;

macro_rules! value_errors {
    ($($(#[$doc:meta])* $name:ident { $(#[error($msg:literal)] $(#[$vdoc:meta])* $variant:ident,)* })*) => {$(
        $(#[$doc])*
        ///
        /// The value that was not sent comes back with the error.
        #[derive(thiserror::Error)]
        #[non_exhaustive]
        pub enum $name<T> {
            $($(#[$vdoc])* #[error($msg)] $variant(T),)*
            /// The value could not be encoded.
            #[error("could not encode the message: {1}")]
            Codec(T, CodecError),
            /// The operating system refused (out of memory or descriptors).
            #[error("could not send the message: {1}")]
            Io(T, io::Error),
        }

        impl<T> $name<T> {
            /// The value that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $($name::$variant(v) => v,)*
                    $name::Codec(v, _) | $name::Io(v, _) => v,
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$variant(_) => f.write_str(concat!(stringify!($variant), "(..)")),)*
                    $name::Codec(_, e) => f.debug_tuple("Codec").field(&"..").field(e).finish(),
                    $name::Io(_, e) => f.debug_tuple("Io").field(&"..").field(e).finish(),
                }
            }
        }
    )*};
}

value_errors! {
    /// Why [`Sender::send`](crate::Sender::send) or [`Queue::put`](crate::Queue::put) failed.
    SendError {
        #[error("sending on a channel whose receivers are all gone, or through a closed queue handle")]
        /// Every receiver is gone (dropped, exited or killed), or this queue handle was
        /// closed.
        Disconnected,
    }
    /// Why [`Sender::try_send`](crate::Sender::try_send) or
    /// [`Queue::try_put`](crate::Queue::try_put) failed.
    TrySendError {
        #[error("sending on a full channel")]
        /// The channel is full, or the send could not be made without waiting for
        /// another sender that holds the channel: one stopped (`SIGSTOP`, a debugger),
        /// or busy for longer than a non-blocking send waits (20 ms: a slow
        /// `Serialize`, a holder preempted on a busy machine). An unbounded channel or
        /// queue is also full for a message that travels beside its ring (over 2 MiB,
        /// or carrying a handle) while the kernel's buffer for those is full, or while
        /// this user has too many descriptors in flight (a `Sender` or `Receiver` is 8,
        /// a `Queue` 9, a `Connection` 16), until
        /// a receiver reads.
        Full,
        #[error("sending on a channel whose receivers are all gone, or through a closed queue handle")]
        /// Every receiver is gone, or this queue handle was closed.
        Disconnected,
    }
    /// Why [`Sender::send_timeout`](crate::Sender::send_timeout) or
    /// [`Queue::put_timeout`](crate::Queue::put_timeout) failed.
    SendTimeoutError {
        #[error("timed out sending on a full channel")]
        /// The channel stayed full until the timeout.
        Timeout,
        #[error("sending on a channel whose receivers are all gone, or through a closed queue handle")]
        /// Every receiver is gone, or this queue handle was closed.
        Disconnected,
    }
}

impl<T> TrySendError<T> {
    /// Whether the channel was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

impl<T> SendTimeoutError<T> {
    /// Whether the timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

/// Why [`Receiver::recv`](crate::Receiver::recv) or [`Queue::get`](crate::Queue::get)
/// returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The channel is empty and every sender is gone (dropped, exited or killed).
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// A message arrived but did not decode as the expected type, or (another process
    /// broke the protocol) a message sent apart from the channel's ring (a large one, or
    /// one with handles) could not be had. It is consumed: the next receive moves on.
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused: `EMFILE` (or `ENFILE`) when the next message
    /// carries descriptors (handles, or its bytes in a memory file of their own when it
    /// is larger than half the channel's ring) and this process has no room for them.
    /// That message stays, for the next receive. Or, with
    /// [`InvalidData`](io::ErrorKind::InvalidData), another process corrupted the
    /// channel's shared memory: it cannot be read past that point, and every later
    /// receive fails the same way.
    #[error(transparent)]
    Io(io::Error),
}

/// Why [`Receiver::try_recv`](crate::Receiver::try_recv) or
/// [`Queue::try_get`](crate::Queue::try_get) returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is waiting, or the next message could not be had without waiting: another
    /// receiver holds the channel (stopped, or busy for longer than a non-blocking
    /// receive waits, 20 ms), or a sender is half-way through publishing it.
    #[error("receiving on an empty channel")]
    Empty,
    /// The channel is empty and every sender is gone.
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// As [`RecvError::Codec`].
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused: `EMFILE` (or `ENFILE`) when the next message
    /// carries descriptors (handles, or its bytes in a memory file of their own when it
    /// is larger than half the channel's ring) and this process has no room for them.
    /// That message stays, for the next receive. Or, with
    /// [`InvalidData`](io::ErrorKind::InvalidData), another process corrupted the
    /// channel's shared memory: it cannot be read past that point, and every later
    /// receive fails the same way.
    #[error(transparent)]
    Io(io::Error),
}

/// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) or
/// [`Queue::get_timeout`](crate::Queue::get_timeout) returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out receiving on an empty channel")]
    Timeout,
    /// The channel is empty and every sender is gone.
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// As [`RecvError::Codec`].
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused: `EMFILE` (or `ENFILE`) when the next message
    /// carries descriptors (handles, or its bytes in a memory file of their own when it
    /// is larger than half the channel's ring) and this process has no room for them.
    /// That message stays, for the next receive. Or, with
    /// [`InvalidData`](io::ErrorKind::InvalidData), another process corrupted the
    /// channel's shared memory: it cannot be read past that point, and every later
    /// receive fails the same way.
    #[error(transparent)]
    Io(io::Error),
}

impl TryRecvError {
    /// Whether nothing was waiting.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Disconnected)
    }
}

impl RecvTimeoutError {
    /// Whether the timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }

    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Disconnected)
    }
}

impl RecvError {
    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected)
    }
}
