//! The fork server: the parent's side (`client.rs`: start it, ask it for children,
//! stop it) and the server's loop (`server.rs`). The protocol is in `messages.rs` and
//! described in `README.md`.

mod client;
mod placement;
mod server;

pub(crate) use client::{ForkServer, is_answer_lost, is_out_of_step, is_peer_gone, read_status};
pub(crate) use server::{SPARE_NAME, keep_only, serve};
