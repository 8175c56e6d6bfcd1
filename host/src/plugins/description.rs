//! What the host knows about one loss once its library is loaded.

use crosstrain_plugin_api::DataFormat;
use serde_json::Value;

/// What the registry knows about one loss, with the JSON parts parsed.
#[derive(Debug, Clone)]
pub struct LossDescription {
    /// The loss name.
    pub name: String,
    /// One line.
    pub summary: String,
    /// BibTeX, if any.
    pub citation: Option<String>,
    /// JSON Schema of the config.
    pub config_schema: Value,
    /// Default config.
    pub default_config: Value,
    /// Accepted data layouts.
    pub formats: Vec<DataFormat>,
    /// Required model outputs per pair (0 = any).
    pub num_labels: u32,
}
