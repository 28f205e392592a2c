//! Where a pool's backends come from: a fixed list, a watched file or DNS, each as a
//! [`Feed`] of the wanted set that [`reconcile`](crate::reconcile) applies.
//!
//! Files and DNS are read by the library's own sources (`discover::file::FileSource`,
//! `discover::dns::DnsSource`: watching, debouncing, TTLs, backoff, last good set kept on
//! error). They write into a small balancer of their own, used only as the record of
//! what the source wants; its changes are forwarded to the pool. That indirection is
//! what lets the pool drain leaving backends and map the file's addresses (`HOST:PORT`
//! or `http://` / `https://` URLs) and DNS answers (socket addresses) to the pool's keys.

use std::{convert::Infallible, fmt, net::SocketAddr, str::FromStr, time::Duration};

use tokio::sync::watch;
use tower::service_fn;
use tower_lb::{
    balance::{Handle, Key, Target},
    discover::{
        dns::{DnsSource, HickoryResolver},
        file::FileSource,
    },
    Backend, Balance, Guard,
};

use crate::{
    cli::{backend_url, BackendSpec, Source},
    reconcile::{Want, Wanted},
    AbortOnDrop,
};

/// A backend file's address, as the pool's key: `HOST:PORT` is `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Url(String);

impl FromStr for Url {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        backend_url(s).map(Self)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a source wants, and the tasks that keep it current.
pub(crate) struct Feed {
    /// What it reads; `None` for a set given directly.
    pub(crate) source: Option<Source>,
    /// The DNS servers a DNS source asks (part of what it is).
    servers: Vec<SocketAddr>,
    wanted: watch::Receiver<Wanted>,
    /// Keeps a fixed list's channel open.
    _list: Option<watch::Sender<Wanted>>,
    _source: Option<Guard>,
    _forward: Option<AbortOnDrop>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("source", &self.source)
            .finish()
    }
}

fn want_list(list: &[BackendSpec]) -> Wanted {
    Wanted {
        backends: list
            .iter()
            .map(|b| Want {
                key: b.url.clone(),
                weight: b.weight,
                priority: b.priority,
            })
            .collect(),
        error: None,
    }
}

/// A balancer whose endpoints do nothing: the record of what a source wants.
fn record<K: Key>(
    initial: Vec<Backend<K>>,
) -> Result<Balance<K, tower::util::BoxCloneSyncService<(), (), Infallible>>, String> {
    Balance::builder()
        .backends(initial)
        .build(|_: &Target<'_, K>| {
            tower::util::BoxCloneSyncService::new(service_fn(|()| async {
                Ok::<_, Infallible>(())
            }))
        })
        .map_err(|e| e.to_string())
}

/// The record's set as the pool's wanted set.
fn read<K: Key>(handle: &Handle<K>, key: impl Fn(&K) -> String) -> Wanted {
    let stats = handle.stats();
    Wanted {
        backends: stats
            .backends
            .iter()
            .map(|b| Want {
                key: key(&b.key),
                weight: b.weight,
                priority: b.priority,
            })
            .collect(),
        error: stats.discover_error,
    }
}

/// Forwards the record's changes (and errors, checked every second) to `tx`.
fn forward<K: Key>(
    handle: Handle<K>,
    tx: watch::Sender<Wanted>,
    key: impl Fn(&K) -> String + Send + 'static,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut changes = handle.watch();
        loop {
            let now = read(&handle, &key);
            tx.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }))
}

impl Feed {
    /// Starts reading `source`. A file is read once here, so a missing or bad one is an
    /// error now (at start-up or reload) rather than an empty pool; a DNS name is
    /// resolved in the background (requests fail with the resolver's error until the
    /// first answer).
    pub(crate) fn start(source: &Source, servers: &[SocketAddr]) -> Result<Self, String> {
        let (list, guard, wanted, task) = match source {
            Source::List(list) => {
                let (tx, rx) = watch::channel(want_list(list));
                (Some(tx), None, rx, None)
            }
            Source::File(path) => {
                let file = FileSource::new(path);
                let first = file.load::<Url>().map_err(|e| e.to_string())?;
                let record = record(first)?;
                let guard = file.spawn(record.handle()).map_err(|e| e.to_string())?;
                let (tx, rx) = watch::channel(read(&record.handle(), Url::to_string));
                let task = forward(record.handle(), tx, Url::to_string);
                (None, Some(guard), rx, Some(task))
            }
            Source::Dns(name) => {
                let mut dns = DnsSource::parse(name).map_err(|e| e.to_string())?;
                if !servers.is_empty() {
                    let resolver = HickoryResolver::with_name_servers(servers)
                        .map_err(|e| format!("--dns-server: {e}"))?;
                    dns = dns.resolver(resolver);
                }
                let record = record::<SocketAddr>(Vec::new())?;
                let guard = dns.spawn(record.handle()).map_err(|e| e.to_string())?;
                let (tx, rx) = watch::channel(Wanted::default());
                let task = forward(record.handle(), tx, |a| format!("http://{a}"));
                (None, Some(guard), rx, Some(task))
            }
        };
        Ok(Self {
            source: Some(source.clone()),
            servers: servers.to_vec(),
            wanted,
            _list: list,
            _source: guard,
            _forward: task,
        })
    }

    /// A set that changes only with the configuration.
    pub(crate) fn fixed(wanted: Wanted) -> Self {
        let (tx, rx) = watch::channel(wanted);
        Self {
            source: None,
            servers: Vec::new(),
            wanted: rx,
            _list: Some(tx),
            _source: None,
            _forward: None,
        }
    }

    /// Whether this feed reads exactly `source` (a reload keeps it then).
    pub(crate) fn reads(&self, source: &Source, servers: &[SocketAddr]) -> bool {
        self.source.as_ref() == Some(source)
            && (!matches!(source, Source::Dns(_)) || self.servers == servers)
    }

    /// The wanted set now.
    pub(crate) fn wanted(&self) -> Wanted {
        self.wanted.borrow().clone()
    }

    /// A receiver of every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Wanted> {
        self.wanted.clone()
    }
}
