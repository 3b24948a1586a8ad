//! Managers with real processes: every proxy type between processes, atomic updates from
//! four processes, the remote pair over TCP with the right and a wrong key, a client
//! SIGKILLed holding a managed lock or while its call waits, the server SIGKILLed under
//! load, a SIGKILLed owner,
//! and fuzzed frames against a live server; the shared-memory transport of local clients
//! with large and oversized requests, raw peers that ask for it and vanish, many threads
//! at once, and an in-process server that stops. After each test no server process is
//! left.
#![allow(unsafe_code)] // tests kill processes with kill(2)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Helper, Unserializable, trial};
use hmac::{KeyInit, Mac};
use multiproc::manager::{
    Address, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy,
    ObjectProxy, QueueProxy, SemaphoreProxy, SetProxy, SharedObject, ValueProxy,
};
use multiproc::{Manager, ManagerError};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main_checked(
        vec![
            trial(
                "a_set_then_clear_releases_the_waiters",
                a_set_then_clear_releases_the_waiters,
            ),
            trial(
                "a_proxy_in_encodings_never_sent_is_freed",
                a_proxy_in_encodings_never_sent_is_freed,
            ),
            trial(
                "every_proxy_between_processes",
                every_proxy_between_processes,
            ),
            trial(
                "update_with_is_exact_from_four_processes",
                update_with_is_exact,
            ),
            trial("locks_semaphores_conditions_barriers", locks_and_friends),
            trial(
                "many_references_received_under_a_small_max_frame",
                many_references_received_under_a_small_max_frame,
            ),
            trial(
                "client_sigkilled_holding_lock",
                client_sigkilled_holding_lock,
            ),
            trial(
                "a_client_sigkilled_holding_a_lock_after_a_spawn_fork_lets_it_go",
                a_client_sigkilled_holding_a_lock_after_a_spawn_fork_lets_it_go,
            ),
            trial(
                "a_relative_socket_path_serves_other_directories",
                a_relative_socket_path_serves_other_directories,
            ),
            trial(
                "forked_while_another_thread_calls",
                forked_while_another_thread_calls,
            ),
            trial(
                "a_panicking_drop_keeps_no_dead_clients_lock",
                a_panicking_drop_keeps_no_dead_clients_lock,
            ),
            trial(
                "client_sigkilled_holding_lock_while_others_keep_calling",
                client_sigkilled_holding_lock_while_others_call,
            ),
            trial(
                "client_sigkilled_while_its_call_waits_leaves_nothing",
                client_sigkilled_while_its_call_waits,
            ),
            trial(
                "a_notification_to_a_sigkilled_waiter_passes_on",
                notification_to_a_sigkilled_waiter_passes_on,
            ),
            trial("server_sigkilled_under_load", server_sigkilled_under_load),
            trial(
                "a_proxy_relayed_by_a_process_that_never_called_it_is_freed",
                a_proxy_relayed_by_a_process_that_never_called_it_is_freed,
            ),
            trial(
                "a_proxy_of_a_server_restarted_at_its_address_names_no_new_object",
                a_proxy_of_a_restarted_server_names_no_new_object,
            ),
            trial(
                "server_descriptor_table_sized_at_start",
                server_descriptor_table_sized_at_start,
            ),
            trial(
                "owner_sigkilled_takes_server_along",
                owner_sigkilled_takes_server,
            ),
            trial(
                "ctrl_c_is_left_to_the_managers_owner",
                ctrl_c_is_left_to_the_managers_owner,
            ),
            trial(
                "remote_tcp_right_and_wrong_key",
                remote_tcp_right_and_wrong_key,
            ),
            trial(
                "tcp_clients_on_this_machine_use_shared_memory",
                tcp_clients_on_this_machine_use_shared_memory,
            ),
            trial("unix_socket_file_removed", unix_socket_file_removed),
            trial(
                "a_stale_socket_file_is_taken_over",
                a_stale_socket_file_is_taken_over,
            ),
            trial("custom_objects", custom_objects),
            trial("named_objects_and_types", named_objects_and_types),
            trial("bad_input_clear_errors", bad_input_clear_errors),
            trial(
                "slow_client_does_not_stall_others",
                slow_client_does_not_stall_others,
            ),
            trial("fuzzed_frames_against_live_server", fuzzed_frames),
            trial("nothing_left_behind", nothing_left_behind),
            trial(
                "forked_child_leaves_parent_connections_alone",
                forked_child_leaves_parent_connections_alone,
            ),
            trial(
                "proxy_moved_into_a_forked_child_stays",
                proxy_moved_into_a_forked_child_stays,
            ),
            trial(
                "proxy_returned_by_a_forked_child_stays",
                proxy_returned_by_a_forked_child_stays,
            ),
            trial(
                "proxy_inherited_and_passed_on_by_a_forked_child_stays",
                proxy_inherited_and_passed_on_by_a_forked_child_stays,
            ),
            trial(
                "local_big_and_oversized_requests",
                local_big_and_oversized_requests,
            ),
            trial(
                "local_requested_raw_then_dropped",
                local_requested_raw_then_dropped,
            ),
            trial(
                "local_connections_capped_per_process",
                local_connections_capped_per_process,
            ),
            trial(
                "in_process_server_stop_disconnects_local_clients",
                in_process_server_stop_disconnects_local_clients,
            ),
            trial("slowloris_and_bursts", slowloris_and_bursts),
            trial("handshake_has_one_deadline", handshake_has_one_deadline),
            trial(
                "half_open_connections_capped_oldest_dropped",
                half_open_connections_capped,
            ),
            trial(
                "a_handshake_dropped_to_make_room_is_tried_again",
                a_dropped_handshake_is_tried_again,
            ),
            trial(
                "a_handshake_closed_without_a_word_is_tried_again",
                a_handshake_closed_without_a_word_is_tried_again,
            ),
            trial(
                "burst_of_connections_accepted_at_once",
                burst_of_connections,
            ),
            trial(
                "a_received_proxy_calls_a_stopped_server_within_its_timeout",
                received_proxy_calls_a_stopped_server_within_its_timeout,
            ),
            trial(
                "stopped_server_call_timeout_local",
                stopped_server_call_timeout_local,
            ),
            trial(
                "an_anchor_that_could_not_open_is_opened_by_the_next_call",
                an_anchor_that_could_not_open_is_opened_by_the_next_call,
            ),
            trial(
                "stopped_server_call_timeout_tcp",
                stopped_server_call_timeout_tcp,
            ),
            trial(
                "stopped_server_call_timeout_tcp_socket_only",
                stopped_server_call_timeout_tcp_socket_only,
            ),
            trial(
                "a_blocked_write_counts_against_the_call_timeout",
                a_blocked_write_counts_against_the_call_timeout,
            ),
            trial(
                "partitioned_client_lock_released_and_calls_fail",
                partitioned_client,
            ),
            trial("client_refuses_rogue_servers", client_refuses_rogue_servers),
            trial(
                "slow_constructor_stalls_no_create",
                slow_constructor_stalls_no_create,
            ),
            trial("connect_to_a_full_queue_ends", connect_to_a_full_queue_ends),
            trial(
                "tcp_calls_in_flight_when_server_sigkilled",
                tcp_calls_in_flight_when_server_sigkilled,
            ),
            trial(
                "tcp_socket_only_calls_in_flight_when_server_sigkilled",
                tcp_socket_only_calls_in_flight_when_server_sigkilled,
            ),
            trial("dropped_objects_are_freed_100k", dropped_objects_are_freed),
            trial(
                "object_outlives_creators_proxy_while_another_process_holds_it",
                object_outlives_creators_proxy,
            ),
            trial(
                "proxy_in_flight_keeps_object_until_received",
                proxy_in_flight_keeps_object,
            ),
            trial(
                "relayed_proxy_outlives_the_relay",
                relayed_proxy_outlives_the_relay,
            ),
            trial(
                "a_relays_last_word_waits_for_room",
                a_relays_last_word_waits_for_room,
            ),
            trial(
                "a_relay_killed_after_one_of_its_clients_left",
                a_relay_killed_after_one_of_its_clients_left,
            ),
            trial(
                "received_proxy_dropped_unused_settles",
                received_proxy_dropped_unused,
            ),
            trial(
                "sigkilled_holder_releases_its_references",
                sigkilled_holder_releases_references,
            ),
            trial(
                "stored_and_named_objects_stay",
                stored_and_named_objects_stay,
            ),
        ],
        helpers,
        Duration::from_secs(600),
        common::no_new_dev_shm,
    );
}

fn helpers(mode: &str) {
    match mode {
        "managers_come_and_go" => managers_come_and_go(),
        "interrupted_manager" => interrupted_manager(),
        "many_local_connections" => many_local_connections(),
        "anchor_not_opened" => anchor_not_opened(),
        "manager_fork" => {
            let m = Manager::start().unwrap();
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(1, 1).unwrap();
            let theirs = d.clone();
            // SAFETY: this helper's only thread of its own is this one, and the child
            // takes no lock another thread could hold (the client's pool of this
            // manager is used by this thread alone).
            let mut child = unsafe {
                multiproc::Builder::new().spawn_fork(move || {
                    // A fresh connection: the inherited ones are the parent's.
                    theirs.insert(2, 2).unwrap();
                    theirs.len().unwrap()
                })
            }
            .unwrap();
            assert_eq!(child.join_timeout(T).unwrap(), 2);
            // The parent's own connection is untouched by the child dropping its copy.
            println!("after fork {:?}", d.insert(3, 3).map(|_| d.len()));
        }
        "manager_relative_socket" => {
            let dir = common::tempdir("relative-socket");
            std::env::set_current_dir(&dir).unwrap();
            let m = Manager::builder()
                .address(Address::Unix("rel.sock".into()))
                .build()
                .unwrap();
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(1, 1).unwrap();
            let mut child = multiproc::Builder::new()
                .current_dir("/")
                .spawn(dict_len, d.clone())
                .unwrap();
            println!("child {:?}", child.join_timeout(T));
            std::env::set_current_dir("/").unwrap();
            drop(d);
            drop(m);
            println!("left behind {}", dir.join("rel.sock").exists());
            // A directory too deep for the whole path to fit a socket's 107 bytes: the
            // relative path serves as given.
            let deep = dir.join("d".repeat(120));
            std::fs::create_dir_all(&deep).unwrap();
            std::env::set_current_dir(&deep).unwrap();
            let m = Manager::builder()
                .address(Address::Unix("rel.sock".into()))
                .build()
                .map(|m| m.dict::<u8, u8>().and_then(|d| d.len()).map(drop));
            println!("deep {m:?}");
            std::env::set_current_dir("/").unwrap();
            std::fs::remove_dir_all(dir).unwrap();
        }
        "manager_fork_while_calling" => {
            let m = Manager::start().unwrap();
            let d = m.dict::<u8, u8>().unwrap();
            d.len().unwrap();
            // Its call holds the client's idle connections for 500 ms (a hook of debug
            // builds, which makes the marker file first) as it checks one out: the fork
            // comes meanwhile.
            let dir = common::tempdir("holds-idle");
            let marker = dir.join("holding");
            let caller = {
                let d = d.clone();
                std::thread::Builder::new()
                    .name(format!("multiproc-test-holds-idle:{}", marker.display()))
                    .spawn(move || d.len().unwrap())
                    .unwrap()
            };
            assert!(
                common::eventually(T, || marker.exists()),
                "the hook never held"
            );
            std::fs::remove_dir_all(dir).unwrap();
            let theirs = d.clone();
            // SAFETY: the other thread only calls the manager, whose client's state
            // `spawn_fork` holds across the fork; the child calls it too.
            let mut child = unsafe {
                multiproc::Builder::new()
                    .spawn_fork(move || theirs.len().map_err(|e| e.to_string()))
            }
            .unwrap();
            let joined = child.join_timeout(Duration::from_secs(10));
            if joined.is_err() {
                let _ = child.kill();
                let _ = child.join_timeout(T);
            }
            caller.join().unwrap();
            println!("child {joined:?}");
        }
        "manager_fork_moved" => {
            let m = Manager::start().unwrap();
            let base = m.object_count().unwrap();
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(1, 1).unwrap();
            // SAFETY: as for "manager_fork" above.
            let mut child = unsafe {
                multiproc::Builder::new().spawn_fork(move || {
                    // Long after the parent's copy of `d` went with the closure: the
                    // object must still be there.
                    std::thread::sleep(Duration::from_millis(300));
                    d.insert(2, 2)
                        .and_then(|_| d.len())
                        .map_err(|e| e.to_string())
                })
            }
            .unwrap();
            println!("child {:?}", child.join_timeout(T));
            // Freed once the child has ended and its parent knows it.
            println!("objects {}", objects_above(&m, base));
            // Not joined: its end seen by `is_alive` lets the object go, though the
            // handle stays.
            let d = m.dict::<u8, u8>().unwrap();
            // SAFETY: as above.
            let child = unsafe {
                multiproc::Builder::new().spawn_fork(move || d.len().map_err(|e| e.to_string()))
            }
            .unwrap();
            let t = Instant::now();
            while (child.is_alive() || m.object_count().unwrap() != base) && t.elapsed() < T {
                std::thread::sleep(Duration::from_millis(10));
            }
            println!("unjoined {}", m.object_count().unwrap() - base);
            drop(child);
            // Fire and forget, again and again: each spawn keeps what the parent's
            // proxies hold, not what the lists kept for earlier children hold (it took
            // them all in, and nothing was freed while the program went on forking).
            let mut most = 0;
            for _ in 0..6 {
                let d = m.dict::<u8, u8>().unwrap();
                // SAFETY: as above.
                let child = unsafe {
                    multiproc::Builder::new().spawn_fork(move || d.len().map_err(|e| e.to_string()))
                }
                .unwrap();
                let pid = child.pid();
                drop(child);
                // Ended, unreaped and unseen here: its end is seen by the next spawn.
                let t = Instant::now();
                while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
                    && t.elapsed() < T
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Its own object only: the earlier ones went with the ends this spawn saw
                // (their releases may still be on their way: looked at for a while).
                let t = Instant::now();
                let mut kept = m.object_count().unwrap() - base;
                while kept > 1 && t.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(10));
                    kept = m.object_count().unwrap() - base;
                }
                most = most.max(kept);
            }
            println!("most while forking {most}");
            // Their ends seen (`active_children` looks at every child).
            let t = Instant::now();
            while {
                let _ = multiproc::active_children();
                m.object_count().unwrap() != base
            } && t.elapsed() < T
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            println!("after forking {}", m.object_count().unwrap() - base);
        }
        "manager_fork_returns" => {
            let m = Manager::start().unwrap();
            let base = m.object_count().unwrap();
            let theirs = &m;
            // SAFETY: as for "manager_fork" above.
            let mut child = unsafe {
                multiproc::Builder::new().spawn_fork(move || {
                    let d = theirs.dict::<u8, u8>().map_err(|e| e.to_string())?;
                    d.insert(5, 5).map_err(|e| e.to_string())?;
                    Ok::<_, String>(d)
                })
            }
            .unwrap();
            // Ended, and its session over at the server, before the proxy it returned
            // is taken in here.
            let t = Instant::now();
            while child.is_alive() && t.elapsed() < T {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(500));
            let d = child.join_timeout(T).unwrap().unwrap();
            println!("returned {:?}", d.get(&5).map_err(|e| e.to_string()));
            drop(d);
            println!("objects {}", objects_above(&m, base));
        }
        "manager_fork_passes_on_inherited" => {
            let m = Manager::start().unwrap();
            let base = m.object_count().unwrap();
            // Waits for `child` to end, then a while more (its session over at the
            // server), joins it (which lets go of what was kept for it), then a while
            // more (that release applied) before what it passed on is taken in.
            fn ended<R>(child: &multiproc::JoinHandle<R>) {
                let t = Instant::now();
                while child.is_alive() && t.elapsed() < T {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            // Returned without a call: the child never connected.
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(5, 5).unwrap();
            // SAFETY: as for "manager_fork" above.
            let mut child = unsafe { multiproc::Builder::new().spawn_fork(move || d) }.unwrap();
            ended(&child);
            let d = child.join_timeout(T).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            println!("returned {:?}", d.get(&5).map_err(|e| e.to_string()));
            drop(d);
            // Used, then put on a queue.
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(6, 6).unwrap();
            let q = multiproc::Queue::<multiproc::manager::DictProxy<u8, u8>>::new().unwrap();
            let theirs = q.clone();
            // SAFETY: as above.
            let mut child = unsafe {
                multiproc::Builder::new().spawn_fork(move || {
                    d.len().map_err(|e| e.to_string())?;
                    theirs.put(d).map_err(|e| e.to_string())
                })
            }
            .unwrap();
            ended(&child);
            println!("put {:?}", child.join_timeout(T).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            let d = q.get_timeout(T).unwrap();
            println!("passed on {:?}", d.get(&6).map_err(|e| e.to_string()));
            drop(d);
            // Received (sent by this process, which dropped its own), then passed on
            // without a call: the child's hold of it, which settles this process's
            // count of it in flight, goes at its exit (queued for a call that never
            // came, the object stayed for this process's life).
            let d = m.dict::<u8, u8>().unwrap();
            d.insert(7, 7).unwrap();
            let there = multiproc::Queue::<multiproc::manager::DictProxy<u8, u8>>::new().unwrap();
            let back = multiproc::Queue::<multiproc::manager::DictProxy<u8, u8>>::new().unwrap();
            there.put(d).unwrap();
            let (theirs, their_back) = (there.clone(), back.clone());
            // SAFETY: as above.
            let mut child = unsafe {
                multiproc::Builder::new().spawn_fork(move || {
                    let d = theirs.get_timeout(T).map_err(|e| e.to_string())?;
                    their_back.put(d).map_err(|e| e.to_string())
                })
            }
            .unwrap();
            ended(&child);
            println!("relayed {:?}", child.join_timeout(T).unwrap());
            let d = back.get_timeout(T).unwrap();
            println!("came back {:?}", d.get(&7).map_err(|e| e.to_string()));
            drop(d);
            println!("objects {}", objects_above(&m, base));
        }
        "manager_tcp_1024" => {
            let m = Manager::builder()
                .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
                .authkey(SIEGE_KEY)
                .build()
                .unwrap();
            let server = rustix::process::Pid::from_raw(m.server_pid().unwrap() as i32);
            rustix::process::prlimit(
                server,
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: Some(1024),
                    maximum: Some(1024),
                },
            )
            .unwrap();
            let Address::Tcp(a) = m.address() else {
                unreachable!()
            };
            println!("address {a}");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
        }
        "manager_partitioned_client" => {
            // In a network namespace of the test's: connects, holds a lock, and after
            // the test has cut the link, makes a call.
            let address: std::net::SocketAddr =
                std::env::var("MP_TEST_ADDRESS").unwrap().parse().unwrap();
            let m = Manager::builder()
                .address(address)
                .authkey(PARTITION_KEY)
                // Keepalive, not the call timeout, is what must end the call.
                .call_timeout(Some(Duration::from_secs(120)))
                .keepalive(Some(Duration::from_secs(2)))
                .connect()
                .unwrap();
            let lock = m.named("partition").lock().unwrap();
            let d = m.named("partition-dict").dict::<u8, u8>().unwrap();
            let _held = lock.lock().unwrap().unwrap();
            println!("held");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let t = Instant::now();
            let r = d.len();
            println!("after the cut: {r:?} in {} ms", t.elapsed().as_millis());
            std::thread::sleep(T);
        }
        "manager_owner" => {
            let m = Manager::start().unwrap();
            println!("server {}", m.server_pid().unwrap());
            std::thread::sleep(T);
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// Waits for a child's result, within `T`.
fn join<R: serde::de::DeserializeOwned>(mut h: multiproc::JoinHandle<R>) -> R {
    h.join_timeout(T).unwrap()
}

fn gone_within(pid: u32, d: Duration) -> bool {
    common::wait_gone(pid, d)
}

type Everything = (
    DictProxy<String, u64>,
    ListProxy<String>,
    SetProxy<u32>,
    QueueProxy<Vec<u8>>,
    ValueProxy<(i64, String)>,
    EventProxy,
);

fn use_everything((d, l, s, q, v, e): Everything) -> usize {
    d.insert("child".into(), 7).unwrap();
    d.update_with("n".into(), |n| n.unwrap_or(0) + 10).unwrap();
    l.push("from child".into()).unwrap();
    s.insert(3).unwrap();
    // The parent put a message before starting us.
    let got = q.get_timeout(T).unwrap().unwrap();
    q.put(got.iter().rev().copied().collect()).unwrap();
    v.update_with(|(n, s)| (n * 2, s + "!")).unwrap();
    e.wait_timeout(T).unwrap();
    got.len()
}

fn every_proxy_between_processes() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>().unwrap();
    let l = m.list::<String>().unwrap();
    let s = m.set::<u32>().unwrap();
    let q = m.queue::<Vec<u8>>().unwrap();
    let v = m.value((21i64, "hi".to_string())).unwrap();
    let e = m.event().unwrap();
    d.insert("n".into(), 1).unwrap();
    d.insert("parent".into(), 2).unwrap();
    l.extend(["a".to_string(), "b".to_string()]).unwrap();
    assert!(s.insert(1).unwrap());
    assert!(!s.insert(1).unwrap());
    q.put(vec![1, 2, 3]).unwrap();
    let child = multiproc::spawn(
        use_everything,
        (
            d.clone(),
            l.clone(),
            s.clone(),
            q.clone(),
            v.clone(),
            e.clone(),
        ),
    )
    .unwrap();
    e.set().unwrap();
    assert_eq!(join(child), 3);
    assert_eq!(
        d.items().unwrap(),
        vec![
            ("n".to_string(), 11),
            ("parent".to_string(), 2),
            ("child".to_string(), 7)
        ],
        "insertion order kept, update applied"
    );
    assert_eq!(d.get("child").unwrap(), Some(7));
    assert_eq!(d.keys().unwrap().len(), 3);
    assert_eq!(d.values().unwrap(), vec![11, 2, 7]);
    assert!(d.contains_key("parent").unwrap());
    assert_eq!(d.remove("parent").unwrap(), Some(2));
    assert_eq!(d.remove("parent").unwrap(), None);
    d.update([("x".to_string(), 1), ("y".to_string(), 2)])
        .unwrap();
    assert_eq!(d.len().unwrap(), 4);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());

    assert_eq!(l.to_vec().unwrap(), ["a", "b", "from child"]);
    assert_eq!(l.get(1).unwrap().as_deref(), Some("b"));
    assert_eq!(l.get(9).unwrap(), None);
    assert_eq!(l.set(0, "A".into()).unwrap(), "a");
    assert_eq!(l.pop().unwrap().as_deref(), Some("from child"));
    assert_eq!(l.len().unwrap(), 2);

    assert_eq!(s.to_vec().unwrap(), vec![1, 3]);
    assert!(s.contains(&3).unwrap());
    assert!(s.remove(&3).unwrap());
    assert_eq!(s.len().unwrap(), 1);

    assert_eq!(q.get_timeout(T).unwrap(), Some(vec![3, 2, 1]));
    assert_eq!(q.try_get().unwrap(), None);
    assert_eq!(v.get().unwrap(), (42, "hi!".to_string()));
    v.set((0, String::new())).unwrap();
    assert_eq!(v.get().unwrap().0, 0);
    assert!(e.is_set().unwrap());
    e.clear().unwrap();
    assert!(!e.wait_timeout(Duration::from_millis(20)).unwrap());
    let server = m.server_pid().unwrap();
    drop(m);
    assert!(gone_within(server, Duration::from_secs(5)));
    assert!(d.len().unwrap_err().is_disconnected());
}

fn increment((d, v, n): (DictProxy<String, u64>, ValueProxy<u64>, u32)) -> u32 {
    for _ in 0..n {
        d.update_with("total".into(), |x| x.unwrap_or(0) + 1)
            .unwrap();
    }
    for _ in 0..n / 10 {
        v.update_with(|x| x + 1).unwrap();
    }
    n
}

fn update_with_is_exact() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>().unwrap();
    let v = m.value(0u64).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|_| multiproc::spawn(increment, (d.clone(), v.clone(), 10_000)).unwrap())
        .collect();
    for k in kids {
        assert_eq!(join(k), 10_000);
    }
    assert_eq!(d.get("total").unwrap(), Some(40_000));
    assert_eq!(v.get().unwrap(), 4_000);
}

/// Takes the lock, bumps the counter under it, for `n` rounds.
fn locked_bumps((lock, value, n): (LockProxy, ValueProxy<u64>, u64)) {
    for _ in 0..n {
        let _g = lock.lock().unwrap().unwrap();
        let x = value.get().unwrap();
        value.set(x + 1).unwrap();
    }
}

fn barrier_party(b: BarrierProxy) -> usize {
    b.wait_timeout(T).unwrap()
}

/// How a wait ended: the party's index, or the error's text.
fn barrier_outcome(b: BarrierProxy) -> Result<usize, String> {
    b.wait_timeout(T).map_err(|e| e.to_string())
}

fn cond_waiter((c, ready): (ConditionProxy, ValueProxy<bool>)) -> bool {
    let mut g = c.acquire().unwrap().unwrap();
    let deadline = Instant::now() + T;
    while !ready.get().unwrap() {
        assert!(Instant::now() < deadline);
        g.wait_timeout(Duration::from_secs(1)).unwrap();
    }
    true
}

fn locks_and_friends() {
    let m = Manager::start().unwrap();
    // A lock serialises read-modify-write across processes (Python's seed program).
    let lock = m.lock().unwrap();
    let value = m.value(0u64).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|_| multiproc::spawn(locked_bumps, (lock.clone(), value.clone(), 200)).unwrap())
        .collect();
    for k in kids {
        join(k);
    }
    assert_eq!(value.get().unwrap(), 600);

    // Lock: try, timeout, no re-entry.
    let g = lock.lock().unwrap().unwrap();
    assert!(matches!(
        lock.try_lock().unwrap_err(),
        ManagerError::WouldDeadlock
    ));
    let asked = Instant::now();
    assert!(matches!(
        lock.lock_timeout(Duration::from_secs(20)).unwrap_err(),
        ManagerError::WouldDeadlock
    ));
    assert!(asked.elapsed() < Duration::from_secs(10), "it waited");
    g.unlock().unwrap();
    assert!(lock.try_lock().unwrap().is_some());

    // RLock: re-entrant for one thread, exclusive across threads.
    let r = m.rlock().unwrap();
    let g1 = r.lock().unwrap().unwrap();
    let g2 = r.lock().unwrap().unwrap();
    let r2 = r.clone();
    let other = std::thread::spawn(move || {
        r2.lock_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    });
    assert!(other.join().unwrap(), "another thread took a held rlock");
    drop(g2);
    drop(g1);
    let r2 = r.clone();
    let other = std::thread::spawn(move || r2.lock_timeout(T).unwrap().is_some());
    assert!(other.join().unwrap());

    // Semaphore.
    let sem: SemaphoreProxy = m.semaphore(2).unwrap();
    sem.acquire().unwrap();
    assert!(sem.acquire_timeout(Duration::ZERO).unwrap());
    assert!(!sem.acquire_timeout(Duration::from_millis(20)).unwrap());
    sem.release().unwrap();
    assert!(sem.acquire_timeout(T).unwrap());

    // Barrier across 3 processes: indices 0, 1, 2.
    let b = m.barrier(3).unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(barrier_party, b.clone()).unwrap())
        .collect();
    let mut idx = vec![b.wait_timeout(T).unwrap()];
    idx.extend(kids.into_iter().map(join));
    idx.sort();
    assert_eq!(idx, [0, 1, 2]);
    // A party that times out breaks it for everyone.
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(20)).unwrap_err(),
        ManagerError::Timeout
    ));
    assert!(b.is_broken().unwrap());
    assert_eq!(
        b.n_waiting().unwrap(),
        0,
        "parties said to wait at a broken barrier"
    );
    assert!(matches!(b.wait().unwrap_err(), ManagerError::BrokenBarrier));
    // Reset: whole again; a party waiting at that moment is told it broke, and a new
    // round of parties passes.
    b.reset().unwrap();
    assert!(!b.is_broken().unwrap());
    let waiting = multiproc::spawn(barrier_outcome, b.clone()).unwrap();
    assert!(
        common::eventually(T, || b.n_waiting().unwrap() == 1),
        "the party never waited"
    );
    b.reset().unwrap();
    let told = join(waiting).unwrap_err();
    assert!(told.contains("broken"), "{told}");
    assert_eq!(b.n_waiting().unwrap(), 0);
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(barrier_outcome, b.clone()).unwrap())
        .collect();
    let mut idx = vec![b.wait_timeout(T).unwrap()];
    idx.extend(kids.into_iter().map(|k| join(k).unwrap()));
    idx.sort();
    assert_eq!(idx, [0, 1, 2]);
    assert!(!b.is_broken().unwrap());

    // Condition: a waiter in another process is woken by notify_all.
    let c = m.condition().unwrap();
    let ready = m.value(false).unwrap();
    let waiter = multiproc::spawn(cond_waiter, (c.clone(), ready.clone())).unwrap();
    {
        let g = c.acquire().unwrap().unwrap();
        ready.set(true).unwrap();
        g.notify_all().unwrap();
    }
    assert!(join(waiter));
    let g = c.acquire().unwrap().unwrap();
    assert_eq!(g.notify(1).unwrap(), 0, "nobody waits any more");
}

fn hold_lock_forever((lock, held): (LockProxy, EventProxy)) {
    let _g = lock.lock().unwrap().unwrap();
    held.set().unwrap();
    std::thread::sleep(T);
}

fn client_sigkilled_holding_lock() {
    let m = Manager::start().unwrap();
    let lock = m.lock().unwrap();
    let held = m.event().unwrap();
    let child = multiproc::spawn(hold_lock_forever, (lock.clone(), held.clone())).unwrap();
    assert!(held.wait_timeout(T).unwrap());
    assert!(lock.try_lock().unwrap().is_none(), "the child holds it");
    child.kill().unwrap();
    let t = Instant::now();
    let got = lock.lock_timeout(T).unwrap().expect("the lock came back");
    assert!(t.elapsed() < Duration::from_secs(10));
    let guard = match got {
        Err(died) => died.into_inner(),
        Ok(_) => panic!("the next holder was not told that the owner died"),
    };
    drop(guard);
    // Only the next holder is told.
    assert!(lock.lock().unwrap().is_ok());
    let _ = join_err(child);
}

/// Takes the lock, then forks a child with `spawn_fork` that makes no manager call and
/// sleeps; says the child's pid, and waits to be killed.
fn hold_lock_and_fork((lock, held, child_pid): (LockProxy, EventProxy, ValueProxy<u32>)) {
    let _g = lock.lock().unwrap().unwrap();
    // SAFETY: this process's only thread of its own is this one.
    let child = unsafe {
        multiproc::Builder::new().spawn_fork(|| std::thread::sleep(Duration::from_secs(60)))
    }
    .unwrap();
    child_pid.set(child.pid()).unwrap();
    held.set().unwrap();
    std::thread::sleep(T);
}

/// A client SIGKILLed holding a lock, after it forked a child (`spawn_fork`) that made no
/// manager call: the lock comes back, with `OwnerDied`, while the child lives. The child
/// held copies of the parent's connections, which it let go only at its first call of
/// its own: the server never saw the parent's session end, and the lock stayed taken
/// for as long as the child lived.
fn a_client_sigkilled_holding_a_lock_after_a_spawn_fork_lets_it_go() {
    let m = Manager::start().unwrap();
    let lock = m.lock().unwrap();
    let held = m.event().unwrap();
    let child_pid = m.value(0u32).unwrap();
    let parent = multiproc::spawn(
        hold_lock_and_fork,
        (lock.clone(), held.clone(), child_pid.clone()),
    )
    .unwrap();
    assert!(held.wait_timeout(T).unwrap());
    let forked = child_pid.get().unwrap();
    parent.kill().unwrap();
    let got = lock.lock_timeout(Duration::from_secs(10)).unwrap();
    let alive = !common::wait_gone(forked, Duration::ZERO);
    common::kill_and_reap(forked);
    let _ = join_err(parent);
    assert!(
        alive,
        "the forked child was gone before the lock was asked for"
    );
    match got {
        Some(Err(died)) => drop(died.into_inner()),
        Some(Ok(_)) => panic!("the next holder was not told that the owner died"),
        None => panic!("the lock did not come back while the forked child lived"),
    }
}

/// A registered type whose `Drop` panics.
struct PanicsOnDrop;

impl SharedObject for PanicsOnDrop {
    type Init = ();
    type Request = ();
    type Response = ();
    fn new(_: ()) -> Self {
        PanicsOnDrop
    }
    fn handle(&mut self, _: ()) {}
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("dropping a PanicsOnDrop");
    }
}

/// In a child: makes objects of its own whose `Drop` panics, takes the lock, says so,
/// and waits to be killed.
fn hold_lock_with_bad_objects(
    ((at, key), lock, held): ((Address, Vec<u8>), LockProxy, EventProxy),
) {
    let m = Manager::connect(at, &key).unwrap();
    let bad: Vec<_> = (0..3)
        .map(|_| m.object::<PanicsOnDrop>(()).unwrap())
        .collect();
    let _g = lock.lock().unwrap().unwrap();
    held.set().unwrap();
    std::thread::sleep(T);
    drop(bad);
}

/// A client killed holding a lock and the only references to objects whose `Drop`
/// panics: freeing them as its session ends does not keep the server from releasing
/// its lock (the panic ended that work, and the lock stayed held for good), and the
/// server serves on.
fn a_panicking_drop_keeps_no_dead_clients_lock() {
    let m = Manager::builder()
        .register::<PanicsOnDrop>()
        .build()
        .unwrap();
    let base = m.object_count().unwrap();
    let lock = m.lock().unwrap();
    let held = m.event().unwrap();
    let child = multiproc::spawn(
        hold_lock_with_bad_objects,
        (
            (m.address().clone(), m.authkey().to_vec()),
            lock.clone(),
            held.clone(),
        ),
    )
    .unwrap();
    assert!(held.wait_timeout(T).unwrap());
    child.kill().unwrap();
    let got = lock
        .lock_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("the dead client's lock was never released");
    assert!(
        got.is_err(),
        "the next holder was not told that the owner died"
    );
    drop(got);
    await_count(&m, base + 2);
    let d = m.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
    let _ = join_err(child);
}

/// As above, while two threads of this process keep calling without a pause, so that
/// the server never waits for a request: the dead client is still noticed, its lock
/// released and the next holder told.
fn client_sigkilled_holding_lock_while_others_call() {
    let m = Manager::start().unwrap();
    let lock = m.lock().unwrap();
    let held = m.event().unwrap();
    let d = m.dict::<u64, u64>().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|k| {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(60);
                let mut calls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < end
                    && calls < 50_000_000
                {
                    d.insert(k, calls).unwrap();
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let child = multiproc::spawn(hold_lock_forever, (lock.clone(), held.clone())).unwrap();
    assert!(held.wait_timeout(T).unwrap());
    child.kill().unwrap();
    let got = lock.lock_timeout(T).unwrap().expect("the lock came back");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls: Vec<u64> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        got.is_err(),
        "the next holder was not told that the owner died"
    );
    assert!(calls.iter().all(|&n| n > 0), "calls: {calls:?}");
    let _ = join_err(child);
}

fn get_forever(q: QueueProxy<u8>) {
    let _ = q.get();
}

fn tasks_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"))
        .count()
}

/// A client SIGKILLed while its queue get waits in the server (lent by the dispatcher
/// to its connection's thread): that thread ends, and the server's descriptors and
/// threads go back to what they were; the get took nothing.
fn client_sigkilled_while_its_call_waits() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u8>().unwrap();
    let server = m.server_pid().unwrap();
    q.put(1).unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), Some(1));
    let fds = common::settled(|| common::fds_of(server));
    let tasks = common::settled(|| tasks_of(server));
    let child = multiproc::spawn(get_forever, q.clone()).unwrap();
    // Its connections (a local one waiting in the get, and its anchor) are in place.
    assert!(
        common::eventually(T, || common::fds_of(server) > fds
            && tasks_of(server) > tasks),
        "the child never connected"
    );
    child.kill().unwrap();
    let _ = join_err(child);
    assert!(
        common::eventually(T, || common::fds_of(server) <= fds
            && tasks_of(server) <= tasks),
        "the server kept {} descriptors (from {fds}) and {} threads (from {tasks})",
        common::fds_of(server),
        tasks_of(server)
    );
    q.put(2).unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), Some(2));
}

/// Waits on `c` once `waiting` is set (with the condition's lock held, so that whoever
/// takes the lock next finds this wait queued); whether it was notified within 20 s
/// (well within the test's joins), `None` if it took the lock back told that its last
/// owner died.
fn cond_wait_once((c, waiting): (ConditionProxy, EventProxy)) -> Option<bool> {
    let mut g = c.acquire().unwrap().unwrap();
    waiting.set().unwrap();
    match g.wait_timeout(Duration::from_secs(20)) {
        Ok(notified) => Some(notified),
        Err(ManagerError::OwnerDied) => None,
        Err(e) => panic!("{e}"),
    }
}

/// Starts a process waiting on `c`; returns once its wait is queued (it let the lock
/// go, which only its wait does).
fn queued_waiter(m: &Manager, c: &ConditionProxy) -> multiproc::JoinHandle<Option<bool>> {
    let waiting = m.event().unwrap();
    let h = multiproc::spawn(cond_wait_once, (c.clone(), waiting.clone())).unwrap();
    assert!(waiting.wait_timeout(T).unwrap());
    // The waiter holds the lock until its wait lets it go (were it to die holding
    // it, this would say so).
    drop(c.acquire().unwrap().expect("the waiter let the lock go"));
    h
}

/// Processes wait on a condition and one of them is SIGKILLed: a notification it took
/// goes on to the next waiter, which acts on it (before, that waiter waited out its
/// timeout). Once with the waiter killed after it was notified, before it took the lock
/// back (it can never act on it); once killed just before `notify(1)`, with the
/// condition's lock held: the server picks it, and may even give it the lock back before
/// its connection closes (the kernel closes a killed process's descriptors only once
/// its memory is gone), which then counts as held by a process that died (the next
/// waiter is told so; it used to be left asleep, the notification lost). And a
/// notification goes on only to a process that was waiting when it was made: a waiter
/// killed after `notify_all` woke it does not wake the notifier's own wait after it.
fn notification_to_a_sigkilled_waiter_passes_on() {
    let m = Manager::start().unwrap();
    let c = m.condition().unwrap();
    let waiters: Vec<_> = (0..5).map(|_| queued_waiter(&m, &c)).collect();
    let [first, second, third, fourth, fifth] = <[_; 5]>::try_from(waiters).unwrap();
    let t = Instant::now();
    {
        let g = c.acquire().unwrap().unwrap();
        assert_eq!(g.notify(1).unwrap(), 1);
        first.kill().unwrap();
        let _ = join_err(first);
    }
    assert_eq!(join(second), Some(true), "the next waiter was not notified");
    {
        // Killed with the lock in hand and notified at once, microseconds apart: the
        // server has not looked at its waiters since (and reaping it first could take
        // longer than the server's 50 ms).
        let g = c.acquire().unwrap().unwrap();
        third.kill().unwrap();
        assert_eq!(g.notify(1).unwrap(), 1);
    }
    let _ = join_err(third);
    // Woken either way, well before its own timeout (20 s).
    let woken = join(fourth);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_ne!(woken, Some(false), "the live waiter was not notified");
    let mut g = c.acquire().unwrap().unwrap();
    assert_eq!(g.notify_all().unwrap(), 1);
    fifth.kill().unwrap();
    let _ = join_err(fifth);
    assert!(
        !g.wait_timeout(Duration::from_millis(300)).unwrap(),
        "the notifier's own wait took the notification it made"
    );
}

/// The server child sizes its descriptor table before it starts threads: grown later,
/// past 64 descriptors (a client's fourth local connection or so), the kernel would make
/// the call that opens the 65th wait for an RCU grace period, 12-30 ms.
fn server_descriptor_table_sized_at_start() {
    let m = Manager::start().unwrap();
    let pid = m.server_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let size: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("FDSize in /proc/PID/status");
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .expect("the server's descriptor limit");
    assert!(size >= limit.min(4096), "FDSize {size}, limit {limit}");
}

fn join_err<R: serde::de::DeserializeOwned>(
    mut h: multiproc::JoinHandle<R>,
) -> multiproc::ProcessError {
    match h.join_timeout(T) {
        Ok(_) => panic!("the child succeeded"),
        Err(e) => e,
    }
}

/// Hammers the dict until the manager goes; how long the last (failed) call took, µs.
fn hammer(d: DictProxy<u64, u64>) -> u64 {
    let mut i = 0u64;
    loop {
        let t = Instant::now();
        match d.insert(i % 64, i) {
            Ok(_) => i += 1,
            Err(e) => {
                assert!(e.is_disconnected(), "{e}");
                return t.elapsed().as_micros() as u64;
            }
        }
    }
}

/// Whether an untimed `get` on `q` ended saying the manager is gone.
fn get_until_disconnected(q: QueueProxy<u8>) -> bool {
    q.get().unwrap_err().is_disconnected()
}

/// A process whose untimed `get` on `q` waits in the manager's server `server`:
/// returned once the server has its connection (made for that call), and the call with
/// it.
fn get_waiting_in_server(server: u32, q: &QueueProxy<u8>) -> multiproc::JoinHandle<bool> {
    let fds = common::settled(|| common::fds_of(server));
    let tasks = common::settled(|| tasks_of(server));
    let child = multiproc::spawn(get_until_disconnected, q.clone()).unwrap();
    assert!(
        common::eventually(T, || common::fds_of(server) > fds
            && tasks_of(server) > tasks),
        "the get never reached the server"
    );
    child
}

fn wait_for_event(e: EventProxy) -> bool {
    e.wait_timeout(T).unwrap()
}

/// A `set` followed at once by a `clear` releases the waiters of the moment, as
/// Python's does: the waiter, woken in the server, found the event clear again when it
/// looked and waited on (until its timeout, or for ever).
fn a_set_then_clear_releases_the_waiters() {
    let m = Manager::start().unwrap();
    let e = m.event().unwrap();
    let server = m.server_pid().unwrap();
    let threads = || -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{server}/task"))
            .unwrap()
            .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    for round in 0..20 {
        common::settled(|| threads().len());
        let before = threads();
        let waiter = multiproc::spawn(wait_for_event, e.clone()).unwrap();
        // The server thread the wait is lent to, asleep in it (on the object's
        // condition variable) for three looks in a row.
        let mut asleep = 0;
        assert!(
            common::eventually(T, || {
                let waiting = threads().into_iter().any(|t| {
                    !before.contains(&t)
                        && std::fs::read_to_string(format!("/proc/{server}/task/{t}/wchan"))
                            .is_ok_and(|w| w.contains("futex"))
                });
                asleep = if waiting { asleep + 1 } else { 0 };
                asleep == 3
            }),
            "the wait never slept in the server"
        );
        let started = Instant::now();
        e.set().unwrap();
        e.clear().unwrap();
        assert!(join(waiter), "round {round}: the waiter timed out");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: the waiter was released only after {:?}",
            started.elapsed()
        );
    }
}

fn server_sigkilled_under_load() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u64, u64>().unwrap();
    let q = m.queue::<u8>().unwrap();
    let server = m.server_pid().unwrap();
    // A process blocked in a server-side wait.
    let blocked = get_waiting_in_server(server, &q);
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(hammer, d.clone()).unwrap())
        .collect();
    assert!(common::eventually(T, || d.len().unwrap() == 64));
    // SAFETY: kill(2) on the manager's server, a child this test started.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let t = Instant::now();
    for k in kids {
        let last_call_us = join(k);
        assert!(
            last_call_us < 5_000_000,
            "a call hung for {last_call_us} µs"
        );
    }
    assert!(join(blocked), "the waiting get did not end disconnected");
    assert!(d.get(&1).unwrap_err().is_disconnected());
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(m);
    assert!(gone_within(server, Duration::from_secs(5)));
}

/// A program that handles Ctrl-C itself, with a managed dict: says when it is ready,
/// then, once interrupted, what the dict holds.
fn interrupted_manager() {
    common::handle_ctrl_c();
    let m = Manager::start().unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    d.insert(1, 2).unwrap();
    println!("ready");
    assert!(common::eventually(T, common::interrupted));
    println!("after {:?}", d.get(&1).map_err(|e| e.to_string()));
}

/// Ctrl-C in a terminal sends `SIGINT` to the whole foreground process group, the
/// manager's server included: its owner decides what it means (Python's manager
/// ignores it too, bpo-36368), so a program that handles it still has its objects.
fn ctrl_c_is_left_to_the_managers_owner() {
    let mut h = Helper::start("interrupted_manager");
    h.expect("ready", T);
    h.ctrl_c();
    assert_eq!(h.expect("after ", T), "Ok(Some(2))");
    assert!(h.wait(T).success());
}

fn owner_sigkilled_takes_server() {
    let mut h = Helper::start("manager_owner");
    let server: u32 = h.expect("server ", T).parse().unwrap();
    assert!(!gone_within(server, Duration::ZERO));
    let tree = h.sigkill();
    assert!(
        gone_within(server, Duration::from_secs(5)),
        "the manager outlived its SIGKILLed owner by 5 seconds"
    );
    assert_eq!(common::reap_all(&tree, T), [], "left running");
}

fn remote_client((address, key): (Address, Vec<u8>)) -> Vec<(String, u64)> {
    let m = Manager::connect(address, &key).unwrap();
    let scores = m.named("scores").dict::<String, u64>().unwrap();
    scores
        .update_with(format!("client-{}", std::process::id() % 2), |n| {
            n.unwrap_or(0) + 1
        })
        .unwrap();
    scores
        .update_with("both".into(), |n| n.unwrap_or(0) + 1)
        .unwrap();
    scores.items().unwrap()
}

fn remote_tcp_right_and_wrong_key() {
    let key = b"correct horse battery staple".to_vec();
    let server =
        Manager::serve("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), &key).unwrap();
    let address = server.address().clone();
    assert!(matches!(address, Address::Tcp(a) if a.port() != 0));
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(remote_client, (address.clone(), key.clone())).unwrap())
        .collect();
    for k in kids {
        join(k);
    }
    let local = server.manager().unwrap();
    let scores = local.named("scores").dict::<String, u64>().unwrap();
    assert_eq!(scores.get("both").unwrap(), Some(2));

    // A wrong key is refused, on connect and on every later connection.
    let err = Manager::connect(address.clone(), b"wrong").unwrap_err();
    assert!(matches!(err, ManagerError::Auth(_)), "{err}");
    // A raw peer that answers the challenge with garbage, then sends a request anyway,
    // gets nothing executed.
    let Address::Tcp(a) = address else {
        unreachable!()
    };
    let mut raw = TcpStream::connect(a).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let hello = read_frame(&mut raw).unwrap();
    assert_eq!(&hello[..4], b"MPM4");
    write_frame(&mut raw, &[0u8; 72]);
    assert_eq!(read_frame(&mut raw).as_deref(), Some(&b"DENY"[..]));
    // Then a perfectly formed request to create a named list: refused by a closed door.
    let mut request = Vec::new();
    encoded_create_list(&mut request, "intruder");
    let _ = raw.write_all(&(request.len() as u32).to_le_bytes());
    let _ = raw.write_all(&request);
    assert_eq!(read_frame(&mut raw), None, "the connection stays open");
    let probe = local.named("intruder").dict::<u8, u8>().unwrap();
    assert_eq!(probe.len().unwrap(), 0, "the intruder's request ran");
    drop(local);
    drop(server);
    // Stopped: clients are refused promptly.
    assert!(
        Manager::connect(address_of(a), &key)
            .unwrap_err()
            .is_disconnected()
    );
}

/// Client processes of a manager at a TCP address on this machine move onto shared
/// memory (their connections hold the channels' memory files) and get the same answers;
/// with the local transport off they stay on the socket. The server's nearby listener
/// goes with it.
fn tcp_clients_on_this_machine_use_shared_memory() {
    let key = b"a manager on this machine".to_vec();
    let m = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .authkey(key.clone())
        .build()
        .unwrap();
    let address = m.address().clone();
    let server = m.server_pid().unwrap();
    let names = abstract_names_of(server);
    assert_eq!(names.len(), 1, "{names:?}");
    for (i, local) in [true, false, true].into_iter().enumerate() {
        let kid = multiproc::spawn(memfds_over_tcp, (address.clone(), key.clone(), local)).unwrap();
        let (memfds, total) = join(kid);
        assert_eq!(total, i as u64 + 1, "local transport {local}");
        if local {
            assert!(
                memfds >= 2,
                "{memfds} memory files: the client stayed on TCP"
            );
        } else {
            assert_eq!(memfds, 0, "the local transport is off");
        }
    }
    m.shutdown();
    assert!(gone_within(server, T), "the server is still there");
    assert!(
        !abstract_listeners().contains(&names[0]),
        "{} is still bound",
        names[0]
    );
}

/// Connects to the manager at `address`, adds one to a named counter, and says how many
/// memory files the connection opened, and the counter.
fn memfds_over_tcp((address, key, local): (Address, Vec<u8>, bool)) -> (usize, u64) {
    let before = memfds();
    let m = Manager::builder()
        .address(address)
        .authkey(key)
        .local_transport(local)
        .connect()
        .unwrap();
    let d = m.named("tcp").dict::<String, u64>().unwrap();
    let total = d
        .update_with("n".to_string(), |n| n.unwrap_or(0) + 1)
        .unwrap();
    let memfds = memfds().saturating_sub(before);
    assert_eq!(d.get("n").unwrap(), Some(total));
    (memfds, total)
}

/// This process's descriptors that are memory files.
fn memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().starts_with("/memfd:"))
        .count()
}

/// The abstract socket names process `pid` listens on (from `/proc/net/unix`, whose
/// inodes are matched against the process's descriptors).
fn abstract_names_of(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|p| {
                    let p = p.to_string_lossy().into_owned();
                    Some(p.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    abstract_listening_sockets()
        .into_iter()
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(_, name)| name)
        .collect()
}

/// The names of every listening socket in the abstract namespace.
fn abstract_listeners() -> Vec<String> {
    abstract_listening_sockets()
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// Inode and name of every listening socket in the abstract namespace, from
/// `/proc/net/unix` (Num RefCount Protocol Flags Type St Inode Path; a listening one
/// has flags 10000 and state 01).
fn abstract_listening_sockets() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && f[5] == "01" && f[3] == "00010000" && f[7].starts_with('@'))
                .then(|| (f[6].to_owned(), f[7].to_owned()))
        })
        .collect()
}

fn address_of(a: std::net::SocketAddr) -> Address {
    Address::Tcp(a)
}

/// `Request::Create { kind: List, name: Some(name), tag: "", init: [] }` in multiproc's
/// format (no integer here is wider than a byte): variant 0, kind 1, Some, the name, an
/// empty tag, empty init.
fn encoded_create_list(out: &mut Vec<u8>, name: &str) {
    out.extend([0, 1, 1, name.len() as u8]);
    out.extend(name.as_bytes());
    out.extend([0, 0]);
}

fn read_frame(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn write_frame(s: &mut impl Write, body: &[u8]) {
    let _ = s.write_all(&(body.len() as u32).to_le_bytes());
    let _ = s.write_all(body);
}

fn unix_socket_file_removed() {
    let dir = std::env::temp_dir().join(format!("mptest-mgr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manager.sock");
    let m = Manager::builder().address(path.as_path()).build().unwrap();
    assert!(path.exists());
    let l = m.list::<u8>().unwrap();
    l.push(1).unwrap();
    let again = Manager::connect(path.as_path(), m.authkey()).unwrap();
    assert_eq!(
        again.address().to_string(),
        format!("unix:{}", path.display())
    );
    drop(again);
    drop(m);
    assert!(!path.exists(), "the socket file was left");
    std::fs::remove_dir(&dir).unwrap();
}

/// A socket file left where a server was (its server killed, or ended by a signal while
/// it served for ever, removes nothing) is taken over by the next server at the path:
/// the restart failed with `AddrInUse`. A socket someone listens on, or a file that is
/// no socket, is left alone.
fn a_stale_socket_file_is_taken_over() {
    let dir = common::tempdir("mgr-stale");
    let path = dir.join("manager.sock");
    // Bound and closed: a socket file nobody listens on, as a killed server leaves.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let refused = || {
        let e = Manager::builder()
            .address(path.as_path())
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, ManagerError::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse),
            "{e}"
        );
    };
    let m = Manager::builder().address(path.as_path()).build().unwrap();
    let l = m.list::<u8>().unwrap();
    l.push(1).unwrap();
    // Live: not taken.
    refused();
    assert_eq!(l.len().unwrap(), 1, "the live server was disturbed");
    drop((l, m));
    assert!(!path.exists());
    // Not a socket: not removed.
    std::fs::write(&path, b"data").unwrap();
    refused();
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    std::fs::remove_file(&path).unwrap();
    // A server killed: the next takes its path over, and the first's handle, dropped
    // later, leaves the second's socket alone (it removed the path, whatever it named).
    let first = Manager::builder().address(path.as_path()).build().unwrap();
    // Killed once the file system's clock has moved past its socket's change time, as
    // a server is killed a while after it bound: one killed within that tick could
    // leave a file the next server's bind gives the same inode and change time.
    let probe = dir.join("probe");
    let changed = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let bound = changed(&path);
    assert!(common::eventually(T, || {
        std::fs::write(&probe, b"").unwrap();
        changed(&probe) > bound
    }));
    std::fs::remove_file(&probe).unwrap();
    // SAFETY: kill(2) on the manager's server, a child this test started.
    unsafe { libc::kill(first.server_pid().unwrap() as i32, libc::SIGKILL) };
    let mut second = None;
    assert!(common::eventually(T, || {
        second = Manager::builder().address(path.as_path()).build().ok();
        second.is_some()
    }));
    let second = second.unwrap();
    drop(first);
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "the live server's socket was removed"
    );
    drop(second);
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A registered custom type.
struct Tickets {
    next: u64,
}

#[derive(Serialize, Deserialize)]
enum Ask {
    Next,
    Peek,
    Explode,
}

impl SharedObject for Tickets {
    type Init = u64;
    type Request = Ask;
    type Response = u64;

    fn new(first: u64) -> Self {
        assert!(first != u64::MAX, "no tickets start at the last one");
        Tickets { next: first }
    }

    fn handle(&mut self, ask: Ask) -> u64 {
        match ask {
            Ask::Next => {
                self.next += 1;
                self.next - 1
            }
            Ask::Peek => self.next,
            Ask::Explode => panic!("asked to explode"),
        }
    }
}

struct NotRegistered;

impl SharedObject for NotRegistered {
    type Init = ();
    type Request = ();
    type Response = ();
    fn new(_: ()) -> Self {
        NotRegistered
    }
    fn handle(&mut self, _: ()) {}
}

/// A registered type whose constructor takes its time.
struct SlowStart;

impl SharedObject for SlowStart {
    /// Says it started by creating the file, then takes this long.
    type Init = (String, u64);
    type Request = ();
    type Response = ();
    fn new((started, ms): (String, u64)) -> Self {
        std::fs::write(started, b"").unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        SlowStart
    }
    fn handle(&mut self, _: ()) {}
}

/// A server that takes no new connections (stopped; here a listener that never
/// accepts, its queue full): connecting ends with `Unresponsive` at the call timeout,
/// not a wait without end (nor `Disconnected`, which says the server is gone).
fn connect_to_a_full_queue_ends() {
    let dir = common::tempdir("full-queue");
    let path = dir.join("full.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // A queue of one connection, taken by the first.
    rustix::net::listen(&listener, 0).unwrap();
    let _first = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let address = Address::Unix(path.clone());
    std::thread::spawn(move || {
        let r = Manager::builder()
            .address(address)
            .authkey(b"key".to_vec())
            .call_timeout(Some(Duration::from_secs(2)))
            .connect()
            .map(drop);
        tx.send(r).unwrap();
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("connecting waited for ever");
    // A server that takes no connection answers nothing: not one that is gone.
    assert!(
        matches!(r, Err(ManagerError::Unresponsive(d))
            if (Duration::from_millis(1900)..=Duration::from_secs(2)).contains(&d)),
        "{r:?}"
    );
    drop(listener);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A slow constructor holds up no other client's creations (they all waited for it).
fn slow_constructor_stalls_no_create() {
    let m = Manager::builder().register::<SlowStart>().build().unwrap();
    let dir = common::tempdir("slow-ctor");
    let marker = dir.join("started");
    std::thread::scope(|s| {
        let init = (marker.display().to_string(), 3000);
        let slow = s.spawn(|| m.object::<SlowStart>(init).map(drop));
        assert!(common::eventually(T, || marker.exists()), "never started");
        let started = Instant::now();
        let d = m.dict::<u8, u8>().unwrap();
        let took = started.elapsed();
        d.insert(1, 1).unwrap();
        assert!(
            took < Duration::from_secs(1),
            "a dict's creation took {took:?}"
        );
        slow.join().unwrap().unwrap();
    });
    std::fs::remove_dir_all(dir).unwrap();
}

fn take_tickets(t: ObjectProxy<Tickets>) -> Vec<u64> {
    (0..100).map(|_| t.call(Ask::Next).unwrap()).collect()
}

fn custom_objects() {
    let m = Manager::builder().register::<Tickets>().build().unwrap();
    let t = m.object::<Tickets>(1000).unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(take_tickets, t.clone()).unwrap())
        .collect();
    let mut all: Vec<u64> = kids.into_iter().flat_map(join).collect();
    all.sort();
    assert_eq!(all, (1000..1200).collect::<Vec<_>>(), "each ticket once");
    assert_eq!(t.call(Ask::Peek).unwrap(), 1200);
    let err = t.call(Ask::Explode).unwrap_err();
    assert!(
        matches!(&err, ManagerError::Panicked(m) if m.contains("asked to explode")),
        "{err}"
    );
    assert_eq!(t.call(Ask::Next).unwrap(), 1200, "the object is served on");
    // A constructor that panics fails the creation, saying so, and this client's
    // connection serves on (it was closed, and the client told the server was gone).
    let err = m.object::<Tickets>(u64::MAX).unwrap_err();
    assert!(
        matches!(&err, ManagerError::Panicked(m) if m.contains("no tickets start")),
        "{err}"
    );
    assert_eq!(t.call(Ask::Next).unwrap(), 1201);
    let err = m.object::<NotRegistered>(()).unwrap_err();
    assert!(matches!(err, ManagerError::Unregistered(_)), "{err}");
}

fn named_objects_and_types() {
    let m = Manager::start().unwrap();
    let a = m.named("jobs").queue::<String>().unwrap();
    let b = m.named("jobs").queue::<String>().unwrap();
    a.put("one".into()).unwrap();
    assert_eq!(b.get_timeout(T).unwrap().as_deref(), Some("one"));
    let err = m.named("jobs").queue::<u32>().unwrap_err();
    assert!(matches!(err, ManagerError::WrongType { .. }), "{err}");
    let err = m.named("jobs").list::<String>().unwrap_err();
    assert!(matches!(err, ManagerError::WrongType { .. }), "{err}");
    // Anonymous objects are distinct.
    let c = m.queue::<String>().unwrap();
    assert!(c.try_get().unwrap().is_none());
}

fn bad_input_clear_errors() {
    let err = Manager::builder().authkey(Vec::new()).build().unwrap_err();
    assert!(matches!(err, ManagerError::InvalidArgument(_)), "{err}");
    assert!("not an address".parse::<Address>().is_err());
    assert_eq!(
        "unix:@name".parse::<Address>().unwrap(),
        Address::Abstract(b"name".to_vec())
    );
    let m = Manager::start().unwrap();
    let err = m.barrier(0).unwrap_err();
    assert!(matches!(err, ManagerError::InvalidArgument(_)), "{err}");
    let l = m.list::<u8>().unwrap();
    let err = l.set(5, 1).unwrap_err();
    assert!(
        matches!(err, ManagerError::IndexOutOfRange { index: 5, len: 0 }),
        "{err}"
    );
    let d = m.dict::<u8, Unserializable>().unwrap();
    assert!(matches!(
        d.insert(1, Unserializable).unwrap_err(),
        ManagerError::Codec(_)
    ));
    let q = m.list::<multiproc::Queue<u8>>().unwrap();
    let err = q.push(multiproc::Queue::new().unwrap()).unwrap_err();
    assert!(
        matches!(&err, ManagerError::Codec(e) if e.to_string().contains("descriptors")),
        "{err}"
    );
    // A proxy of one type cannot read another's values: decoding fails cleanly.
    let v = m.named("v").value(vec![1u8, 2, 3]).unwrap();
    let wrong = m.named("v").value::<String>(String::new());
    assert!(matches!(wrong.unwrap_err(), ManagerError::WrongType { .. }));
    assert_eq!(v.get().unwrap(), [1, 2, 3]);
    // A semaphore never goes below zero; waits time out instead of hanging.
    let sem = m.semaphore(0).unwrap();
    assert!(!sem.acquire_timeout(Duration::from_millis(10)).unwrap());
    // A timeout too long to add to the clock waits as long as it takes (the server's
    // connection thread panicked on it, and the call failed).
    let sem = m.semaphore(1).unwrap();
    assert!(sem.acquire_timeout(Duration::MAX).unwrap());
    let q = m.queue::<u8>().unwrap();
    q.put(4).unwrap();
    assert_eq!(q.get_timeout(Duration::MAX).unwrap(), Some(4));
    // A server whose handshakes may take for ever (its accepting thread panicked).
    let server = Manager::builder()
        .handshake_timeout(Duration::MAX)
        .serve()
        .unwrap();
    let d = server.manager().unwrap().dict::<u8, u8>().unwrap();
    d.insert(1, 2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(2));
}

fn slow_client_does_not_stall_others() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u8>().unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    // Two threads block in the server (a get on an empty queue, a held lock's waiter).
    let q2 = q.clone();
    let waiter = std::thread::spawn(move || q2.get_timeout(T));
    let lock = m.lock().unwrap();
    let held = lock.lock().unwrap().unwrap();
    let lock2 = lock.clone();
    let locker = std::thread::spawn(move || lock2.lock_timeout(T).map(|g| g.is_some()));
    // A raw client that sends half a frame and stalls.
    let mut stall = raw_authenticated(&m);
    stall.write_all(&[100, 0, 0, 0, 1, 2]).unwrap();
    // Meanwhile everyone else is served.
    let t = Instant::now();
    for i in 0..200 {
        d.insert(i, i).unwrap();
    }
    assert!(t.elapsed() < T);
    assert_eq!(d.len().unwrap(), 200);
    q.put(9).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), Some(9));
    drop(held);
    assert!(locker.join().unwrap().unwrap());
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The client's half of the handshake on a raw stream, with the key; panics if refused.
fn authenticate(s: &mut (impl Read + Write), key: &[u8]) {
    let hello = read_frame(s).expect("the server's challenge");
    assert_eq!(&hello[..4], b"MPM4");
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
    mac.update(b"multiproc-manager client v1");
    mac.update(&hello[4..]);
    let mut answer = mac.finalize().into_bytes().to_vec();
    answer.extend([7u8; 32]);
    answer.extend(fastrand::u64(..).to_le_bytes());
    write_frame(s, &answer);
    let ok = read_frame(s).expect("the server's answer");
    assert_eq!(&ok[..4], b"OKAY");
}

/// A new, authenticated raw TCP connection to `a`, reads bounded by `wait`.
fn tcp_authenticated(a: std::net::SocketAddr, key: &[u8], wait: Duration) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&a, wait).expect("connect");
    // Frames go out in two writes: without this, Nagle's algorithm holds the second
    // until the first is acknowledged (40 ms with delayed acknowledgements).
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    authenticate(&mut s, key);
    s
}

/// An authenticated raw connection to `m`'s server, speaking the handshake by hand.
fn raw_authenticated(m: &Manager) -> std::os::unix::net::UnixStream {
    let Address::Abstract(name) = m.address() else {
        panic!("a default manager listens on an abstract socket")
    };
    use std::os::linux::net::SocketAddrExt;
    let a = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&a).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    authenticate(&mut s, m.authkey());
    s
}

/// Real requests, to mutate.
fn sample_requests() -> Vec<Vec<u8>> {
    vec![
        // Create a dict, tag "a".
        vec![0, 0, 0, 1, b'a', 0],
        // Call 1: Len.
        vec![1, 1, 0],
        // Call 1: Get { key: [1], versioned: false }.
        vec![1, 1, 5, 1, 1, 0],
        // Call 1: Insert { key: [1], value: [2] }.
        vec![1, 1, 6, 1, 1, 1, 2],
        // Create a queue with max 0.
        vec![0, 3, 0, 1, b'q', 1, 0],
    ]
}

fn fuzzed_frames() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x6d70);
    let samples = sample_requests();
    for round in 0..300 {
        let mut s = raw_authenticated(&m);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let body: Vec<u8> = match round % 4 {
            // Random bytes.
            0 => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
            // A real request with bytes flipped, cut or grown.
            1 | 2 => {
                let mut b = samples[rng.usize(..samples.len())].clone();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..b.len());
                    match rng.u8(..3) {
                        0 => b[i] = rng.u8(..),
                        1 => b.truncate(i),
                        _ => b.insert(i, rng.u8(..)),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                b
            }
            // A frame header that lies about its length.
            _ => {
                let _ = s.write_all(&u32::MAX.to_le_bytes());
                Vec::new()
            }
        };
        if round % 4 != 3 {
            write_frame(&mut s, &body);
        }
        // Answered, closed, or left waiting: whatever it is, the server serves on.
        let _ = read_frame(&mut s);
        drop(s);
        // Fuzzed requests may be valid ones that change existing objects (the dict
        // above, say), so the check uses an object made after them.
        let probe = m.list::<u32>().unwrap();
        probe.extend([round, round + 1]).unwrap();
        assert_eq!(probe.to_vec().unwrap(), [round, round + 1]);
        d.insert(round, round).unwrap();
    }
    assert!(d.len().unwrap() >= 1);
}

/// Five managers started and dropped leave no server process and no descriptor behind.
/// Counted in a helper process of its own: the tests running beside this one in this
/// process open and close descriptors of their own meanwhile.
fn nothing_left_behind() {
    let mut h = Helper::start("managers_come_and_go");
    let line = h.expect("fds", T);
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts[0], parts[1], "descriptors grew: {line}");
    assert!(h.wait(T).success());
}

fn managers_come_and_go() {
    // Warm up once, so lazily created process-wide state is not counted.
    drop(Manager::start().unwrap());
    let fds = common::fd_count();
    let mut servers = Vec::new();
    for _ in 0..5 {
        let m = Manager::start().unwrap();
        let d = m.dict::<u8, u8>().unwrap();
        d.insert(1, 1).unwrap();
        let q = m.queue::<u8>().unwrap();
        let q2 = q.clone();
        std::thread::spawn(move || q2.put(1))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(q.get().unwrap(), 1);
        servers.push(m.server_pid().unwrap());
        drop((d, q));
    }
    for p in servers {
        assert!(
            gone_within(p, Duration::from_secs(5)),
            "server {p} left running"
        );
    }
    common::eventually(Duration::from_secs(5), || common::fd_count() <= fds);
    println!("fds {fds} {}", common::fd_count());
}

/// Requests larger than half a local connection's ring, and larger than the server
/// takes: the server told the client its `max_frame` as it connected, so such a call
/// fails in the client, saying why, with nothing executed, and the next call is served
/// (on the local transport and on the socket alone).
fn local_big_and_oversized_requests() {
    for local in [true, false] {
        let m = Manager::builder()
            .max_frame(512 * 1024)
            .local_transport(local)
            .build()
            .unwrap();
        let d = m.dict::<u8, Vec<u8>>().unwrap();
        // Larger than half a local connection's ring: out of line, both ways.
        let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        d.insert(1, big.clone()).unwrap();
        assert_eq!(d.get(&1).unwrap().as_deref(), Some(&big[..]));
        match d.insert(2, vec![7; 1024 * 1024]).unwrap_err() {
            ManagerError::InvalidArgument(why) => assert!(
                why.contains("max_frame") && why.contains("524288"),
                "local {local}: {why}"
            ),
            other => panic!("local {local}: {other}"),
        }
        assert_eq!(d.keys().unwrap(), [1], "local {local}");
        assert_eq!(d.get(&1).unwrap().as_deref(), Some(&big[..]));
    }
}

fn append_to_each(lists: Vec<ListProxy<u8>>) -> usize {
    for l in &lists {
        l.push(1).unwrap();
    }
    lists.len()
}

/// Hundreds of proxies received at once by a child, from a server that takes frames of
/// 1 KiB at most: the child's reference changes, queued as it decodes them, go in as
/// many frames as they need. (One frame of them all made the server close the
/// connection, and the same frame went again, for ever: the server never learnt that
/// the child held them, and kept them, as proxies in flight, after the child ended.)
fn many_references_received_under_a_small_max_frame() {
    let m = Manager::builder().max_frame(1024).build().unwrap();
    let base = m.object_count().unwrap();
    let lists: Vec<_> = (0..300).map(|_| m.list::<u8>().unwrap()).collect();
    await_count(&m, base + 300);
    let child = multiproc::spawn(append_to_each, lists.clone()).unwrap();
    drop(lists);
    assert_eq!(join(child), 300);
    await_count(&m, base);
}

fn local_requested_raw_then_dropped() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(0, 0).unwrap();
    let server = m.server_pid().unwrap();
    let before = common::settled(|| common::fds_of(server));
    for round in 0..20 {
        let mut s = raw_authenticated(&m);
        // `Request::Local`: answered with descriptors, which a plain read discards.
        write_frame(&mut s, &[3]);
        let answer = read_frame(&mut s).expect("the server answers");
        assert!(!answer.is_empty());
        if round % 2 == 0 {
            // A moved connection reads nothing more from the socket.
            write_frame(&mut s, &[2]);
            write_frame(&mut s, &[0xff; 9]);
        }
        drop(s);
        d.insert(round, round).unwrap();
    }
    assert_eq!(d.len().unwrap(), 20);
    // Every raw connection's thread and channels are gone from the server.
    assert!(
        common::eventually(Duration::from_secs(10), || common::fds_of(server) <= before),
        "the server's descriptors grew from {before} to {}",
        common::fds_of(server)
    );
}

/// 24 threads waiting in the server at once, twice: the connections a process keeps on
/// the local transport are capped. Counted in a helper process of its own (the tests
/// beside this one open descriptors meanwhile).
fn local_connections_capped_per_process() {
    let mut h = Helper::start("many_local_connections");
    let line = h.expect("fds", T);
    let parts: Vec<usize> = line
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let grown = parts[1].saturating_sub(parts[0]);
    // The connections stay open for later calls: about 17 descriptors for each of at
    // most 16 local ones, one for each of the others (25 local ones would take 425).
    assert!(
        grown >= LOCAL_THREADS,
        "only {grown} descriptors for {LOCAL_THREADS} connections"
    );
    assert!(grown <= 16 * 17 + LOCAL_THREADS + 8, "{grown} descriptors");
    assert!(h.wait(T).success());
}

const LOCAL_THREADS: usize = 24;

fn many_local_connections() {
    let m = Manager::start().unwrap();
    let b = m.barrier(LOCAL_THREADS as u64 + 1).unwrap();
    assert_eq!(b.parties().unwrap(), LOCAL_THREADS + 1);
    let fds = common::fd_count();
    for _ in 0..2 {
        // Every thread waits in the server at once, each on a connection of its own.
        let threads: Vec<_> = (0..LOCAL_THREADS)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.wait_timeout(T))
            })
            .collect();
        b.wait_timeout(T).unwrap();
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }
    println!("fds {fds} {}", common::fd_count());
}

fn call_it(d: DictProxy<u32, u32>) -> usize {
    d.insert(1, 1).unwrap();
    d.len().unwrap()
}

fn relay_it(d: DictProxy<u32, u32>) -> usize {
    join(multiproc::spawn(call_it, d).unwrap())
}

/// A process that passes on a proxy it received without calling it (it never connects
/// until it lets go): once every process let go, the object is freed (the receiver's
/// settlement came before the relay had connected, was dropped, and the relay's report
/// of what it sent kept the object while the server ran).
fn a_proxy_relayed_by_a_process_that_never_called_it_is_freed() {
    let m = Manager::start().unwrap();
    let before = m.object_count().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    assert_eq!(join(multiproc::spawn(relay_it, d.clone()).unwrap()), 1);
    assert_eq!(d.get(&1).unwrap(), Some(1));
    drop(d);
    assert!(
        common::eventually(Duration::from_secs(5), || m.object_count().unwrap()
            == before),
        "{} objects, {before} before",
        m.object_count().unwrap()
    );
}

/// A message with a proxy in it.
type Carried = (Option<DictProxy<u32, u32>>, Option<multiproc::Sender<u8>>);

fn read_one(d: DictProxy<u32, u32>) -> Option<u32> {
    d.get(&1).unwrap()
}

/// A proxy encoded and never sent, or never decoded, counts for nothing: in a message a
/// full queue refused (one that travels beside the ring, carrying a descriptor, and one
/// in the ring), and in the copy a thread pool keeps of a task's argument for a retry
/// that never comes. Each kept the object until the server ended.
fn a_proxy_in_encodings_never_sent_is_freed() {
    let m = Manager::start().unwrap();
    let base = m.object_count().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(1, 1).unwrap();
    let (tx, _rx) = multiproc::pipe::<u8>().unwrap();
    let q = multiproc::Queue::<Carried>::bounded(1).unwrap();
    for descriptor in [true, false] {
        q.put_timeout((None, None), T).unwrap();
        let mut item: Carried = (Some(d.clone()), descriptor.then(|| tx.clone()));
        for _ in 0..3 {
            item = match q.try_put(item) {
                Err(multiproc::TrySendError::Full(v)) => v,
                other => panic!("{other:?}"),
            };
        }
        item = match q.put_timeout(item, Duration::from_millis(5)) {
            Err(multiproc::SendTimeoutError::Timeout(v)) => v,
            other => panic!("{other:?}"),
        };
        assert!(matches!(q.try_get(), Ok((None, None))));
        q.put_timeout(item, T).unwrap();
        let (got, _) = q.get_timeout(T).unwrap();
        assert_eq!(got.unwrap().get(&1).unwrap(), Some(1));
    }
    let tp = multiproc::ThreadPool::new(1).unwrap();
    let once = multiproc::TaskOptions::new().retry(multiproc::RetryPolicy::attempts(3));
    let mut task = multiproc::Executor::submit_with(&tp, read_one, d.clone(), once).unwrap();
    assert_eq!(task.wait_timeout(T).unwrap(), Some(1));
    tp.join_timeout(T).unwrap();
    drop(d);
    await_count(&m, base);
}

/// A server stopped and another started at its address with its key: a proxy of the
/// first, whose client reconnects there, must not read or change the new server's
/// objects (they would have had its ids), nor free them with the references its
/// process reports.
fn a_proxy_of_a_restarted_server_names_no_new_object() {
    let dir = std::env::temp_dir().join(format!("mptest-mgr-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manager.sock");
    let key = b"the same key".to_vec();
    let serve = || {
        Manager::builder()
            .address(path.as_path())
            .authkey(key.clone())
            .serve()
            .unwrap()
    };
    let first = serve();
    let old = first.manager().unwrap();
    let d = old.dict::<u32, u32>().unwrap();
    let l = old.list::<u32>().unwrap();
    d.insert(7, 1).unwrap();
    drop(first);
    assert!(d.get(&7).is_err(), "the first server is gone");

    let second = serve();
    let new = second.manager().unwrap();
    let o = new.dict::<u32, u32>().unwrap();
    let p = new.list::<u32>().unwrap();
    o.insert(7, 999).unwrap();
    p.push(5).unwrap();
    let objects = new.object_count().unwrap();
    // A few tries: the first may meet a connection that broke with the first server.
    let mut last = None;
    for _ in 0..3 {
        let got = d.get(&7);
        assert!(
            !matches!(got, Ok(Some(999))),
            "a proxy of the first server read the second's dict"
        );
        last = Some(got);
    }
    assert!(
        matches!(last, Some(Err(ManagerError::NoSuchObject(_)))),
        "{last:?}"
    );
    assert!(l.push(6).is_err());
    assert_eq!(p.to_vec().unwrap(), [5], "the second server's list changed");
    // The old proxies' releases name nothing there: the count holds while they arrive.
    drop((d, l, old));
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(300) {
        assert_eq!(new.object_count().unwrap(), objects);
    }
    assert_eq!(o.get(&7).unwrap(), Some(999));
    drop((o, p, new, second));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn in_process_server_stop_disconnects_local_clients() {
    let server = Manager::builder().serve().unwrap();
    let m = server.manager().unwrap();
    let q = m.queue::<u8>().unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    d.insert(1, 1).unwrap();
    let q2 = q.clone();
    let (connected, ready) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // Connected before the server stops (a connection refused half-way through its
        // handshake is another test's matter); then waiting in the server, or about to.
        q2.len().unwrap();
        connected.send(()).unwrap();
        q2.get_timeout(T)
    });
    ready.recv_timeout(T).unwrap();
    let t = Instant::now();
    drop(server);
    let err = waiter.join().unwrap().unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    let err = d.get(&1).unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A child forked while another thread of the parent calls the manager: its own call
/// ends (a child forked while that thread held the client's pool of idle connections,
/// as each call does for a moment, found it held for ever, and waited for ever at its
/// first call).
fn forked_while_another_thread_calls() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the client's idle-holding hook)");
    }
    let mut h = Helper::start("manager_fork_while_calling");
    assert_eq!(h.expect("child ", T), "Ok(Ok(0))");
    h.child.wait().unwrap();
}

fn forked_child_leaves_parent_connections_alone() {
    let mut h = Helper::start("manager_fork");
    assert_eq!(h.expect("after fork ", T), "Ok(Ok(3))");
    h.child.wait().unwrap();
}

/// A proxy moved into a `spawn_fork` closure, with no copy kept: the parent's copy of
/// the closure goes as soon as the fork returns, and with it the parent's reference,
/// but the object stays until the child has ended (it was freed before the child's
/// first call), and is freed then.
fn proxy_moved_into_a_forked_child_stays() {
    let mut h = Helper::start("manager_fork_moved");
    assert_eq!(h.expect("child ", T), "Ok(Ok(2))");
    assert_eq!(h.expect("objects ", T), "0");
    assert_eq!(h.expect("unjoined ", T), "0");
    let most: usize = h.expect("most while forking ", T).parse().unwrap();
    assert_eq!(most, 1, "objects kept for 6 ended children");
    assert_eq!(h.expect("after forking ", T), "0");
    h.child.wait().unwrap();
}

/// A proxy that a `spawn_fork` child makes and returns: the child ends with its parent's
/// manager client alive in its memory (never dropped, so it never said it let go on
/// purpose), and the object must stay until the parent has taken the proxy in (it was
/// freed with the child's session), then go once the parent drops it.
fn proxy_returned_by_a_forked_child_stays() {
    let mut h = Helper::start("manager_fork_returns");
    assert_eq!(h.expect("returned ", T), "Ok(Some(5))");
    assert_eq!(h.expect("objects ", T), "0");
    h.child.wait().unwrap();
}

/// A `spawn_fork` child passes on a proxy it inherited (returns it without a call, or
/// uses it and puts it on a queue) and ends: the child's live proxies never drop (its
/// parent's memory holds them), so it reports at its exit what it sent, and the server
/// has it before the child's end is seen. The object stays until the receiver has
/// taken the proxy in, long after the child ended and its parent let go of what it
/// kept for it (freed before: `NoSuchObject`), then goes once the receiver drops it.
/// And a child that takes a proxy in and passes it on without a call says so at its
/// exit (the object stayed for its sender's life). Every object goes in the end.
fn proxy_inherited_and_passed_on_by_a_forked_child_stays() {
    let mut h = Helper::start("manager_fork_passes_on_inherited");
    assert_eq!(h.expect("returned ", T), "Ok(Some(5))");
    assert_eq!(h.expect("put ", T), "Ok(())");
    assert_eq!(h.expect("passed on ", T), "Ok(Some(6))");
    assert_eq!(h.expect("relayed ", T), "Ok(())");
    assert_eq!(h.expect("came back ", T), "Ok(Some(7))");
    assert_eq!(h.expect("objects ", T), "0");
    h.child.wait().unwrap();
}

/// How many objects `m` holds beyond `base`, once that is none or `T` has passed
/// (releases reach the server a moment after the calls that make them).
fn objects_above(m: &Manager, base: usize) -> usize {
    let t = Instant::now();
    while m.object_count().unwrap() != base && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    m.object_count().unwrap() - base
}

/// Median and maximum of some durations.
fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

/// How long the slowloris runs.
const SIEGE: Duration = Duration::from_secs(6);

/// A slowloris on a manager's TCP port: `n` connections that each send one byte of the
/// handshake every 2 s, reconnecting when the server drops one, until `stop`.
fn trickle(a: std::net::SocketAddr, n: usize, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let connect = || {
        let s = TcpStream::connect_timeout(&a, Duration::from_millis(200)).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for slot in &mut conns {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let alive = slot.as_mut().is_some_and(|s| {
                let mut sink = [0u8; 64];
                let open = !matches!(s.read(&mut sink), Ok(0));
                open && s.write(&[0]).is_ok()
            });
            if !alive {
                *slot = connect();
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Bursts of `n` new connections that say nothing, every 400 ms, each held 1.5 s.
fn bursts(a: std::net::SocketAddr, n: usize, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut held: std::collections::VecDeque<(Instant, Vec<TcpStream>)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let burst: Vec<_> = (0..n)
            .filter_map(|_| TcpStream::connect_timeout(&a, Duration::from_millis(200)).ok())
            .collect();
        held.push_back((Instant::now(), burst));
        while held
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(1500))
        {
            held.pop_front();
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The key of the manager the `manager_tcp_1024` helper serves.
const SIEGE_KEY: &[u8] = b"siege";

/// A manager on a TCP port whose server may open 1024 descriptors (a common default),
/// under 600 slow connections and bursts of 200 new ones; a client on an open
/// connection and new clients measure how long they wait to be served.
fn slowloris_and_bursts() {
    use std::sync::atomic::AtomicBool;
    let mut h = Helper::start("manager_tcp_1024");
    let a: std::net::SocketAddr = h.expect("address ", T).parse().unwrap();
    let m = Manager::connect(a, SIEGE_KEY).unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(0, 0).unwrap();
    let stop = AtomicBool::new(false);
    let (calls, connects) = std::thread::scope(|s| {
        s.spawn(|| trickle(a, 600, &stop));
        s.spawn(|| bursts(a, 200, &stop));
        // The attackers stop however this thread ends (a failed assertion included).
        let _stop = StopOnDrop(&stop);
        let mut calls = Vec::new();
        let mut connects = Vec::new();
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < SIEGE {
            let t = Instant::now();
            d.insert(i, i).unwrap();
            calls.push(t.elapsed());
            if i % 5 == 0 {
                // A new connection, its handshake and a ping (this process's client
                // would reuse an idle connection).
                let t = Instant::now();
                let mut fresh = tcp_authenticated(a, SIEGE_KEY, Duration::from_secs(30));
                write_frame(&mut fresh, &[2]);
                assert!(read_frame(&mut fresh).is_some(), "no answer to a ping");
                connects.push(t.elapsed());
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (calls, connects)
    });
    drop((d, m));
    h.send("quit");
    assert!(h.wait(T).success());
    let (call_median, call_max) = median_max(calls);
    let (connect_median, connect_max) = median_max(connects);
    println!(
        "under a slowloris of 600 connections and bursts of 200: a call on an open \
         connection took {call_median:?} (median), {call_max:?} (max); a new connection, \
         its handshake and a ping took {connect_median:?} (median), {connect_max:?} (max)"
    );
    assert!(
        call_max < Duration::from_secs(2),
        "a call waited {call_max:?}"
    );
    assert!(
        connect_max < Duration::from_secs(2),
        "a new client waited {connect_max:?} to be served"
    );
}

/// Trickles a handshake answer one byte every 200 ms into a server whose handshakes may
/// take 1 s in all: it is dropped at the deadline, not kept alive byte by byte.
fn handshake_has_one_deadline() {
    let server = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .authkey(b"deadline".to_vec())
        .handshake_timeout(Duration::from_secs(1))
        .serve()
        .unwrap();
    let Address::Tcp(a) = *server.address() else {
        unreachable!()
    };
    // The deadline runs from the server's accept, a little after this.
    let t = Instant::now();
    let mut slow = TcpStream::connect(a).unwrap();
    slow.set_read_timeout(Some(T)).unwrap();
    assert_eq!(&read_frame(&mut slow).unwrap()[..4], b"MPM4");
    slow.set_nonblocking(true).unwrap();
    // The answer's frame: its length (72), then the body a byte at a time; 40 of its
    // 76 bytes are far from a complete answer.
    let answer: Vec<u8> = [72, 0, 0, 0].into_iter().chain([0; 36]).collect();
    let mut sent = 0;
    let dropped = loop {
        if sent < answer.len() && slow.write(&answer[sent..=sent]).is_err() {
            break t.elapsed();
        }
        sent += 1;
        let mut byte = [0u8; 1];
        match slow.read(&mut byte) {
            Ok(0) => break t.elapsed(),
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break t.elapsed(),
            _ => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "a handshake trickling a byte every 200 ms was kept for 8 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        dropped >= Duration::from_millis(900),
        "dropped after {dropped:?}, before its deadline"
    );
    // Meanwhile and after, clients are served.
    let m = server.manager().unwrap();
    m.dict::<u8, u8>().unwrap().insert(1, 1).unwrap();
}

/// Past `max_handshakes` connections in their handshake, a new one drops the oldest.
fn half_open_connections_capped() {
    let server = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .authkey(b"capped".to_vec())
        .max_handshakes(4)
        // Longer than this test: a connection that goes was dropped for the cap.
        .handshake_timeout(Duration::from_secs(600))
        .serve()
        .unwrap();
    let Address::Tcp(a) = *server.address() else {
        unreachable!()
    };
    let open = || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        // Greeted: the server has accepted it and counts it.
        assert_eq!(&read_frame(&mut s).unwrap()[..4], b"MPM4");
        s
    };
    let mut silent: Vec<TcpStream> = (0..4).map(|_| open()).collect();
    // All four are still open.
    for s in &silent {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a connection under the cap was dropped"
        );
        s.set_nonblocking(false).unwrap();
    }
    silent.push(open());
    // The oldest goes (told why, then closed by the server: not a read that timed out).
    silent[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        read_frame(&mut silent[0]).as_deref(),
        Some(&b"BUSY"[..]),
        "the oldest half-open connection was kept past the cap, or not told why it went"
    );
    let mut b = [0u8; 1];
    let read = silent[0].read(&mut b);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the oldest half-open connection was not closed: {read:?}"
    );
    // A real client gets in and is served (dropping the next oldest).
    let m = server.manager().unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    d.insert(1, 2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(2));
    drop(silent);
}

/// A client whose handshake the server drops to make room (it says `BUSY` once the
/// client has answered, then closes) tries again and gets in: it took the close for a
/// refused key, and failed with `Auth`. A relay between them does the dropping, then
/// passes the next connections through.
fn a_dropped_handshake_is_tried_again() {
    handshake_cut_then_relayed(Some(b"BUSY"));
}

/// The same, with the handshake closed without a word after the client answered (a
/// server that stopped, or dropped it as its deadline passed): not a refused key
/// either (a wrong key is told `DENY`).
fn a_handshake_closed_without_a_word_is_tried_again() {
    handshake_cut_then_relayed(None);
}

/// A client's first handshake, through a relay that answers the client's answer with
/// `first` (if any) and closes; the next connections go through to the server.
fn handshake_cut_then_relayed(first: Option<&'static [u8]>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .authkey(b"again".to_vec())
        .serve()
        .unwrap();
    let Address::Tcp(real) = *server.address() else {
        unreachable!()
    };
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = relay.local_addr().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let relaying = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut c, _) = relay.accept().unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            let mut s = TcpStream::connect(real).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            write_frame(&mut c, &read_frame(&mut s).expect("the server's challenge"));
            assert!(read_frame(&mut c).is_some(), "the client did not answer");
            if let Some(first) = first {
                write_frame(&mut c, first);
            }
            drop((c, s));
            let mut pipes = Vec::new();
            for c in relay.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let c = c.unwrap();
                let s = TcpStream::connect(real).unwrap();
                for (mut from, mut to) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)]
                {
                    from.set_read_timeout(Some(T)).unwrap();
                    pipes.push(std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    }));
                }
            }
            for p in pipes {
                p.join().unwrap();
            }
        })
    };
    let m = Manager::connect(at, b"again").expect("the client tried again");
    let d = m.dict::<u8, u8>().unwrap();
    d.insert(1, 7).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(7));
    drop((d, m));
    done.store(true, Ordering::SeqCst);
    drop(TcpStream::connect(at).unwrap());
    relaying.join().unwrap();
}

/// A burst of 1000 connections, all queued at once: none waits for the kernel to
/// retry its handshake (a second, when the queue of connections not yet accepted is
/// full), and a client that comes after it is served.
fn burst_of_connections() {
    let m = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .build()
        .unwrap();
    let Address::Tcp(a) = *m.address() else {
        unreachable!()
    };
    let mut slowest = Duration::ZERO;
    let mut held = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        held.push(TcpStream::connect_timeout(&a, T).unwrap());
        slowest = slowest.max(t.elapsed());
    }
    let t = Instant::now();
    let mut fresh = tcp_authenticated(a, m.authkey(), T);
    write_frame(&mut fresh, &[2]);
    assert!(read_frame(&mut fresh).is_some(), "no answer to a ping");
    let served = t.elapsed();
    println!(
        "a burst of 1000 connections: the slowest connected in {slowest:?}; a client after it was served in {served:?}"
    );
    assert!(
        slowest < Duration::from_millis(900),
        "a connection of the burst waited {slowest:?}: its handshake was dropped and retried"
    );
    assert!(served < Duration::from_secs(2), "{served:?}");
    drop(held);
}

/// Runs `f` on a thread of its own and returns its result, failing the test if it takes
/// longer than `limit` (the thread is left to finish when what blocks it ends).
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("a call still waited after {limit:?}"))
}

/// Continues a stopped process when dropped, whatever the test did.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let p = rustix::process::Pid::from_raw(self.0 as i32).expect("pid");
        let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
    }
}

/// A server that is stopped (SIGSTOP: a debugger, Ctrl-Z, a frozen cgroup) answers
/// nothing; with a call timeout of 1 s, calls fail with `Unresponsive` instead of
/// hanging, timed calls after their own wait plus the timeout; once it runs again,
/// calls work.
fn stopped_server_call_timeout(m: Manager) {
    let d = m.dict::<u8, u8>().unwrap();
    let q = m.queue::<u8>().unwrap();
    d.insert(1, 1).unwrap();
    let server = m.server_pid().unwrap();
    common::stop_or_continue(server, true);
    let _resume = Resume(server);
    let t = Instant::now();
    let d2 = d.clone();
    let err = within(Duration::from_secs(10), move || d2.len()).unwrap_err();
    let waited = t.elapsed();
    assert!(matches!(err, ManagerError::Unresponsive(_)), "{err:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "the call failed after {waited:?}"
    );
    let t = Instant::now();
    let q2 = q.clone();
    let err = within(Duration::from_secs(10), move || {
        q2.get_timeout(Duration::from_millis(500))
    })
    .unwrap_err();
    let waited = t.elapsed();
    assert!(matches!(err, ManagerError::Unresponsive(_)), "{err:?}");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "the timed call failed after {waited:?}"
    );
    println!("a call to a stopped server failed after {waited:?} ({err})");
    common::stop_or_continue(server, false);
    assert_eq!(d.len().unwrap(), 1);
    q.put(3).unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), Some(3));
}

fn dict_len(d: DictProxy<u8, u8>) -> Result<usize, String> {
    d.len().map_err(|e| e.to_string())
}

/// A manager on a Unix socket named by a relative path serves a child given another
/// directory, and removes its socket after the owner changed directory (clients
/// resolved the path against their own directory: `Disconnected` while the server
/// ran, and the file was left).
fn a_relative_socket_path_serves_other_directories() {
    let mut h = Helper::start("manager_relative_socket");
    assert_eq!(h.expect("child ", T), "Ok(Ok(1))");
    assert_eq!(h.expect("left behind ", T), "false");
    assert_eq!(h.expect("deep ", T), "Ok(Ok(()))");
    h.child.wait().unwrap();
}

/// The first call of a process that received a proxy (`d.len()`, 1 s call timeout),
/// and the seconds it took: the reference it holds is told to the server on a
/// connection opened before the call, which then failed.
fn first_call_timed(d: DictProxy<u8, u8>) -> (f64, String) {
    let t = Instant::now();
    let got = d.len();
    (t.elapsed().as_secs_f64(), format!("{got:?}"))
}

/// A process receives a proxy while the server is stopped: its first call must fail
/// within the call timeout (1 s), opening the connection for its references included
/// (that took the 10 s handshake timeout, plus the call's own second, on every call).
fn received_proxy_calls_a_stopped_server_within_its_timeout() {
    let m = Manager::builder()
        .call_timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let d = m.dict::<u8, u8>().unwrap();
    let server = m.server_pid().unwrap();
    common::stop_or_continue(server, true);
    let _resume = Resume(server);
    let mut child = multiproc::spawn(first_call_timed, d.clone()).unwrap();
    let (took, got) = child.join_timeout(T).unwrap();
    assert!(got.contains("Unresponsive"), "the call returned {got}");
    assert!(
        took < 5.0,
        "the first call of a process that received a proxy failed after {took:.1} s"
    );
    common::stop_or_continue(server, false);
    d.insert(1, 1).unwrap();
    assert_eq!(d.len().unwrap(), 1);
}

fn stopped_server_call_timeout_local() {
    stopped_server_call_timeout(
        Manager::builder()
            .call_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap(),
    );
}

/// Creates a dict while no descriptor is free (its creation goes over the connection
/// the client has; the session's anchor, which keeps it alive whatever happens to the
/// connections calls use, cannot be opened), frees them and uses the dict, then has a
/// call time out against the stopped server (which closes the connection it used), and
/// says what the dict holds once the server runs again.
fn anchor_not_opened() {
    let m = Manager::builder()
        .call_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    let full = common::use_up_descriptors();
    let d = m.dict::<u8, u8>().unwrap();
    drop(full);
    // Each call gives the missing anchor its chance (200 ms each, on a loaded machine).
    d.insert(1, 1).unwrap();
    assert_eq!(d.len().unwrap(), 1);
    assert_eq!(d.get(&1).unwrap(), Some(1));
    let server = m.server_pid().unwrap();
    common::stop_or_continue(server, true);
    let resume = Resume(server);
    let d2 = d.clone();
    let err = within(Duration::from_secs(10), move || d2.len()).unwrap_err();
    assert!(matches!(err, ManagerError::Unresponsive(_)), "{err:?}");
    drop(resume);
    // Time for the server to see the closed connection, and end the session if that
    // was all it had.
    std::thread::sleep(Duration::from_millis(500));
    println!("after {:?}", d.len());
}

/// A session whose anchor could not be opened when a reference was made (the server
/// busy with handshakes, no descriptor free) has it opened by the next call: the
/// first call to time out then (closing the connection it used) does not end the
/// session, and the objects it holds stay (the server freed them: `NoSuchObject`).
fn an_anchor_that_could_not_open_is_opened_by_the_next_call() {
    let mut h = Helper::start("anchor_not_opened");
    assert_eq!(h.expect("after ", T), "Ok(1)", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// Over TCP from this machine: the calls go through shared memory.
fn stopped_server_call_timeout_tcp() {
    stopped_server_call_timeout_over_tcp(true);
}

/// Over TCP with the local transport off: the calls are frames on the socket, as from
/// another machine.
fn stopped_server_call_timeout_tcp_socket_only() {
    stopped_server_call_timeout_over_tcp(false);
}

fn stopped_server_call_timeout_over_tcp(local_transport: bool) {
    stopped_server_call_timeout(
        Manager::builder()
            .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .call_timeout(Some(Duration::from_secs(1)))
            .local_transport(local_transport)
            .build()
            .unwrap(),
    );
}

/// A call on a socket whose request takes a while to write counts that time against
/// its deadline: a `put_timeout` of 40 MiB (more than a loopback socket's buffers
/// take) with a wait of its own of 2 s and a call timeout of 3 s (5 s in all), to a
/// server stopped for 2.5 s (the write stalls for less than the call timeout), then let
/// run for 1 s (it reads the request and waits for room in the queue), then stopped
/// again, fails with `Unresponsive` about 5 s after the call began (plus the time to
/// encode the item), not 5 s after its write ended (7.5 s). Once the server runs again,
/// the queue works.
fn a_blocked_write_counts_against_the_call_timeout() {
    let m = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .call_timeout(Some(Duration::from_secs(3)))
        .local_transport(false)
        .build()
        .unwrap();
    let q = m.bounded_queue::<Vec<u8>>(1).unwrap();
    q.put(vec![1]).unwrap();
    let server = m.server_pid().unwrap();
    common::stop_or_continue(server, true);
    let _resume = Resume(server);
    let q2 = q.clone();
    let call = std::thread::spawn(move || {
        let t = Instant::now();
        let got = q2.put_timeout(vec![7u8; 40 << 20], Duration::from_secs(2));
        (got, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(2500));
    common::stop_or_continue(server, false);
    std::thread::sleep(Duration::from_secs(1));
    common::stop_or_continue(server, true);
    let (got, waited) = within(Duration::from_secs(30), move || call.join().unwrap());
    assert!(
        matches!(got, Err(ManagerError::Unresponsive(_))),
        "{got:?} after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(6300),
        "the call failed after {waited:?}, past its 5 s"
    );
    println!("a call whose write was held up failed after {waited:?}");
    common::stop_or_continue(server, false);
    assert_eq!(q.get_timeout(T).unwrap(), Some(vec![1]));
}

const PARTITION_KEY: &[u8] = b"partition";

/// A client in a network namespace of the test's holds a managed lock; the test cuts
/// the link. The server's keepalive (2 s) gives the client up, so the lock comes back
/// with `OwnerDied`; the client's keepalive ends its call with `Disconnected`.
fn partitioned_client() {
    let ns = common::TestNetns::new();
    let m = Manager::builder()
        .address(std::net::SocketAddr::from((ns.host, 0)))
        .authkey(PARTITION_KEY)
        .keepalive(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let lock = m.named("partition").lock().unwrap();
    let address = m.address().to_string();
    let address = address.trim_start_matches("tcp://");
    let mut client = Helper::start_command(
        "manager_partitioned_client",
        ns.command(std::env::current_exe().unwrap()),
        &[("MP_TEST_ADDRESS", address)],
    );
    client.expect("held", T);
    assert!(lock.try_lock().unwrap().is_none(), "the client holds it");
    ns.cut();
    client.send("call");
    let t = Instant::now();
    let got = lock.lock_timeout(T).unwrap().expect("the lock came back");
    let released = t.elapsed();
    assert!(
        got.is_err(),
        "the next holder was not told that the owner was given up"
    );
    let after = client.expect("after the cut: ", T);
    println!(
        "partition: the server gave the client's lock back after {released:?}; the client's call ended with {after}"
    );
    assert!(
        released < Duration::from_secs(20),
        "the lock came back after {released:?}"
    );
    assert!(after.starts_with("Err(Disconnected)"), "{after}");
    let ms: u64 = after
        .rsplit(" in ")
        .next()
        .and_then(|s| s.trim_end_matches(" ms").parse().ok())
        .unwrap();
    assert!(ms < 20_000, "the client's call ended after {ms} ms");
    drop(client);
    let name = ns.name.clone();
    drop(ns);
    assert!(!common::netns_exists(&name), "the namespace was left");
}

/// How a rogue server behaves.
#[derive(Clone, Copy, Debug)]
enum Rogue {
    /// Challenges properly, then claims to accept with a proof made without the key.
    WrongProof,
    /// Challenges properly, then refuses.
    Denies,
    /// Speaks something else.
    NotAManager,
    /// Sends its challenge a byte every 200 ms.
    Trickles,
    /// Accepts and says nothing.
    Silent,
}

/// Serves one connection as `rogue`; whether the client sent anything after the
/// handshake (it must not).
fn rogue_serve(mut s: TcpStream, rogue: Rogue) -> bool {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut hello = b"MPM4".to_vec();
    hello.extend([9u8; 32]);
    match rogue {
        Rogue::NotAManager => {
            write_frame(&mut s, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
        Rogue::Trickles => {
            let mut framed = (hello.len() as u32).to_le_bytes().to_vec();
            framed.extend(&hello);
            for b in framed {
                if s.write_all(&[b]).is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Rogue::Silent => {}
        Rogue::WrongProof | Rogue::Denies => {
            write_frame(&mut s, &hello);
            let Some(answer) = read_frame(&mut s) else {
                return false;
            };
            assert_eq!(answer.len(), 72, "the client's answer");
            if let Rogue::Denies = rogue {
                write_frame(&mut s, b"DENY");
            } else {
                let mut okay = b"OKAY".to_vec();
                okay.extend([0u8; 32]);
                okay.extend(1024u32.to_le_bytes());
                write_frame(&mut s, &okay);
            }
        }
    }
    // The client must hang up without sending a request.
    read_frame(&mut s).is_some()
}

/// The client refuses servers that cannot prove they hold the key, or that do not
/// speak the protocol, within its call timeout, and sends them nothing.
fn client_refuses_rogue_servers() {
    for rogue in [
        Rogue::WrongProof,
        Rogue::Denies,
        Rogue::NotAManager,
        Rogue::Trickles,
        Rogue::Silent,
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            rogue_serve(s, rogue)
        });
        let t = Instant::now();
        let err = Manager::builder()
            .address(a)
            .authkey(b"the real key".to_vec())
            .call_timeout(Some(Duration::from_secs(2)))
            .connect()
            .unwrap_err();
        let took = t.elapsed();
        let expected = match rogue {
            Rogue::WrongProof | Rogue::Denies => matches!(err, ManagerError::Auth(_)),
            Rogue::NotAManager => matches!(err, ManagerError::Protocol(_)),
            Rogue::Trickles | Rogue::Silent => matches!(err, ManagerError::Unresponsive(_)),
        };
        assert!(expected, "{rogue:?}: {err:?}");
        assert!(took < Duration::from_secs(10), "{rogue:?}: {took:?}");
        assert!(
            !server.join().unwrap(),
            "{rogue:?}: the client sent a request to a server it should have refused"
        );
    }
}

/// Over TCP, calls in flight (an untimed get of a child blocked in the server, and a stream of
/// short calls) end in `Disconnected` soon after the server is SIGKILLed: from this
/// machine (through shared memory), and with the local transport off (on the socket).
fn tcp_calls_in_flight_when_server_sigkilled() {
    calls_in_flight_over_tcp_when_server_sigkilled(true);
}

fn tcp_socket_only_calls_in_flight_when_server_sigkilled() {
    calls_in_flight_over_tcp_when_server_sigkilled(false);
}

fn calls_in_flight_over_tcp_when_server_sigkilled(local_transport: bool) {
    let m = Manager::builder()
        .address("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .local_transport(local_transport)
        .build()
        .unwrap();
    let q = m.queue::<u8>().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let server = m.server_pid().unwrap();
    let blocked = get_waiting_in_server(server, &q);
    let d2 = d.clone();
    let busy = std::thread::spawn(move || {
        let mut i = 0;
        loop {
            if let Err(e) = d2.insert(i % 64, i) {
                return e;
            }
            i += 1;
        }
    });
    assert!(common::eventually(T, || d.len().unwrap() == 64));
    // SAFETY: kill(2) on the manager's server, a child this test started.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let t = Instant::now();
    assert!(join(blocked), "the waiting get did not end disconnected");
    let err = busy.join().unwrap();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(d.len().unwrap_err().is_disconnected());
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(m);
    assert!(gone_within(server, Duration::from_secs(5)));
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Waits until the server holds `n` objects.
fn await_count(m: &Manager, n: usize) {
    let mut last = 0;
    assert!(
        common::eventually(T, || {
            last = m.object_count().unwrap();
            last == n
        }),
        "the server holds {last} objects, not {n}"
    );
}

/// A loop that creates and drops 100,000 dicts leaves the server as it found it.
fn dropped_objects_are_freed() {
    let m = Manager::start().unwrap();
    let server = m.server_pid().unwrap();
    // Warm up: the server's own buffers and tables grow once.
    for _ in 0..1000 {
        drop(m.dict::<u32, String>().unwrap());
    }
    await_count(&m, 0);
    let before = rss_of(server);
    let t = Instant::now();
    for i in 0..100_000u32 {
        let d = m.dict::<u32, String>().unwrap();
        if i % 100 == 0 {
            d.insert(i, "x".repeat(100)).unwrap();
        }
    }
    let took = t.elapsed();
    await_count(&m, 0);
    let after = rss_of(server);
    let grown = after.saturating_sub(before);
    println!(
        "100,000 dicts created and dropped in {took:?}: the server's memory went from {} KiB to {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(grown < 8 << 20, "the server grew by {} KiB", grown / 1024);
}

/// In a child: holds the dict, says so, waits for the word, then writes to it.
fn hold_then_write(
    (d, held, go): (DictProxy<u32, u32>, EventProxy, EventProxy),
) -> Vec<(u32, u32)> {
    d.insert(1, 1).unwrap();
    held.set().unwrap();
    assert!(go.wait_timeout(T).unwrap());
    d.insert(2, 2).unwrap();
    d.items().unwrap()
}

/// Waits until every reference change this process made so far has reached the server:
/// one made after them, on the same connection, is seen.
fn settle(m: &Manager) {
    let base = m.object_count().unwrap();
    let marker = m.list::<u8>().unwrap();
    await_count(m, base + 1);
    drop(marker);
    await_count(m, base);
}

/// A child holding a dict (`hold_then_write`) this process no longer refers to: the
/// child, the number of objects without the dict, and the events the child waits on
/// (`.1` lets it go on).
type HeldByAChild = (
    multiproc::JoinHandle<Vec<(u32, u32)>>,
    usize,
    (EventProxy, EventProxy),
);

fn dict_held_by_a_child(m: &Manager) -> HeldByAChild {
    let (held, go) = (m.event().unwrap(), m.event().unwrap());
    let base = m.object_count().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let child = multiproc::spawn(hold_then_write, (d.clone(), held.clone(), go.clone())).unwrap();
    assert!(held.wait_timeout(T).unwrap());
    drop(d);
    settle(m);
    assert_eq!(
        m.object_count().unwrap(),
        base + 1,
        "freed while the child holds it"
    );
    (child, base, (held, go))
}

fn object_outlives_creators_proxy() {
    let m = Manager::start().unwrap();
    let (child, base, events) = dict_held_by_a_child(&m);
    events.1.set().unwrap();
    assert_eq!(join(child), [(1, 1), (2, 2)]);
    // The child's process ended: nothing refers to the dict any more.
    await_count(&m, base);
}

/// In a child: takes a dict from the queue and writes to it.
fn take_and_write(q: multiproc::Queue<DictProxy<u32, u32>>) -> Vec<(u32, u32)> {
    let d = q.get_timeout(T).unwrap();
    d.insert(5, 5).unwrap();
    d.items().unwrap()
}

/// A proxy sent in a message whose sender drops its own before the receiver takes it:
/// the object waits for the receiver.
fn proxy_in_flight_keeps_object() {
    let m = Manager::start().unwrap();
    let base = m.object_count().unwrap();
    let q = multiproc::Queue::new().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(4, 4).unwrap();
    q.put(d).unwrap();
    // `d` was moved into the message and dropped with it here.
    settle(&m);
    assert_eq!(m.object_count().unwrap(), base + 1, "freed while in flight");
    let child = multiproc::spawn(take_and_write, q.clone()).unwrap();
    assert_eq!(join(child), [(4, 4), (5, 5)]);
    await_count(&m, base);
}

type DictQueue = multiproc::Queue<DictProxy<u32, u32>>;

/// In a child: passes the dict it takes from one queue on to another, and ends (its
/// last proxy dropped, its connections closed).
fn relay_dict((from, to): (DictQueue, DictQueue)) {
    let d = from.get_timeout(T).unwrap();
    to.put(d).unwrap();
}

/// A proxy relayed by a process that then lets go of its last proxy: the object waits
/// for the one who takes it next (it was freed when the relaying process closed its
/// connections, taken for its death).
fn relayed_proxy_outlives_the_relay() {
    let m = Manager::start().unwrap();
    let base = m.object_count().unwrap();
    let (q1, q2) = (
        multiproc::Queue::new().unwrap(),
        multiproc::Queue::new().unwrap(),
    );
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(4, 4).unwrap();
    q1.put(d).unwrap();
    join(multiproc::spawn(relay_dict, (q1.clone(), q2.clone())).unwrap());
    settle(&m);
    let d = q2.get_timeout(T).unwrap();
    assert_eq!(d.items().unwrap(), [(4, 4)]);
    drop(d);
    await_count(&m, base);
}

/// In a child: connects to the manager at `at` and makes a list of its own there
/// (which opens its connection for reference changes, and sends each change at once
/// from then on), says so (the first event), waits for the second, then relays `n`
/// dicts from `from` to `to` one by one, says it has (the third), and ends: the last word of its client (`Leave`) follows
/// thousands of reference changes the server has not read yet.
fn relay_many(((at, key), (from, to), events, n): RelayMany) {
    let m = Manager::connect(at, &key).unwrap();
    let own = m.list::<u8>().unwrap();
    events[0].set();
    assert!(events[1].wait_timeout(T));
    for _ in 0..n {
        to.put(from.get_timeout(T).unwrap()).unwrap();
    }
    events[2].set();
    drop((own, m));
}

/// [`relay_many`]'s arguments: the manager's address and key, the queues, the events
/// (anchored, go, relayed) and the count.
type RelayMany = (
    (Address, Vec<u8>),
    (DictQueue, DictQueue),
    Vec<multiproc::Event>,
    usize,
);

/// A relay whose reference changes fill its connection (the server, stopped, reads
/// none) and that then lets go of its manager: its last changes and its `Leave` wait
/// for the server to take them (a second at most). They were left unsent at its end (the socket took no
/// more), the session ended as a death, and the dicts it relayed and nobody had taken
/// yet were freed: `NoSuchObject` for their receiver.
fn a_relays_last_word_waits_for_room() {
    const N: usize = 20_000;
    let m = Manager::start().unwrap();
    let server = m.server_pid().unwrap();
    let (q1, q2): (DictQueue, DictQueue) = (
        multiproc::Queue::new().unwrap(),
        multiproc::Queue::new().unwrap(),
    );
    for i in 0..N {
        let d = m.dict::<u32, u32>().unwrap();
        if i == N - 1 {
            d.insert(1, 1).unwrap();
        }
        q1.put(d).unwrap();
    }
    let events: Vec<multiproc::Event> = (0..3).map(|_| multiproc::Event::new().unwrap()).collect();
    let relay = multiproc::spawn(
        relay_many,
        (
            (m.address().clone(), m.authkey().to_vec()),
            (q1.clone(), q2.clone()),
            events.clone(),
            N,
        ),
    )
    .unwrap();
    assert!(events[0].wait_timeout(T));
    {
        let _stopped = common::stopped(server);
        events[1].set();
        assert!(events[2].wait_timeout(T));
    }
    join(relay);
    let mut gone = 0;
    let mut last = None;
    for _ in 0..N {
        let d = q2.get_timeout(T).unwrap();
        match d.len() {
            Ok(_) => last = Some(d),
            Err(ManagerError::NoSuchObject(_)) => gone += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        gone, 0,
        "{gone} of {N} relayed dicts were freed before their receiver took them"
    );
    assert_eq!(last.unwrap().get(&1).unwrap(), Some(1));
}

/// In a child: holds `other` (a proxy of another client of the same server: other
/// settings), relays the dict from one queue to another and drops it, says so, and
/// waits to be killed.
fn relay_then_hold(
    ((from, to), other, relayed): ((DictQueue, DictQueue), ListProxy<u8>, EventProxy),
) {
    // The other client's connection, opened first: the `set` below reuses it (a new
    // connection says the process is back).
    assert!(!relayed.is_set().unwrap());
    let d = from.get_timeout(T).unwrap();
    to.put(d).unwrap();
    relayed.set().unwrap();
    std::thread::sleep(T);
    drop(other);
}

/// A process with two clients of one server (two settings) drops the last proxy of
/// one, then is SIGKILLed: the proxy it relayed and nobody took goes with it (the
/// first client's drop said the process left on purpose, which kept it for good).
fn a_relay_killed_after_one_of_its_clients_left() {
    let m = Manager::start().unwrap();
    let slow = Manager::builder()
        .address(m.address().clone())
        .authkey(m.authkey().to_vec())
        .call_timeout(Some(Duration::from_secs(77)))
        .connect()
        .unwrap();
    let relayed = slow.event().unwrap();
    let other = slow.list::<u8>().unwrap();
    let base = m.object_count().unwrap();
    let (q1, q2) = (
        multiproc::Queue::new().unwrap(),
        multiproc::Queue::new().unwrap(),
    );
    q1.put(m.dict::<u32, u32>().unwrap()).unwrap();
    let child = multiproc::spawn(
        relay_then_hold,
        ((q1.clone(), q2.clone()), other.clone(), relayed.clone()),
    )
    .unwrap();
    assert!(relayed.wait_timeout(T).unwrap());
    settle(&m);
    assert_eq!(m.object_count().unwrap(), base + 1, "freed in flight");
    child.kill().unwrap();
    let _ = join_err(child);
    // Never taken: the message goes with its queue.
    drop((q1, q2));
    await_count(&m, base);
}

fn sigkilled_holder_releases_references() {
    let m = Manager::start().unwrap();
    let (child, base, _events) = dict_held_by_a_child(&m);
    child.kill().unwrap();
    // Its connections closed with it: its references went.
    await_count(&m, base);
    let _ = join_err(child);
}

/// A proxy stored inside a managed value, and a named object, stay when every proxy
/// of them is dropped: the server cannot count references inside stored values, and a
/// name can be opened again at any time.
fn stored_and_named_objects_stay() {
    let m = Manager::start().unwrap();
    let outer = m.list::<DictProxy<u32, u32>>().unwrap();
    let inner = m.dict::<u32, u32>().unwrap();
    inner.insert(1, 10).unwrap();
    outer.push(inner).unwrap();
    let named = m.named("kept").dict::<u32, u32>().unwrap();
    named.insert(2, 20).unwrap();
    drop(named);
    settle(&m);
    let inner = outer.get(0).unwrap().unwrap();
    assert_eq!(inner.get(&1).unwrap(), Some(10));
    drop(inner);
    settle(&m);
    assert_eq!(outer.get(0).unwrap().unwrap().get(&1).unwrap(), Some(10));
    let named = m.named("kept").dict::<u32, u32>().unwrap();
    assert_eq!(named.get(&2).unwrap(), Some(20));
}

/// In a child: never looks at the dict.
fn ignore_dict(_: DictProxy<u32, u32>) {}

/// A process that receives a proxy and drops it without a call still settles it: the
/// object goes once the sender drops its own.
fn received_proxy_dropped_unused() {
    let m = Manager::start().unwrap();
    let base = m.object_count().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    join(multiproc::spawn(ignore_dict, d.clone()).unwrap());
    drop(d);
    await_count(&m, base);
}
