//! The `--config` file (TOML) -> extra command-line arguments that rank below the real ones.
//! Runs on the main thread at start-up, before anything else is started.
//!
//! A top-level key is a flag's long name, and its value goes through that flag's own parser:
//! the file cannot drift from the flags, and a size takes the same `64K` spelling in both.
//! Sections that have no flag (the `[auth]` or `[[history]]` tables later features bring) get
//! typed structs of their own, deserialized from the same text so that toml's errors keep
//! their spans; [`read`] is where their keys are told apart from the flags'.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::{Resettable, ValueParser};
use clap::{Arg, ArgAction, Command};
use toml::{Spanned, Value};

/// Flags that have no place in the file: what the file itself is, and the ones that print
/// and exit.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// What the file contributed.
#[derive(Debug, Default)]
pub struct FileArgs {
    /// `--key=value` arguments for the settings the command line and environment left open.
    pub args: Vec<OsString>,
    /// Keys taken from the file, in file order.
    pub applied: Vec<String>,
    /// Keys in the file that a flag or a `CORECAST_*` variable overrode.
    pub overridden: Vec<String>,
}

/// A file the server cannot start with. The text never quotes a value from the file: a
/// value may be a secret (`api-token`, a Redis URL with its password).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read --config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {}, line {line}: {problem}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        problem: Problem,
    },
}

/// What is wrong at one line of the file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not TOML; the text is toml's own message (it names no value).
    #[error("{0}")]
    Syntax(String),
    #[error("unknown key `{0}` (the keys are the long names of the flags in `corecast --help`)")]
    UnknownKey(String),
    #[error("`{key}` must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// The right TOML type, refused by the flag's parser (`listen = "nowhere"`).
    #[error("`{key}`: {reason}")]
    BadValue { key: String, reason: String },
}

/// Reads the file at `path` and turns it into arguments for `cmd`. `given(id)` says whether
/// the command line or the environment already set the flag with that clap id; such keys are
/// still checked, then left out.
pub fn read(
    path: &Path,
    cmd: &Command,
    given: impl Fn(&str) -> bool,
) -> Result<FileArgs, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let at = |offset: usize, problem: Problem| FileError::At {
        path: path.to_owned(),
        line: line_of(&text, offset),
        problem,
    };
    // toml's own Display quotes the offending line, which may hold a secret: only its
    // message and its position are used.
    let doc: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, Problem::Syntax(e.message().trim().to_owned()))
    })?;
    let mut entries: Vec<_> = doc.into_iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);

    let mut out = FileArgs::default();
    for (key, value) in entries {
        let offset = key.span().start;
        let key = key.into_inner();
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(&key) && !NOT_IN_FILE.contains(&a.get_id().as_str()))
        else {
            return Err(at(offset, Problem::UnknownKey(key)));
        };
        let args = arguments(arg, &key, value.into_inner()).map_err(|p| at(offset, p))?;
        check(arg, &key, &args).map_err(|p| at(offset, p))?;
        if given(arg.get_id().as_str()) {
            out.overridden.push(key);
        } else {
            out.args.extend(args);
            out.applied.push(key);
        }
    }
    Ok(out)
}

/// The `--key=value` arguments that say what `value` says, if its TOML type fits the flag.
fn arguments(arg: &Arg, key: &str, value: Value) -> Result<Vec<OsString>, Problem> {
    let wrong = |expected| Problem::WrongType {
        key: key.to_owned(),
        expected,
        found: type_name(&value),
    };
    let flag = |v: &str| OsString::from(format!("--{key}={v}"));
    match arg.get_action() {
        // A switch: `true` is the flag given, `false` the flag absent.
        ArgAction::SetTrue => match value {
            Value::Boolean(true) => Ok(vec![OsString::from(format!("--{key}"))]),
            Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(wrong("true or false")),
        },
        // A repeatable flag (`allowed-origin`): an array, one flag per element.
        ArgAction::Append => match &value {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(flag(s)),
                    _ => Err(wrong("an array of strings")),
                })
                .collect(),
            _ => Err(wrong("an array of strings")),
        },
        ArgAction::Set => {
            let text_only = [ValueParser::string(), ValueParser::path_buf()]
                .iter()
                .any(|p| p.type_id() == arg.get_value_parser().type_id());
            match &value {
                Value::String(s) => Ok(vec![flag(s)]),
                // Numbers, sizes, addresses and choices are all parsed from text; an integer
                // is the natural way to write the first two.
                Value::Integer(i) if !text_only => Ok(vec![flag(&i.to_string())]),
                _ if text_only => Err(wrong("a string")),
                _ => Err(wrong("an integer or a string")),
            }
        }
        // No flag of corecast's has another action; one that did would need a rule here.
        _ => Err(Problem::UnknownKey(key.to_owned())),
    }
}

/// Runs `args` through the flag's own parser alone, so that a bad value is reported with
/// its line (the full parse that follows cannot say where a value came from).
fn check(arg: &Arg, key: &str, args: &[OsString]) -> Result<(), Problem> {
    // The requirements between flags and the environment are the full parse's business.
    let alone = arg
        .clone()
        .env(None)
        .requires(Resettable::Reset)
        .required(false);
    let cmd = Command::new("corecast")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone);
    cmd.try_get_matches_from(args).map(drop).map_err(|e| {
        let reason = if arg.is_hide_env_values_set() {
            // A secret's parser names the value it refuses: say less.
            "not a valid value".to_owned()
        } else {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let mut reason = first.strip_prefix("error: ").unwrap_or(first).to_owned();
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect();
            if !choices.is_empty() {
                reason.push_str(&format!(" (one of: {})", choices.join(", ")));
            }
            reason
        };
        Problem::BadValue {
            key: key.to_owned(),
            reason,
        }
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
