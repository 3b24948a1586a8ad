//! Which client sessions refer to which objects, so that an object no proxy refers to any
//! more is freed (Python's managers count references on the server too).
//!
//! A session is one client process (its id comes with every connection's handshake). The
//! table counts, per object:
//!
//! - **held**: references each session holds. A process holds one per proxy it made or
//!   received (clones within a process share it: see `proxy.rs`).
//! - **in flight**: per session, proxies it serialized minus those a receiver has
//!   settled. The sender reports what it sent when it releases its own reference; a
//!   receiver settles one when it holds (or drops) what it received. Either may come
//!   first, so a balance may be negative for a while; only a positive one keeps the
//!   object.
//! - **pinned**: a named object, or one stored inside a managed value (which the server
//!   cannot look into): kept as long as the server runs.
//!
//! An object is freed when it is not pinned, no session holds it and no balance is
//! positive. A session ends when its last connection closes (its process died, or was
//! cut off until keepalive gave it up): what it held and what it had in flight go with
//! it. A process that lets go on purpose (its last proxy dropped: `RefOp::Leave` before
//! its connections close) lives on, and may have relayed a proxy it received: its
//! balances in flight stay, the session kept with no connection until receivers have
//! settled them all (a proxy never received then keeps its object while the server
//! runs, as one held would).

use std::collections::{HashMap, HashSet};

use super::protocol::RefOp;

/// The references to one object.
#[derive(Debug, Default)]
struct Holders {
    pinned: bool,
    held: HashMap<u64, u64>,
    in_flight: HashMap<u64, i64>,
}

impl Holders {
    fn unreferenced(&self) -> bool {
        !self.pinned && self.held.is_empty() && self.in_flight.values().all(|&n| n <= 0)
    }
}

/// A live session: its connections, and the objects it has entries for (an entry goes
/// once the session neither holds the object nor has a balance in flight for it, so
/// that a long-lived client making and dropping objects does not grow the set). One
/// that left on purpose and has proxies in flight stays, without connections, until
/// they are settled.
#[derive(Debug, Default)]
struct Session {
    connections: usize,
    objects: HashSet<u64>,
    /// Its process said it lets go on purpose (`RefOp::Leave`).
    leaving: bool,
    /// The objects whose proxies it had in flight when it left: those were sent, and
    /// stay until received even if the process, come back with a connection, dies
    /// (a process that connects again with no proxy to hold says nothing as it goes).
    /// Kept while it is back, however its balance moves (a receiver of a proxy sent
    /// since may settle before the send is reported): a proxy of such an object that it
    /// sends after coming back and that is never received then keeps the object, as
    /// one sent before it left does.
    relayed: HashSet<u64>,
}

/// The server's reference counts. Every method returns the objects that became
/// unreferenced: the caller frees them.
#[derive(Debug, Default)]
pub(crate) struct RefTable {
    objects: HashMap<u64, Holders>,
    sessions: HashMap<u64, Session>,
}

impl RefTable {
    /// A connection of `session` was authenticated.
    pub(crate) fn connected(&mut self, session: u64) {
        let s = self.sessions.entry(session).or_default();
        s.connections += 1;
        s.leaving = false;
    }

    /// Whether `session` has a connection.
    pub(crate) fn is_connected(&self, session: u64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.connections > 0)
    }

    /// A connection of `session` closed. When it was the last, the session is over:
    /// returns `(true, freed)`.
    pub(crate) fn disconnected(&mut self, session: u64) -> (bool, Vec<u64>) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return (false, Vec::new());
        };
        s.connections = s.connections.saturating_sub(1);
        if s.connections > 0 {
            return (false, Vec::new());
        }
        let Some(mut s) = self.sessions.remove(&session) else {
            return (true, Vec::new());
        };
        let mut freed = Vec::new();
        let mut in_flight = HashSet::new();
        for id in s.objects.drain() {
            if let Some(h) = self.objects.get_mut(&id) {
                h.held.remove(&session);
                let kept = s.leaving || s.relayed.contains(&id);
                if kept && h.in_flight.get(&session).is_some_and(|&n| n > 0) {
                    in_flight.insert(id);
                    continue;
                }
                h.in_flight.remove(&session);
                if h.unreferenced() {
                    let h = self.objects.remove(&id);
                    freed.push(id);
                    self.forget_freed(id, h);
                }
            }
        }
        if !in_flight.is_empty() {
            s.relayed.clone_from(&in_flight);
            s.objects = in_flight;
            self.sessions.insert(session, s);
        }
        (true, freed)
    }

    /// Drops `session`'s entry for `id` once it has nothing there (no reference held, no
    /// balance in flight); a session that left (no connection) goes once it has no
    /// entry anywhere.
    fn tidy(&mut self, session: u64, id: u64) {
        let has = self
            .objects
            .get(&id)
            .is_some_and(|h| h.held.contains_key(&session) || h.in_flight.contains_key(&session));
        if has {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.objects.remove(&id);
            s.relayed.remove(&id);
            if s.connections == 0 && s.objects.is_empty() {
                self.sessions.remove(&session);
            }
        }
    }

    /// `id` was freed: the sessions that still had an entry for it (a balance settled
    /// below zero) drop it.
    fn forget_freed(&mut self, id: u64, holders: Option<Holders>) {
        for session in holders.into_iter().flat_map(|h| h.in_flight.into_keys()) {
            self.tidy(session, id);
        }
    }

    /// `session` created object `id` (and holds a reference to it); `pinned` for a
    /// named one.
    pub(crate) fn created(&mut self, id: u64, session: u64, pinned: bool) {
        let h = self.objects.entry(id).or_default();
        h.pinned |= pinned;
        *h.held.entry(session).or_insert(0) += 1;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.objects.insert(id);
        }
    }

    /// `id` has a name (opened by name: kept for good).
    pub(crate) fn pin(&mut self, id: u64) {
        if let Some(h) = self.objects.get_mut(&id) {
            h.pinned = true;
        }
    }

    /// Applies what `session` reports.
    pub(crate) fn apply(&mut self, session: u64, ops: Vec<RefOp>) -> Vec<u64> {
        let mut freed = Vec::new();
        for op in ops {
            match op {
                RefOp::Hold { id, from } => {
                    let Some(h) = self.objects.get_mut(&id) else {
                        // Freed already: the receiver's calls will say so.
                        continue;
                    };
                    // A session not here (yet) is settled with a balance below zero: it
                    // may be one that has not connected, a process that relays a proxy
                    // it received without calling it, which reports what it sent when
                    // it first connects (as it lets go); dropped, the settlement left
                    // its report keeping the object while the server ran. (For one
                    // that ended, which took its proxies in flight with it, the entry
                    // keeps nothing and goes with the object.)
                    if let Some(from) = from
                        && !self.sessions.contains_key(&from)
                    {
                        *h.in_flight.entry(from).or_insert(0) -= 1;
                    }
                    if let Some(from) = from
                        && let Some(s) = self.sessions.get_mut(&from)
                    {
                        let left = s.connections == 0;
                        if !left {
                            s.objects.insert(id);
                        }
                        let n = h.in_flight.entry(from).or_insert(0);
                        *n -= 1;
                        // A session that left reported all it sent: nothing more to
                        // settle there.
                        if (*n <= 0 && left) || *n == 0 {
                            h.in_flight.remove(&from);
                            self.tidy(from, id);
                        }
                    }
                    let Some(h) = self.objects.get_mut(&id) else {
                        continue;
                    };
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.objects.insert(id);
                        *h.held.entry(session).or_insert(0) += 1;
                    }
                }
                RefOp::Release { id, sent } => {
                    let Some(h) = self.objects.get_mut(&id) else {
                        continue;
                    };
                    if let Some(n) = h.held.get_mut(&session) {
                        *n -= 1;
                        if *n == 0 {
                            h.held.remove(&session);
                        }
                    }
                    if sent > 0 && self.sessions.contains_key(&session) {
                        let n = h.in_flight.entry(session).or_insert(0);
                        *n = n.saturating_add(i64::try_from(sent).unwrap_or(i64::MAX));
                        if *n == 0 {
                            h.in_flight.remove(&session);
                        }
                    }
                    if h.unreferenced() {
                        let h = self.objects.remove(&id);
                        freed.push(id);
                        self.forget_freed(id, h);
                    }
                    self.tidy(session, id);
                }
                RefOp::Pin { id } => self.pin(id),
                RefOp::Leave => {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.leaving = true;
                        let objects = &self.objects;
                        let sent = s.objects.iter().filter(|id| {
                            objects
                                .get(id)
                                .and_then(|h| h.in_flight.get(&session))
                                .is_some_and(|&n| n > 0)
                        });
                        s.relayed.extend(sent);
                    }
                }
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 1;
    const B: u64 = 2;

    /// `by` receives a proxy of 7 that `from` sent: nothing is freed.
    fn receives_7(t: &mut RefTable, by: u64, from: u64) {
        let freed = t.apply(
            by,
            vec![RefOp::Hold {
                id: 7,
                from: Some(from),
            }],
        );
        assert!(freed.is_empty(), "{freed:?}");
    }

    /// B receives the proxy of 7 that A sent, and drops it: the last reference, 7 goes.
    fn b_takes_and_drops_7_from_a(t: &mut RefTable) {
        receives_7(t, B, A);
        assert_eq!(t.apply(B, vec![RefOp::Release { id: 7, sent: 0 }]), [7]);
    }

    fn table() -> RefTable {
        let mut t = RefTable::default();
        t.connected(A);
        t.connected(B);
        t
    }

    #[test]
    fn created_then_released_is_freed() {
        let mut t = table();
        t.created(7, A, false);
        assert_eq!(t.apply(A, vec![RefOp::Release { id: 7, sent: 0 }]), [7]);
        assert!(t.objects.is_empty());
    }

    #[test]
    fn a_proxy_in_flight_keeps_the_object_until_held_and_released() {
        let mut t = table();
        t.created(7, A, false);
        // A sent one and let go of its own before B decoded it.
        assert!(
            t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }])
                .is_empty()
        );
        b_takes_and_drops_7_from_a(&mut t);
    }

    #[test]
    fn a_receiver_may_settle_before_the_sender_reports() {
        let mut t = table();
        t.created(7, A, false);
        assert!(
            t.apply(
                B,
                vec![
                    RefOp::Hold {
                        id: 7,
                        from: Some(A)
                    },
                    RefOp::Release { id: 7, sent: 0 }
                ]
            )
            .is_empty(),
            "A still holds it"
        );
        assert_eq!(t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }]), [7]);
    }

    #[test]
    fn an_ended_session_takes_its_references_and_proxies_in_flight() {
        let mut t = table();
        t.created(7, A, false);
        t.created(8, A, false);
        assert!(
            t.apply(A, vec![RefOp::Release { id: 8, sent: 1 }])
                .is_empty()
        );
        t.apply(B, vec![RefOp::Hold { id: 7, from: None }]);
        let (ended, mut freed) = t.disconnected(A);
        freed.sort();
        assert!(ended);
        assert_eq!(freed, [8], "7 is still B's");
        // A settlement from the ended session's proxy keeps nothing.
        t.apply(
            B,
            vec![RefOp::Hold {
                id: 7,
                from: Some(A),
            }],
        );
        assert_eq!(t.objects[&7].held[&B], 2);
        assert!(t.objects[&7].in_flight.values().all(|&n| n <= 0));
        assert!(
            t.apply(B, vec![RefOp::Release { id: 7, sent: 0 }])
                .is_empty()
        );
        assert_eq!(t.apply(B, vec![RefOp::Release { id: 7, sent: 0 }]), [7]);
    }

    /// A process that relays a proxy it received without calling it connects only as it
    /// lets go: the receiver of the relayed proxy settles it before then, and the
    /// relay's report of what it sent, coming later, is balanced by that settlement.
    #[test]
    fn a_relay_that_never_connected_is_settled_before_it_reports() {
        const RELAY: u64 = 3;
        let mut t = table();
        t.created(7, A, false);
        // B received 7 from RELAY (which received it from A) and calls it.
        receives_7(&mut t, B, RELAY);
        // RELAY ends: it connects, holds what it received, lets go, and reports one sent.
        t.connected(RELAY);
        let ops = vec![
            RefOp::Hold {
                id: 7,
                from: Some(A),
            },
            RefOp::Release { id: 7, sent: 1 },
            RefOp::Leave,
        ];
        assert!(t.apply(RELAY, ops).is_empty());
        assert_eq!(t.disconnected(RELAY), (true, Vec::new()));
        assert!(
            t.apply(B, vec![RefOp::Release { id: 7, sent: 0 }])
                .is_empty()
        );
        assert_eq!(t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }]), [7]);
        assert!(!t.sessions.contains_key(&RELAY));
    }

    #[test]
    fn pinned_objects_stay() {
        let mut t = table();
        t.created(7, A, true);
        t.created(8, A, false);
        t.apply(A, vec![RefOp::Pin { id: 8 }]);
        assert!(
            t.apply(
                A,
                vec![
                    RefOp::Release { id: 7, sent: 0 },
                    RefOp::Release { id: 8, sent: 0 }
                ]
            )
            .is_empty()
        );
        assert!(t.disconnected(A).1.is_empty());
        assert!(t.disconnected(B).1.is_empty());
    }

    #[test]
    fn a_session_with_connections_left_goes_on() {
        let mut t = table();
        t.connected(A);
        t.created(7, A, false);
        assert_eq!(t.disconnected(A), (false, Vec::new()));
        assert_eq!(t.disconnected(A), (true, vec![7]));
        assert_eq!(t.disconnected(A), (false, Vec::new()), "already over");
    }

    /// A session that leaves on purpose (its process lives on) keeps the object its
    /// proxy in flight refers to until the receiver settles it; then the session goes.
    #[test]
    fn a_session_that_leaves_keeps_what_it_relayed_until_received() {
        const C: u64 = 3;
        let mut t = table();
        t.connected(C);
        t.created(7, A, false);
        t.created(8, A, false);
        // A sends 7 to B, which relays it to C and leaves; 8 it sends nowhere.
        assert!(
            t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }])
                .is_empty()
        );
        let hold = |from| RefOp::Hold { id: 7, from };
        assert!(t.apply(B, vec![hold(Some(A))]).is_empty());
        let ops = vec![RefOp::Release { id: 7, sent: 1 }, RefOp::Leave];
        assert!(t.apply(B, ops).is_empty());
        assert_eq!(t.disconnected(B), (true, Vec::new()), "7 is in flight to C");
        assert!(t.sessions.contains_key(&B));
        assert!(t.apply(C, vec![hold(Some(B))]).is_empty());
        assert!(!t.sessions.contains_key(&B), "B's balances are settled");
        assert_eq!(t.apply(C, vec![RefOp::Release { id: 7, sent: 0 }]), [7]);
        assert_eq!(t.disconnected(A), (true, vec![8]));
    }

    /// A session whose connections close without `Leave` (its process died) takes its
    /// proxies in flight with it; one that comes back after leaving is live again, but
    /// what it had sent before it left stays until received, however it ends then.
    #[test]
    fn a_session_that_dies_or_comes_back_is_not_leaving() {
        let mut t = table();
        t.created(7, A, false);
        t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }]);
        assert_eq!(t.disconnected(A), (true, vec![7]));

        t.connected(A);
        t.created(8, A, false);
        t.created(9, A, false);
        t.apply(A, vec![RefOp::Release { id: 8, sent: 1 }, RefOp::Leave]);
        t.connected(A);
        t.apply(A, vec![RefOp::Release { id: 9, sent: 1 }]);
        assert_eq!(t.disconnected(A), (false, Vec::new()));
        assert_eq!(
            t.disconnected(A),
            (true, vec![9]),
            "it came back: not leaving, but 8 was sent before it left"
        );
        assert!(
            t.apply(
                B,
                vec![RefOp::Hold {
                    id: 8,
                    from: Some(A)
                }]
            )
            .is_empty()
        );
        assert!(!t.sessions.contains_key(&A), "its balance is settled");
        assert_eq!(t.apply(B, vec![RefOp::Release { id: 8, sent: 0 }]), [8]);
    }

    /// What a session had in flight as it left stays while it is back, however its
    /// balance moves: a receiver of a proxy it sends after coming back may settle
    /// before the send is reported (the balance at zero for a while), and the proxy
    /// sent before it left is still to be received when the session dies.
    #[test]
    fn what_was_relayed_stays_while_the_session_is_back() {
        const C: u64 = 3;
        let mut t = table();
        t.connected(C);
        t.created(7, A, false);
        t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }, RefOp::Leave]);
        assert_eq!(t.disconnected(A), (true, Vec::new()));
        t.connected(A);
        t.apply(A, vec![RefOp::Hold { id: 7, from: None }]);
        // A sends one to C, which settles it before A reports it.
        assert!(
            t.apply(
                C,
                vec![RefOp::Hold {
                    id: 7,
                    from: Some(A)
                }]
            )
            .is_empty()
        );
        assert!(
            t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }])
                .is_empty()
        );
        assert!(
            t.apply(C, vec![RefOp::Release { id: 7, sent: 0 }])
                .is_empty()
        );
        // A dies: the proxy it sent before it left is still on its way to B.
        assert_eq!(t.disconnected(A), (true, Vec::new()));
        b_takes_and_drops_7_from_a(&mut t);
    }

    /// A process that lets go with a proxy in flight, then connects again without
    /// holding a proxy (its new client says nothing as it goes), and ends: the proxy
    /// it sent still reaches its receiver.
    #[test]
    fn a_session_back_without_proxies_keeps_what_it_sent_before() {
        let mut t = table();
        t.created(7, A, false);
        t.apply(A, vec![RefOp::Release { id: 7, sent: 1 }, RefOp::Leave]);
        assert_eq!(t.disconnected(A), (true, Vec::new()));
        t.connected(A);
        assert_eq!(
            t.disconnected(A),
            (true, Vec::new()),
            "7 is still in flight"
        );
        b_takes_and_drops_7_from_a(&mut t);
        assert!(t.sessions.keys().all(|&s| s == B));
    }

    /// A client that makes and drops objects for as long as it lives leaves no entry
    /// behind for each (the table's memory, and its scan at the session's end, grew
    /// with every object ever made).
    #[test]
    fn entries_of_dropped_objects_go() {
        let mut t = table();
        for id in 0..10_000 {
            t.created(id, A, false);
            assert_eq!(t.apply(A, vec![RefOp::Release { id, sent: 0 }]), [id]);
        }
        // Sent, received, dropped by both: no entry left with either.
        t.created(20_000, A, false);
        t.apply(
            A,
            vec![RefOp::Release {
                id: 20_000,
                sent: 1,
            }],
        );
        t.apply(
            B,
            vec![RefOp::Hold {
                id: 20_000,
                from: Some(A),
            }],
        );
        assert_eq!(
            t.apply(
                B,
                vec![RefOp::Release {
                    id: 20_000,
                    sent: 0
                }]
            ),
            [20_000]
        );
        // Received before the sender reported it (a balance below zero for a while).
        t.created(20_001, A, false);
        t.apply(
            B,
            vec![RefOp::Hold {
                id: 20_001,
                from: Some(A),
            }],
        );
        t.apply(
            B,
            vec![RefOp::Release {
                id: 20_001,
                sent: 0,
            }],
        );
        assert_eq!(
            t.apply(
                A,
                vec![RefOp::Release {
                    id: 20_001,
                    sent: 1
                }]
            ),
            [20_001]
        );
        assert!(t.objects.is_empty());
        assert!(
            t.sessions[&A].objects.is_empty(),
            "{:?}",
            t.sessions[&A].objects.len()
        );
        assert!(t.sessions[&B].objects.is_empty());
    }
}
