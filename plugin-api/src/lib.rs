//! The stable ABI between the crosstrain host and its loss plugins.
//!
//! A loss sees a cross-encoder only through the logits of the pairs it asked for: it *plans*
//! which `(text_a, text_b)` pairs to score for a batch shape, then *computes* the loss and
//! dLoss/dlogits from those logits and the labels. Only plain `f32`/`f64` buffers cross the
//! boundary, so a plugin never depends on the host's tensor library, and gradient caching and
//! device placement stay host features.
//!
//! Plugin authors implement [`LossPlugin`] and call [`export_losses!`]; nobody writes
//! `extern "C"` by hand. The host checks abi_stable's layout and [`CONTRACT_VERSION`] at load.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod abi;
mod author;
mod export;
mod formats;
pub mod helpers;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

/// The FFI side: the root module, the loss object and what crosses the boundary as
/// abi_stable types. Plugin authors never touch these (the export macro does); the host's
/// loader does.
pub mod ffi {
    pub use crate::abi::{
        LossBox, LossEntry, LossInfo, LossLibrary, LossLibraryRef, LossObject, LossObject_TO,
        ROOT_MODULE_SYMBOL,
    };
    pub use crate::author::loss_info;
}

pub use abi::CONTRACT_VERSION;
pub use author::{build_loss, LossError, LossPlugin, LossResult};
pub use formats::{DataFormat, LabelKind, UNBOUNDED};
pub use types::{
    BatchShape, ColumnShape, LabelLayout, Labels, LossOutput, PairPlan, ScoredPair, TextRef,
};

/// The seeded random stream plans draw from (shared with the host's dropout and initialisers).
pub use crosstrain_rng as rng;

/// The version of this crate, which plugins and the host compare at load.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Re-exported so that the host and plugins agree on one abi_stable.
pub use abi_stable;
/// Re-exported for plugin configs (`#[derive(JsonSchema)]`).
pub use schemars;
/// Re-exported for `effective_config`.
pub use serde_json;

/// Items the export macro expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::ROOT_MODULE_SYMBOL;
    pub use crate::author::{catch_panic, loss_entry};
    pub use abi_stable::library::{
        __call_root_module_loader as call_root_module_loader, CheckTypeLayout, LibHeader,
        RootModuleResult,
    };
    pub use abi_stable::prefix_type::WithMetadata;
    pub use abi_stable::std_types::{RResult, RStr, RString, RVec};
}
