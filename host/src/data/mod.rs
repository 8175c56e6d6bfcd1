//! Reading data files. Every error names the file, the line and the field.

pub mod dataset;
pub mod eval_sets;
pub mod pairs;
