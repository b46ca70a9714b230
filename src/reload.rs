//! Hot reload. Triggers: file events in the parent directories of the
//! config file and every file it names (so renames, `mv`, in-place writes
//! and Kubernetes `..data` symlink swaps are all seen; event kinds are never
//! filtered), SIGHUP, and a slow poll as a safety net. After a burst of
//! events settles (`reload.debounce`), the config and every file are loaded
//! together into a new [`State`]; only a complete, valid state is swapped
//! in. A failure keeps the old state serving and is retried on the next
//! trigger (a half-written cert/key pair is usually fixed by the next event).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::state::State;

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file event (after debounce) or the periodic poll: skipped when
    /// nothing on disk changed.
    Files,
    /// SIGHUP: always rebuilds.
    Signal,
}

/// Runs until the process exits. `signals` delivers SIGHUP triggers.
pub async fn run(gw: Arc<Gateway>, config_path: PathBuf, mut signals: mpsc::Receiver<()>) {
    let started = gw.state().config.clone();
    let mut reloader = Reloader {
        digest: digest_files(&config_path, &started),
        gw,
        config_path,
        started,
    };
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let mut watch = WatchSet::new(events_tx);
    watch.rearm(&reloader.current_config(), reloader.current_config().reload.watch);

    loop {
        let cfg = reloader.current_config();
        let poll = tokio::time::sleep(cfg.reload.poll_interval);
        let trigger = tokio::select! {
            Some(()) = events.recv() => {
                settle(&mut events, cfg.reload.debounce).await;
                Trigger::Files
            }
            Some(()) = signals.recv() => Trigger::Signal,
            _ = poll => Trigger::Files,
        };
        reloader.reload(trigger);
        let cfg = reloader.current_config();
        // Re-arm after every attempt: a rename may have replaced a watched
        // directory's entries, and a new config may name new files.
        watch.rearm(&cfg, cfg.reload.watch);
    }
}

/// Waits until no event has arrived for `debounce`.
async fn settle(events: &mut mpsc::Receiver<()>, debounce: Duration) {
    loop {
        match tokio::time::timeout(debounce, events.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

struct Reloader {
    gw: Arc<Gateway>,
    config_path: PathBuf,
    /// The config the process started with: its listener and admin
    /// addresses stay bound until a restart.
    started: Arc<Config>,
    /// Digest of the config and every file it names, as last loaded.
    digest: [u8; 32],
}

impl Reloader {
    fn current_config(&self) -> Arc<Config> {
        self.gw.state().config.clone()
    }

    fn reload(&mut self, trigger: Trigger) {
        let current = self.gw.state();
        let digest = digest_files(&self.config_path, &current.config);
        if trigger == Trigger::Files && digest == self.digest {
            return;
        }
        crate::systemd::reloading();
        let result = self.build(current.generation + 1);
        match result {
            Ok(state) => {
                // Digest what was actually loaded, so a file that changed
                // since is seen on the next trigger.
                self.digest = digest_files(&self.config_path, &state.config);
                tracing::info!(
                    generation = state.generation,
                    trigger = ?trigger,
                    certificates = state.certs.len(),
                    crls = state.crls.len(),
                    "reloaded"
                );
                self.gw.metrics.reload(true);
                self.gw.install(state);
            }
            Err(error) => {
                // Keep the digest as it was so the same change is retried.
                tracing::error!(generation = current.generation, trigger = ?trigger, %error, "reload failed; previous state keeps serving");
                self.gw.metrics.reload(false);
                self.gw.record_reload_failure(error, crate::clock::unix_now());
            }
        }
        crate::systemd::ready(&self.gw.state());
    }

    fn build(&self, generation: u64) -> Result<State, String> {
        let mut config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let running = &self.started;
        if config.listener.address != running.listener.address {
            tracing::warn!(
                running = %running.listener.address,
                configured = %config.listener.address,
                "listener.address changed: a restart is needed to move the listener; keeping the running address"
            );
            config.listener.address = running.listener.address;
        }
        if config.admin.address != running.admin.address {
            tracing::warn!(
                running = ?running.admin.address,
                configured = ?config.admin.address,
                "admin.address changed: a restart is needed to move the admin listener; keeping the running address"
            );
            config.admin.address = running.admin.address;
        }
        if config.listener.max_connections != running.listener.max_connections {
            tracing::warn!("listener.max_connections changed: applies after a restart");
        }
        State::build(Arc::new(config), generation).map_err(|e| e.to_string())
    }
}

/// The directories being watched, and the watcher itself. Rebuilt from
/// scratch whenever notify reports an error.
struct WatchSet {
    events: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl WatchSet {
    fn new(events: mpsc::Sender<()>) -> WatchSet {
        WatchSet {
            events,
            watcher: None,
            dirs: BTreeSet::new(),
            broken: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    fn rearm(&mut self, config: &Config, enabled: bool) {
        if !enabled {
            self.watcher = None;
            self.dirs.clear();
            return;
        }
        let wanted = watch_dirs(config);
        let broken = self.broken.swap(false, std::sync::atomic::Ordering::Relaxed);
        if broken || self.watcher.is_none() {
            self.watcher = self.new_watcher();
            self.dirs.clear();
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.dirs.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        let mut armed = BTreeSet::new();
        for dir in &wanted {
            // Re-watching is cheap and repairs a watch lost to a directory swap.
            let _ = watcher.unwatch(dir);
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    armed.insert(dir.clone());
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on SIGHUP and polling for it"),
            }
        }
        self.dirs = armed;
    }

    fn new_watcher(&self) -> Option<RecommendedWatcher> {
        let events = self.events.clone();
        let broken = self.broken.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            if let Err(e) = &event {
                tracing::warn!(error = %e, "file watcher error; it will be rebuilt");
                broken.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // Any event, or an error, means "maybe changed". A full channel
            // already holds a pending trigger, so dropping this one is fine.
            let _ = events.try_send(());
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create file watcher; relying on SIGHUP and polling");
                None
            }
        }
    }
}

/// Parent directories of every file, plus directories named as CA bundles.
fn watch_dirs(config: &Config) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for file in config.files() {
        if file.is_dir() {
            dirs.insert(file.clone());
        }
        if let Some(parent) = file.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    dirs
}

/// SHA-256 over the config file and everything it names (directory
/// entries included), following symlinks, so any content change is seen.
fn digest_files(config_path: &Path, config: &Config) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut add = |path: &Path| {
        ctx.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"\0unreadable"),
        }
    };
    add(config_path);
    for file in config.files() {
        if file.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&file)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries.iter().filter(|p| p.is_file()) {
                add(entry);
            }
        } else {
            add(&file);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
