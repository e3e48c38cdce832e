//! The session's network paths, shared by both ends.
//!
//! The shim's relay (login node) and the helper's door (compute node) are
//! the only two listeners a session has. This crate holds what they have
//! in common: the door handshake's I/O ([`handshake`], the wire format is
//! `vscode_slurm_protocol::door`), zero-copy forwarding ([`splice`]), the
//! owner of a TCP connection's other end ([`owner`]), the log of refused
//! connections ([`refusals`]), and the door itself ([`door`]).

pub mod door;
pub mod handshake;
pub mod owner;
pub mod refusals;
pub mod splice;
