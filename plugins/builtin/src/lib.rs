//! The sentence-transformers 6.2 cross-encoder losses as a crosstrain loss library, computed
//! in f64 to the reference's numbers. Linked into the host as an rlib (reached through
//! [`crosstrain_loss_library`], the same root-module function a `cdylib` plugin exports) and
//! built as a `cdylib` too. The shared plans, checks, numerics and the listwise driver live in
//! `crosstrain_plugin_api::helpers`, where third-party plugins get the same ones.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod losses;

pub use losses::adr_mse::ADRMSELoss;
pub use losses::binary_cross_entropy::BinaryCrossEntropyLoss;
pub use losses::cached_multiple_negatives_ranking::CachedMultipleNegativesRankingLoss;
pub use losses::cross_entropy::CrossEntropyLoss;
pub use losses::lambda_loss::LambdaLoss;
pub use losses::list_mle::ListMLELoss;
pub use losses::list_net::ListNetLoss;
pub use losses::margin_mse::MarginMSELoss;
pub use losses::mse::MSELoss;
pub use losses::multiple_negatives_ranking::MultipleNegativesRankingLoss;
pub use losses::plist_mle::PListMLELoss;
pub use losses::rank_net::RankNetLoss;

crosstrain_plugin_api::export_losses! {
    library: "crosstrain-losses",
    version: env!("CARGO_PKG_VERSION"),
    losses: [
        BinaryCrossEntropyLoss,
        CrossEntropyLoss,
        MSELoss,
        MarginMSELoss,
        MultipleNegativesRankingLoss,
        CachedMultipleNegativesRankingLoss,
        LambdaLoss,
        RankNetLoss,
        ListNetLoss,
        PListMLELoss,
        ListMLELoss,
        ADRMSELoss,
    ],
}
