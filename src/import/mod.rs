//! import

pub mod idx;
pub mod kaggle;
