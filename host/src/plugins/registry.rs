//! The loss registry: the built-in library plus the plugin files the user named, each checked
//! at load, and name resolution (`name`, or `library/name` when names clash).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crosstrain_plugin_api::abi_stable::library::{lib_header_from_path, LibraryError};
use crosstrain_plugin_api::abi_stable::std_types::{RResult, RSlice};
use crosstrain_plugin_api::ffi::{LossBox, LossEntry, LossLibraryRef};
use crosstrain_plugin_api::{BatchShape, Labels, LossOutput, PairPlan, CONTRACT_VERSION};
use serde_json::Value;

use super::config::validate_config;
use super::description::LossDescription;
use super::error::PluginError;

/// The plugin-api version this host was built with, for error messages.
pub const PLUGIN_API_VERSION: &str = crosstrain_plugin_api::API_VERSION;

/// Environment variable with `:`-separated (`;` on Windows) plugin directories.
pub const PLUGIN_PATH_ENV: &str = "CROSSTRAIN_PLUGIN_PATH";

/// Where a loss library came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    /// Linked into the host.
    Builtin,
    /// Loaded from this file.
    File(PathBuf),
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LibrarySource::Builtin => write!(f, "built in"),
            LibrarySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A loaded loss library.
#[derive(Debug, Clone)]
pub struct LibraryInfo {
    /// The name the library declares (used in `library/loss`).
    pub name: String,
    /// The version the library declares.
    pub version: String,
    /// Where it came from.
    pub source: LibrarySource,
}

/// A loss as registered: its description, its library, and its constructor.
pub struct RegisteredLoss {
    /// The description.
    pub description: LossDescription,
    /// Index into [`LossRegistry::libraries`].
    pub library: usize,
    create:
        extern "C" fn(
            crosstrain_plugin_api::abi_stable::std_types::RStr<'_>,
        )
            -> RResult<LossBox, crosstrain_plugin_api::abi_stable::std_types::RString>,
}

/// All losses the host can use in this run.
#[derive(Default)]
pub struct LossRegistry {
    libraries: Vec<LibraryInfo>,
    losses: Vec<RegisteredLoss>,
}

impl LossRegistry {
    /// The built-in losses only.
    pub fn with_builtins() -> Result<Self, PluginError> {
        let mut registry = Self::default();
        registry.add_library(
            crosstrain_losses::crosstrain_loss_library(),
            LibrarySource::Builtin,
        )?;
        Ok(registry)
    }

    /// Built-ins, then every `--plugin` file, then every library in the `plugin_path`
    /// directories (the value of `CROSSTRAIN_PLUGIN_PATH`). Nothing else is ever loaded: no
    /// implicit scan of the working directory.
    pub fn load(
        plugin_files: &[PathBuf],
        plugin_path: Option<&OsStr>,
    ) -> Result<Self, PluginError> {
        let mut registry = Self::with_builtins()?;
        let mut seen = BTreeSet::new();
        let mut files: Vec<PathBuf> = plugin_files.to_vec();
        if let Some(plugin_path) = plugin_path {
            for directory in std::env::split_paths(plugin_path) {
                if directory.as_os_str().is_empty() {
                    continue;
                }
                files.extend(libraries_in(&directory)?);
            }
        }
        for file in files {
            // The same file named twice (or found twice) is loaded once.
            let key = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.insert(key) {
                registry.load_file(&file)?;
            }
        }
        Ok(registry)
    }

    /// Loads one plugin file: abi_stable's version and layout checks, then our contract
    /// version. The library stays loaded for the life of the process (never unloaded).
    pub fn load_file(&mut self, path: &Path) -> Result<(), PluginError> {
        // A path, never a name for the loader's search; a cut-short file is refused here
        // rather than crashing the process inside dlopen.
        let checked = crate::shared_library::checked_library_path(path)?;
        let header = lib_header_from_path(&checked).map_err(|error| match error {
            LibraryError::OpenError { err, .. } => PluginError::NotALibrary {
                path: path.to_path_buf(),
                reason: err.to_string(),
            },
            LibraryError::GetSymbolError { .. } => PluginError::NoRootModule {
                path: path.to_path_buf(),
            },
            other => PluginError::AbiMismatch {
                path: path.to_path_buf(),
                host_version: PLUGIN_API_VERSION,
                detail: other.to_string(),
            },
        })?;
        let library = header
            .init_root_module::<LossLibraryRef>()
            .map_err(|error| PluginError::AbiMismatch {
                path: path.to_path_buf(),
                host_version: PLUGIN_API_VERSION,
                detail: error.to_string(),
            })?;
        self.add_library(library, LibrarySource::File(path.to_path_buf()))
    }

    fn add_library(
        &mut self,
        library: LossLibraryRef,
        source: LibrarySource,
    ) -> Result<(), PluginError> {
        let found = library.contract_version();
        if found != CONTRACT_VERSION {
            return Err(PluginError::ContractVersion {
                path: match &source {
                    LibrarySource::File(path) => path.clone(),
                    LibrarySource::Builtin => PathBuf::from("<built in>"),
                },
                found,
                expected: CONTRACT_VERSION,
                host_version: PLUGIN_API_VERSION,
            });
        }
        let info = LibraryInfo {
            name: library.library_name().to_string(),
            version: library.library_version().to_string(),
            source,
        };
        if let Some(existing) = self.libraries.iter().find(|l| l.name == info.name) {
            return Err(PluginError::DuplicateLibrary {
                name: info.name.clone(),
                first: existing.source.to_string(),
                second: info.source.to_string(),
            });
        }
        let bad_library = |message: String| PluginError::BadLibrary {
            library: info.name.clone(),
            source_desc: info.source.to_string(),
            message,
        };
        let entries: Vec<LossEntry> = match (library.losses())() {
            RResult::ROk(entries) => entries.into_vec(),
            RResult::RErr(message) => return Err(bad_library(message.into_string())),
        };
        let library_index = self.libraries.len();
        let mut names = BTreeSet::new();
        let mut losses = Vec::with_capacity(entries.len());
        for entry in entries {
            let info_ffi = entry.info;
            let name = info_ffi.name.to_string();
            if !names.insert(name.clone()) {
                return Err(bad_library(format!("exports two losses named {name}")));
            }
            let parse = |what: &str, text: &str| {
                serde_json::from_str::<Value>(text)
                    .map_err(|e| bad_library(format!("{name}: {what} is not JSON: {e}")))
            };
            let description = LossDescription {
                config_schema: parse("config schema", info_ffi.config_schema.as_str())?,
                default_config: parse("default config", info_ffi.default_config.as_str())?,
                summary: info_ffi.summary.to_string(),
                citation: info_ffi.citation.into_option().map(|c| c.into_string()),
                formats: info_ffi.formats.into_vec(),
                num_labels: info_ffi.num_labels,
                name,
            };
            losses.push(RegisteredLoss {
                description,
                library: library_index,
                create: entry.create,
            });
        }
        self.libraries.push(info);
        self.losses.extend(losses);
        Ok(())
    }

    /// The loaded libraries.
    pub fn libraries(&self) -> &[LibraryInfo] {
        &self.libraries
    }

    /// Every registered loss, in load order.
    pub fn losses(&self) -> &[RegisteredLoss] {
        &self.losses
    }

    /// The library of a registered loss.
    pub fn library_of(&self, loss: &RegisteredLoss) -> &LibraryInfo {
        &self.libraries[loss.library]
    }

    /// `library/name` of a loss.
    pub fn qualified_name(&self, loss: &RegisteredLoss) -> String {
        format!("{}/{}", self.library_of(loss).name, loss.description.name)
    }

    /// Finds a loss by `name` or `library/name`. An ambiguous plain name is an error listing
    /// the qualified names; an unknown one suggests the closest names.
    pub fn find(&self, name: &str) -> Result<&RegisteredLoss, PluginError> {
        let matches: Vec<&RegisteredLoss> = match name.split_once('/') {
            Some((library, loss)) => self
                .losses
                .iter()
                .filter(|l| l.description.name == loss && self.library_of(l).name == library)
                .collect(),
            None => self
                .losses
                .iter()
                .filter(|l| l.description.name == name)
                .collect(),
        };
        match matches.as_slice() {
            [only] => Ok(only),
            [] => Err(PluginError::UnknownLoss {
                name: name.to_string(),
                suggestions: self.closest_names(name),
            }),
            several => Err(PluginError::AmbiguousLoss {
                name: name.to_string(),
                candidates: several.iter().map(|l| self.qualified_name(l)).collect(),
            }),
        }
    }

    fn closest_names(&self, name: &str) -> Vec<String> {
        // Every name ends in "Loss", which would make them all look alike.
        let stem = |text: &str| text.to_lowercase().trim_end_matches("loss").to_string();
        let wanted = stem(name.rsplit('/').next().unwrap_or(name));
        let mut scored: Vec<(f64, String)> = self
            .losses
            .iter()
            .map(|l| {
                let candidate = stem(&l.description.name);
                let contains = wanted.len() >= 3 && candidate.contains(&wanted);
                let similarity =
                    strsim::jaro_winkler(&wanted, &candidate).max(if contains { 0.9 } else { 0.0 });
                (similarity, l.description.name.clone())
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        scored.dedup_by(|a, b| a.1 == b.1);
        let best = scored.first().map_or(0.0, |(similarity, _)| *similarity);
        scored
            .into_iter()
            .filter(|(similarity, _)| *similarity >= 0.8 && *similarity >= best - 0.05)
            .take(3)
            .map(|(_, name)| name)
            .collect()
    }

    /// Builds a loss: the config is checked against the loss's schema first (so every plugin
    /// gets errors that name the field and the allowed values), then handed to the plugin.
    pub fn build(&self, name: &str, config: &Value) -> Result<Loss, PluginError> {
        let registered = self.find(name)?;
        let qualified = self.qualified_name(registered);
        validate_config(&registered.description, config).map_err(|problems| {
            PluginError::InvalidConfig {
                loss: qualified.clone(),
                problems,
            }
        })?;
        let config_text = config.to_string();
        match (registered.create)(config_text.as_str().into()) {
            RResult::ROk(object) => Ok(Loss {
                object,
                qualified_name: qualified,
                description: registered.description.clone(),
            }),
            RResult::RErr(message) => Err(PluginError::InvalidConfig {
                loss: qualified,
                problems: vec![message.into_string()],
            }),
        }
    }
}

/// The shared libraries in a plugin directory, sorted by name.
fn libraries_in(directory: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let read = |error: std::io::Error| PluginError::PluginDirectory {
        path: directory.to_path_buf(),
        reason: error.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let is_library = path
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| matches!(ext, "so" | "dylib" | "dll"));
        if is_library && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A built loss, ready for `plan` and `compute`.
pub struct Loss {
    object: LossBox,
    qualified_name: String,
    description: LossDescription,
}

impl Loss {
    /// `library/name`.
    pub fn qualified_name(&self) -> &str {
        &self.qualified_name
    }

    /// What the registry knows about the loss.
    pub fn description(&self) -> &LossDescription {
        &self.description
    }

    /// The pairs to score for a batch of this shape.
    pub fn plan(&self, shape: &BatchShape, seed: u64) -> Result<PairPlan, PluginError> {
        match self.object.plan(shape, seed) {
            RResult::ROk(plan) => Ok(plan),
            RResult::RErr(message) => Err(self.call_error("plan", message.into_string())),
        }
    }

    /// The loss and dLoss/dlogits for the plan's logits.
    pub fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> Result<LossOutput, PluginError> {
        let num_labels = u32::try_from(num_labels).map_err(|_| {
            self.call_error("compute", format!("num_labels {num_labels} too large"))
        })?;
        match self
            .object
            .compute(plan, RSlice::from_slice(logits), num_labels, labels)
        {
            RResult::ROk(output) => Ok(output),
            RResult::RErr(message) => Err(self.call_error("compute", message.into_string())),
        }
    }

    /// The effective config as the reference's `get_config_dict` shows it.
    pub fn effective_config(&self) -> Value {
        serde_json::from_str(self.object.effective_config().as_str()).unwrap_or(Value::Null)
    }

    fn call_error(&self, call: &'static str, message: String) -> PluginError {
        PluginError::LossCall {
            loss: self.qualified_name.clone(),
            call,
            message,
        }
    }
}
