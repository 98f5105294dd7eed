//! Who a connection is and what it may do: JWT identity (verified keys, the token cache),
//! the grants tokens carry, and the fair-use limits. Runs on the workers (checks) and on the
//! control thread (key fetches); nothing here is touched per message unless auth is on.

pub mod grant;

pub use grant::{Grant, GrantError, Pattern};
pub mod verify;

pub use verify::{Auth, Refusal, Settings, Verified};
