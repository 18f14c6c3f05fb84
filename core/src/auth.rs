//! Names of the request metadata that carries credentials: one place, so
//! the coordinator and its clients cannot drift apart.

/// A host's id, on every call a worker makes after attaching.
pub const HOST_ID_HEADER: &str = "x-cobble-host";
/// The host key issued when the host attached.
pub const HOST_KEY_HEADER: &str = "x-cobble-host-key";
/// The project's researcher token, as `Bearer <token>`: needed to submit,
/// cancel and collect jobs and to upload blobs.
pub const RESEARCHER_HEADER: &str = "authorization";
pub const BEARER_PREFIX: &str = "Bearer ";
