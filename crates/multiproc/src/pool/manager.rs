//! The pool's manager thread: routes outcomes to tasks, notices dead workers and
//! replaces them, enforces task timeouts, runs retries when their delay is over, and
//! retires workers when the pool is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TaskError;
use super::task::Sink;
use super::tickets::TicketState;
use super::worker::{OUTCOME_HEADER, OutcomeHeader, kind};
use super::{
    DEPTH_MAX, DEPTH_MIN, DEPTH_TARGET, KillReason, MAX_START_FAILURES, PoolInner, State, lock,
};
use crate::bootstrap::RemotePanic;
use crate::ipc::channel::{MAX_SLEEP, Received, RecvFail};
use crate::sys::{self, AsFd};
use crate::wire::codec::CodecError;

/// How long the manager spins for outcomes before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// While outcomes keep it busy, the manager still looks for dead workers this often.
const REAP_EVERY: Duration = Duration::from_millis(20);
/// After a worker failed to start, the next attempt waits this long.
const START_RETRY: Duration = Duration::from_millis(100);

/// An outcome to hand to its task once the state lock is released.
type Delivery = (Arc<dyn Sink<Received>>, usize, Result<Received, TaskError>);

pub(super) fn run(inner: &Arc<PoolInner>) {
    let mut last_reap = Instant::now();
    let mut reap_now = true;
    // After a worker failed to start: when to try again.
    let mut retry_start: Option<Instant> = None;
    loop {
        let busy = inner.drain_results();
        if reap_now || last_reap.elapsed() >= REAP_EVERY {
            inner.reap();
            last_reap = Instant::now();
        }
        let next_timer = inner.timers();
        if retry_start.is_none_or(|t| Instant::now() >= t) {
            retry_start = (!inner.replace_workers()).then(|| Instant::now() + START_RETRY);
        }
        if inner.finish_if_done() {
            return;
        }
        let until = retry_start.map_or(next_timer, |t| next_timer.min(t));
        reap_now = !busy && inner.sleep(until);
    }
}

impl PoolInner {
    /// Routes every outcome waiting; whether there was any. The manager calls it, and so
    /// does a thread waiting for a map's results (it has nothing better to do, and
    /// routing them itself saves handing them over between threads).
    pub(super) fn drain_results(&self) -> bool {
        let mut any = false;
        loop {
            let mut batch = Vec::new();
            let mut corrupt = None;
            while batch.len() < 256 {
                match self.results_rx.try_recv_owned() {
                    Ok(Some(msg)) => batch.push(msg),
                    Ok(None) | Err(RecvFail::Empty | RecvFail::Disconnected) => break,
                    Err(RecvFail::Broken(why)) => {
                        corrupt = Some(why);
                        break;
                    }
                    Err(RecvFail::Io(e)) => {
                        corrupt = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(why) = corrupt {
                // Workers share this channel and something scribbled over it (a task's
                // memory corruption, most likely): no outcome can be trusted to arrive
                // any more. Waiting would hang every task, so the pool fails them all.
                let mut deliveries = Vec::new();
                {
                    let mut st = lock(&self.state);
                    for msg in batch {
                        self.route(&mut st, msg, &mut deliveries);
                    }
                    self.give_up(
                        &mut st,
                        format!("the workers' result channel failed: {why}"),
                        &mut deliveries,
                    );
                    for w in st.workers.iter().flatten() {
                        let _ = w.handle.kill();
                    }
                }
                deliver(deliveries);
                return true;
            }
            if batch.is_empty() {
                return any;
            }
            any = true;
            let mut deliveries = Vec::new();
            {
                let mut st = lock(&self.state);
                for msg in batch {
                    self.route(&mut st, msg, &mut deliveries);
                }
                self.pump(&mut st);
            }
            deliver(deliveries);
        }
    }

    /// Handles one outcome.
    fn route(&self, st: &mut State, msg: Received, out: &mut Vec<Delivery>) {
        let Some(header) = OutcomeHeader::read(&msg.bytes) else {
            return;
        };
        let body = &msg.bytes[OUTCOME_HEADER..];
        let text = || String::from_utf8_lossy(body).into_owned();
        if header.kind == kind::INIT_FAILED {
            let why = text();
            tracing::trace!("a pool worker could not start: {why}");
            self.start_failed(st, why, out);
            return;
        }
        let current = st.tasks.get(&header.id).and_then(|r| r.ticket);
        if current.is_none_or(|(ticket, _)| ticket != header.ticket) {
            // A job taken back from a slow worker, which skipped it: free its ticket.
            for w in st.workers.iter_mut().flatten() {
                if let Some(pos) = w.stolen.iter().position(|&t| t == header.ticket) {
                    w.stolen.swap_remove(pos);
                    self.tickets.free(header.ticket);
                    st.free_tickets.push(header.ticket);
                    break;
                }
            }
            return;
        }
        let Some(rec) = st.tasks.get_mut(&header.id) else {
            return;
        };
        let service_ns = match rec.ticket {
            Some((ticket, generation)) => {
                let started = match self.tickets.state(ticket, generation) {
                    TicketState::Running(t) if t > 0 => Some(t),
                    _ => None,
                };
                self.tickets.free(ticket);
                st.free_tickets.push(ticket);
                started.map(|t| sys::monotonic_ns().saturating_sub(t))
            }
            None => None,
        };
        rec.ticket = None;
        if let Some(w) = rec.worker.take()
            && let Some(Some(worker)) = st.workers.get_mut(w)
        {
            if let Some(pos) = worker.in_flight.iter().position(|&id| id == header.id) {
                worker.in_flight.remove(pos);
            }
            worker.stalled = false;
            worker.slow = false;
            if let Some(ns) = service_ns {
                worker.turnaround_ns = if worker.turnaround_ns == 0.0 {
                    ns as f64
                } else {
                    0.8 * worker.turnaround_ns + 0.2 * ns as f64
                };
                let per_target = DEPTH_TARGET.as_nanos() as f64 / worker.turnaround_ns.max(1.0);
                worker.depth = (per_target.ceil() as usize).clamp(DEPTH_MIN, DEPTH_MAX);
            }
            if worker.retiring && worker.in_flight.is_empty() {
                worker.jobs = None;
            }
        }
        let id = header.id;
        let delivered = rec.delivered;
        let error = match header.kind {
            kind::RETURNED => {
                st.start_failures = 0;
                None
            }
            kind::PANICKED => Some(match codec_panic(body) {
                Ok(p) => TaskError::Panicked(p),
                Err(e) => TaskError::Codec(e),
            }),
            kind::BAD_ARGS | kind::UNENCODABLE => Some(TaskError::Codec(CodecError::new(text()))),
            // The ticket was cancelled first: the task was told already.
            _ => Some(TaskError::Cancelled),
        };
        if delivered {
            st.tasks.remove(&id);
            return;
        }
        match error {
            None => {
                if let Some(rec) = st.tasks.remove(&id) {
                    out.push((rec.sink, rec.slot, Ok(msg)));
                }
            }
            Some(e) => self.fail_or_retry(st, id, e, out),
        }
    }

    /// A run of task `id` failed with `error`: it runs again if the retry policy says so,
    /// otherwise the error is its outcome.
    fn fail_or_retry(&self, st: &mut State, id: u64, error: TaskError, out: &mut Vec<Delivery>) {
        let Some(rec) = st.tasks.get_mut(&id) else {
            return;
        };
        rec.attempts += 1;
        if !st.terminated && self.config.retry.should_retry(rec.attempts, &error) {
            let delay = self.config.retry.delay(rec.attempts);
            tracing::debug!(
                task = id,
                attempt = rec.attempts,
                ?delay,
                "retrying: {error}"
            );
            if delay.is_zero() {
                st.pending.push_front(id);
            } else {
                st.delayed.push((Instant::now() + delay, id));
            }
            return;
        }
        if let Some(rec) = st.tasks.remove(&id) {
            out.push((rec.sink, rec.slot, Err(error)));
        }
    }

    /// A worker could not start, or its initializer failed. After too many in a row,
    /// the pool gives up and fails every task.
    fn start_failed(&self, st: &mut State, why: String, out: &mut Vec<Delivery>) {
        st.start_failures += 1;
        if st.start_failures < MAX_START_FAILURES || st.broken.is_some() {
            return;
        }
        self.give_up(st, why, out);
    }

    /// The pool cannot go on: every task fails with `PoolBroken(why)`, later submits
    /// are refused, and the workers are let go.
    fn give_up(&self, st: &mut State, why: String, out: &mut Vec<Delivery>) {
        if st.broken.is_some() {
            return;
        }
        tracing::warn!("the pool gives up: {why}");
        st.broken = Some(why.clone());
        st.pending.clear();
        st.delayed.clear();
        for (_, rec) in st.tasks.drain() {
            if !rec.delivered {
                out.push((rec.sink, rec.slot, Err(TaskError::PoolBroken(why.clone()))));
            }
            if let Some((ticket, _)) = rec.ticket {
                self.tickets.free(ticket);
                st.free_tickets.push(ticket);
            }
        }
        for w in st.workers.iter_mut().flatten() {
            w.in_flight.clear();
            w.jobs = None;
        }
    }

    /// Replaces workers that have died: their unstarted tasks go to other workers,
    /// their running task fails (or is retried).
    fn reap(&self) {
        let dead: Vec<usize> = {
            let st = lock(&self.state);
            st.workers
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.as_ref().filter(|w| !w.handle.is_alive()).map(|_| i))
                .collect()
        };
        if dead.is_empty() {
            return;
        }
        // Outcomes a dead worker sent before it died are credited first.
        self.drain_results();
        let mut deliveries = Vec::new();
        let mut handles = Vec::new();
        {
            let mut st = lock(&self.state);
            for i in dead {
                let Some(w) = st.workers[i].take() else {
                    continue;
                };
                let status = w.handle.exit_status();
                tracing::trace!(pid = w.handle.pid(), ?status, "pool worker ended");
                let mut unstarted = Vec::new();
                for &id in &w.in_flight {
                    let Some(rec) = st.tasks.get_mut(&id) else {
                        continue;
                    };
                    rec.worker = None;
                    let ticket = rec.ticket.take();
                    let delivered = rec.delivered;
                    let state = match ticket {
                        Some((ticket, generation)) => {
                            let s = self.tickets.state(ticket, generation);
                            self.tickets.free(ticket);
                            st.free_tickets.push(ticket);
                            s
                        }
                        None => TicketState::Other,
                    };
                    if delivered {
                        st.tasks.remove(&id);
                        continue;
                    }
                    match state {
                        TicketState::Queued => unstarted.push(id),
                        _ => {
                            let error = match w.killed_for {
                                Some((k, KillReason::TimedOut)) if k == id => TaskError::TimedOut,
                                Some((k, KillReason::Cancelled)) if k == id => TaskError::Cancelled,
                                Some((_, KillReason::Terminated)) => TaskError::PoolClosed,
                                _ => TaskError::WorkerDied(status),
                            };
                            let cancelled = matches!(error, TaskError::Cancelled);
                            if cancelled {
                                if let Some(rec) = st.tasks.remove(&id) {
                                    deliveries.push((rec.sink, rec.slot, Err(error)));
                                }
                            } else {
                                self.fail_or_retry(&mut st, id, error, &mut deliveries);
                            }
                        }
                    }
                }
                // In their original order, ahead of tasks submitted since.
                for id in unstarted.into_iter().rev() {
                    st.pending.push_front(id);
                }
                // A worker that died before taking any task did not start properly.
                if w.assigned == 0
                    && w.killed_for.is_none()
                    && !st.terminated
                    && status.is_none_or(|s| !s.success())
                {
                    let why = format!(
                        "a worker ended before taking any task ({})",
                        status.map_or_else(|| "unknown status".into(), |s| s.to_string())
                    );
                    self.start_failed(&mut st, why, &mut deliveries);
                }
                for ticket in w.stolen {
                    self.tickets.free(ticket);
                    st.free_tickets.push(ticket);
                }
                handles.push(w.handle);
            }
            self.pump(&mut st);
        }
        deliver(deliveries);
        for h in handles {
            // Dead already: this only reaps it.
            let mut h = h;
            let _ = h.join_timeout(Duration::from_secs(5));
        }
    }

    /// Kills workers whose task ran out of time, and queues retries whose delay is
    /// over. Returns when to look again.
    fn timers(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + MAX_SLEEP;
        let mut st = lock(&self.state);
        if !st.delayed.is_empty() {
            let mut due = Vec::new();
            st.delayed.retain(|&(at, id)| {
                if at <= now {
                    due.push(id);
                    false
                } else {
                    next = next.min(at);
                    true
                }
            });
            for id in due.into_iter().rev() {
                st.pending.push_front(id);
            }
            self.pump(&mut st);
        }
        if let Some(at) = self.steal(&mut st) {
            next = next.min(at);
        }
        if let Some(timeout) = self.config.task_timeout {
            let now_ns = sys::monotonic_ns();
            let limit = timeout.as_nanos() as u64;
            let State { workers, tasks, .. } = &mut *st;
            for w in workers.iter_mut().flatten() {
                if w.killed_for.is_some() {
                    continue;
                }
                let Some(&id) = w.in_flight.front() else {
                    continue;
                };
                let Some((ticket, generation)) = tasks.get(&id).and_then(|r| r.ticket) else {
                    continue;
                };
                let TicketState::Running(started) = self.tickets.state(ticket, generation) else {
                    continue;
                };
                if started == 0 {
                    next = next.min(now + Duration::from_millis(1));
                    continue;
                }
                let ran = now_ns.saturating_sub(started);
                if ran >= limit {
                    tracing::debug!(task = id, pid = w.handle.pid(), "task timed out");
                    w.killed_for = Some((id, KillReason::TimedOut));
                    let _ = w.handle.kill();
                    next = now;
                } else {
                    next = next.min(now + Duration::from_nanos(limit - ran));
                }
            }
        }
        next
    }

    /// Starts workers for empty slots. False if one failed to start.
    fn replace_workers(&self) -> bool {
        let missing: Vec<usize> = {
            let st = lock(&self.state);
            if st.terminated || st.broken.is_some() || (st.closed && st.tasks.is_empty()) {
                return true;
            }
            st.workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.is_none())
                .map(|(i, _)| i)
                .collect()
        };
        for i in missing {
            match self.start_worker(i) {
                Ok(worker) => {
                    let mut st = lock(&self.state);
                    if st.terminated {
                        let _ = worker.handle.kill();
                        let mut h = worker.handle;
                        drop(st);
                        let _ = h.join_timeout(Duration::from_secs(5));
                        return true;
                    }
                    st.workers[i] = Some(worker);
                    self.pump(&mut st);
                }
                Err(e) => {
                    let mut deliveries = Vec::new();
                    self.start_failed(
                        &mut lock(&self.state),
                        format!("cannot start a worker: {e}"),
                        &mut deliveries,
                    );
                    deliver(deliveries);
                    return false;
                }
            }
        }
        true
    }

    /// Retires the workers of a closed pool with nothing left to do; says whether the
    /// pool has finished (no workers left, and nothing more will come).
    fn finish_if_done(&self) -> bool {
        let mut st = lock(&self.state);
        let idle = st.tasks.is_empty() && st.pending.is_empty();
        if st.closed && (idle || st.terminated) {
            for w in st.workers.iter_mut().flatten() {
                w.jobs = None;
            }
            if st.workers.iter().all(Option::is_none) {
                st.finished = true;
                self.changed.notify_all();
                return true;
            }
        }
        false
    }

    /// Sleeps until an outcome arrives, a worker ends, the pool is told something, or
    /// `until`. Whether a worker may have ended.
    fn sleep(&self, until: Instant) -> bool {
        let spin_end = Instant::now() + SPIN;
        // (The pool holds a sender itself: the senders are never all gone.)
        if crate::sync::raw::spin_until(spin_end, || self.results_rx.len() > 0) {
            return false;
        }
        let sleeping = self.results_rx.sleeping();
        if self.results_rx.len() > 0 {
            return false;
        }
        // The workers' records (not the state lock, which others need meanwhile) keep
        // their pidfds open while this sleeps.
        let records: Vec<_> = lock(&self.state)
            .workers
            .iter()
            .flatten()
            .map(|w| Arc::clone(w.handle.record()))
            .collect();
        let mut fds = vec![self.bell.as_fd()];
        fds.extend(self.results_rx.readiness());
        let first_worker = fds.len();
        fds.extend(records.iter().map(|r| r.pidfd()));
        let ready = sys::wait_readable(&fds, Some(until)).unwrap_or_default();
        drop(sleeping);
        sys::silence(self.bell.as_fd());
        ready.iter().skip(first_worker).any(|r| r.ready())
            || ready.first().is_some_and(|r| r.ready())
    }
}

fn codec_panic(body: &[u8]) -> Result<RemotePanic, CodecError> {
    crate::wire::codec::decode::<RemotePanic>(body, Vec::new())
}

/// Hands outcomes over, each run of outcomes for the same sink (a map's) at once.
fn deliver(deliveries: Vec<Delivery>) {
    let mut rest = deliveries.into_iter().peekable();
    while let Some((sink, slot, outcome)) = rest.next() {
        let mut run = vec![(slot, outcome)];
        while let Some((_, slot, outcome)) =
            rest.next_if(|(next, ..)| std::ptr::addr_eq(Arc::as_ptr(next), Arc::as_ptr(&sink)))
        {
            run.push((slot, outcome));
        }
        sink.deliver_many(run);
    }
}
