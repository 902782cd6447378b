//! Domain types shared by every slipway crate.
//!
//! Everything here is pure: no I/O (but `AppJson::read`'s one bounded file read), no async. Parsers in this crate take untrusted input
//! (names from the API, Procfiles from pushed source) and are property-tested.

pub mod appjson;
pub mod deployspec;
pub mod name;
pub mod procfile;
pub mod secret;

pub use appjson::{AppJson, AppJsonError, Healthcheck, HealthcheckKind};
pub use deployspec::{DeploySpec, InconclusivePolicy};
pub use name::{AppName, NameError};
pub use procfile::{Procfile, ProcfileError};
pub use secret::Secret;
