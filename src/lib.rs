//! lookalike: reverse image search for fashion catalogs.
//!
//! The path from a shopper's photo to ranked products reads top to bottom in [`search`]:
//! decode ([`preprocess`]) → encode ([`encoder`]) → nearest neighbours ([`index`]) → join
//! product metadata ([`catalog`]). Catalogs come in through [`import`]; the pretrained model is
//! converted from PyTorch weights to ONNX by [`model`]; [`eval`] measures search quality;
//! [`server`] is `lookalike serve`, the shopper's page and the JSON API; [`bench`] measures speed
//! against reference implementations; [`config`] reads a deployment's settings file.

pub mod assets;
pub mod bench;
pub mod catalog;
pub mod config;
pub mod encoder;
pub mod eval;
pub mod import;
pub mod index;
pub mod model;
pub mod perturb;
pub mod preprocess;
pub mod search;
pub mod server;
pub mod space;
pub mod tune;
