//! Progress and log output. The library talks to a [`Reporter`]; main picks the
//! implementation: bars on a terminal, a line every few seconds in a pod's log, JSON events
//! for machines, or nothing. Everything goes to stderr; stdout is left for `--dry-run`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::Error;

/// What the run will do, reported once after planning.
#[derive(Debug, Clone, Default)]
pub struct PlanSummary {
    /// Local files to a URL: "send" rather than "fetch"; nothing is removed.
    pub upload: bool,
    pub files: usize,
    pub bytes: u64,
    /// Bytes of those files already on disk from an interrupted run.
    pub resumed_bytes: u64,
    pub skipped_files: usize,
    pub skipped_bytes: u64,
    pub removed_files: usize,
}

/// What the run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Counts sent rather than fetched files.
    pub upload: bool,
    pub files_fetched: usize,
    pub bytes_fetched: u64,
    pub files_skipped: usize,
    pub files_removed: usize,
    pub retries: u64,
    pub elapsed: Duration,
    /// Object requests through the P2P proxy, and those sent direct instead.
    pub p2p_through: u64,
    pub p2p_direct: u64,
}

/// Receives everything the user should see. Called from many tasks at once; `bytes` is on the
/// hot path and must stay cheap.
pub trait Reporter: Send + Sync {
    fn info(&self, msg: &str);
    fn warn(&self, msg: &str);
    fn plan(&self, plan: &PlanSummary);
    fn file_started(&self, id: usize, path: &str, size: u64);
    fn bytes(&self, id: usize, n: u64);
    fn file_done(&self, id: usize, path: &str);
    fn retry(&self, path: &str, attempt: u32, err: &Error, wait: Duration);
    fn finish(&self, summary: &Summary);
    /// The run is ending without `finish` (an error or a signal): remove anything still drawn,
    /// so the error line is not followed or preceded by stale bars.
    fn stop(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    Json,
    None,
}

/// Builds the reporter for a mode; `interval` is the period of log/JSON progress lines.
pub fn reporter(mode: ProgressMode, interval: Duration) -> Arc<dyn Reporter> {
    reporter_for(mode, interval, None)
}

/// The reporter of one SRC DEST pair of several: JSON events carry `"pair": N` (from 1), so a
/// consumer does not take the first pair's `done` for the end of the call.
pub fn reporter_for(
    mode: ProgressMode,
    interval: Duration,
    pair: Option<usize>,
) -> Arc<dyn Reporter> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mode = match mode {
        ProgressMode::Auto if terminal => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Log,
        ProgressMode::Bar if !terminal => {
            eprintln!(
                "progress: bars need a terminal and stderr is not one; printing log lines instead"
            );
            ProgressMode::Log
        }
        m => m,
    };
    match mode {
        ProgressMode::Bar => Arc::new(BarReporter::new()),
        ProgressMode::Json => Arc::new(LineReporter::new(true, interval).in_pair(pair)),
        ProgressMode::None => Arc::new(QuietReporter),
        _ => Arc::new(LineReporter::new(false, interval)),
    }
}

/// Prints warnings only.
pub struct QuietReporter;

impl Reporter for QuietReporter {
    fn info(&self, _: &str) {}
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn plan(&self, _: &PlanSummary) {}
    fn file_started(&self, _: usize, _: &str, _: u64) {}
    fn bytes(&self, _: usize, _: u64) {}
    fn file_done(&self, _: usize, _: &str) {}
    fn retry(&self, _: &str, _: u32, _: &Error, _: Duration) {}
    fn finish(&self, _: &Summary) {}
}

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    done: AtomicU64,
    files: AtomicUsize,
    files_done: AtomicUsize,
    active: AtomicUsize,
}

impl Counters {
    fn line(&self, elapsed: Duration) -> String {
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let eta = if rate > 0.0 && total > done {
            format!("{:.0}s", (total - done) as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "progress: {pct:.1}% {} / {} at {}/s, ETA {eta}, files {}/{} ({} active)",
            human(done),
            human(total),
            human(rate as u64),
            self.files_done.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
            self.active.load(Ordering::Relaxed)
        )
    }
}

/// Plain lines for a pod's log (`json = false`) or JSON events, one per line.
pub struct LineReporter {
    json: bool,
    counters: Arc<Counters>,
    start: Instant,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    interval: Duration,
    /// Which pair of several this run is (JSON events say so).
    pair: Option<usize>,
}

impl LineReporter {
    pub fn new(json: bool, interval: Duration) -> Self {
        LineReporter {
            json,
            counters: Arc::default(),
            start: Instant::now(),
            stop: Arc::default(),
            ticker: Mutex::new(None),
            interval,
            pair: None,
        }
    }

    fn in_pair(mut self, pair: Option<usize>) -> Self {
        self.pair = pair;
        self
    }

    fn emit(&self, v: serde_json::Value) {
        let v = with_pair(v, self.pair);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{v}");
    }

    fn stop_ticker(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.ticker.lock().unwrap().take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for LineReporter {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

/// `v` with `"pair": N` added when the run is one pair of several.
fn with_pair(mut v: serde_json::Value, pair: Option<usize>) -> serde_json::Value {
    if let (Some(p), Some(obj)) = (pair, v.as_object_mut()) {
        obj.insert("pair".into(), p.into());
    }
    v
}

impl Reporter for LineReporter {
    /// A pair that failed stops its ticker at once, before the next pair's starts.
    fn stop(&self) {
        self.stop_ticker();
    }

    fn info(&self, msg: &str) {
        if self.json {
            self.emit(json!({"event": "log", "level": "info", "message": msg}));
        } else {
            eprintln!("{msg}");
        }
    }

    fn warn(&self, msg: &str) {
        if self.json {
            self.emit(json!({"event": "log", "level": "warn", "message": msg}));
        } else {
            eprintln!("warning: {msg}");
        }
    }

    fn plan(&self, p: &PlanSummary) {
        let c = &self.counters;
        c.total.store(p.bytes, Ordering::Relaxed);
        c.done.store(p.resumed_bytes, Ordering::Relaxed);
        c.files.store(p.files, Ordering::Relaxed);
        if self.json {
            self.emit(json!({"event": "plan", "direction": direction(p.upload),
                "files": p.files, "bytes": p.bytes,
                "resumed_bytes": p.resumed_bytes, "skipped_files": p.skipped_files,
                "skipped_bytes": p.skipped_bytes, "removed_files": p.removed_files}));
        } else {
            eprintln!("{}", plan_line(p));
        }
        if p.files == 0 {
            return;
        }
        let (counters, stop, json, interval, start, pair) = (
            Arc::clone(&self.counters),
            Arc::clone(&self.stop),
            self.json,
            self.interval,
            self.start,
            self.pair,
        );
        let handle = std::thread::spawn(move || loop {
            std::thread::park_timeout(interval);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut err = std::io::stderr().lock();
            if json {
                let _ = writeln!(
                    err,
                    "{}",
                    with_pair(
                        json!({"event": "progress",
                        "bytes": counters.done.load(Ordering::Relaxed),
                        "total": counters.total.load(Ordering::Relaxed),
                        "files_done": counters.files_done.load(Ordering::Relaxed),
                        "elapsed_s": start.elapsed().as_secs_f64()}),
                        pair
                    )
                );
            } else {
                let _ = writeln!(err, "{}", counters.line(start.elapsed()));
            }
        });
        *self.ticker.lock().unwrap() = Some(handle);
    }

    fn file_started(&self, _: usize, path: &str, size: u64) {
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        if self.json {
            self.emit(json!({"event": "file_start", "path": path, "size": size}));
        }
    }

    fn bytes(&self, _: usize, n: u64) {
        self.counters.done.fetch_add(n, Ordering::Relaxed);
    }

    fn file_done(&self, _: usize, path: &str) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        if self.json {
            self.emit(json!({"event": "file_done", "path": path}));
        }
    }

    fn retry(&self, path: &str, attempt: u32, err: &Error, wait: Duration) {
        if self.json {
            self.emit(json!({"event": "retry", "path": path, "attempt": attempt,
                "wait_s": wait.as_secs_f64(), "error": err.message()}));
        } else {
            eprintln!(
                "retry {attempt} for {path} in {:.1}s: {}",
                wait.as_secs_f64(),
                err.message()
            );
        }
    }

    fn finish(&self, s: &Summary) {
        self.stop_ticker();
        let secs = s.elapsed.as_secs_f64();
        let rate = s.bytes_fetched as f64 / secs.max(1e-3);
        if self.json {
            self.emit(json!({"event": "done", "direction": direction(s.upload),
                "files_fetched": s.files_fetched,
                "bytes_fetched": s.bytes_fetched, "files_skipped": s.files_skipped,
                "files_removed": s.files_removed, "retries": s.retries, "elapsed_s": secs,
                "p2p_through": s.p2p_through, "p2p_direct": s.p2p_direct}));
        } else {
            eprintln!("{}", summary_line(s, secs, rate));
        }
    }
}

fn direction(upload: bool) -> &'static str {
    if upload {
        "upload"
    } else {
        "download"
    }
}

/// `plan: fetch 3 files (1.0 GiB), 1 up to date (2 B), 0 to remove`, or for an upload
/// `plan: send 3 files (1.0 GiB), 1 already at the destination (2 B)`.
fn plan_line(p: &PlanSummary) -> String {
    let resumed = if p.resumed_bytes > 0 {
        format!(", {} already on disk", human(p.resumed_bytes))
    } else {
        String::new()
    };
    if p.upload {
        return format!(
            "plan: send {} ({}), {} already at the destination ({})",
            count(p.files, "file"),
            human(p.bytes),
            p.skipped_files,
            human(p.skipped_bytes)
        );
    }
    format!(
        "plan: fetch {} ({}{resumed}), {} up to date ({}), {} to remove",
        count(p.files, "file"),
        human(p.bytes),
        p.skipped_files,
        human(p.skipped_bytes),
        p.removed_files
    )
}

fn summary_line(s: &Summary, secs: f64, rate: f64) -> String {
    let (verb, unchanged) = if s.upload {
        ("sent", "already at the destination")
    } else {
        ("fetched", "up to date")
    };
    let removed = if s.upload {
        String::new()
    } else {
        format!(", {} removed", s.files_removed)
    };
    format!(
        "done: {verb} {}, {} in {secs:.1}s ({:.1} MiB/s), {} {unchanged}{removed}, {}",
        count(s.files_fetched, "file"),
        human(s.bytes_fetched),
        rate / (1024.0 * 1024.0),
        s.files_skipped,
        count(s.retries as usize, "retry"),
    )
}

/// indicatif bars: one for the total, one per active file.
pub struct BarReporter {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    files: Mutex<HashMap<usize, indicatif::ProgressBar>>,
}

impl BarReporter {
    pub fn new() -> Self {
        let multi = indicatif::MultiProgress::new();
        // Joins the multi-bar at `plan`: before that there is no total to show.
        let total = indicatif::ProgressBar::hidden();
        BarReporter {
            multi,
            total,
            files: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for BarReporter {
    fn info(&self, msg: &str) {
        let _ = self.multi.println(msg);
    }

    fn warn(&self, msg: &str) {
        let _ = self.multi.println(format!("warning: {msg}"));
    }

    fn plan(&self, p: &PlanSummary) {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        self.total.set_style(style);
        self.total.set_length(p.bytes);
        self.total.set_position(p.resumed_bytes);
        self.total.set_message(count(p.files, "file"));
        // Drawn by the multi-bar, above the file bars: a bar with a draw target of its own
        // would fight the multi-bar over the cursor and leave stale lines behind.
        self.multi.insert(0, self.total.clone());
        let _ = self.multi.println(plan_line(p));
    }

    fn file_started(&self, id: usize, path: &str, size: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        let style = indicatif::ProgressStyle::with_template(
            "  {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(path.to_string());
        self.files.lock().unwrap().insert(id, bar);
    }

    fn bytes(&self, id: usize, n: u64) {
        self.total.inc(n);
        if let Some(b) = self.files.lock().unwrap().get(&id) {
            b.inc(n);
        }
    }

    fn file_done(&self, id: usize, _: &str) {
        if let Some(b) = self.files.lock().unwrap().remove(&id) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
    }

    fn retry(&self, path: &str, attempt: u32, err: &Error, wait: Duration) {
        let _ = self.multi.println(format!(
            "retry {attempt} for {path} in {:.1}s: {}",
            wait.as_secs_f64(),
            err.message()
        ));
    }

    fn stop(&self) {
        for (_, b) in self.files.lock().unwrap().drain() {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        self.total.finish_and_clear();
    }

    fn finish(&self, s: &Summary) {
        self.stop();
        let secs = s.elapsed.as_secs_f64();
        let rate = s.bytes_fetched as f64 / secs.max(1e-3);
        let _ = self.multi.println(summary_line(s, secs, rate));
    }
}

/// `1 file`, `2 files`, `3 retries`.
pub fn count(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// `1.5 GiB`-style sizes.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(2, "retry"), "2 retries");
        assert_eq!(count(1, "retry"), "1 retry");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(4 << 30), "4.0 GiB");
    }

    #[test]
    fn log_line_shows_percent_and_eta() {
        let c = Counters::default();
        c.total.store(200, Ordering::Relaxed);
        c.done.store(100, Ordering::Relaxed);
        c.files.store(2, Ordering::Relaxed);
        let l = c.line(Duration::from_secs(1));
        assert!(
            l.starts_with("progress: 50.0% 100 B / 200 B at 100 B/s, ETA 1s"),
            "{l}"
        );
    }
}
