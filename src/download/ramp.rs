//! How many streams a run keeps busy when `--concurrency` is not given: the fewest that move
//! the bytes as fast as the most would.
//!
//! A slow link needs many streams: one connection to an object store is served at about
//! 85–90 MB/s (AWS's S3 performance guidelines: "one concurrent request for each 85–90 MB/s of
//! desired network throughput"), a CDN's similarly, so a 10–25 Gbit/s node fills its link only
//! with 16. A host that is itself the limit (a CPU-limited pod, a model hashed in order on two
//! cores, a disk that cannot keep up) gains nothing from more streams and pays for each in memory
//! held ahead of the hash, scheduling and cache misses: on this project's two-core bench the Hub
//! set loaded in 1.11–1.18 s with 2 streams against 1.33–1.40 s with 16, at 35 instead of
//! 120 MiB.
//!
//! So a run starts with [`START`] streams and, once their bytes flow, looks at what each stream
//! that is fetching moves (not one that finishes a file or waits out a backoff): slower than one
//! connection can be served ([`FAST_STREAM`]), the link or the server is the limit and every
//! stream is opened at once, one [`WINDOW`] after the first byte. Faster, it doubles the
//! streams while doubling raises the throughput by [`GAIN`], and goes back to the last level
//! that paid when it does not; it tries again every [`REPROBE`], against the best of the
//! level's last [`RECENT`] windows. Only the start's streams are held against [`FAST_STREAM`]:
//! at a doubled level a host that is the limit is shared among more streams, each of which
//! looks slow; such a level learns of a link that got busier at its next probe. A run kept at
//! the start opens every stream if its streams later move below [`FAST_STREAM`] for
//! [`SLOW_WINDOWS`] windows in a row. TCP's slow start cannot trap a run on few streams: a stream still in slow start
//! looks slow, and slow streams open every stream. A host too slow to move 150 MB/s a stream
//! gets every stream too: today's default, without the gain.
//!
//! hf_xet (1.3+) adapts too, differently: one stream more or less at most every 500 ms, from a
//! regression of request time on size × concurrency, starting at one stream (four since 1.5).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How often the run's byte count is looked at.
pub const TICK: Duration = Duration::from_millis(50);
/// Streams a run starts with.
pub const START: usize = 2;
/// A stream moving more than this is faster than one connection to an object store or a CDN is
/// served (~90 MB/s for S3, see the module doc): the host, not the link, may be the limit.
///
/// On this project's two-core VM, where the host is the limit, two streams moved 190–290 MB/s
/// each over their first window (six runs): 200 MB/s opened every stream in two of them.
pub const FAST_STREAM: f64 = 150e6;
/// Each level settles for one window (new requests, slow start on a low-latency link) and is
/// measured over the next.
pub const WINDOW: Duration = Duration::from_millis(150);
/// Doubling the streams must raise the throughput by this factor to be kept.
pub const GAIN: f64 = 1.15;
/// After a doubling did not pay, it is tried again this much later.
pub const REPROBE: Duration = Duration::from_secs(10);
/// A probe must beat the best of up to this many of the level's last judged windows (750 ms
/// or more): a stall that touches them all is a slower link, not a moment.
pub const RECENT: usize = 5;
/// Slow windows in a row that open every stream after the run's first verdict: a stall of up
/// to ~300 ms touches at most two.
pub const SLOW_WINDOWS: u32 = 3;

/// A change of the streams allowed, and why (for the log; `None` for a silent probe).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub streams: usize,
    pub why: Option<String>,
}

/// The state of the decision, fed the run's byte count at regular ticks.
#[derive(Debug)]
pub struct Ramp {
    max: usize,
    streams: usize,
    /// The level this one doubled, with the rate to beat, while a doubling is measured.
    base: Option<(usize, f64)>,
    /// The rates of the current level's last [`RECENT`] windows, newest last.
    recent: Vec<f64>,
    /// A first verdict was given (see [`Ramp::slowed`]).
    judged: bool,
    /// Judged windows in a row in which the starting streams moved slowly.
    slow_windows: u32,
    /// When the current level's settling ends (None before the first byte).
    settle_until: Option<Duration>,
    window: Option<Window>,
    /// No doubling before this (after one that did not pay).
    hold_until: Duration,
    /// A revert was logged.
    told_revert: bool,
    done: bool,
}

impl Ramp {
    /// A run allowed up to `max` streams; `initial()` is what it starts with.
    pub fn new(max: usize) -> Ramp {
        let max = max.max(1);
        Ramp {
            max,
            streams: START.min(max),
            base: None,
            recent: Vec::with_capacity(RECENT),
            judged: false,
            slow_windows: 0,
            settle_until: None,
            window: None,
            hold_until: Duration::ZERO,
            told_revert: false,
            done: START >= max,
        }
    }

    pub fn initial(&self) -> usize {
        self.streams
    }

    /// Nothing more to decide: every stream is open (or as many as the run allows).
    pub fn done(&self) -> bool {
        self.done
    }

    /// One tick of the run. Returns the new number of streams when it changes.
    pub fn observe(&mut self, t: Tick) -> Option<Change> {
        if self.done {
            return None;
        }
        // The first level is measured from its first byte (not from the run's start: TTFB,
        // TLS), with no settling: its streams started with the run, and on a slow link every
        // window spent on few streams costs.
        let Some(settle_until) = self.settle_until else {
            if t.bytes > 0 {
                self.settle_until = Some(t.now);
                self.start_window(t);
            }
            return None;
        };
        if t.now < settle_until {
            return None;
        }
        let Some(w) = self.window.as_mut() else {
            self.start_window(t);
            return None;
        };
        w.fetching += t.fetching;
        w.ticks += 1;
        if t.now < w.from + WINDOW {
            return None;
        }
        let rate = t.bytes.saturating_sub(w.bytes) as f64 / (t.now - w.from).as_secs_f64();
        let fetching = w.fetching as f64 / f64::from(w.ticks);
        self.start_window(t);
        if rate == 0.0 || fetching < 0.5 {
            // A stall (a retry's backoff, a pushback, a file's fsync): nothing to learn, and the
            // windows on either side of it are not slow "in a row".
            self.slow_windows = 0;
            return None;
        }
        self.judge(t, rate, fetching)
    }

    fn start_window(&mut self, t: Tick) {
        self.window = Some(Window {
            from: t.now,
            bytes: t.bytes,
            fetching: 0,
            ticks: 0,
        });
    }

    /// A level's measured `rate`, with `fetching` streams on average moving bytes (see
    /// [`Tick::fetching`]): keep it, double it, go back, or open every stream.
    fn judge(&mut self, t: Tick, rate: f64, fetching: f64) -> Option<Change> {
        // Every chunk is out: streams run dry, a rate now says nothing about more of them.
        if t.chunks_left == 0 {
            self.done = true;
            return None;
        }
        if let Some((level, base_rate)) = self.base.take() {
            if rate < GAIN * base_rate {
                self.hold_until = t.now + REPROBE;
                // Said once: the retries every REPROBE change nothing unless they pay.
                let told = std::mem::replace(&mut self.told_revert, true);
                let why = (!told).then(|| format!(
                    "streams: {level} of {} (more streams did not raise the throughput: {} moved {}/s, {level} moved {}/s; tried again every {} s)",
                    self.max,
                    self.streams,
                    crate::progress::human(rate as u64),
                    crate::progress::human(base_rate as u64),
                    REPROBE.as_secs()
                ));
                return Some(self.set(t.now, level, why));
            }
        }
        if self.streams >= self.max {
            self.done = true;
            return None;
        }
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(rate);
        let per_stream = rate / fetching;
        if self.slowed(per_stream) {
            self.done = true;
            let why = format!(
                "streams: {} → {} (each moved {}/s, no faster than one connection is served: the link or the server is the limit)",
                self.streams,
                self.max,
                crate::progress::human(per_stream as u64)
            );
            return Some(self.set(t.now, self.max, Some(why)));
        }
        // Streams added now would find too little left to be busy (the run's tail).
        if t.now < self.hold_until || t.chunks_left < self.streams as u64 {
            return None;
        }
        // The rate to beat is the best of the level's last windows, not this one alone: a
        // probe measured against a window with a stall in it (a file's fsync, a pause in the
        // server) would find more streams paying and keep them for good.
        let best = self.recent.iter().copied().fold(rate, f64::max);
        self.base = Some((self.streams, best));
        Some(self.set(t.now, (self.streams * 2).min(self.max), None))
    }

    /// Whether the starting streams moved slowly enough, long enough, to open every stream.
    ///
    /// Only the streams a run starts with say what one connection is served at: at a level
    /// doubled from them, a host that is the limit shares itself among more streams, and each
    /// looks slow (a host moving 590 MB/s gives 4 streams 147.5 MB/s each). Such a level
    /// doubles or goes back by the throughput alone, and learns of a link that got busier at
    /// its next probe. The first verdict acts on one window (a slow link costs every window
    /// spent on few streams); later ones need [`SLOW_WINDOWS`] in a row, so that a slowdown of
    /// up to ~300 ms opens nothing (a stall with no bytes at all breaks the row).
    fn slowed(&mut self, per_stream: f64) -> bool {
        let slow = self.streams <= START && per_stream < FAST_STREAM;
        self.slow_windows = if slow { self.slow_windows + 1 } else { 0 };
        let needed = if self.judged { SLOW_WINDOWS } else { 1 };
        self.judged = true;
        self.slow_windows >= needed
    }

    /// A new level: settle, then measure.
    fn set(&mut self, now: Duration, streams: usize, why: Option<String>) -> Change {
        self.streams = streams;
        self.slow_windows = 0;
        self.recent.clear();
        self.window = None;
        self.settle_until = Some(now + WINDOW);
        Change { streams, why }
    }
}

/// What the controller sees at one tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Since the run started.
    pub now: Duration,
    /// Received so far.
    pub bytes: u64,
    /// Streams with a request or body under way now (not parked, finishing a file, waiting out
    /// a backoff, or waiting for room ahead of an in-order hash).
    pub fetching: usize,
    /// Chunks not handed to a stream yet.
    pub chunks_left: u64,
}

/// A measuring window: where it started, and the streams fetching summed over its ticks.
#[derive(Debug)]
struct Window {
    from: Duration,
    bytes: u64,
    fetching: usize,
    ticks: u32,
}

/// The streams allowed now, shared by a run's workers: worker `i` takes a chunk only while `i`
/// is below it. A worker above it finishes its chunk, then parks here.
pub struct Gate {
    allowed: AtomicUsize,
    /// Set for good by [`Gate::open_all`]: a decision the controller took from an older window
    /// must not park workers again once the run stops.
    released: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Gate {
    pub fn new(allowed: usize) -> Gate {
        Gate {
            allowed: AtomicUsize::new(allowed),
            released: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// A new count; ignored once [`Gate::open_all`] has released everyone.
    pub fn set(&self, allowed: usize) {
        self.allowed.store(allowed, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Every worker through, for good: the run stops, or has handed out its last chunk (the
    /// parked workers must wake to find nothing left and end).
    pub fn open_all(&self) {
        self.released.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until worker `index` may take a chunk.
    pub async fn admit(&self, index: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.released.load(Ordering::Acquire) || index < self.allowed.load(Ordering::Acquire)
            {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(now: Duration, bytes: u64, fetching: usize, chunks_left: u64) -> Tick {
        Tick {
            now,
            bytes,
            fetching,
            chunks_left,
        }
    }

    /// Runs a ramp of `max` streams for `secs` over a link whose throughput is
    /// `rate(streams, time since the streams last changed)`; the streams after each tick.
    fn simulate(
        max: usize,
        secs: f64,
        rate: impl Fn(usize, Duration) -> f64,
    ) -> (Vec<usize>, Vec<Change>) {
        let mut ramp = Ramp::new(max);
        let (mut streams, mut since, mut bytes) = (ramp.initial(), Duration::ZERO, 0f64);
        let (mut seen, mut changes) = (vec![], vec![]);
        let mut now = Duration::ZERO;
        while now.as_secs_f64() < secs {
            now += TICK;
            since += TICK;
            bytes += rate(streams, since) * TICK.as_secs_f64();
            if let Some(c) = ramp.observe(tick(now, bytes as u64, streams, 1 << 20)) {
                if c.streams != streams {
                    since = Duration::ZERO;
                }
                streams = c.streams;
                changes.push(c);
            }
            seen.push(streams);
        }
        (seen, changes)
    }

    #[test]
    fn a_slow_link_opens_every_stream_after_one_settle_and_one_window() {
        let (seen, changes) = simulate(16, 3.0, |n, _| n as f64 * 60e6);
        // One window from the first byte (the first tick's): 150 ms, then all 16.
        assert_eq!(seen[..3], [2; 3]);
        assert!(seen[3..].iter().all(|&n| n == 16), "{seen:?}");
        assert_eq!(changes.len(), 1);
        assert!(changes[0].why.as_deref().unwrap().contains("2 → 16"));
    }

    #[test]
    fn a_host_that_is_the_limit_stays_at_the_start_and_probes_again_later() {
        // Flat: more streams only cost (here, slightly less throughput).
        let (seen, changes) = simulate(16, 12.0, |n, _| 0.9e9 - n as f64 * 5e6);
        let probes = changes.iter().filter(|c| c.streams == 4).count();
        let backs = changes.iter().filter(|c| c.streams == 2).count();
        assert_eq!((probes, backs), (2, 2), "{changes:?}");
        // The second revert changes nothing worth a line.
        assert_eq!(changes.iter().filter(|c| c.why.is_some()).count(), 1);
        assert!(seen.iter().all(|&n| n <= 4));
        assert_eq!(*seen.last().unwrap(), 2);
        // Most of the time is spent at 2.
        assert!(seen.iter().filter(|&&n| n == 2).count() > seen.len() * 9 / 10);
        let why = changes[1].why.as_deref().unwrap();
        assert!(
            why.starts_with("streams: 2 of 16 (more streams did not raise the throughput"),
            "{why}"
        );
    }

    #[test]
    fn a_fast_link_with_a_cap_keeps_the_fewest_streams_that_reach_it() {
        let (seen, _) = simulate(16, 5.0, |n, _| (n as f64 * 400e6).min(1.1e9));
        assert_eq!(*seen.last().unwrap(), 4, "{seen:?}");
        assert!(seen.iter().all(|&n| n <= 8));
    }

    #[test]
    fn a_host_that_is_the_limit_at_a_doubled_level_is_not_taken_for_a_slow_link() {
        // 2 streams move 250 MB/s each; 4 move 18 % more in all, 147.5 MB/s each, below
        // FAST_STREAM: the host is the limit, not the link, and every stream must not open.
        let (seen, changes) = simulate(16, 3.0, |n, _| (n as f64 * 250e6).min(0.59e9));
        assert!(seen.iter().all(|&n| n <= 8), "{changes:?}");
        assert_eq!(*seen.last().unwrap(), 4, "{changes:?}");
    }

    #[test]
    fn a_doubled_level_whose_link_slows_down_opens_up_at_its_next_probe() {
        // Capped at 1.1 GB/s (4 streams kept, 8 tried and gone back from at 0.8 s), then from
        // 3 s on each stream gets 60 MB/s: each of the 4 now looks slow, but a doubled level
        // is not judged stream by stream; the probe at 10.8 s finds doubling paying.
        let seen = run_link(13, 1 << 20, |now, n| {
            if now < Duration::from_secs(3) {
                ((n as f64 * 400e6).min(1.1e9), n)
            } else {
                (n as f64 * 60e6, n)
            }
        });
        let (at, last) = (|ms| allowed_at(&seen, ms), seen.last().map(|&(_, n)| n));
        assert_eq!((at(3000), at(10500)), (Some(4), Some(4)), "{seen:?}");
        assert_eq!(last, Some(16));
    }

    /// Runs a ramp of 16 streams for `secs` over a link given as `link(time, streams allowed)`
    /// → (throughput, streams fetching), with `chunks_left` chunks never handed out; the
    /// streams allowed after each tick, with the tick's time.
    fn run_link(
        secs: u64,
        chunks_left: u64,
        link: impl Fn(Duration, usize) -> (f64, usize),
    ) -> Vec<(Duration, usize)> {
        let mut ramp = Ramp::new(16);
        let (mut now, mut bytes, mut streams) = (Duration::ZERO, 0f64, ramp.initial());
        let mut seen = vec![];
        while now < Duration::from_secs(secs) {
            now += TICK;
            let (rate, fetching) = link(now, streams);
            bytes += rate * TICK.as_secs_f64();
            if let Some(c) = ramp.observe(tick(now, bytes as u64, fetching, chunks_left)) {
                streams = c.streams;
            }
            seen.push((now, streams));
        }
        seen
    }

    /// The streams allowed at the first tick from `ms` on.
    fn allowed_at(seen: &[(Duration, usize)], ms: u128) -> Option<usize> {
        seen.iter()
            .find(|(t, _)| t.as_millis() >= ms)
            .map(|&(_, n)| n)
    }

    /// A dip: the streams allowed → (throughput, streams fetching).
    type Dip = dyn Fn(usize) -> (f64, usize);

    /// Runs a ramp for 40 s over a host capped at 1.1 GB/s (400 MB/s a stream below the cap;
    /// 4 streams kept, probes every 10 s), where every second from 2 s on starts, `offset_ms`
    /// in, with `dip_ms` of `dip(streams)` → (rate, fetching); the changes, and the share of
    /// ticks above 4.
    fn capped_with_dips(offset_ms: u128, dip_ms: u128, dip: &Dip) -> (Vec<usize>, f64) {
        let seen = run_link(40, 1 << 20, |now, n| {
            let phase = (now.as_millis() + 1000 - offset_ms) % 1000;
            if now > Duration::from_secs(2) && phase < dip_ms {
                dip(n)
            } else {
                ((n as f64 * 400e6).min(1.1e9), n)
            }
        });
        // A change always changes the count (a doubling, a revert, every stream opened).
        let changes = seen
            .windows(2)
            .filter(|w| w[0].1 != w[1].1)
            .map(|w| w[1].1)
            .collect();
        let above = seen.iter().filter(|&&(_, n)| n > 4).count();
        (changes, above as f64 / seen.len() as f64)
    }

    #[test]
    fn moments_of_stalls_raise_the_streams_for_no_longer_than_a_probe() {
        // Every second: three of four streams syncing files for 0.2 s (the one fetching as
        // fast as before); every stream at a quarter of its speed for 0.2 s or 0.35 s; two
        // streams of four fetching for 0.4 s. Each probe's rate to beat must include a window
        // the dip did not touch, wherever the dips fall.
        let dips: [(u128, &Dip); 4] = [
            (200, &|_| (275e6, 1)),
            (200, &|n| (n as f64 * 70e6, n)),
            (350, &|n| (n as f64 * 70e6, n)),
            (400, &|_| (550e6, 2)),
        ];
        for offset in (0..1000).step_by(50) {
            for (ms, dip) in dips {
                let (changes, above) = capped_with_dips(offset, ms, dip);
                let case = format!("{ms} ms at +{offset}");
                // 2 → 4 → 8 → 4 at the start, then a probe 4 → 8 → 4 every 10 s.
                assert_eq!(changes.len(), 9, "{case}: {changes:?}");
                assert_eq!(changes[..3], [4, 8, 4], "{case}: {changes:?}");
                assert!(
                    changes[3..].chunks(2).all(|c| c == [8, 4]),
                    "{case}: a probe kept more streams: {changes:?}"
                );
                assert!(above < 0.05, "{case}: above 4 for {above:.2} of the time");
            }
        }
    }

    #[test]
    fn after_the_first_verdict_a_slowdown_of_a_moment_at_the_start_opens_nothing() {
        // Two streams held at 2 by a host limit (4 do no better), each moving 250 MB/s; at 3 s
        // a 250 ms slowdown to 10 MB/s, or a 600 ms pause with no bytes at all; from 5 s on, a
        // link that got busier for good. At every alignment of the stall to the windows.
        for offset in (0..150).step_by(50) {
            for (stall_ms, each_in_stall) in [(250, 10e6), (600, 0.0)] {
                let from = 3000 + offset;
                let seen = run_link(6, 1000, |now, _| {
                    let ms = now.as_millis();
                    let each = if (from..from + stall_ms).contains(&ms) {
                        each_in_stall
                    } else if ms >= 5000 {
                        40e6
                    } else {
                        250e6
                    };
                    (each * 2.0, 2)
                });
                let case = format!("{stall_ms} ms from {from}");
                assert_eq!(
                    allowed_at(&seen, 4900),
                    Some(2),
                    "{case} opened streams: {seen:?}"
                );
                assert_eq!(seen.last().map(|&(_, n)| n), Some(16), "{case}");
            }
        }
    }

    #[test]
    fn a_fast_link_that_scales_is_doubled_up_to_every_stream() {
        let (seen, changes) = simulate(16, 3.0, |n, _| n as f64 * 300e6);
        assert_eq!(*seen.last().unwrap(), 16, "{changes:?}");
        assert_eq!(
            changes.iter().map(|c| c.streams).collect::<Vec<_>>(),
            [4, 8, 16]
        );
    }

    #[test]
    fn streams_in_slow_start_look_slow_and_open_every_stream() {
        // Each stream would reach 500 MB/s, after a second of slow start (a long round trip).
        let (seen, _) = simulate(16, 3.0, |n, since| {
            n as f64 * 500e6 * (since.as_secs_f64() / 1.0).min(1.0)
        });
        assert_eq!(*seen.last().unwrap(), 16);
    }

    #[test]
    fn streams_that_slow_down_later_open_every_stream() {
        let slow_after = Duration::from_secs(3);
        let mut ramp = Ramp::new(16);
        let (mut now, mut bytes, mut streams) = (Duration::ZERO, 0u64, ramp.initial());
        while now < Duration::from_secs(5) {
            now += TICK;
            let per_stream = if now < slow_after { 450e6 } else { 40e6 };
            bytes += (per_stream * streams.min(2) as f64 * TICK.as_secs_f64()) as u64;
            if let Some(c) = ramp.observe(tick(now, bytes, streams.min(2), 1 << 20)) {
                streams = c.streams;
            }
        }
        assert_eq!(streams, 16);
        assert!(ramp.done());
    }

    #[test]
    fn a_stall_teaches_nothing() {
        let mut ramp = Ramp::new(16);
        let mut now = Duration::ZERO;
        // Bytes arrive once, then nothing for two seconds: no change.
        for _ in 0..40 {
            now += TICK;
            assert_eq!(ramp.observe(tick(now, 1 << 20, 2, 1000)), None);
        }
        // Bytes flow, but no stream was fetching (both finishing files): no change either.
        for i in 1..=10 {
            let t = tick(now + TICK * i, (1 << 20) + (u64::from(i) << 20), 0, 1000);
            assert_eq!(ramp.observe(t), None);
        }
        assert!(!ramp.done());
    }

    /// Feeds `ramp` ticks of `per_stream` bytes/s from `fetching` streams for `secs`; the
    /// changes.
    fn feed(
        ramp: &mut Ramp,
        now: &mut Duration,
        secs: f64,
        (per_stream, fetching, left): (f64, usize, u64),
    ) -> Vec<Change> {
        let mut changes = vec![];
        let end = *now + Duration::from_secs_f64(secs);
        let mut bytes = 0f64;
        while *now < end {
            *now += TICK;
            bytes += per_stream * fetching as f64 * TICK.as_secs_f64();
            changes.extend(ramp.observe(tick(*now, 1 + bytes as u64, fetching, left)));
        }
        changes
    }

    #[test]
    fn a_stream_busy_finishing_a_file_is_not_taken_for_a_slow_link() {
        let (mut ramp, mut now) = (Ramp::new(16), Duration::ZERO);
        // Two fast streams, then one alone moving bytes (the other syncs a file): the run
        // moves half as much, but each stream that moves is as fast.
        let mut changes = feed(&mut ramp, &mut now, 0.2, (450e6, 2, 1000));
        changes.extend(feed(&mut ramp, &mut now, 0.5, (450e6, 1, 1000)));
        assert!(changes.iter().all(|c| c.streams < 16), "{changes:?}");
    }

    #[test]
    fn at_the_start_a_stream_busy_finishing_a_file_is_not_taken_for_a_slow_link() {
        let (mut ramp, mut now) = (Ramp::new(16), Duration::ZERO);
        // The first verdict: one of the two streams syncs a file while the other moves
        // 200 MB/s, 100 MB/s per allowed stream but not per fetching one. One chunk left: no
        // doubling either.
        let changes = feed(&mut ramp, &mut now, 0.6, (200e6, 1, 1));
        assert_eq!(changes, []);
        assert!(!ramp.done());
    }

    #[test]
    fn the_tail_stops_the_doubling_but_a_slow_link_still_opens_every_stream() {
        let (mut ramp, mut now) = (Ramp::new(16), Duration::ZERO);
        // One chunk left, two fast streams: no doubling.
        assert_eq!(feed(&mut ramp, &mut now, 1.0, (450e6, 2, 1)), []);
        // Slow streams open every stream, tail or not.
        let changes = feed(&mut ramp, &mut now, 0.8, (50e6, 2, 1));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].streams, 16);
    }

    #[test]
    fn with_every_chunk_out_nothing_is_judged() {
        let (mut ramp, mut now) = (Ramp::new(16), Duration::ZERO);
        // Probing 4 when the chunks run out, the streams then running dry: no revert.
        let changes = feed(&mut ramp, &mut now, 0.4, (450e6, 2, 100));
        assert_eq!(changes.iter().map(|c| c.streams).collect::<Vec<_>>(), [4]);
        assert_eq!(feed(&mut ramp, &mut now, 1.0, (100e6, 1, 0)), []);
        assert!(ramp.done());
    }

    #[test]
    fn reaching_every_stream_by_doubling_says_nothing_more() {
        // 300 MB/s a stream up to 8; 16 move 2.8 GB/s, 175 MB/s each, still a gain.
        let (_, changes) = simulate(
            16,
            3.0,
            |n, _| {
                if n < 16 {
                    n as f64 * 300e6
                } else {
                    2.8e9
                }
            },
        );
        assert_eq!(
            changes.iter().map(|c| c.streams).collect::<Vec<_>>(),
            [4, 8, 16]
        );
        assert!(changes.iter().all(|c| c.why.is_none()), "{changes:?}");
    }

    #[tokio::test]
    async fn a_parked_worker_waits_for_its_turn_and_open_all_releases_everyone() {
        let gate = std::sync::Arc::new(Gate::new(2));
        gate.admit(1).await;
        let g = std::sync::Arc::clone(&gate);
        let parked = tokio::spawn(async move { g.admit(5).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!parked.is_finished(), "worker 5 passed a gate of 2");
        gate.set(4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!parked.is_finished(), "worker 5 passed a gate of 4");
        gate.open_all();
        tokio::time::timeout(Duration::from_secs(1), parked)
            .await
            .expect("open_all wakes a parked worker")
            .unwrap();
        // A decision from an older window comes too late: everyone stays through.
        gate.set(2);
        tokio::time::timeout(Duration::from_secs(1), gate.admit(9))
            .await
            .expect("a released gate stays open");
    }

    #[test]
    fn a_run_allowed_no_more_than_the_start_has_nothing_to_decide() {
        let ramp = Ramp::new(1);
        assert_eq!((ramp.initial(), ramp.done()), (1, true));
        let ramp = Ramp::new(START);
        assert_eq!((ramp.initial(), ramp.done()), (START, true));
    }
}
