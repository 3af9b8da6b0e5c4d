//! The admin listener (`health_listen`): what operators and their tools talk to.
//!
//! - [`server`] — the axum router: `/health`, `/metrics` (open), `/api/v1/…`
//!   (API key required), and the key check.
//! - [`api`] — the API's endpoints: nodes, clients, kick, subscriptions, retained
//!   messages, publish.
//! - [`dashboard`] — the web dashboard's embedded files (`/ui/`).
//! - [`keys`] — API keys: the hashed key file, scopes, `astramq ctl key add`.
//! - [`tls`] — HTTPS on the admin listener (`admin_tls`).
//! - [`client`] — a small HTTP client for the other nodes' admin listeners (the
//!   cluster-wide answers).
//!
//! Examples of every endpoint: `docs/admin.md`.

pub mod api;
pub mod client;
pub mod dashboard;
pub mod keys;
pub mod server;
pub mod tls;

pub use server::AdminServer;
