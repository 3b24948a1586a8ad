//! The Redis keys of one queue. Every key of a queue carries the queue's hash tag
//! (`{queue}`), so that a Lua script touches one slot and queues can later be spread
//! over a Redis Cluster; the namespace in front lets applications share one server.

/// The consumer group every worker of a queue reads in.
pub(crate) const GROUP: &str = "workers";

/// The keys of one queue in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// `namespace:{queue}:`
    prefix: String,
    queue: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str, queue: &str) -> Keys {
        Keys {
            prefix: format!("{namespace}:{{{queue}}}:"),
            queue: queue.to_string(),
        }
    }

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// A key nothing is stored under, in the queue's slot: it stands for "none" among a
    /// script's keys (an idempotency record a task does not have, the reply list of a
    /// task no client waits for), which the script is told in an argument. An empty
    /// name did, and named a key outside the namespace: a user whose ACL allows only
    /// the namespace's keys was refused the whole script (`NOPERM`), and a Redis
    /// Cluster would put it in another slot.
    pub(crate) fn none(&self) -> String {
        self.key("none")
    }

    /// The stream of tasks waiting or running.
    pub(crate) fn stream(&self) -> String {
        self.key("stream")
    }

    /// Tasks due later: a sorted set scored by due time (Redis time, in ms).
    pub(crate) fn delayed(&self) -> String {
        self.key("delayed")
    }

    /// The dead-letter stream.
    pub(crate) fn dead(&self) -> String {
        self.key("dead")
    }

    /// Workers alive: a sorted set of worker names scored by last heartbeat (ms).
    pub(crate) fn workers(&self) -> String {
        self.key("workers")
    }

    /// The workers' renewals: a hash of `last` (the time of the newest renewal, any
    /// worker's), `since` (when the current run of renewals began: the first after a
    /// gap longer than two renewal periods of `lease` or of the renewer's own lease,
    /// whichever is longer, or after the clock went back) and `lease` (the longest
    /// lease of the live workers, as `RECLAIM` last found it). `RENEW` writes the
    /// first two, `RECLAIM` the third and reads them (see there).
    pub(crate) fn renewals(&self) -> String {
        self.key("renewals")
    }

    /// One worker's description (host, pid, processes).
    pub(crate) fn worker(&self, name: &str) -> String {
        self.key(&format!("worker:{name}"))
    }

    /// A task's outcome, written once.
    pub(crate) fn result(&self, task: &str) -> String {
        self.key(&format!("result:{task}"))
    }

    /// A client's reply list: outcomes of its tasks, pushed by workers.
    pub(crate) fn reply(&self, client: &str) -> String {
        self.key(&format!("reply:{client}"))
    }

    /// Clients that also wait for an idempotent task (their ids).
    pub(crate) fn waiters(&self, task: &str) -> String {
        self.key(&format!("waiters:{task}"))
    }

    /// The record of an idempotency key: present while the key's task is known.
    pub(crate) fn idempotency(&self, key: &str) -> String {
        self.key(&format!("idem:{key}"))
    }

    /// Where a task that is to run again waits: its member of the delayed set (the
    /// envelope of its next attempt), while it waits there.
    pub(crate) fn retry(&self, task: &str) -> String {
        self.key(&format!("retry:{task}"))
    }

    /// Set for a while by a requeue of the dead letter `id`, to the requeue's token: a
    /// requeue sent again (its reply lost with its connection) finds it and says it
    /// requeued.
    pub(crate) fn requeued(&self, id: &str) -> String {
        self.key(&format!("requeued:{id}"))
    }

    /// Set when a running task should be stopped.
    pub(crate) fn cancel(&self, task: &str) -> String {
        self.key(&format!("cancel:{task}"))
    }

    /// A random token set once by the first client or worker of the queue: when it
    /// changes, the server lost its data (it restarted without persistence).
    pub(crate) fn epoch(&self) -> String {
        self.key("epoch")
    }

    /// The lease of the scheduler that fires jobs into this queue.
    pub(crate) fn leader(&self) -> String {
        self.key("scheduler:leader")
    }

    /// The fencing counter of that lease.
    pub(crate) fn leader_fence(&self) -> String {
        self.key("scheduler:fence")
    }

    /// The reply-list prefix (Lua appends a client id to it).
    pub(crate) fn reply_prefix(&self) -> String {
        self.key("reply:")
    }
}

/// Whether `s` is usable as a namespace or a queue name: not empty, printable, and
/// without the characters that would break the key layout.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '{' | '}' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_queue_tag() {
        let k = Keys::new("app", "default");
        assert_eq!(k.stream(), "app:{default}:stream");
        assert_eq!(k.result("c-1"), "app:{default}:result:c-1");
        assert!(valid_name("emails"));
        assert!(!valid_name("a{b}"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
    }
}
