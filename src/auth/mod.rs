//! Who is calling: registration and login (argon2id password hashes), JWT
//! issue and verification, and the `AuthUser` / `AdminUser` extractors that
//! every protected handler takes, so none can forget to check the token.

pub mod disabled;
pub mod extract;
pub mod hash_queue;
pub mod password;
pub mod routes;
pub mod store;
pub mod token;

pub use extract::{AdminUser, AuthUser};
pub use token::{Role, TokenKeys};
