//! What can go wrong when loading plugins or using a loss, each naming the file or the loss.

use std::path::PathBuf;

/// An error from the plugin layer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file given or found is missing, not a file, or not a complete shared library.
    /// (Not a `source`: its text is already in this message, and error chains would print
    /// it twice.)
    #[error("plugin {0}")]
    LibraryFile(crate::shared_library::LibraryFileError),
    /// dlopen refused the file.
    #[error("plugin {path}: not a loadable shared library: {reason}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// The library has no crosstrain root module.
    #[error(
        "plugin {path}: the library exports no crosstrain loss library (no abi_stable root \
         module); was it built with crosstrain_plugin_api::export_losses!?"
    )]
    NoRootModule {
        /// The file.
        path: PathBuf,
    },
    /// abi_stable's version or layout check failed.
    #[error(
        "plugin {path}: built against an incompatible crosstrain-plugin-api ABI (this host \
         uses crosstrain-plugin-api {host_version}): {detail}"
    )]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// This host's plugin-api version.
        host_version: &'static str,
        /// abi_stable's explanation.
        detail: String,
    },
    /// The plugin speaks another version of crosstrain's contract.
    #[error(
        "plugin {path}: built for crosstrain plugin contract version {found}, but this host \
         speaks version {expected}; rebuild the plugin against crosstrain-plugin-api \
         {host_version}"
    )]
    ContractVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's contract version.
        found: u32,
        /// The host's contract version.
        expected: u32,
        /// This host's plugin-api version.
        host_version: &'static str,
    },
    /// The library failed (or panicked) while listing its losses, or reported bad metadata.
    #[error("plugin library {library} ({source_desc}): {message}")]
    BadLibrary {
        /// The library's name.
        library: String,
        /// Where it came from.
        source_desc: String,
        /// What went wrong.
        message: String,
    },
    /// Two libraries share a name, so `library/loss` would be ambiguous.
    #[error("two plugin libraries are both named {name:?}: {first} and {second}")]
    DuplicateLibrary {
        /// The shared name.
        name: String,
        /// The first library's source.
        first: String,
        /// The second library's source.
        second: String,
    },
    /// A plugin directory could not be read.
    #[error("plugin directory {path} (from CROSSTRAIN_PLUGIN_PATH): {reason}")]
    PluginDirectory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// No loss has this name.
    #[error("unknown loss {name:?}{}", suggestion_text(suggestions))]
    UnknownLoss {
        /// The name asked for.
        name: String,
        /// The closest known names.
        suggestions: Vec<String>,
    },
    /// Several libraries export a loss with this name.
    #[error(
        "loss name {name:?} is exported by several libraries; address it as one of: {}",
        candidates.join(", ")
    )]
    AmbiguousLoss {
        /// The name asked for.
        name: String,
        /// `library/name` for each.
        candidates: Vec<String>,
    },
    /// The config does not satisfy the loss's schema, or the loss rejected it.
    #[error("invalid config for {loss}:\n  - {}", problems.join("\n  - "))]
    InvalidConfig {
        /// The loss.
        loss: String,
        /// One line per problem, naming the field and the allowed values.
        problems: Vec<String>,
    },
    /// A call into a loss failed or panicked.
    #[error("{loss}.{call}: {message}")]
    LossCall {
        /// The loss (`library/name`).
        loss: String,
        /// `plan` or `compute`.
        call: &'static str,
        /// The plugin's message.
        message: String,
    },
}

fn suggestion_text(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        "; run `crosstrain losses list` to see the available losses".to_string()
    } else {
        format!("; did you mean {}?", suggestions.join(" or "))
    }
}

impl From<crate::shared_library::LibraryFileError> for PluginError {
    fn from(error: crate::shared_library::LibraryFileError) -> Self {
        PluginError::LibraryFile(error)
    }
}
