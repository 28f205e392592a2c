//! Discovery from a watched file: a TOML or JSON list of backends, reloaded on change.
//! Feature `file`.
//!
//! # Format
//!
//! TOML (any extension but `.json`):
//!
//! ```toml
//! [[backend]]
//! address = "10.0.0.1:8080"
//! weight = 5            # optional, default 1, must be > 0
//!
//! [[backend]]
//! address = "10.0.0.9:8080"
//! backup = true         # optional, default false (the same as priority = 1)
//!
//! [[backend]]
//! address = "10.0.9.9:8080"
//! priority = 2          # optional, default 0: serves only while levels 0 and 1 can't
//! ```
//!
//! JSON (`.json`): the same objects, as an array or under `"backend"`:
//! `[{"address": "10.0.0.1:8080", "weight": 5}]`. Unknown fields, a zero weight, an address
//! the key type cannot parse and a duplicated address are errors. An empty list is valid
//! and empties the set (unless the balancer keeps its last non-empty set).
//!
//! # Semantics
//!
//! - **Watch the directory**, not the file: editors and config management tools save by
//!   writing a temporary file and renaming it over the old one, which replaces the watched
//!   inode. Events from `notify` (inotify, FSEvents, …) for the directory trigger a reload.
//! - **Debounce**: a reload happens once events have stopped for
//!   [`debounce`](FileSource::debounce) (default 100 ms), so a burst of writes is read
//!   once, after the last.
//! - **Polling safety net**: the file is also read every
//!   [`poll_interval`](FileSource::poll_interval) (default 5 s), for file systems without
//!   change events (NFS, some container mounts) or if the watcher cannot start;
//!   [`watch(false)`](FileSource::watch) polls only. Unchanged content is skipped.
//! - **A bad file keeps the previous set**: a file that does not parse (a partial write, a
//!   typo), is missing or unreadable changes nothing, and a `warn` event says why. The next
//!   change is read again. Before the first good file, the error is also reported through
//!   [`Handle::report_error`](crate::balance::Handle::report_error), so requests fail with
//!   [`DiscoverError`](crate::error::DiscoverError) rather than `NoEndpoints`.
//! - **Only differences are applied**: unchanged backends keep their service and state; each
//!   change is an `info` event. The source owns the balancer's set.
//!
//! The task lives as long as the [`Guard`] from [`FileSource::spawn`].
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::{net::SocketAddr, time::Duration};
//! use tower::service_fn;
//! use tower_lb::{balance::Target, discover::file::FileSource, Balance};
//!
//! let dir = std::env::temp_dir().join(format!("tower-lb-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("backends.toml");
//! std::fs::write(&path, "[[backend]]\naddress = \"127.0.0.1:8080\"\nweight = 2\n").unwrap();
//!
//! let balance = Balance::builder()
//!     .build(|t: &Target<'_, SocketAddr>| {
//!         let addr = *t.key();
//!         service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(addr) })
//!     })
//!     .unwrap();
//! let _guard = FileSource::new(&path).spawn(balance.handle()).unwrap();
//! # for _ in 0..200 {
//! #     if !balance.handle().keys().is_empty() { break; }
//! #     tokio::time::sleep(Duration::from_millis(10)).await;
//! # }
//! assert_eq!(balance.handle().keys(), ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # }
//! ```

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::Notify;

use super::{
    diff::{Desired, SetSync},
    Guard, Handle,
};
use crate::{backend::Backend, balance::Key};

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML: `[[backend]]` tables.
    Toml,
    /// JSON: an array of backend objects, or an object with a `"backend"` array.
    Json,
}

impl Format {
    /// JSON for a `.json` extension, TOML otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Toml,
        }
    }
}

/// Why a backend file was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    path: PathBuf,
    reason: String,
}

impl FileError {
    fn new(path: &Path, reason: impl fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is wrong with it, as text.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend file {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for FileError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    priority: Option<u8>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default, alias = "backends")]
    backend: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonDoc {
    List(Vec<Entry>),
    Table(Table),
}

/// A backend list that could not be read: the first problem, with its line for TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    reason: String,
}

impl ParseError {
    fn new(reason: impl fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
        }
    }

    /// What is wrong, as text.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ParseError {}

/// The largest backend file read (4 MiB, some 50,000 backends); a bigger one is refused
/// rather than read whole.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads at most [`MAX_FILE_BYTES`] of `path`; more is an error.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Parses a backend list. Errors name the first problem (with its line for TOML).
///
/// ```
/// use tower_lb::discover::file::{parse, Format};
///
/// let backends = parse::<String>(r#"[{"address": "api:80", "backup": true}]"#, Format::Json).unwrap();
/// assert!(backends[0].is_backup());
/// assert!(parse::<String>("[[backend]]\naddress = \"a\"\nweight = 0", Format::Toml).is_err());
/// ```
pub fn parse<K>(text: &str, format: Format) -> Result<Vec<Backend<K>>, ParseError>
where
    K: Key + FromStr,
    K::Err: fmt::Display,
{
    parse_entries(text, format).map_err(ParseError::new)
}

fn parse_entries<K>(text: &str, format: Format) -> Result<Vec<Backend<K>>, String>
where
    K: Key + FromStr,
    K::Err: fmt::Display,
{
    let entries = match format {
        Format::Toml => {
            toml::from_str::<Table>(text)
                .map_err(|e| e.to_string().trim_end().to_owned())?
                .backend
        }
        Format::Json => match serde_json::from_str::<JsonDoc>(text).map_err(|e| e.to_string())? {
            JsonDoc::List(list) => list,
            JsonDoc::Table(t) => t.backend,
        },
    };
    let mut seen = HashSet::with_capacity(entries.len());
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let key: K = e
                .address
                .parse()
                .map_err(|err| format!("backend #{}: address {:?}: {err}", i + 1, e.address))?;
            if e.weight == 0 {
                return Err(format!(
                    "backend #{} ({}): weight must be > 0",
                    i + 1,
                    e.address
                ));
            }
            if !seen.insert(key.clone()) {
                return Err(format!(
                    "backend #{}: duplicate address {}",
                    i + 1,
                    e.address
                ));
            }
            let priority = match (e.priority, e.backup) {
                (Some(0), true) => {
                    return Err(format!(
                        "backend #{} ({}): backup = true contradicts priority = 0",
                        i + 1,
                        e.address
                    ))
                }
                (Some(level), _) => level,
                (None, backup) => u8::from(backup),
            };
            Ok(Backend::new(key)
                .with_weight(e.weight)
                .with_priority(priority))
        })
        .collect()
}

/// A watched backend file. See the module docs for the format, semantics and an example.
#[derive(Debug, Clone)]
#[must_use = "a source does nothing until spawned"]
pub struct FileSource {
    path: PathBuf,
    format: Format,
    debounce: Duration,
    poll_interval: Duration,
    watch: bool,
}

impl FileSource {
    /// Watches `path`; the format follows the extension ([`Format::from_path`]).
    pub fn new(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_owned();
        Self {
            format: Format::from_path(&path),
            path,
            debounce: Duration::from_millis(100),
            poll_interval: Duration::from_secs(5),
            watch: true,
        }
    }

    /// Overrides the format.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// How long events must stop before the file is read (default 100 ms).
    pub fn debounce(mut self, quiet: Duration) -> Self {
        self.debounce = quiet;
        self
    }

    /// How often the file is read even without an event (default 5 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Whether to watch the directory for events (default `true`); `false` polls only.
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Reads and parses the file once, without applying it: a start-up check.
    pub fn load<K>(&self) -> Result<Vec<Backend<K>>, FileError>
    where
        K: Key + FromStr,
        K::Err: fmt::Display,
    {
        let bytes = read_capped(&self.path).map_err(|e| FileError::new(&self.path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| FileError::new(&self.path, e))?;
        parse(text, self.format).map_err(|e| FileError::new(&self.path, e))
    }

    /// Starts watching in a background task on the current tokio runtime; the file is read
    /// at once, then on every change. Dropping the returned [`Guard`] stops the task.
    ///
    /// A watcher that cannot start (no such directory, no inotify instances left) is
    /// logged and the source polls; a missing or bad file is logged and retried.
    ///
    /// Fails with a [`ConfigError`](crate::error::ConfigError) outside a Tokio runtime.
    pub fn spawn<K>(self, handle: Handle<K>) -> Result<Guard, crate::error::ConfigError>
    where
        K: Key + FromStr,
        K::Err: fmt::Display,
    {
        // Checked first: the watcher thread must not start without a runtime to feed.
        tokio::runtime::Handle::try_current().map_err(|_| crate::error::ConfigError::Invalid {
            setting: "runtime",
            reason: "the file task must be spawned within a Tokio runtime".into(),
        })?;
        let changed = Arc::new(Notify::new());
        let watcher = if self.watch {
            self.start_watcher(changed.clone())
        } else {
            None
        };
        Guard::spawn("file", run(self, handle, changed, watcher))
    }

    fn start_watcher(&self, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(ToOwned::to_owned);
        let on_event = move |res: notify::Result<notify::Event>| match res {
            // Only events that touch our file name (the rename target, or the file itself).
            Ok(ev)
                if ev.paths.is_empty()
                    || ev.paths.iter().any(|p| p.file_name() == name.as_deref()) =>
            {
                changed.notify_one();
            }
            Ok(_) => {}
            // Overflow or a watcher error: reading again is the safe answer.
            Err(_) => changed.notify_one(),
        };
        let started = notify::recommended_watcher(on_event)
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        match started {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "tower_lb::file: cannot watch the directory; polling only");
                None
            }
        }
    }
}

async fn run<K>(
    source: FileSource,
    handle: Handle<K>,
    changed: Arc<Notify>,
    watcher: Option<notify::RecommendedWatcher>,
) where
    K: Key + FromStr,
    K::Err: fmt::Display,
{
    // Owned by the task: aborting the task drops the watcher and its thread.
    let _watcher = watcher;
    let mut sync = SetSync::new(handle);
    // The bytes last seen, good or bad, so an unchanged file is neither re-applied nor
    // re-reported on every poll.
    let mut last: Option<Result<Vec<u8>, String>> = None;
    loop {
        reload(&source, &mut sync, &mut last);
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(source.poll_interval) => continue,
        }
        // Debounce: wait until events have stopped for the quiet period.
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(source.debounce) => break,
            }
        }
    }
}

fn reload<K>(source: &FileSource, sync: &mut SetSync<K>, last: &mut Option<Result<Vec<u8>, String>>)
where
    K: Key + FromStr,
    K::Err: fmt::Display,
{
    let path = source.path.display();
    let bytes = match read_capped(&source.path) {
        Ok(b) => b,
        Err(e) => {
            let reason = e.to_string();
            if last.as_ref().and_then(|l| l.as_ref().err()) != Some(&reason) {
                tracing::warn!(%path, error = %reason, kept = sync.len(),
                    "tower_lb::file: cannot read the backend file; keeping the last set");
                // Before the first good file, requests fail with this error.
                sync.report_error(format!("{path}: {reason}"));
            }
            *last = Some(Err(reason));
            return;
        }
    };
    if last.as_ref().and_then(|l| l.as_ref().ok()) == Some(&bytes) {
        return;
    }
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| parse_entries::<K>(text, source.format));
    *last = Some(Ok(bytes));
    let backends = match parsed {
        Ok(b) => b,
        Err(reason) => {
            tracing::warn!(%path, error = %reason, kept = sync.len(),
                "tower_lb::file: invalid backend file; keeping the last set");
            sync.report_error(format!("{path}: {reason}"));
            return;
        }
    };
    match sync.apply(backends.into_iter().map(Desired::new).collect()) {
        Ok(c) if !c.is_empty() => tracing::info!(%path, added = c.added, removed = c.removed,
            updated = c.updated, total = c.total, "tower_lb::file: endpoint set changed"),
        Ok(_) => {}
        Err(e) => {
            // Read it again next time.
            *last = None;
            tracing::warn!(%path, error = %e, "tower_lb::file: could not apply the backend file");
            sync.report_error(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn toml(text: &str) -> Result<Vec<Backend<SocketAddr>>, String> {
        parse(text, Format::Toml).map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn parses_toml_with_defaults() {
        let b = toml(
            "[[backend]]\naddress = \"10.0.0.1:80\"\nweight = 3\n\n[[backend]]\naddress = \"[::1]:80\"\nbackup = true\n",
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].weight(), b[0].is_backup()), (3, false));
        assert_eq!((b[1].weight(), b[1].is_backup()), (1, true));
        assert_eq!(b[1].priority(), 1);
        assert_eq!(toml("").unwrap().len(), 0);
    }

    #[test]
    fn parses_priority_levels() {
        let b = toml(
            "[[backend]]\naddress = \"10.0.0.1:80\"\npriority = 2\n\n[[backend]]\naddress = \"10.0.0.2:80\"\nbackup = true\npriority = 3\n",
        )
        .unwrap();
        assert_eq!((b[0].priority(), b[1].priority()), (2, 3));
        let err = toml("[[backend]]\naddress = \"10.0.0.1:80\"\nbackup = true\npriority = 0\n")
            .unwrap_err();
        assert!(err.contains("contradicts"), "{err}");
        assert!(toml("[[backend]]\naddress = \"10.0.0.1:80\"\npriority = 256\n").is_err());
    }

    #[test]
    fn parses_json_array_and_table() {
        let a: Vec<Backend<SocketAddr>> =
            parse(r#"[{"address": "10.0.0.1:80", "weight": 2}]"#, Format::Json).unwrap();
        let t: Vec<Backend<SocketAddr>> = parse(
            r#"{"backend": [{"address": "10.0.0.1:80", "weight": 2}]}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(a[0].weight(), 2);
        assert_eq!(t[0].key(), a[0].key());
    }

    #[test]
    fn rejects_bad_content_with_a_reason() {
        let err = toml("[[backend]]\naddress = \"nope\"\n").unwrap_err();
        assert!(err.contains("address \"nope\""), "{err}");
        let err = toml("[[backend]]\naddress = \"10.0.0.1:80\"\nweight = 0\n").unwrap_err();
        assert!(err.contains("weight must be > 0"), "{err}");
        let err = toml("[[backend]]\naddress = \"10.0.0.1:80\"\nwieght = 2\n").unwrap_err();
        assert!(err.contains("wieght"), "{err}");
        let err = toml(
            "[[backend]]\naddress = \"10.0.0.1:80\"\n[[backend]]\naddress = \"10.0.0.1:80\"\n",
        )
        .unwrap_err();
        assert!(err.contains("duplicate"), "{err}");
        // A write cut in the middle of a value.
        assert!(toml("[[backend]]\naddress = \"10.0.0.1:8").is_err());
        assert!(
            parse::<SocketAddr>(r#"[{"address": "10.0.0.1:80"}, {"addr"#, Format::Json).is_err()
        );
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.JSON")), Format::Json);
        assert_eq!(Format::from_path(Path::new("a/b.toml")), Format::Toml);
        assert_eq!(Format::from_path(Path::new("backends")), Format::Toml);
    }
}
