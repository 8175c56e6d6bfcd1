//! Loss plugins: discovery and loading (built-ins, `--plugin FILE`, `CROSSTRAIN_PLUGIN_PATH`),
//! the registry, config validation against each loss's schema, and the conformance check.

pub mod check;
mod config;
mod description;
mod error;
mod registry;

pub use config::validate_config;
pub use description::LossDescription;
pub use error::PluginError;
pub use registry::{
    LibraryInfo, LibrarySource, Loss, LossRegistry, RegisteredLoss, PLUGIN_API_VERSION,
    PLUGIN_PATH_ENV,
};
