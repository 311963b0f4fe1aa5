//! Our FastCGI responder: a sans-IO record codec and connection state machine, and the
//! tokio server around them.

pub mod conn;
pub mod params;
pub mod record;
pub mod server;
