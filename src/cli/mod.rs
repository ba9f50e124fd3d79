//! Subcommands of the `telehub` binary that talk to a running hub through its REST
//! API (see `telehub::client`).

pub mod notify;
pub mod pubsub;
pub mod tokens;
