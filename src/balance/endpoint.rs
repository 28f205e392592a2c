//! Per-endpoint state: load, latency, health. Shared by the balancer, the endpoint's own
//! layers (passive health) and background tasks (the prober), and read without locks.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::*},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

/// Default RTT assumed for an endpoint with no latency sample yet (linkerd, Finagle).
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Peak-EWMA decay time constant.
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// Peak-EWMA decay in samples: each sample weighs at least `1 / DECAY_SAMPLES`, so a peak
/// is also forgotten after about this many faster answers, however close together.
pub(crate) const DECAY_SAMPLES: f64 = 100.0;
/// `1 / DEFAULT_DECAY` in nanoseconds: a multiplication on the request path, not a division.
const DECAY_PER_NANO: f64 = 1.0 / (DEFAULT_DECAY.as_nanos() as f64);

/// Nanoseconds as `f64`, through `i64`: one instruction on x86-64, where an unsigned
/// conversion takes several (and a `u128` one is a library call). A span of 2^63 ns is
/// 292 years; anything longer saturates.
#[inline]
fn ns_f64(ns: u64) -> f64 {
    i64::try_from(ns).unwrap_or(i64::MAX) as f64
}

/// `t + d`, or about a century later when `d` is too large to add (a configured
/// `Duration::MAX` means "as long as possible", not a panic).
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(t)
}

const IN_FLIGHT_MASK: u64 = (1 << 24) - 1;
const ONE_REQUEST: u64 = 1 << 24;

/// Health as the balancer sees it; see [`EndpointState::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Takes requests.
    Healthy,
    /// Ejected by passive health until the given time has passed.
    Ejected {
        /// Time left until the ejection ends.
        remaining: Duration,
    },
    /// An ejection ended; the next request is a trial that readmits or ejects again.
    Probation,
    /// Marked down by active probing.
    Down,
    /// Draining (nginx `down`): no new requests, in-flight ones finish.
    Draining,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("healthy"),
            Self::Ejected { .. } => f.write_str("ejected"),
            Self::Probation => f.write_str("probation"),
            Self::Down => f.write_str("down"),
            Self::Draining => f.write_str("draining"),
        }
    }
}

/// Rebuilds the balancer's candidate list at once, from the thread that changed health.
pub(crate) struct Rebuild(pub(crate) Box<dyn Fn() + Send + Sync>);

impl fmt::Debug for Rebuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rebuild")
    }
}

/// Counters shared by every endpoint of one balancer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Bumped on every health change, so the balancer rebuilds its candidate list.
    pub(crate) changed: AtomicU64,
    /// Called after every health change: the writer of the change rebuilds the list, so
    /// requests find it current.
    pub(crate) rebuild: std::sync::OnceLock<Rebuild>,
    /// Endpoints in the set.
    pub(crate) members: AtomicUsize,
    /// Per priority level: endpoints ejected or on probation, and the live and available
    /// counts of the last published snapshot. Read and written on failure paths only
    /// (ejections, readmissions, publications), never per request.
    pub(crate) levels: Mutex<Levels>,
    /// Where endpoints report load changes for an indexed strategy (least connections
    /// over large sets); set by that strategy when it first indexes an endpoint.
    pub(crate) loads: std::sync::OnceLock<Arc<LoadQueue>>,
    /// The balancer's latency clock: every endpoint counts its times from its origin, so
    /// their nanosecond stamps compare with the clock's readings directly; layers that
    /// time requests read it too (the time-stamp counter, where latency is tracked).
    pub(crate) clock: super::clock::Clock,
}

/// A strategy's load index (least connections over large sets), where endpoints queue
/// their position when their load changes. Each endpoint is queued at most once until
/// the index reads it again (its `index_dirty` flag), so the queue never holds more than
/// the set. One lock for the index and its queue: a request takes it once to queue its
/// start and once to pick.
#[derive(Debug, Default)]
pub(crate) struct LoadQueue(pub(crate) Mutex<super::strategy::LoadIndex>);

impl LoadQueue {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, super::strategy::LoadIndex> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `EndpointState::index_pos` of an endpoint no index holds.
pub(crate) const NOT_INDEXED: u32 = u32::MAX;

/// Per-level counts of one balancer's endpoints (index: priority level).
#[derive(Debug, Default, Clone)]
pub(crate) struct Levels {
    /// Ejected or on probation (live count, updated by every ejection and readmission).
    pub(crate) ejected: Vec<usize>,
    /// Not draining, as of the last published snapshot.
    pub(crate) live: Vec<usize>,
    /// Healthy or on probation, as of the last published snapshot.
    pub(crate) available: Vec<usize>,
}

impl Levels {
    fn ejected_mut(&mut self, level: u8) -> &mut usize {
        let l = usize::from(level);
        if self.ejected.len() <= l {
            self.ejected.resize(l + 1, 0);
        }
        &mut self.ejected[l]
    }

    fn get(v: &[usize], level: u8) -> usize {
        v.get(usize::from(level)).copied().unwrap_or(0)
    }
}

impl Pool {
    fn levels(&self) -> std::sync::MutexGuard<'_, Levels> {
        self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more (`add`) or one less endpoint of `level` as ejected.
    pub(crate) fn count_ejected(&self, level: u8, add: bool) {
        let mut levels = self.levels();
        let n = levels.ejected_mut(level);
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
    }

    /// Endpoints ejected or on probation, over every level.
    pub(crate) fn ejected(&self) -> usize {
        self.levels().ejected.iter().sum()
    }

    /// Records the per-level counts of a newly published snapshot.
    pub(crate) fn publish_counts(&self, live: &[usize], available: &[usize]) {
        let mut levels = self.levels();
        if levels.live != live || levels.available != available {
            levels.live = live.to_vec();
            levels.available = available.to_vec();
        }
    }
}

/// One unit of an endpoint's load, counted in flight until this guard and all its clones
/// are dropped; made by [`EndpointState::track`]. Clones share the unit, so a guard can
/// sit in a response body and in the response's extensions (for an upgrade) at once.
#[derive(Clone)]
pub struct InFlight(Arc<Unit>);

struct Unit(Arc<EndpointState>);

impl Drop for Unit {
    fn drop(&mut self) {
        self.0.remove_load();
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.0 .0.in_flight())
            .finish()
    }
}

/// Why an ejection was refused; see [`EndpointState::may_eject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The endpoint is the only one of its set.
    Lone,
    /// Its level's max ejection share is reached and no other level can serve.
    Share {
        level: u8,
        ejected: usize,
        live: usize,
    },
}

/// Live state of one endpoint, keyed by its backend key and kept across discovery
/// updates of other backends and re-weights.
///
/// Who writes what: the balancer counts requests; endpoint layers count load that outlives
/// a response ([`track`](Self::track)) and latency; the health verdict is written by
/// passive health ([`eject_until`](Self::eject_until), [`readmit`](Self::readmit): the
/// stock [`PassiveHealthLayer`](crate::health::passive::PassiveHealthLayer), or yours) and
/// by active probing ([`set_down`](Self::set_down): the stock prober, or yours, over
/// [`Handle::endpoints`](super::Handle::endpoints)); draining goes through
/// [`Handle::drain`](super::Handle::drain). Strategies only read, through
/// [`Candidate::load`](super::strategy::Candidate::load).
///
/// What the request path reads and counts is atomics, so it never takes a lock here;
/// locks are taken only on failure paths (the last failure's text, per-level ejection
/// counts) and when a layer is made ([`slot`](Self::slot)). Endpoint layers get
/// this state from [`Target::state`](crate::balance::Target::state) when the endpoint is
/// made, so passive health checks and load trackers write to the same place the balancer
/// reads from.
pub struct EndpointState {
    base: Instant,
    pub(crate) pool: Arc<Pool>,
    /// Requests in flight (low 24 bits) and in total (high 40 bits), in one atomic so the
    /// request path pays one read-modify-write to count both.
    load: AtomicU64,
    max_conns: AtomicUsize,
    /// The backend's priority level (0: primary), for the per-level ejection share.
    level: AtomicU8,
    /// The endpoint was removed from its set: its ejections no longer count there.
    left: AtomicBool,
    failures: AtomicU64,
    ejections: AtomicU64,
    /// Peak-EWMA RTT in nanoseconds as `f64` bits; `0` = no sample yet.
    ewma_bits: AtomicU64,
    /// When `ewma_bits` was last updated, ns since `base`.
    ewma_stamp: AtomicU64,
    /// Ejected until this time (ns since `base`, offset by 1 so 0 means "not ejected").
    ejected_until: AtomicU64,
    probation: AtomicBool,
    active_down: AtomicBool,
    draining: AtomicBool,
    /// The balancer's strategy's own per-endpoint word (smooth weighted round robin keeps
    /// nginx's `current_weight` here); see [`Candidate::scratch`](super::strategy::Candidate::scratch).
    pub(crate) scratch: AtomicI64,
    /// A probation trial request is in flight: no other request is sent until its verdict.
    trial: AtomicBool,
    /// State owned by other parts (passive health's memory, your own layers'), one value
    /// per type, kept with the endpoint across discovery updates; see [`Self::slot`].
    slots: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
    /// When the endpoint last joined or recovered (ns since `base`): slow start ramps from
    /// here.
    ramp_from: AtomicU64,
    /// Why the last failure happened, for stats (written on failure paths only).
    last_failure: Mutex<Option<Box<str>>>,
    /// The endpoint's position in its balancer's load index ([`NOT_INDEXED`] when none
    /// holds it): set by the index, read on every load change.
    pub(crate) index_pos: std::sync::atomic::AtomicU32,
    /// A load change of this endpoint waits in the pool's [`LoadQueue`].
    pub(crate) index_dirty: AtomicBool,
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("in_flight", &self.in_flight())
            .field("requests", &self.requests())
            .field("failures", &self.failures())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl EndpointState {
    pub(crate) fn new(pool: Arc<Pool>, max_conns: usize, level: u8) -> Self {
        // Joined now: slow start ramps from here.
        let joined = Instant::now()
            .saturating_duration_since(pool.clock.origin.at)
            .as_nanos() as u64;
        Self {
            base: pool.clock.origin.at,
            pool,
            load: AtomicU64::new(0),
            max_conns: AtomicUsize::new(max_conns),
            level: AtomicU8::new(level),
            left: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0),
            // The assumed latency counts as a sample taken when the endpoint joined.
            ewma_stamp: AtomicU64::new(joined),
            ejected_until: AtomicU64::new(0),
            probation: AtomicBool::new(false),
            active_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            scratch: AtomicI64::new(0),
            trial: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
            ramp_from: AtomicU64::new(joined),
            last_failure: Mutex::new(None),
            index_pos: std::sync::atomic::AtomicU32::new(NOT_INDEXED),
            index_dirty: AtomicBool::new(false),
        }
    }

    /// A detached state, for tests and custom strategies' unit tests.
    pub fn detached() -> Self {
        Self::new(Arc::new(Pool::default()), 0, 0)
    }

    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    pub(crate) fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    /// The balancer's latency clock, for layers that time this endpoint's requests: the
    /// time-stamp counter where the balancer tracks latency, Tokio's clock otherwise (and
    /// whenever it was paused when the balancer was built).
    #[cfg(any(feature = "http", feature = "health-passive", feature = "metrics"))]
    #[inline]
    pub(crate) fn clock(&self) -> super::clock::Clock {
        self.pool.clock
    }

    /// Tells the balancer its candidate list is stale, and has it rebuilt now, on this
    /// thread (the one that changed health), rather than by the next request.
    fn touch(&self) {
        self.pool.changed.fetch_add(1, Release);
        if let Some(rebuild) = self.pool.rebuild.get() {
            (rebuild.0)();
        }
    }

    // === load ===

    /// Requests sent to this endpoint and not yet answered.
    #[inline]
    pub fn in_flight(&self) -> usize {
        (self.load.load(Relaxed) & IN_FLIGHT_MASK) as usize
    }

    /// Counts a request (or connection) as started: in flight and in the total. The
    /// balancer does this itself for every request it sends; call it directly only for
    /// load the balancer cannot see (a TCP connection that outlives its response) or in
    /// tests. Pair every call with [`finish_request`](Self::finish_request).
    #[inline]
    pub fn start_request(&self) {
        self.load.fetch_add(ONE_REQUEST | 1, Relaxed);
        self.load_changed();
    }

    /// Counts one unit of load in flight without counting a request: for load that
    /// outlives the balancer's own tracking, such as a TCP connection kept open after the
    /// connect that the balancer counted. Pair with [`remove_load`](Self::remove_load).
    #[inline]
    pub fn add_load(&self) {
        self.load.fetch_add(1, Relaxed);
        self.load_changed();
    }

    /// Removes load added with [`add_load`](Self::add_load).
    #[inline]
    pub fn remove_load(&self) {
        self.load.fetch_sub(1, Relaxed);
        self.load_changed();
    }

    /// Tells the balancer's load index, if one holds this endpoint, that its load changed.
    /// Without an index (every strategy but least connections over large sets) this is
    /// one relaxed load.
    #[inline]
    fn load_changed(&self) {
        if self.index_pos.load(Relaxed) != NOT_INDEXED {
            self.queue_load_change();
        }
    }

    #[cold]
    fn queue_load_change(&self) {
        // The swap pairs with the index's own swap before it reads the load: either the
        // index reads this change, or this call sees the flag cleared and queues again.
        if !self.index_dirty.swap(true, AcqRel) {
            let pos = self.index_pos.load(Acquire);
            if let Some(queue) = self.pool.loads.get() {
                queue.lock().pending.push(pos);
            }
        }
    }

    /// Counts one unit of load in flight until the returned guard (and every clone of
    /// it) is dropped: for work that outlives the response the balancer saw, such as a
    /// response body still streaming, an upgraded connection or a TCP connection.
    /// Least connections and P2C then see it, as nginx and HAProxy count active
    /// connections.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_lb::balance::EndpointState;
    ///
    /// let state = Arc::new(EndpointState::detached());
    /// let stream = state.track();
    /// let shared = stream.clone(); // the same unit, not a second one
    /// assert_eq!(state.in_flight(), 1);
    /// drop(stream);
    /// assert_eq!(state.in_flight(), 1);
    /// drop(shared);
    /// assert_eq!(state.in_flight(), 0);
    /// ```
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.add_load();
        InFlight(Arc::new(Unit(self.clone())))
    }

    /// Counts a request started with [`start_request`](Self::start_request) as finished.
    #[inline]
    pub fn finish_request(&self) {
        self.load.fetch_sub(1, Relaxed);
        self.load_changed();
    }

    /// The concurrency cap (`0`: none).
    pub fn max_conns(&self) -> usize {
        self.max_conns.load(Relaxed)
    }

    pub(crate) fn set_max_conns(&self, max: usize) {
        self.max_conns.store(max, Relaxed);
    }

    /// The backend's priority level (0: primary).
    pub fn level(&self) -> u8 {
        self.level.load(Relaxed)
    }

    /// Moves the endpoint to another priority level (its backend was updated), carrying
    /// its ejection count along.
    pub(crate) fn set_level(&self, level: u8) {
        let was = self.level.swap(level, Relaxed);
        if was != level && self.on_probation_or_ejected() && !self.left.load(Relaxed) {
            self.pool.count_ejected(was, false);
            self.pool.count_ejected(level, true);
        }
    }

    /// This endpoint leaves the set: it no longer counts as ejected in its level, even
    /// if a request still in flight ejects or readmits it.
    pub(crate) fn leave(&self) {
        if !self.left.swap(true, Relaxed) && self.on_probation_or_ejected() {
            self.pool.count_ejected(self.level(), false);
        }
    }

    /// Counts this endpoint in (or out of) its level's ejected endpoints, while it is a
    /// member of the set.
    fn count_ejected(&self, add: bool) {
        if !self.left.load(Relaxed) {
            self.pool.count_ejected(self.level(), add);
        }
    }

    /// True if the endpoint is at its concurrency cap (nginx `max_conns`), or on probation
    /// with its one trial request in flight.
    #[inline]
    pub fn at_capacity(&self) -> bool {
        let max = self.max_conns.load(Relaxed);
        (max != 0 && self.in_flight() >= max) || self.trial.load(Relaxed)
    }

    /// Requests sent to this endpoint in total.
    pub fn requests(&self) -> u64 {
        self.load.load(Relaxed) >> 24
    }

    /// Requests that failed (as classified by the balancer or a health layer).
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Counts a failure in the stats. Health policies call this for every failure they
    /// classify; the balancer calls it for errors returned by the endpoint service.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Records why the endpoint last failed (an error chain, a status), shown in the
    /// stats as [`BackendStats::last_failure`](crate::balance::BackendStats::last_failure)
    /// and kept out of client answers. Kept to 256 bytes.
    pub fn set_last_failure(&self, reason: impl fmt::Display) {
        let mut text = reason.to_string();
        if text.len() > 256 {
            let mut end = 256;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.into());
    }

    /// Why the endpoint last failed, if it ever did.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(str::to_owned)
    }

    // === latency ===

    /// Feeds one observed round-trip time into the peak-EWMA estimate.
    ///
    /// Peak EWMA (Finagle, linkerd): a sample above the estimate replaces it at once; a
    /// lower one is blended in with weight `1 - e^(-Δt/τ)`, τ = 10 s, but never less than
    /// 1/100. That floor is this crate's addition: with time alone, one stalled answer
    /// (the balancer's own thread descheduled for a few milliseconds) sets a busy
    /// endpoint's estimate for seconds, however many fast answers follow, and makes a
    /// really slow endpoint look comparatively cheap. With it a peak fades after about
    /// 100 faster answers or 10 s, whichever comes first; an endpoint that stays slow
    /// keeps its peak, since each slow answer sets it again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower_lb::balance::EndpointState;
    ///
    /// let state = EndpointState::detached();
    /// let now = Instant::now();
    /// state.observe_rtt(Duration::from_millis(1), now);
    /// state.observe_rtt(Duration::from_millis(20), now); // a peak replaces the estimate
    /// assert_eq!(state.ewma(), Some(Duration::from_millis(20)));
    /// for _ in 0..500 {
    ///     state.observe_rtt(Duration::from_millis(1), now); // ... and fades by count
    /// }
    /// assert!(state.ewma().unwrap() < Duration::from_millis(2));
    /// ```
    pub fn observe_rtt(&self, rtt: Duration, now: Instant) {
        self.observe_rtt_ns(rtt.as_nanos() as u64, self.nanos(now));
    }

    /// [`observe_rtt`](Self::observe_rtt) with the RTT in nanoseconds and `now_ns` in
    /// nanoseconds since the balancer's clock's origin (the request path's form).
    #[inline]
    pub(crate) fn observe_rtt_ns(&self, rtt_ns: u64, now_ns: u64) {
        let sample = ns_f64(rtt_ns);
        let prev_bits = self.ewma_bits.load(Relaxed);
        let next = if prev_bits == 0 {
            sample
        } else {
            let prev = f64::from_bits(prev_bits);
            if sample > prev {
                sample
            } else {
                let elapsed = ns_f64(now_ns.saturating_sub(self.ewma_stamp.load(Relaxed)));
                let x = elapsed * DECAY_PER_NANO;
                // e^-x > 1 - 1/N while x < 1/N: the sample-count floor decides, no `exp`
                // needed (the usual case for a busy endpoint).
                let w = if x < 1.0 / DECAY_SAMPLES {
                    1.0 - 1.0 / DECAY_SAMPLES
                } else {
                    (-x).exp().min(1.0 - 1.0 / DECAY_SAMPLES)
                };
                prev * w + sample * (1.0 - w)
            }
        };
        // Concurrent updates may drop a sample; the estimate stays sound.
        self.ewma_stamp.store(now_ns, Relaxed);
        self.ewma_bits.store(next.max(1.0).to_bits(), Relaxed);
    }

    /// The latest peak-EWMA RTT, if any sample was observed.
    pub fn ewma(&self) -> Option<Duration> {
        match self.ewma_bits.load(Relaxed) {
            0 => None,
            bits => Some(Duration::from_nanos(f64::from_bits(bits) as u64)),
        }
    }

    /// The peak-EWMA RTT in nanoseconds, decayed towards zero for the time since the last
    /// sample, so an endpoint that had one slow answer is tried again eventually. Before
    /// the first sample, the assumed 30 ms, decayed for the time since the endpoint
    /// joined (as tower's `PeakEwma` does), so a joiner is tried eventually too.
    pub fn ewma_nanos_at(&self, now: Instant) -> f64 {
        self.ewma_at_ns(self.nanos(now))
    }

    /// [`ewma_nanos_at`](Self::ewma_nanos_at) with `now_ns` in nanoseconds since the
    /// balancer's clock's origin (the pick's form).
    #[inline]
    pub(crate) fn ewma_at_ns(&self, now_ns: u64) -> f64 {
        let estimate = match self.ewma_bits.load(Relaxed) {
            // No sample yet: the assumed latency, fading from when the endpoint joined as a
            // sample would (tower's and linkerd's `PeakEwma`), so a joiner among faster
            // endpoints is tried eventually rather than never.
            0 => DEFAULT_RTT.as_nanos() as f64,
            bits => f64::from_bits(bits),
        };
        let elapsed = ns_f64(now_ns.saturating_sub(self.ewma_stamp.load(Relaxed)));
        let x = elapsed * DECAY_PER_NANO;
        // Under 10 ms since the last sample (x < 0.001), 1 - x is e^-x within 5e-7.
        let w = if x < 1e-3 { 1.0 - x } else { (-x).exp() };
        estimate * w
    }

    // === health ===

    /// The endpoint's status at `now`.
    pub fn status_at(&self, now: Instant) -> Status {
        if self.draining.load(Relaxed) {
            return Status::Draining;
        }
        if self.active_down.load(Relaxed) {
            return Status::Down;
        }
        match self.ejected_until.load(Acquire) {
            0 => {}
            until => {
                let until = self.instant(until - 1);
                if now < until {
                    return Status::Ejected {
                        remaining: until - now,
                    };
                }
                return Status::Probation;
            }
        }
        if self.probation.load(Relaxed) {
            Status::Probation
        } else {
            Status::Healthy
        }
    }

    /// The endpoint's status now.
    pub fn status(&self) -> Status {
        self.status_at(Instant::now())
    }

    /// Whether the balancer may send a new request here at `now` (healthy or on
    /// probation).
    pub fn is_available_at(&self, now: Instant) -> bool {
        matches!(self.status_at(now), Status::Healthy | Status::Probation)
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.load(Acquire) {
            0 => None,
            ns => Some(self.instant(ns - 1)),
        }
    }

    /// How many times this endpoint was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Ejects the endpoint until `until`; after that it is on probation.
    pub fn eject_until(&self, until: Instant) {
        // Traffic resumes at `until`: slow start ramps from there.
        self.ramp_from.store(self.nanos(until), Relaxed);
        let was = self.ejected_until.swap(self.nanos(until) + 1, AcqRel);
        if was == 0 && !self.probation.swap(true, Relaxed) {
            self.count_ejected(true);
        }
        self.probation.store(true, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        self.touch();
    }

    /// Ends any ejection or probation: the endpoint is healthy again.
    pub fn readmit(&self) {
        let was_ejected = self.ejected_until.swap(0, AcqRel) != 0;
        let was_probation = self.probation.swap(false, Relaxed);
        if was_ejected || was_probation {
            self.count_ejected(false);
            self.touch();
        }
    }

    /// This endpoint's value of type `T`, made with `T::default()` the first time: state
    /// a layer or policy owns but keeps with the endpoint (it survives discovery updates
    /// and re-made services, as the rest of the endpoint's state does). Passive health
    /// keeps its failure window and ejection backoff here
    /// ([`health::passive::Memory`](crate::health::passive::Memory), feature
    /// `health-passive`). Takes a lock: read it once, when the layer is made.
    ///
    /// ```
    /// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
    /// use tower_lb::balance::EndpointState;
    ///
    /// #[derive(Default)]
    /// struct Retries(AtomicU64);
    ///
    /// let state = EndpointState::detached();
    /// state.slot::<Retries>().0.fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(state.slot::<Retries>().0.load(Ordering::Relaxed), 1);
    /// ```
    pub fn slot<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.iter() {
            if let Ok(t) = s.clone().downcast::<T>() {
                return t;
            }
        }
        let t = Arc::new(T::default());
        slots.push(t.clone());
        t
    }

    /// Whether this endpoint may be ejected under the max ejection share `max_share`
    /// (Envoy `max_ejection_percent`), decided per priority level:
    ///
    /// - a lone endpoint (the only one of the whole set) is never ejected (nginx);
    /// - the first ejection of a level is always allowed (gRPC);
    /// - another is allowed while the level's ejected share stays within `max_share`;
    /// - beyond that share, only while another level has an available endpoint to take
    ///   over: the share guards the last endpoints that can serve, not primaries that
    ///   backups can replace (nginx `backup`).
    ///
    /// ```
    /// use tower_lb::balance::EndpointState;
    ///
    /// // A detached state is alone in its set: never ejected.
    /// assert!(!EndpointState::detached().may_eject(0.5));
    /// ```
    pub fn may_eject(&self, max_share: f64) -> bool {
        self.ejection_verdict(max_share).is_ok()
    }

    /// [`may_eject`](Self::may_eject), with the reason of a refusal for logs.
    pub(crate) fn ejection_verdict(&self, max_share: f64) -> Result<(), Refusal> {
        if self.on_probation_or_ejected() {
            return Ok(());
        }
        if self.pool.members.load(Relaxed) <= 1 {
            return Err(Refusal::Lone);
        }
        let level = self.level();
        let levels = self.pool.levels();
        let ejected = Levels::get(&levels.ejected, level);
        let live = Levels::get(&levels.live, level);
        if ejected == 0 || ((ejected + 1) as f64) <= max_share * live as f64 {
            return Ok(());
        }
        let elsewhere = levels
            .available
            .iter()
            .enumerate()
            .any(|(l, &n)| l != usize::from(level) && n > 0);
        if elsewhere {
            Ok(())
        } else {
            Err(Refusal::Share {
                level,
                ejected,
                live,
            })
        }
    }

    /// Whether the endpoint is ejected or on probation (its last ejection has not been
    /// cleared by a success).
    pub fn on_probation_or_ejected(&self) -> bool {
        self.probation.load(Relaxed) || self.ejected_until.load(Relaxed) != 0
    }

    /// Sets the verdict of active probing (`true`: down).
    pub fn set_down(&self, down: bool) {
        if self.active_down.swap(down, Relaxed) != down {
            if !down {
                // Recovered: slow start ramps from now.
                self.ramp_from.store(self.nanos(Instant::now()), Relaxed);
            }
            self.touch();
        }
    }

    /// Whether active probing marked the endpoint down.
    pub fn is_down(&self) -> bool {
        self.active_down.load(Relaxed)
    }

    /// Starts or stops draining (nginx `down`); through [`Handle::drain`](super::Handle::drain).
    pub(crate) fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Relaxed) != draining {
            self.touch();
        }
    }

    /// Whether the endpoint is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// When the endpoint last joined the set or recovered (an ejection ended, active
    /// probing marked it up again): where slow start ramps from.
    pub fn ramp_start(&self) -> Instant {
        self.instant(self.ramp_from.load(Relaxed))
    }

    /// Claims the one probation trial; `false` if a trial is already in flight.
    #[cfg_attr(not(feature = "health-passive"), allow(dead_code))]
    pub(crate) fn claim_trial(&self) -> bool {
        self.trial
            .compare_exchange(false, true, AcqRel, Relaxed)
            .is_ok()
    }

    /// Ends the probation trial (its verdict is in, or it was cancelled).
    #[cfg_attr(not(feature = "health-passive"), allow(dead_code))]
    pub(crate) fn release_trial(&self) {
        self.trial.store(false, Release);
    }

    /// Endpoints of this endpoint's set that are ejected or on probation, over every
    /// priority level.
    pub fn pool_ejected(&self) -> usize {
        self.pool.ejected()
    }

    /// Whether a probation trial is in flight.
    pub fn trial_in_flight(&self) -> bool {
        self.trial.load(Relaxed)
    }
}
