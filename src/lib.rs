//! lookalike: reverse image search for fashion catalogs.
//!
//! The path from a shopper's photo to ranked products reads top to bottom in [`search`]:
//! decode ([`preprocess`]) → encode ([`encoder`]) → nearest neighbours ([`index`]) → join
//! product metadata ([`catalog`]). Catalogs come in through [`import`]; the pretrained model is
//! converted from PyTorch weights to ONNX by [`model`]; [`eval`] measures search quality;
//! [`server`] is `lookalike serve`, the shopper's page and the JSON API; [`bench`](mod@bench) measures speed
//! against reference implementations; [`config`] reads a deployment's settings file.
//!
//! Layers, each importing only from those above it in this list (`tests/architecture.rs` fails
//! on an import cycle between modules):
//! 1. plain data and facts: [`types`], [`assets`], [`host`], [`config`];
//! 2. parts: [`model`], [`preprocess`], [`colour`], [`perturb`], [`straighten`], [`localise`], [`likeness`], [`index`], [`projection`], [`adapter`],
//!    [`catalog`], [`encoder`];
//! 3. assemblies of parts: [`space`], [`store`], [`import`], [`tune`], [`eval`];
//! 4. the search engine: [`search`];
//! 5. the outside: [`server`], [`bench`](mod@bench) (and the `lookalike` command in `src/cli/`).

pub mod adapter;
pub mod assets;
pub mod bench;
pub mod catalog;
pub mod colour;
pub mod config;
pub mod encoder;
pub mod eval;
pub mod host;
pub mod import;
pub mod index;
pub mod kind;
pub mod likeness;
pub mod localise;
pub mod model;
pub mod perturb;
pub mod preprocess;
pub mod projection;
pub mod search;
pub mod server;
pub mod space;
pub mod store;
pub mod straighten;
pub mod tune;
pub mod types;
