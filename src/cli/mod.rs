//! The `lookalike` command line: the top-level parser here, each command's options beside its
//! `run` function in a file of its own, and the option groups they share in [`args`].

pub mod args;
pub mod bench;
pub mod check;
pub mod eval;
pub mod index;
pub mod info;
pub mod list;
pub mod models;
pub mod remove;
pub mod repair;
pub mod search;
pub mod serve;
pub mod sync;
pub mod tune;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lookalike", version, about = "Reverse image search for fashion catalogs")]
pub struct Cli {
    /// Settings file (TOML): defaults for any option, keyed by its long name, with a table per
    /// command (`[serve]`). Default: ./lookalike.toml if it exists.
    #[arg(long, global = true, env = "LOOKALIKE_CONFIG", value_name = "FILE")]
    #[allow(dead_code)] // read by config::locate before clap parses; declared for --help
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Import products (photos + metadata) into a catalog, embedding only new or changed images.
    Index(index::IndexArgs),
    /// Find the catalog products that look most like a photo.
    Search(search::SearchArgs),
    /// Measure search quality on labelled queries (Fashion-MNIST, or the shop's own photos) against two baselines, and how often re-photographed products are found.
    Eval(eval::EvalArgs),
    /// Serve the search page and the JSON API over a catalog.
    Serve(serve::ServeArgs),
    /// Learn a catalog-tuned projection from a metadata column (e.g. articleType).
    Tune(tune::TuneArgs),
    /// List a catalog's products (or its Qdrant collection's), a page at a time.
    List(list::ListArgs),
    /// Remove products from a catalog by id.
    Remove(remove::RemoveArgs),
    /// Verify a catalog: file structure, vector checksums, products and vectors pairing up.
    Check(check::CheckArgs),
    /// Recover a damaged catalog: salvage readable rows, drop damaged vectors, reset the
    /// search graph. Products that lose their vector are re-embedded by `index`.
    Repair(args::DbArgs),
    /// Make a Qdrant collection agree with the catalog: add what is missing, delete what is gone.
    Sync(sync::SyncArgs),
    /// Show what a catalog holds (and, with --store, where its Qdrant collection stands).
    Info(info::InfoArgs),
    /// Prepare the built-in models (convert the PyTorch weights to ONNX) and list them.
    Models,
    /// Measure speed against reference implementations; reports go to docs/ (JSON + markdown).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Command {
    /// The catalog file the command reads, where it names one: what the hint for a damaged
    /// file names (`main` prints it, far from the read that met the damage).
    pub fn catalog(&self) -> Option<&std::path::Path> {
        let db = match self {
            Command::Index(a) => &a.db,
            Command::Search(a) => &a.db,
            Command::Eval(a) => &a.db,
            Command::Serve(a) => return a.db.as_deref(),
            Command::Tune(a) => &a.db,
            Command::List(a) => &a.db,
            Command::Remove(a) => &a.db,
            Command::Check(a) => &a.db,
            Command::Repair(a) => a,
            Command::Sync(a) => &a.db,
            Command::Info(a) => &a.db,
            Command::Models => return None,
            Command::Bench(bench::BenchCommand::Search(a)) => &a.db,
            Command::Bench(bench::BenchCommand::E2e(a)) => &a.db,
            Command::Bench(bench::BenchCommand::Ingest(_)) => return None,
        };
        Some(&db.db)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// Clap's own consistency checks (duplicate flags across flattened groups, bad defaults),
    /// which it otherwise runs only in debug builds.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// The README's example settings file names real options, and they parse.
    #[test]
    fn the_readme_settings_example_is_valid() {
        let readme = include_str!("../../README.md");
        let example = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml example in the README");
        let table: toml::Table = example.parse().expect("the example is TOML");
        let args = ["lookalike", "serve"].map(std::ffi::OsString::from).to_vec();
        let args = lookalike::config::apply(&super::Cli::command(), args, &table, std::path::Path::new("/srv")).expect("the example is valid");
        let cli = super::Cli::try_parse_from(args).expect("clap accepts the options it gives");
        assert!(matches!(cli.command, super::Command::Serve(_)));
    }
}
