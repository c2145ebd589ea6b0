//! `lookalike.toml`: a deployment's settings in one file instead of on every command line.
//!
//! The keys are the commands' long option names; a key at the top of the file applies to every
//! command that has that option, and a table named after a command (`[serve]`, `[bench.e2e]`)
//! applies to that command only, over the top-level keys:
//!
//! ```toml
//! db = "shop.db"                      # relative paths are relative to this file
//! store = "qdrant://10.0.0.5:6334"
//! collection = "shop"
//!
//! [serve]
//! addr = "0.0.0.0:8080"
//! cors-origin = "https://shop.example"
//! ```
//!
//! Precedence, highest first: the command line, the option's environment variable (e.g.
//! `LOOKALIKE_STORE`), the file, the built-in default. The file is `--config FILE`, else
//! `$LOOKALIKE_CONFIG`, else `lookalike.toml` in the working directory if there is one.
//!
//! Why this shape: the file is turned into command-line options before clap parses them, so
//! every option is settable from the file with the same name, type checks and error messages,
//! and nothing has to be declared twice. A key that no command knows is an error, so a typo
//! never silently leaves a default in place.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Command};

/// Looked for in the working directory when neither `--config` nor `LOOKALIKE_CONFIG` names a
/// file.
pub const FILE_NAME: &str = "lookalike.toml";
/// Environment variable naming the settings file.
pub const ENV: &str = "LOOKALIKE_CONFIG";

/// Which settings file applies to this command line, if any.
pub fn locate(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    if let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    Some(PathBuf::from(FILE_NAME)).filter(|p| p.is_file())
}

/// The command line with the settings of `file` added for the options that neither the command
/// line nor the environment sets. `cli` is the whole command tree (for validating the file).
pub fn apply_file(cli: &Command, args: Vec<OsString>, file: &Path) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the settings file {}", file.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing the settings file {}", file.display()))?;
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    apply(cli, args, &table, base).with_context(|| format!("in the settings file {}", file.display()))
}

/// [`apply_file`] on an already parsed table; relative paths resolve against `base`.
pub fn apply(cli: &Command, mut args: Vec<OsString>, table: &toml::Table, base: &Path) -> Result<Vec<OsString>> {
    validate(cli, table, &[])?;

    // Find the command being run: the chain of subcommand names at the front of the line.
    let mut command = cli;
    let mut chain: Vec<&str> = Vec::new();
    let mut insert_at = None;
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--config" {
            i += 2;
            continue;
        }
        let Some(name) = arg.to_str().filter(|a| !a.starts_with('-')) else {
            if arg.to_str().is_some_and(|a| a.starts_with("--config=")) {
                i += 1;
                continue;
            }
            break;
        };
        let Some(sub) = command.find_subcommand(name) else { break };
        command = sub;
        chain.push(sub.get_name());
        insert_at = Some(i + 1);
        i += 1;
    }
    let Some(insert_at) = insert_at else { return Ok(args) };

    // Top-level keys first, then each table along the chain: later ones override.
    let mut settings: Vec<(&str, &toml::Value)> = Vec::new();
    let mut scope = Some(table);
    for depth in 0..=chain.len() {
        let Some(current) = scope else { break };
        for (key, value) in current {
            if !value.is_table() {
                settings.retain(|(k, _)| k != key);
                settings.push((key, value));
            }
        }
        scope = chain.get(depth).and_then(|name| current.get(*name)).and_then(toml::Value::as_table);
    }

    settings.sort_by_key(|(key, _)| *key);
    let given = &args[insert_at..];
    let mut added = Vec::new();
    for (key, value) in settings {
        let Some(arg) = command.get_arguments().find(|a| named(a, key)) else { continue };
        if on_command_line(given, arg) || arg.get_env().and_then(std::env::var_os).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        added.extend(option_tokens(arg, key, value, base)?);
    }
    args.splice(insert_at..insert_at, added);
    Ok(args)
}

/// Every key of `table` must be an option or a subcommand of `command` (or, for a plain key, of
/// one of its subcommands: a top-level `db` is meant for every command that has `--db`).
fn validate(command: &Command, table: &toml::Table, path: &[&str]) -> Result<()> {
    for (key, value) in table {
        if let Some(sub) = value.as_table() {
            let child = command.find_subcommand(key).ok_or_else(|| anyhow!("[{}] is not a lookalike command", joined(path, key)))?;
            let mut deeper = path.to_vec();
            deeper.push(child.get_name());
            validate(child, sub, &deeper)?;
        } else if !knows_option(command, key) {
            let place = if path.is_empty() { "any lookalike command".to_string() } else { format!("`lookalike {}`", path.join(" ")) };
            bail!("unknown setting {key:?}: not an option of {place}");
        }
    }
    Ok(())
}

fn knows_option(command: &Command, key: &str) -> bool {
    command.get_arguments().any(|a| named(a, key)) || command.get_subcommands().any(|s| knows_option(s, key))
}

/// Whether `key` names `arg`: its long name, or its one-letter name for options that have no
/// long one (`k = 20` for `-k 20`).
fn named(arg: &Arg, key: &str) -> bool {
    match arg.get_long() {
        Some(long) => long == key,
        None => {
            let mut chars = key.chars();
            arg.get_short().is_some() && chars.next() == arg.get_short() && chars.next().is_none()
        }
    }
}

/// How the option is written on a command line: `--name` or `-k`.
fn flag(arg: &Arg) -> String {
    match (arg.get_long(), arg.get_short()) {
        (Some(long), _) => format!("--{long}"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => arg.get_id().to_string(),
    }
}

fn joined(path: &[&str], key: &str) -> String {
    path.iter().copied().chain([key]).collect::<Vec<_>>().join(".")
}

/// Whether the user wrote the option (`--name`, `--name=value`, `-k`, `-k20`) on the command line.
fn on_command_line(args: &[OsString], arg: &Arg) -> bool {
    let flag = flag(arg);
    let attached = if arg.get_long().is_some() { format!("{flag}=") } else { flag.clone() };
    args.iter().take_while(|a| *a != "--").filter_map(|a| a.to_str()).any(|a| a == flag || a.starts_with(&attached))
}

/// The command-line tokens that say what `value` says for option `arg`.
fn option_tokens(arg: &Arg, key: &str, value: &toml::Value, base: &Path) -> Result<Vec<OsString>> {
    let flag = flag(arg);
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let on = value.as_bool().ok_or_else(|| anyhow!("{key} is a switch: write true or false"))?;
            let wanted = matches!(arg.get_action(), ArgAction::SetTrue) == on;
            return Ok(if wanted { vec![flag.into()] } else { Vec::new() });
        }
        ArgAction::Count => {
            let n = value.as_integer().filter(|n| *n >= 0).ok_or_else(|| anyhow!("{key} is a count: write a whole number"))?;
            return Ok(vec![OsString::from(&flag); n as usize]);
        }
        _ => {}
    }
    let is_path = arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
    let text = |v: &toml::Value| -> Result<OsString> {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("{key}: a {} is not a value this option takes", other.type_str()),
        };
        let path = Path::new(&s);
        Ok(if is_path && path.is_relative() { base.join(path).into_os_string() } else { OsString::from(s) })
    };
    let values: Vec<OsString> = match value {
        toml::Value::Array(items) => items.iter().map(text).collect::<Result<_>>()?,
        single => vec![text(single)?],
    };
    if values.len() > 1 && !matches!(arg.get_action(), ArgAction::Append) {
        match arg.get_value_delimiter() {
            Some(delimiter) => {
                let joined = values.iter().map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(&delimiter.to_string());
                return Ok(with_value(&flag, OsStr::new(&joined)));
            }
            None => bail!("{key} takes one value, not a list"),
        }
    }
    Ok(values.iter().flat_map(|v| with_value(&flag, v)).collect())
}

/// `--name=value` (one token, so a value starting with `-` is never read as an option), or
/// `-k value` for one-letter options.
fn with_value(flag: &str, value: &OsStr) -> Vec<OsString> {
    if flag.starts_with("--") {
        let mut token = OsString::from(flag);
        token.push("=");
        token.push(value);
        vec![token]
    } else {
        vec![flag.into(), value.to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cli() -> Command {
        Command::new("lookalike")
            .arg(Arg::new("config").long("config").global(true))
            .subcommand(
                Command::new("serve")
                    .arg(Arg::new("db").long("db").value_parser(clap::value_parser!(PathBuf)))
                    .arg(Arg::new("addr").long("addr"))
                    .arg(Arg::new("quantize").long("quantize").action(ArgAction::SetTrue))
                    .arg(Arg::new("filter-columns").long("filter-columns").value_delimiter(','))
                    .arg(Arg::new("cors-origin").long("cors-origin").env("LOOKALIKE_TEST_CORS_NEVER_SET")),
            )
            .subcommand(Command::new("bench").subcommand(Command::new("e2e").arg(Arg::new("requests").long("requests")).arg(Arg::new("k").short('k'))))
            .subcommand(Command::new("models"))
    }

    fn run(toml: &str, line: &[&str]) -> Result<Vec<String>> {
        let table: toml::Table = toml.parse()?;
        let args = line.iter().map(OsString::from).collect();
        Ok(apply(&cli(), args, &table, Path::new("/etc/shop"))?.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn settings_fill_what_the_command_line_leaves_unset() -> Result<()> {
        let file = "db = \"shop.db\"\naddr = \"127.0.0.1:1\"\nquantize = true\nfilter-columns = [\"colour\", \"season\"]\n[serve]\naddr = \"0.0.0.0:8080\"\n";
        let line = run(file, &["lookalike", "serve", "--db", "/data/other.db", "extra"])?;
        assert_eq!(line, ["lookalike", "serve", "--addr=0.0.0.0:8080", "--filter-columns=colour,season", "--quantize", "--db", "/data/other.db", "extra"]);
        // Relative paths are relative to the file; nested tables reach nested commands.
        let line = run("db = \"shop.db\"\n[bench.e2e]\nrequests = 50\n", &["lookalike", "serve"])?;
        assert_eq!(line, ["lookalike", "serve", "--db=/etc/shop/shop.db"]);
        let line = run("[bench.e2e]\nrequests = 50\nk = 5\n", &["lookalike", "--config", "x.toml", "bench", "e2e"])?;
        assert_eq!(line, ["lookalike", "--config", "x.toml", "bench", "e2e", "-k", "5", "--requests=50"]);
        let line = run("[bench.e2e]\nk = 5\n", &["lookalike", "bench", "e2e", "-k7"])?;
        assert_eq!(line, ["lookalike", "bench", "e2e", "-k7"]);
        // A command without those options is left alone; so is a line without a command.
        assert_eq!(run("db = \"shop.db\"\n", &["lookalike", "models"])?, ["lookalike", "models"]);
        assert_eq!(run("db = \"shop.db\"\n", &["lookalike", "--help"])?, ["lookalike", "--help"]);
        // `--key=value` on the line counts as given; false switches add nothing.
        assert_eq!(run("addr = \"a\"\nquantize = false\n", &["lookalike", "serve", "--addr=b"])?, ["lookalike", "serve", "--addr=b"]);
        Ok(())
    }

    #[test]
    fn mistakes_in_the_file_are_errors() {
        for (file, says) in [
            ("dbb = \"x\"", "unknown setting \"dbb\""),
            ("[serve]\nrequests = 5", "not an option of `lookalike serve`"),
            ("[serv]\naddr = \"x\"", "[serv] is not a lookalike command"),
            ("quantize = \"yes\"", "switch"),
            ("addr = [\"a\", \"b\"]", "takes one value"),
            ("addr = { host = \"a\" }", "not a lookalike command"),
        ] {
            let err = run(file, &["lookalike", "serve"]).expect_err(file);
            assert!(format!("{err:#}").contains(says), "{file}: {err:#}");
        }
    }

    #[test]
    fn the_file_is_found_from_the_flag_first() {
        let line = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(locate(&line(&["lookalike", "serve", "--config", "a.toml"])), Some(PathBuf::from("a.toml")));
        assert_eq!(locate(&line(&["lookalike", "--config=b.toml", "serve"])), Some(PathBuf::from("b.toml")));
    }
}
