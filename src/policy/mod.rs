//! Pure decision logic, free of I/O and TLS: which roles a verified identity
//! holds, whether those roles may call a method on a path, and how a request
//! path is normalized before anything is decided about it.

mod authz;
mod glob;
mod path;
mod roles;
mod routing;

pub use authz::{Authorizer, AuthzDefault, Decision, Route, RouteError};
pub use glob::Glob;
pub use path::{normalize_path, NormalizedPath, PathError, PathParameters};
pub use roles::{Ambiguity, RoleMapper, RoleRule, Roles};
pub use routing::{host_without_port, route_for, UpstreamRoute};

/// Roles travel in a comma-separated header, so they must be plain tokens.
pub fn valid_role(role: &str) -> bool {
    !role.is_empty() && role.len() <= 128 && role.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}
