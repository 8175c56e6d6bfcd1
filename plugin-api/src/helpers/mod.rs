//! The helpers the built-in losses use, for every plugin author: plans, input checks,
//! numerics, shared config enums and the listwise driver. Everything is re-exported here, so
//! `use crosstrain_plugin_api::helpers::*` brings it all.

pub mod checks;
pub mod config;
pub mod listwise;
pub mod numerics;
pub mod plans;

pub use checks::{check_finite, check_logits, labels_per_row, require_text_columns};
pub use config::{Activation, Reduction};
pub use listwise::{descending_order, listwise_loss, QueryTerm};
pub use numerics::{log_sigmoid, log_sum_exp, sigmoid, softmax, softplus, PairwiseLogistic};
pub use plans::{listwise_lengths, listwise_plan, listwise_queries, pairwise_plan, ListwiseQuery};
