//! Named segments: POSIX shared memory (`/dev/shm/<name>`), which outlives the processes
//! that use it unless someone unlinks it.
//!
//! The creator unlinks the name when its last handle is dropped (all its handles to the
//! segment share one `Creator`, those that come back to it and those it opens by name
//! too), and reports it to the
//! [`Tracker`] that `init()` installs, which hands it to the creator's segment tracker:
//! a process of its own session that unlinks it if the creator ends first, however it
//! ends (killed alone, with its fork server, or with its whole process group; see
//! `bootstrap/README.md`). The tracker is a hook rather than a call into `bootstrap`,
//! which sits above this layer; without `init()` there is none, and nothing is tracked.
//! Only the creator's end unlinks: a process that merely opened a segment never removes
//! it, and the tracker checks that the name still refers to the file it was told about,
//! so it never removes a segment created later under the same name. A kill of every
//! process of the creator's cgroup takes the tracker too, and leaves the names.
//!
//! A new segment's memory is allocated when it is created (`sys::shm_reserve`), and
//! its size set once it all is: `/dev/shm` is a tmpfs of limited size, and a file only
//! sized there would get its pages as they are first touched, a `SIGBUS` in the toucher
//! once the file system is full. Allocated ahead, a segment that does not fit is its
//! creator's error. The cost moves from the first touches to the creation (`fallocate
//! -l 1G` on `/dev/shm` takes about 0.4 s on the benchmark's machine, an only sized file
//! nothing), and a segment that is never touched all through still takes all its
//! memory. The name is tracked before the memory is taken, so that a creator killed
//! meanwhile leaves nothing behind (as tracked segments go: see above).
//!
//! A named file cannot be sealed: any process of the same user may truncate it, and
//! touching a mapping past the new end faults (`SIGBUS`). Sizes are checked when a
//! segment is opened; what happens afterwards is up to the processes sharing it, as for
//! every user of POSIX shared memory.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use super::ShmError;
use super::segment::Segment;
use crate::sync::unpoisoned;
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};

/// A named segment this process created, as a tracker is told of it: the name, and the
/// file's device and inode (so that a segment re-created under the name by someone else
/// is never mistaken for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    pub(crate) name: String,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Who hears of the named segments this process creates and unlinks, so that they can
/// be unlinked on its behalf if it dies first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tracker {
    /// A segment is about to be created here: returns what tells of it once it is
    /// (holding, until then, whatever the telling needs, so that nothing else delays
    /// it: a creator killed between the creation and the telling leaves its segment).
    pub(crate) prepare: fn() -> Box<dyn FnOnce(Tracked)>,
    /// A segment created here was unlinked here.
    pub(crate) untrack: fn(&Tracked),
}

static TRACKER: OnceLock<Tracker> = OnceLock::new();

/// Installs the tracker (once per process image; `init()` does it).
pub(crate) fn set_tracker(tracker: Tracker) {
    let _ = TRACKER.set(tracker);
}

/// Longest name: `NAME_MAX` less room for the `/dev/shm/` file's name rules.
const MAX_NAME: usize = 255;

/// A segment's name, and whether this process created it (and so unlinks it once its
/// last handle here is dropped).
pub(crate) struct Name {
    name: String,
    /// `Some` in the creating process, shared by every handle to the segment there.
    creator: Option<Arc<Creator>>,
}

/// A segment this process created: unlinked as the last of its handles here goes. A
/// handle to it that comes back (a child returns it, a queue or the manager passes it
/// along) or is opened by name here shares it, found in [`CREATED`]: the name stays
/// while any handle here lives.
struct Creator {
    /// The pid that created it (a forked copy of this value in a child must not unlink).
    pid: u32,
    tracked: Tracked,
}

/// The segments this process created that it still has handles to.
static CREATED: Mutex<Vec<Weak<Creator>>> = Mutex::new(Vec::new());

/// The list of segments this process created, held across a fork (`spawn_fork`), so
/// that it is not copied held mid-update by another thread.
pub(crate) fn lock_for_fork() -> impl Sized {
    unpoisoned::lock(&CREATED)
}

impl Drop for Creator {
    fn drop(&mut self) {
        let this: *const Creator = self;
        unpoisoned::lock(&CREATED).retain(|c| !std::ptr::eq(c.as_ptr(), this));
        if self.pid == sys::getpid() {
            sys::shm_unlink_if(&self.tracked.name, (self.tracked.dev, self.tracked.ino));
            if let Some(tracker) = TRACKER.get() {
                (tracker.untrack)(&self.tracked);
            }
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Name")
            .field("name", &self.name)
            .field("creator", &self.creator.is_some())
            .finish()
    }
}

impl Name {
    /// The name as the user gave it.
    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }

    /// The name of a segment received or opened here, mapped through `fd`: this
    /// process's creator's if it created the segment (the same file, and it still has
    /// a handle to it), else a name never unlinked from here.
    pub(crate) fn received(name: String, fd: BorrowedFd<'_>) -> Self {
        let pid = sys::getpid();
        let creator = sys::file_id(fd).ok().and_then(|(dev, ino)| {
            // Taken out before they are looked at: the last handle of another segment
            // may go meanwhile, and the one taken here with it, whose drop takes the
            // lock.
            let live: Vec<Arc<Creator>> = unpoisoned::lock(&CREATED)
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            live.into_iter().find(|c| {
                c.pid == pid
                    && c.tracked.name == name
                    && (c.tracked.dev, c.tracked.ino) == (dev, ino)
            })
        });
        Name { name, creator }
    }

    /// Whether this process created the segment.
    pub(crate) fn is_creator(&self) -> bool {
        self.creator
            .as_ref()
            .is_some_and(|c| c.pid == sys::getpid())
    }
}

/// Checks that `name` can name a segment: non-empty, at most 255 bytes, no `/` (one
/// leading `/` is allowed and ignored, as `shm_open` does) and no NUL.
pub(crate) fn validate(name: &str) -> Result<&str, ShmError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let why = if bare.is_empty() {
        Some("empty")
    } else if bare.len() > MAX_NAME {
        Some("longer than 255 bytes")
    } else if bare.contains('/') {
        Some("contains '/'")
    } else if bare.contains('\0') {
        Some("contains a NUL byte")
    } else if bare == "." || bare == ".." {
        Some("not a file name")
    } else {
        None
    };
    match why {
        Some(why) => Err(ShmError::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(bare),
    }
}

/// Creates the segment `name` of `len` bytes; this process becomes its creator.
pub(crate) fn create(name: &str, len: usize) -> Result<(OwnedFd, Name), ShmError> {
    let bare = validate(name)?;
    let tracker = TRACKER.get();
    let track = tracker.map(|t| (t.prepare)());
    let fd = sys::shm_create(bare).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => ShmError::AlreadyExists(bare.to_string()),
        _ => ShmError::from(e),
    })?;
    let (dev, ino) = match sys::file_id(fd.as_fd()) {
        Ok(id) => id,
        Err(e) => {
            let _ = sys::shm_unlink(bare);
            return Err(e.into());
        }
    };
    let tracked = Tracked {
        name: bare.to_string(),
        dev,
        ino,
    };
    // Tracked before its memory is taken (which takes a while for a large segment), so
    // that a creator killed meanwhile leaves nothing behind.
    if let Some(track) = track {
        track(tracked.clone());
    }
    if let Err(e) = sys::shm_reserve(fd.as_fd(), len as u64) {
        sys::shm_unlink_if(bare, (dev, ino));
        if let Some(tracker) = tracker {
            (tracker.untrack)(&tracked);
        }
        return Err(e.into());
    }
    let creator = Arc::new(Creator {
        pid: sys::getpid(),
        tracked,
    });
    {
        let mut created = unpoisoned::lock(&CREATED);
        created.retain(|c| c.strong_count() > 0);
        created.push(Arc::downgrade(&creator));
    }
    Ok((
        fd,
        Name {
            name: bare.to_string(),
            creator: Some(creator),
        },
    ))
}

/// Opens the existing segment `name`, returning it and its size.
pub(crate) fn open(name: &str) -> Result<(OwnedFd, usize, Name), ShmError> {
    let bare = validate(name)?;
    let fd = sys::shm_open(bare).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ShmError::NotFound(bare.to_string()),
        _ => ShmError::from(e),
    })?;
    let mut len = size_of(fd.as_fd(), bare)?;
    // A creator sizes its segment once it has taken all its memory: an opener that
    // comes in between finds it empty, and waits for the size as it waits for an
    // object's header, for as long as the memory taken keeps growing and a while after
    // (an empty segment is refused after that).
    let mut until = std::time::Instant::now() + BEING_CREATED;
    let mut taken = sys::file_allocated(fd.as_fd()).unwrap_or(0);
    while len == 0 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
        len = size_of(fd.as_fd(), bare)?;
        let now_taken = sys::file_allocated(fd.as_fd()).unwrap_or(0);
        if now_taken > taken {
            taken = now_taken;
            until = std::time::Instant::now() + BEING_CREATED;
        }
    }
    let name = Name::received(bare.to_string(), fd.as_fd());
    Ok((fd, len, name))
}

/// How long an opener waits for a segment's creator to size it and write its header.
pub(crate) const BEING_CREATED: std::time::Duration = std::time::Duration::from_secs(1);

/// The size of a segment, as a mappable length.
pub(crate) fn size_of(fd: BorrowedFd<'_>, what: &str) -> Result<usize, ShmError> {
    let len = sys::file_len(fd)?;
    usize::try_from(len).map_err(|_| ShmError::Mismatch {
        what: what.to_string(),
        why: format!("{len} bytes do not fit in the address space"),
    })
}

/// Maps a segment received from another process: an anonymous one must be sealed (its
/// size is final); a named one (whose size cannot be sealed) must be `size` bytes now.
pub(crate) fn map_received(
    fd: OwnedFd,
    size: usize,
    name: Option<&str>,
) -> Result<Segment, ShmError> {
    match name {
        None => Ok(Segment::open(fd, size)?),
        Some(name) => {
            let actual = size_of(fd.as_fd(), name)?;
            if actual != size {
                return Err(ShmError::Mismatch {
                    what: format!("segment {name:?}"),
                    why: format!("{actual} bytes, not {size}"),
                });
            }
            Ok(Segment::map_named(fd, size)?)
        }
    }
}
