//! Who is calling: registration and login (argon2id password hashes), JWT
//! issue and verification (user and service tokens), and the `AuthUser` /
//! `AdminUser` / `ServiceCaller` extractors that every protected handler
//! takes, so none can forget to check the token.

pub mod disabled;
pub mod extract;
pub mod hash_queue;
pub mod jwks;
pub mod keys;
pub mod password;
pub mod routes;
pub mod store;
pub mod token;

pub use extract::{scope, AdminUser, AuthUser, ServiceCaller};
pub use token::{Role, Scope, TokenKeys};
