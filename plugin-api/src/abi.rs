//! The FFI-level contract: the root module a plugin library exports and the loss object it
//! hands out. Plugin authors never touch this module directly; they implement
//! [`crate::LossPlugin`] and call [`crate::export_losses!`].

// `#[sabi_trait]` expands to impls of items it defines elsewhere; that is how abi_stable works.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{package_version_strings, sabi_trait, StableAbi};

use crate::formats::DataFormat;
use crate::types::{BatchShape, Labels, LossOutput, PairPlan};

/// The version of crosstrain's own plugin contract: the meaning of the calls, on top of the
/// layout that abi_stable checks. Bump it when the semantics of `plan`/`compute` or of any
/// field change, even if no layout does; the host refuses plugins built for another version.
pub const CONTRACT_VERSION: u32 = 1;

/// The symbol under which abi_stable 0.11 looks for a library's root module. It is what
/// `#[export_root_module]` emits; we spell it out so that the export macro needs only `$crate`
/// paths (plugin crates then need no direct abi_stable dependency). A test checks it against
/// abi_stable's own constant.
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Everything the host learns about one loss without building it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct LossInfo {
    /// The loss name, e.g. `MultipleNegativesRankingLoss`.
    pub name: RString,
    /// One line saying what the loss does.
    pub summary: RString,
    /// BibTeX of the paper to cite, if any.
    pub citation: ROption<RString>,
    /// JSON Schema (draft 2020-12) of the config, as JSON text.
    pub config_schema: RString,
    /// The default config, as JSON text.
    pub default_config: RString,
    /// The data layouts the loss accepts.
    pub formats: RVec<DataFormat>,
    /// Number of model outputs per pair the loss needs; 0 means "any" (e.g. one per class).
    pub num_labels: u32,
}

/// One loss exported by a library: its description and its constructor.
#[repr(C)]
#[derive(StableAbi)]
pub struct LossEntry {
    /// What the loss is.
    pub info: LossInfo,
    /// Builds a loss from a JSON config; errors (including panics) come back as text.
    pub create: extern "C" fn(config_json: RStr<'_>) -> RResult<LossBox, RString>,
}

/// The FFI-safe loss object. The host calls it; [`crate::LossPlugin`] implementations are
/// adapted to it by the export macro, with every panic caught on the plugin side.
#[sabi_trait]
pub trait LossObject: Send + Sync {
    /// The pairs to score for a batch of this shape; `seed` drives any sampling.
    fn plan(&self, shape: &BatchShape, seed: u64) -> RResult<PairPlan, RString>;

    /// The loss and dLoss/dlogits for the logits of `plan` (`n_pairs × num_labels`).
    fn compute(
        &self,
        plan: &PairPlan,
        logits: RSlice<'_, f32>,
        num_labels: u32,
        labels: &Labels,
    ) -> RResult<LossOutput, RString>;

    /// The effective config, as JSON text, as the reference's `get_config_dict` shows it.
    #[sabi(last_prefix_field)]
    fn effective_config(&self) -> RString;
}

/// An owned loss object from any library.
pub type LossBox = LossObject_TO<'static, RBox<()>>;

/// The root module of a loss library. A prefix type: fields may be appended in later
/// versions, and a host reading an older plugin sees the missing ones as absent.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = LossLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct LossLibrary {
    /// The [`CONTRACT_VERSION`] the library was built against.
    pub contract_version: u32,
    /// The library's name (normally its crate name); used as `library/loss` on name clashes.
    pub library_name: RStr<'static>,
    /// The library's own version.
    pub library_version: RStr<'static>,
    /// The losses the library exports.
    #[sabi(last_prefix_field)]
    pub losses: extern "C" fn() -> RResult<RVec<LossEntry>, RString>,
}

impl RootModule for LossLibraryRef {
    abi_stable::declare_root_module_statics! {LossLibraryRef}

    const BASE_NAME: &'static str = "crosstrain_loss_library";
    const NAME: &'static str = "crosstrain loss library";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
