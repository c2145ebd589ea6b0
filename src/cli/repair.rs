//! `lookalike repair`: recover a damaged catalog (the steps are [`lookalike::catalog::repair`]).

use anyhow::Result;

use super::args::DbArgs;

pub fn run(args: DbArgs) -> Result<()> {
    let path = &args.db;
    let report = lookalike::catalog::repair(path)?;
    if let Some(salvaged) = &report.salvaged {
        eprintln!("salvaged rows {:?}; unreadable stretches {:?}; the damaged file is kept as {}", salvaged.copied, salvaged.unreadable, salvaged.damaged_copy.display());
    }
    if report.dropped_vectors > 0 {
        eprintln!("dropped {} damaged or orphaned vectors", report.dropped_vectors);
    }
    super::check::print_check(&report.after);
    eprintln!("{} repaired", path.display());
    Ok(())
}
