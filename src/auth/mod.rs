//! Who a connection is and what it may do: JWT identity (verified keys, the token cache),
//! the grants tokens carry, and the fair-use limits. Runs on the workers (checks) and on the
//! control thread (key fetches); nothing here is touched per message unless auth is on.

pub mod cache;
pub mod grant;
pub mod jwks;
pub mod keys;
pub mod settings;
pub mod verify;

pub use grant::{Grant, GrantError, Pattern};
pub use keys::KeyError;
pub use settings::Settings;
pub use verify::{Auth, AuthStats, Refusal, Verified};

#[cfg(test)]
mod tests;
