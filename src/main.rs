//! The `lookalike` command: parse the command line (and the settings file), then run the one
//! command it names. Each command lives in `src/cli/<command>.rs`.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOOKALIKE_LOG").unwrap_or_else(|_| "lookalike=info,warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // The settings file becomes command-line options before clap sees them (src/config.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match lookalike::config::locate(&args) {
        Some(file) => match lookalike::config::apply_file(&Cli::command(), args, &file) {
            Ok(args) => args,
            Err(err) => {
                eprintln!("error: {err:#}");
                return ExitCode::from(2);
            }
        },
        None => args,
    };
    let command = Cli::parse_from(args).command;
    let repairing = matches!(command, Command::Repair(_));
    let catalog = command.catalog().map(|path| path.display().to_string()).unwrap_or_else(|| "FILE".to_string());
    let result = match command {
        Command::Index(args) => cli::index::run(args),
        Command::Search(args) => cli::search::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Tune(args) => cli::tune::run(args),
        Command::List(args) => cli::list::run(args),
        Command::Remove(args) => cli::remove::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Sync(args) => cli::sync::run(args),
        Command::Repair(args) => cli::repair::run(args),
        Command::Models => cli::models::run(),
        Command::Bench(command) => cli::bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // Any read can meet a damaged page of the catalog file, most of them far from the
            // code that knows what to do about it: said once, here.
            let hinted = format!("{err:#}").contains("lookalike repair");
            if lookalike::catalog::is_damaged(&err) && !hinted && !repairing {
                eprintln!("the catalog file is damaged: `lookalike check --db {catalog}` tells what, `lookalike repair --db {catalog}` recovers what can be read");
            }
            ExitCode::FAILURE
        }
    }
}
