//! One file per loss, named after the reference's module.

pub mod adr_mse;
pub mod binary_cross_entropy;
pub mod cached_multiple_negatives_ranking;
pub mod cross_entropy;
pub mod lambda_loss;
pub mod list_mle;
pub mod list_net;
pub mod margin_mse;
pub mod mse;
pub mod multiple_negatives_ranking;
pub mod plist_mle;
pub mod rank_net;
