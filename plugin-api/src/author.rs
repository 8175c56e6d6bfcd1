//! The safe side for plugin authors: one trait to implement, and the glue (used by
//! [`crate::export_losses!`]) that adapts it to the FFI loss object with panics caught.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::abi::{LossBox, LossEntry, LossInfo, LossObject, LossObject_TO};
use crate::formats::DataFormat;
use crate::types::{BatchShape, Labels, LossOutput, PairPlan};

/// An error a loss reports to the host: bad config, a batch it cannot handle, bad labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LossError {
    message: String,
}

impl LossError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<String> for LossError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for LossError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Shorthand for loss results.
pub type LossResult<T> = Result<T, LossError>;

/// The one trait a loss plugin implements. Everything here is plain safe Rust; the export
/// macro turns it into the FFI object, catches panics, and serialises the schema and configs.
///
/// `Config` is deserialised from the user's JSON with serde, so give it
/// `#[serde(deny_unknown_fields)]`, defaults equal to the reference's, and a doc comment per
/// field (it becomes the schema's description).
pub trait LossPlugin: Sized + Send + Sync + 'static {
    /// The loss's config.
    type Config: Serialize + DeserializeOwned + JsonSchema + Default;

    /// The loss's name, unique within the library.
    const NAME: &'static str;
    /// One line saying what it does.
    const SUMMARY: &'static str;
    /// BibTeX of the paper to cite, if any.
    const CITATION: Option<&'static str> = None;
    /// Model outputs per pair the loss needs; 0 for "any" (e.g. one per class).
    const NUM_LABELS: u32 = 1;

    /// The data layouts the loss accepts.
    fn formats() -> Vec<DataFormat>;

    /// Validates a config and builds the loss.
    fn from_config(config: Self::Config) -> LossResult<Self>;

    /// The config as the reference library's `get_config_dict` shows it (model cards).
    fn effective_config(&self) -> serde_json::Value;

    /// The pairs to score for a batch of this shape, in the order `compute` expects them.
    fn plan(&self, shape: &BatchShape, seed: u64) -> LossResult<PairPlan>;

    /// The loss and dLoss/dlogits (`n_pairs × num_labels`, row-major) for the logits of `plan`.
    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput>;
}

/// Runs `body`, turning a panic into an error that names what was being done (`loss::call`)
/// and where it panicked (formatted only when it panicked, since this wraps every loss call).
/// The panic hook stays quiet for a caught panic, so the message is printed once, in the
/// host's error, rather than a second time (with a backtrace) by the hook.
pub fn catch_panic<T>(
    loss: &str,
    call: &str,
    body: impl FnOnce() -> Result<T, LossError>,
) -> RResult<T, RString> {
    install_quiet_hook();
    let outer = CATCHING.with(|catching| catching.replace(true));
    let result = catch_unwind(AssertUnwindSafe(body));
    CATCHING.with(|catching| catching.set(outer));
    match result {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(error)) => RResult::RErr(error.to_string().into()),
        Err(payload) => {
            let location = PANIC_LOCATION
                .with(|location| location.take())
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            RResult::RErr(
                format!(
                    "panicked in {loss}::{call}{location}: {}",
                    panic_message(&*payload)
                )
                .into(),
            )
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`catch_panic`].
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last caught panic of this thread happened.
    static PANIC_LOCATION: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Wraps the panic hook once (per copy of std: a plugin library has its own): inside
/// [`catch_panic`] it records the location instead of printing; elsewhere it defers to the
/// hook that was there before.
fn install_quiet_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(std::cell::Cell::get) {
                let at = info.location().map(ToString::to_string);
                PANIC_LOCATION.with(|location| location.set(at));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Adapts a [`LossPlugin`] to the FFI loss object.
struct PluginAdapter<L>(L);

impl<L: LossPlugin> LossObject for PluginAdapter<L> {
    fn plan(&self, shape: &BatchShape, seed: u64) -> RResult<PairPlan, RString> {
        catch_panic(L::NAME, "plan", || self.0.plan(shape, seed))
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: RSlice<'_, f32>,
        num_labels: u32,
        labels: &Labels,
    ) -> RResult<LossOutput, RString> {
        catch_panic(L::NAME, "compute", || {
            let output = self
                .0
                .compute(plan, logits.as_slice(), num_labels as usize, labels)?;
            let expected = logits.len();
            if output.grad.len() != expected {
                return Err(LossError::new(format!(
                    "{} returned {} gradient values for {} logits",
                    L::NAME,
                    output.grad.len(),
                    expected
                )));
            }
            Ok(output)
        })
    }

    fn effective_config(&self) -> RString {
        match catch_panic(L::NAME, "effective_config", || {
            Ok(self.0.effective_config())
        }) {
            RResult::ROk(value) => value.to_string().into(),
            RResult::RErr(error) => serde_json::json!({ "error": error.as_str() })
                .to_string()
                .into(),
        }
    }
}

/// The description of `L`, with its schema and default config rendered as JSON.
pub fn loss_info<L: LossPlugin>() -> LossResult<LossInfo> {
    let schema = schemars::schema_for!(L::Config);
    let config_schema = serde_json::to_string(&schema)
        .map_err(|e| LossError::new(format!("{}: schema is not JSON: {e}", L::NAME)))?;
    let default_config = serde_json::to_string(&L::Config::default())
        .map_err(|e| LossError::new(format!("{}: default config is not JSON: {e}", L::NAME)))?;
    Ok(LossInfo {
        name: L::NAME.into(),
        summary: L::SUMMARY.into(),
        citation: L::CITATION.map(RString::from).into(),
        config_schema: config_schema.into(),
        default_config: default_config.into(),
        formats: L::formats().into(),
        num_labels: L::NUM_LABELS,
    })
}

/// Builds `L` from JSON text: deserialise (unknown fields rejected by the config's serde
/// attributes), validate, construct.
pub fn build_loss<L: LossPlugin>(config_json: &str) -> LossResult<L> {
    let config: L::Config = if config_json.trim().is_empty() {
        L::Config::default()
    } else {
        serde_json::from_str(config_json)
            .map_err(|e| LossError::new(format!("invalid {} config: {e}", L::NAME)))?
    };
    L::from_config(config)
}

extern "C" fn create_loss<L: LossPlugin>(config_json: RStr<'_>) -> RResult<LossBox, RString> {
    catch_panic(L::NAME, "from_config", || {
        let loss = build_loss::<L>(config_json.as_str())?;
        Ok(LossObject_TO::from_value(PluginAdapter(loss), TD_Opaque))
    })
}

/// The library entry for `L`, used by the export macro.
pub fn loss_entry<L: LossPlugin>() -> LossResult<LossEntry> {
    Ok(LossEntry {
        info: loss_info::<L>()?,
        create: create_loss::<L>,
    })
}
