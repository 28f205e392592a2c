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
//! [[pool]]
//! name = "web"
//! backends_file = "web-backends.toml"   # watched; or dns = "_http._tcp.web.internal"
//!
//! [[route]]
//! prefix = "/api/"
//! pool = "api"
//!
//! [[tcp]]                   # a layer-4 proxy
//! listen = "127.0.0.1:6380"
//! strategy = "least-conn"   # the default
//! backends = [{ address = "10.0.2.1:6379" }, { address = "10.0.2.2:6379", backup = true }]
//!
//! [[tls-sni]]               # with tls-cert and tls-key: another certificate by SNI
//! name = "api.example.com"
//! cert = "api.pem"
//! key = "api.key"
//! ```
//!
//! Top-level keys may be written with `_` for `-` (`backends_file`). A relative path
//! (`backends-file`, `tls-cert`, `tls-key`, `backend-ca`, the client certificate and key,
//! a `[[tls-sni]]` certificate) is relative to the configuration file's directory.
//!
//! The file becomes command-line words placed before the real ones, so a flag given on
//! the command line wins over the file for single values, and adds to it for repeatable
//! ones (`--backend`). Each value is checked by the flag's own parser; a bad file is one
//! line naming the file, the line and the field. SIGHUP reads the file again.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

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

/// A pool: a list of backends, a watched backend file, or a DNS name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolEntry {
    name: Spanned<String>,
    #[serde(default, alias = "backend")]
    backends: Option<Vec<BackendEntry>>,
    #[serde(default, alias = "backends-file")]
    backends_file: Option<String>,
    #[serde(default)]
    dns: Option<String>,
}

/// A TCP proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpEntry {
    listen: Spanned<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(alias = "backend")]
    backends: Vec<BackendEntry>,
}

/// A certificate chosen by SNI.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SniEntry {
    name: Spanned<String>,
    cert: String,
    key: String,
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
    #[serde(default)]
    tcp: Vec<TcpEntry>,
    #[serde(default, rename = "tls-sni", alias = "tls_sni")]
    tls_sni: Vec<SniEntry>,
}

const TABLES: [&str; 9] = [
    "backend", "backends", "pool", "pools", "route", "routes", "tcp", "tls-sni", "tls_sni",
];

/// Flags whose value is a path, read relative to the configuration file.
const PATHS: [&str; 6] = [
    "backends-file",
    "tls-cert",
    "tls-key",
    "backend-ca",
    "backend-client-cert",
    "backend-client-key",
];

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
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let relative = |p: &str| -> String {
        let p = PathBuf::from(p);
        if p.is_absolute() || dir.as_os_str().is_empty() {
            p.display().to_string()
        } else {
            dir.join(p).display().to_string()
        }
    };
    let mut out: Vec<Word> = Vec::new();
    for (name, span) in spans {
        if TABLES.contains(&name.as_str()) {
            continue;
        }
        let Some(value) = values.get(&name) else {
            continue;
        };
        // `backends_file` is `--backends-file`.
        let key = name.replace('_', "-");
        if NOT_IN_FILE.contains(&key.as_str()) {
            return Err(err(
                Some(line_of(&text, span.start)),
                Some(&key),
                "cannot be set in the configuration file".into(),
            ));
        }
        let key = &key;
        let scalar = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) if PATHS.contains(&key.as_str()) => Some(relative(s)),
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
        let source = match (&p.backends, &p.backends_file, &p.dns) {
            (Some(list), None, None) => list.iter().map(backend_spec).collect::<Vec<_>>().join(","),
            (None, Some(file), None) => format!("file:{}", relative(file)),
            (None, None, Some(name)) => format!("dns:{name}"),
            _ => {
                return Err(err(
                    Some(line_of(&text, p.name.span().start)),
                    Some("pool"),
                    "give exactly one of backends, backends_file and dns".into(),
                ))
            }
        };
        out.push(Word {
            flag: "pool".into(),
            value: Some(format!("{}={source}", p.name.get_ref())),
            span: p.name.span(),
        });
    }
    for t in &parsed.tcp {
        let mut list: Vec<String> = t.strategy.iter().map(|s| format!("strategy={s}")).collect();
        list.extend(t.backends.iter().map(backend_spec));
        out.push(Word {
            flag: "tcp-proxy".into(),
            value: Some(format!("{}={}", t.listen.get_ref(), list.join(","))),
            span: t.listen.span(),
        });
    }
    for t in &parsed.tls_sni {
        out.push(Word {
            flag: "tls-sni".into(),
            value: Some(format!(
                "{}={},{}",
                t.name.get_ref(),
                relative(&t.cert),
                relative(&t.key)
            )),
            span: t.name.span(),
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
            // A flag that needs another (`tls-cert` and `tls-key`) is checked with the
            // others, when the whole command line is parsed.
            if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
                continue;
            }
            let field = match w.flag.as_str() {
                "tcp-proxy" => "tcp".to_owned(),
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
mod tests;
