//! Discovery from Kubernetes EndpointSlices, through the kube-runtime watcher. Feature
//! `kube`.
//!
//! # Semantics
//!
//! - **Which slices**: the EndpointSlices labelled `kubernetes.io/service-name=NAME` in a
//!   namespace. The set is the union of all of them: a Service with more than 100
//!   endpoints has several slices, and a dual-stack Service has IPv4 and IPv6 slices.
//!   `FQDN` slices are skipped.
//! - **Which port**: the slice port named by [`port`](EndpointSlices::port) (a Service port
//!   name, e.g. `http`); without one, the unnamed port (a Service with a single port). A
//!   slice without that port contributes nothing. Each endpoint's first address is used
//!   (the API says addresses are fungible).
//! - **Conditions** (as kube-proxy reads them): `ready` unset means ready; `serving` unset
//!   means the value of `ready`; `terminating` unset means not terminating.
//!   - ready and not terminating: a backend;
//!   - terminating but serving: **drained** (no new requests, in-flight ones finish) while
//!     any endpoint is ready, and a normal backend when nothing else is serving (a rolling
//!     restart of every pod at once still has somewhere to go);
//!   - neither: left out.
//!
//!   An address listed by two slices (while the controller moves it) keeps its best
//!   condition.
//! - **Initial list**: the watcher's `Init`, `InitApply`… events are buffered until
//!   `InitDone`, then applied as one snapshot, so requests never see half a Service. The
//!   same happens on every relist (after a watch expired): the previous set stays in use
//!   until the new list is complete.
//! - **Errors keep the last good set**: a watch or list error changes nothing; the watcher
//!   retries with kube-runtime's default backoff (800 ms doubling to 30 s, jittered).
//!   Before the first complete list, the error is reported through
//!   [`Handle::report_error`](crate::balance::Handle::report_error), so requests fail
//!   with [`DiscoverError`](crate::error::DiscoverError) rather than `NoEndpoints`.
//! - **Only differences are applied**: unchanged backends keep their service and state.
//!   Each change is an `info` event, each error a `warn` event. A complete list that is
//!   empty (the Service scaled to zero) empties the set, unless the balancer
//!   [keeps its last non-empty set](crate::balance::Builder::keep_last_on_empty).
//!
//! Weights are 1; each backend carries its zone and node as a [`Topology`];
//! [`prefer_zone`](EndpointSlices::prefer_zone) keeps traffic in one zone while it can
//! serve. The task lives as long as the [`Guard`] from [`EndpointSlices::spawn`].
//! The client needs `list` and `watch` on `endpointslices.discovery.k8s.io` in the
//! namespace.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_lb::BoxError> {
//! use std::net::SocketAddr;
//! use tower::service_fn;
//! use tower_lb::{balance::Target, discover::kube::EndpointSlices, Balance};
//!
//! let balance = Balance::builder()
//!     .build(|t: &Target<'_, SocketAddr>| {
//!         let addr = *t.key();
//!         service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(addr) })
//!     })?;
//!
//! // In-cluster service account, or ~/.kube/config.
//! let client = kube::Client::try_default().await?;
//! let _guard = EndpointSlices::new(client, "default", "checkout")
//!     .port("http")
//!     .spawn(balance.handle())?;
//! # Ok(())
//! # }
//! ```

use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, ResourceExt,
};

use super::{
    diff::{Desired, SetSync},
    Guard, Handle,
};
use crate::backend::Backend;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// A Kubernetes EndpointSlice source: a Service's endpoints, watched.
///
/// See the module docs for the semantics and an example.
#[must_use = "a source does nothing until spawned"]
pub struct EndpointSlices {
    client: Client,
    namespace: String,
    service: String,
    port: Option<String>,
    page_size: Option<u32>,
    local_zone: Option<String>,
}

impl fmt::Debug for EndpointSlices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSlices")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl EndpointSlices {
    /// Watches the endpoints of Service `service` in `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            service: service.into(),
            port: None,
            page_size: None,
            local_zone: None,
        }
    }

    /// Keeps traffic in `zone` while it can serve, as Kubernetes' `trafficDistribution:
    /// PreferClose` does: endpoints whose slice places them in `zone` are primaries, the
    /// others [priority level](crate::Backend::with_priority) 1, used only while no endpoint of
    /// `zone` is available (ejected, down or gone). Endpoints without a zone count as
    /// elsewhere. Typically the zone of the node this process runs on.
    pub fn prefer_zone(mut self, zone: impl Into<String>) -> Self {
        self.local_zone = Some(zone.into());
        self
    }

    /// The Service port name whose number each endpoint is reached on (default: the
    /// unnamed port).
    pub fn port(mut self, name: impl Into<String>) -> Self {
        self.port = Some(name.into());
        self
    }

    /// How many slices one list request asks for (kube-runtime's default: 500).
    pub fn page_size(mut self, slices: u32) -> Self {
        self.page_size = Some(slices);
        self
    }

    /// Starts watching in a background task on the current tokio runtime, applying every
    /// change to `handle`. Dropping the returned [`Guard`] stops the watch.
    ///
    /// Fails with a [`ConfigError`](crate::error::ConfigError) outside a Tokio runtime.
    pub fn spawn(self, handle: Handle<SocketAddr>) -> Result<Guard, crate::error::ConfigError> {
        Guard::spawn("kube", self.run(handle))
    }

    async fn run(self, handle: Handle<SocketAddr>) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client, &self.namespace);
        let mut config =
            watcher::Config::default().labels(&format!("{SERVICE_LABEL}={}", self.service));
        if let Some(n) = self.page_size {
            config = config.page_size(n);
        }
        let service = format!("{}/{}", self.namespace, self.service);
        let port = self.port;
        let zone = self.local_zone;
        let mut state = Watch {
            sync: SetSync::new(handle),
            slices: BTreeMap::new(),
            listing: None,
        };
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if state.on_event(event) {
                        state.apply(&service, port.as_deref(), zone.as_deref());
                    }
                }
                Err(e) => {
                    tracing::warn!(%service, error = %e, kept = state.sync.len(),
                        "tower_lb::kube: watch failed; keeping the last set and retrying");
                    // Before the first list, requests fail with this error.
                    state.sync.report_error(e);
                }
            }
        }
        tracing::warn!(%service, "tower_lb::kube: the watch ended");
    }
}

/// The watch's state: the slices applied, and a relist in progress.
struct Watch {
    sync: SetSync<SocketAddr>,
    slices: BTreeMap<String, EndpointSlice>,
    /// Slices of a list in progress, applied at `InitDone`.
    listing: Option<BTreeMap<String, EndpointSlice>>,
}

impl Watch {
    /// Folds one event in; returns whether the applied slices changed.
    fn on_event(&mut self, event: Event<EndpointSlice>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(slice) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(slice.name_any(), slice);
                false
            }
            Event::InitDone => match self.listing.take() {
                Some(listed) => {
                    self.slices = listed;
                    true
                }
                None => false,
            },
            Event::Apply(slice) => {
                self.slices.insert(slice.name_any(), slice);
                true
            }
            Event::Delete(slice) => self.slices.remove(&slice.name_any()).is_some(),
        }
    }

    fn apply(&mut self, service: &str, port: Option<&str>, zone: Option<&str>) {
        let next = backends(self.slices.values(), port, zone);
        if next.is_empty() && self.sync.len() > 0 {
            tracing::warn!(%service, slices = self.slices.len(),
                "tower_lb::kube: the service has no serving endpoint");
        }
        match self.sync.apply(next) {
            Ok(c) if !c.is_empty() => tracing::info!(%service, added = c.added,
                removed = c.removed, drained = c.drained, undrained = c.undrained,
                total = c.total, "tower_lb::kube: endpoint set changed"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%service, error = %e,
                    "tower_lb::kube: could not apply the endpoint set");
                self.sync.report_error(e);
            }
        }
    }
}

/// Where a Kubernetes endpoint runs, as its EndpointSlice reports it: attached to every
/// backend this source makes, for endpoint makers and custom strategies to read with
/// [`Backend::meta`] (to prefer the local zone, say). Taken when the backend is added.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::{balance::Target, discover::kube::Topology};
///
/// fn zone_of(t: &Target<'_, SocketAddr>) -> Option<String> {
///     t.backend().meta::<Topology>()?.zone.clone()
/// }
/// # let _ = zone_of;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// The endpoint's zone (`zone` in the slice: its node's
    /// `topology.kubernetes.io/zone`), when the slice gives one.
    pub zone: Option<String>,
    /// The node it runs on (`nodeName`), when the slice gives one.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Condition {
    /// Terminating but still serving.
    Terminating,
    /// Ready and not terminating.
    Ready,
}

/// EndpointSlices → the desired backends: the pure heart of this module (see the module
/// docs for the rules).
fn backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: Option<&str>,
    local_zone: Option<&str>,
) -> Vec<Desired<SocketAddr>> {
    let mut best: HashMap<SocketAddr, (Condition, Topology)> = HashMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let number = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port.unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|n| u16::try_from(n).ok());
        let Some(number) = number else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let condition = match (ready, serving, terminating) {
                (true, _, false) => Condition::Ready,
                (_, true, true) => Condition::Terminating,
                _ => continue,
            };
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let addr = SocketAddr::new(ip, number);
            let topology = Topology {
                zone: ep.zone.clone(),
                node: ep.node_name.clone(),
            };
            // The best condition wins, with the topology its slice reports.
            match best.entry(addr) {
                Entry::Vacant(slot) => {
                    slot.insert((condition, topology));
                }
                Entry::Occupied(mut slot) => {
                    if condition > slot.get().0 {
                        slot.insert((condition, topology));
                    }
                }
            }
        }
    }
    let any_ready = best.values().any(|(c, _)| *c == Condition::Ready);
    let mut out: Vec<Desired<SocketAddr>> = best
        .into_iter()
        .map(|(addr, (c, topology))| {
            let elsewhere = local_zone.is_some_and(|z| topology.zone.as_deref() != Some(z));
            Desired {
                backend: Backend::new(addr)
                    .with_priority(u8::from(elsewhere))
                    .with_meta(topology),
                draining: any_ready && c == Condition::Terminating,
            }
        })
        .collect();
    out.sort_by_key(|d| *d.backend.key());
    out
}

#[cfg(test)]
mod tests;
