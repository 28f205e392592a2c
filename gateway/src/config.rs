//! The configuration file (`--config PATH`, TOML): the same settings as the flags.
//!
//! Top-level keys are the flags' names without their dashes (`strategy`,
//! `connect-timeout`, `max-fails`, `health-path`, `trusted-proxy = ["10.0.0.0/8"]`…);
//! backends, pools and routes are tables:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! strategy = "least-conn"
//! fail-timeout = "5s"
//!
//! [[backend]]               # the default pool
//! url = "10.0.0.1:8080"
//! weight = 3
//!
//! [[backend]]
//! url = "10.0.0.9:8080"
//! backup = true
//!
//! [[pool]]
//! name = "api"
//! backends = [{ url = "10.0.1.1:9000" }, { url = "10.0.1.2:9000", weight = 2 }]
//!
//! [[route]]
//! prefix = "/api/"
//! pool = "api"
//! ```
//!
//! The file becomes command-line words placed before the real ones, so a flag given on
//! the command line wins over the file for single values, and adds to it for repeatable
//! ones (`--backend`). Each value is checked by the flag's own parser; a bad file is one
//! line naming the file, the line and the field.

use std::{fmt, ops::Range, path::Path};

use clap::Parser;
use serde::Deserialize;
use toml::{Spanned, Value};

use crate::cli::Args;

/// A configuration file that cannot be used: where and why, on one line.
#[derive(Debug)]
pub(crate) struct ConfigError {
    pub(crate) file: String,
    pub(crate) line: Option<usize>,
    pub(crate) field: Option<String>,
    pub(crate) reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    #[serde(alias = "address")]
    url: Spanned<String>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    backup: Option<bool>,
    #[serde(default)]
    priority: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolEntry {
    name: Spanned<String>,
    #[serde(alias = "backend")]
    backends: Vec<BackendEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    prefix: Spanned<String>,
    pool: Spanned<String>,
}

/// The tables of the file; every other top-level key is a flag.
#[derive(Deserialize)]
struct File {
    #[serde(default, alias = "backends")]
    backend: Vec<BackendEntry>,
    #[serde(default, alias = "pools")]
    pool: Vec<PoolEntry>,
    #[serde(default, alias = "routes")]
    route: Vec<RouteEntry>,
}

const TABLES: [&str; 6] = ["backend", "backends", "pool", "pools", "route", "routes"];

/// Flags the file may not set.
const NOT_IN_FILE: [&str; 3] = ["config", "check", "backends-env"];

/// The line (1-based) of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// One command-line word made from the file, and where it came from.
struct Word {
    flag: String,
    value: Option<String>,
    span: Range<usize>,
}

/// Reads `path` into command-line words (`--flag value` …), checking every value with
/// the flag's own parser.
pub(crate) fn words(path: &Path) -> Result<Vec<String>, ConfigError> {
    let file = path.display().to_string();
    let err = |line, field: Option<&str>, reason: String| ConfigError {
        file: file.clone(),
        line,
        field: field.map(str::to_owned),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, None, e.to_string()))?;
    let toml_error = |e: toml::de::Error| {
        let line = e.span().map(|s| line_of(&text, s.start));
        let reason = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        err(line, None, reason)
    };
    let parsed: File = toml::from_str(&text).map_err(toml_error)?;
    let values: toml::Table = toml::from_str(&text).map_err(toml_error)?;
    // Where each top-level key is, for error lines.
    let spans: Vec<(String, Range<usize>)> = toml::de::DeTable::parse(&text)
        .map_err(toml_error)?
        .into_inner()
        .into_iter()
        .map(|(k, _)| {
            let span = k.span();
            (k.into_inner().into_owned(), span)
        })
        .collect();
    let mut out: Vec<Word> = Vec::new();
    for (key, span) in spans {
        if TABLES.contains(&key.as_str()) {
            continue;
        }
        if NOT_IN_FILE.contains(&key.as_str()) {
            return Err(err(
                Some(line_of(&text, span.start)),
                Some(&key),
                "cannot be set in the configuration file".into(),
            ));
        }
        let Some(value) = values.get(&key) else {
            continue;
        };
        let key = &key;
        let scalar = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Integer(i) => Some(i.to_string()),
                Value::Float(f) => Some(f.to_string()),
                _ => None,
            }
        };
        match value {
            Value::Boolean(true) => out.push(Word {
                flag: key.clone(),
                value: None,
                span,
            }),
            Value::Boolean(false) => {}
            Value::Array(items) => {
                for item in items {
                    let v = scalar(item).ok_or_else(|| {
                        err(
                            Some(line_of(&text, span.start)),
                            Some(key),
                            "expected a list of strings or numbers".into(),
                        )
                    })?;
                    out.push(Word {
                        flag: key.clone(),
                        value: Some(v),
                        span: span.clone(),
                    });
                }
            }
            other => {
                let v = scalar(other).ok_or_else(|| {
                    err(
                        Some(line_of(&text, span.start)),
                        Some(key),
                        "expected a string, a number or a boolean".into(),
                    )
                })?;
                out.push(Word {
                    flag: key.clone(),
                    value: Some(v),
                    span,
                });
            }
        }
    }
    let backend_spec = |b: &BackendEntry| {
        let mut spec = b.url.get_ref().clone();
        if let Some(w) = &b.weight {
            spec += &format!(",weight={}", w.get_ref());
        }
        if b.backup == Some(true) {
            spec += ",backup";
        }
        if let Some(p) = &b.priority {
            spec += &format!(",priority={}", p.get_ref());
        }
        spec
    };
    for b in &parsed.backend {
        out.push(Word {
            flag: "backend".into(),
            value: Some(backend_spec(b)),
            span: b.url.span(),
        });
    }
    for p in &parsed.pool {
        let list: Vec<String> = p.backends.iter().map(backend_spec).collect();
        out.push(Word {
            flag: "pool".into(),
            value: Some(format!("{}={}", p.name.get_ref(), list.join(","))),
            span: p.name.span(),
        });
    }
    for r in &parsed.route {
        out.push(Word {
            flag: "route".into(),
            value: Some(format!("{}={}", r.prefix.get_ref(), r.pool.get_ref())),
            span: r.prefix.span(),
        });
    }
    // Each word on its own, so an error names its line; then all together.
    for w in &out {
        let mut argv = vec!["tower-lb-gateway".to_owned(), format!("--{}", w.flag)];
        argv.extend(w.value.clone());
        if let Err(e) = Args::try_parse_from(&argv) {
            let field = match w.flag.as_str() {
                "backend" | "pool" | "route" => w.flag.clone(),
                flag => flag.to_owned(),
            };
            return Err(err(
                Some(line_of(&text, w.span.start)),
                Some(&field),
                clap_reason(&e),
            ));
        }
    }
    Ok(out
        .into_iter()
        .flat_map(|w| std::iter::once(format!("--{}", w.flag)).chain(w.value))
        .collect())
}

/// Clap's error, on one line and without its usage hint.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid value");
    first.trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Vec<String>, String> {
        let dir = std::env::temp_dir().join(format!("tower-lb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = words(&path).map_err(|e| {
            let s = e.to_string();
            s[s.find(".toml").map_or(0, |i| i + 5)..].to_owned()
        });
        let _ = std::fs::remove_file(&path);
        out
    }

    #[test]
    fn a_file_becomes_the_same_flags() {
        let words = load(
            r#"
listen = "127.0.0.1:9000"
strategy = "least-conn"
fail-timeout = "5s"
http2 = true
rewrite-host = false
trusted-proxy = ["10.0.0.0/8", "192.168.0.0/16"]

[[backend]]
url = "10.0.0.1:8080"
weight = 3

[[backend]]
address = "10.0.0.9:8080"
backup = true

[[pool]]
name = "api"
backends = [{ url = "10.0.1.1:9000" }, { url = "10.0.1.2:9000", weight = 2 }]

[[route]]
prefix = "/api/"
pool = "api"
"#,
        )
        .unwrap();
        let args = Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).unwrap();
        assert_eq!(args.listen.port(), 9000);
        assert_eq!(args.fail_timeout, std::time::Duration::from_secs(5));
        assert!(args.http2 && !args.rewrite_host);
        assert_eq!(args.trusted_proxies.len(), 2);
        assert_eq!(args.backends.len(), 2);
        assert_eq!((args.backends[0].weight, args.backends[1].priority), (3, 1));
        assert_eq!(args.pools[0].backends[1].weight, 2);
        assert_eq!(args.routes, [("/api/".to_owned(), "api".to_owned())]);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        assert_eq!(
            load("strategy = \"p2c\"\nfail-timeout = \"5x\"\n").unwrap_err(),
            ":2: fail-timeout: invalid value '5x' for '--fail-timeout <DUR>': unknown duration unit \"x\" in \"5x\""
        );
        assert!(load("\n\nmax-fails = \"many\"")
            .unwrap_err()
            .starts_with(":3: max-fails:"));
        assert!(
            load("[[backend]]\nurl = \"10.0.0.1:80\"\nweigth = 2\n")
                .unwrap_err()
                .starts_with(":3: unknown field `weigth`"),
            "{:?}",
            load("[[backend]]\nurl = \"10.0.0.1:80\"\nweigth = 2\n")
        );
        assert!(load("[[backend]]\nurl = \"10.0.0.1:80\"\nweight = 0\n")
            .unwrap_err()
            .starts_with(":2: backend:"));
        assert!(load("no-such-flag = 1\n")
            .unwrap_err()
            .starts_with(":1: no-such-flag:"));
        assert!(load("check = true\n")
            .unwrap_err()
            .starts_with(":1: check:"));
        let unclosed = load("strategy = [\n").unwrap_err();
        assert!(
            unclosed.starts_with(":1:") || unclosed.starts_with(":2:"),
            "{unclosed}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary files, and near-valid ones: words or one error line, never a panic.
        #[test]
        fn any_file_is_read_or_refused_on_one_line(
            text in "\\PC{0,200}",
            keys in proptest::collection::vec(
                proptest::sample::select(vec!["strategy", "max-fails", "timeout", "listen", "backend", "pool", "route", "http2"]),
                0..5,
            ),
            values in proptest::collection::vec("[ -~]{0,12}", 0..5),
        ) {
            if let Err(e) = load(&text) {
                proptest::prop_assert_eq!(e.lines().count(), 1);
            }
            let doc: String = keys
                .iter()
                .zip(values.iter())
                .map(|(k, v)| format!("{k} = {v:?}\n"))
                .collect();
            match load(&doc) {
                Ok(words) => {
                    proptest::prop_assert!(Args::try_parse_from(std::iter::once("gw".to_owned()).chain(words)).is_ok());
                }
                Err(e) => proptest::prop_assert_eq!(e.lines().count(), 1),
            }
        }
    }
}
