//! Hot reload. Triggers: file events in the parent directories of the
//! config file and every file it names (so renames, `mv`, in-place writes
//! and Kubernetes `..data` symlink swaps are all seen; every event kind but
//! a plain read counts), SIGHUP, and a slow poll as a safety net. After a
//! burst of events settles (`reload.debounce`), the config and every file
//! are loaded together into a new [`State`]; only a complete, valid state is
//! swapped in. A content digest skips reloads when nothing changed. A
//! failure keeps the old state serving and is retried when the files change
//! again (a cert/key pair written in two steps fails once, then loads when
//! the second file lands), not on every poll.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::ReloadResult;
use crate::state::{LoadFailure, State};

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file event (after debounce) or the periodic poll: skipped when
    /// nothing on disk changed.
    Files,
    /// SIGHUP: always rebuilds.
    Signal,
    /// A fetched CRL or OCSP staple changed: always rebuilds.
    Sources,
}

/// Takes the digest of the files as they are now and arms the file watcher,
/// then returns the reload loop, which runs until the process exits.
/// `signals` delivers SIGHUP triggers, `sources` the refreshers' (a
/// fetched CRL or staple changed). The arming happens in this call,
/// before the caller reports the daemon ready, so that a file replaced right
/// after readiness raises an event; a change between the digest and the
/// arming still differs from the digest and is found by the poll.
pub fn run(
    gw: Arc<Gateway>,
    config_path: PathBuf,
    signals: mpsc::Receiver<()>,
    sources: mpsc::Receiver<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let started = gw.state().config.clone();
    let reloader = Reloader {
        digest: digest_files(&config_path, &started),
        failed: None,
        gw,
        config_path,
        started: started.clone(),
    };
    let (events_tx, events) = mpsc::channel::<()>(1);
    let mut watch = WatchSet::new(events_tx);
    watch.rearm(&started, started.reload.watch);
    reload_loop(reloader, watch, events, signals, sources)
}

async fn reload_loop(
    mut reloader: Reloader,
    mut watch: WatchSet,
    mut events: mpsc::Receiver<()>,
    mut signals: mpsc::Receiver<()>,
    mut sources: mpsc::Receiver<()>,
) {
    loop {
        let cfg = reloader.current_config();
        let poll = tokio::time::sleep(cfg.reload.poll_interval);
        let trigger = tokio::select! {
            Some(()) = events.recv() => {
                settle(&mut events, cfg.reload.debounce).await;
                Trigger::Files
            }
            Some(()) = signals.recv() => Trigger::Signal,
            Some(()) = sources.recv() => Trigger::Sources,
            _ = poll => Trigger::Files,
        };
        // File reads, digests, PKCS#12 key derivation and the native
        // certificate store are blocking work: keep them off the runtime
        // workers that serve connections.
        reloader = match tokio::task::spawn_blocking(move || {
            reloader.reload(trigger);
            reloader
        })
        .await
        {
            Ok(reloader) => reloader,
            Err(e) => {
                tracing::error!(error = %e, "reload task failed; reloads stop until a restart");
                return;
            }
        };
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
    /// Digest of the files as they were when the last load failed: the
    /// poll does not retry (and log again) the same content; the next
    /// change, or SIGHUP, does.
    failed: Option<[u8; 32]>,
}

impl Reloader {
    fn current_config(&self) -> Arc<Config> {
        self.gw.state().config.clone()
    }

    fn reload(&mut self, trigger: Trigger) {
        let current = self.gw.state();
        let digest = digest_files(&self.config_path, &current.config);
        // After a failure, only the failed content counts as unchanged:
        // files put back as they were are loaded again, which clears the
        // failure from /status and the metrics.
        let unchanged = match self.failed {
            Some(failed) => digest == failed,
            None => digest == self.digest,
        };
        if trigger == Trigger::Files && unchanged {
            return;
        }
        crate::systemd::reloading();
        let result = self.build(&current);
        match result {
            Ok(state) => {
                // Remember the digest taken before the build: the state is
                // at least that new, so a file replaced while building still
                // differs from it and is loaded on the next trigger, where a
                // digest taken now could already cover it and hide it. Only
                // a config that names other files needs a digest of those.
                self.digest = if state.config.files() == current.config.files() {
                    digest
                } else {
                    digest_files(&self.config_path, &state.config)
                };
                tracing::info!(
                    generation = state.generation,
                    trigger = ?trigger,
                    certificates = state.certs.len(),
                    crls = state.crls.len(),
                    "reloaded"
                );
                state.log_warnings();
                self.failed = None;
                self.gw.metrics.reloads.attempted(ReloadResult::Success);
                self.gw.install(state);
            }
            Err(error) => {
                self.failed = Some(digest);
                tracing::error!(generation = current.generation, trigger = ?trigger, %error, "reload failed; previous state keeps serving");
                self.gw.metrics.reloads.attempted(ReloadResult::Failure);
                self.gw
                    .record_reload_failure(error.to_string(), crate::clock::unix_now());
            }
        }
        crate::systemd::ready(&self.gw.state());
    }

    fn build(&self, current: &State) -> Result<State, LoadFailure> {
        let mut config = Config::load(&self.config_path)?;
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
        State::build_with(
            Arc::new(config),
            current.generation + 1,
            current.sources.clone(),
            Some(current),
        )
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
        let broken = self
            .broken
            .swap(false, std::sync::atomic::Ordering::Relaxed);
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
            // Watching again is cheap and repairs a watch lost to a directory
            // swap (the path now names another inode). No unwatch first: that
            // would leave a gap in which a rename goes unseen.
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    armed.insert(dir.clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on SIGHUP and polling for it");
                }
            }
        }
        self.dirs = armed;
    }

    fn new_watcher(&self) -> Option<RecommendedWatcher> {
        let events = self.events.clone();
        let broken = self.broken.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            match &event {
                Ok(event) if !may_change_content(&event.kind) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "file watcher error; it will be rebuilt");
                    broken.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // Any other event, or an error, means "maybe changed". A full
            // channel already holds a pending trigger, so dropping this one
            // is fine.
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

/// Whether an event can mean that a file's content changed. Every kind
/// does (creates, renames, writes, attribute changes, removals: a symlink
/// swap may show up as any of them) except a read: inotify reports each
/// open, and the reloader's own reads would otherwise trigger the next
/// reload attempt, forever.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn only_reads_are_not_changes() {
        let cases = [
            (
                "open",
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                false,
            ),
            ("read", EventKind::Access(AccessKind::Read), false),
            (
                "close after read",
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (
                "close after write",
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (
                "rename over",
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                true,
            ),
            (
                "write",
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                true,
            ),
            (
                "chmod",
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                true,
            ),
            ("create", EventKind::Create(CreateKind::File), true),
            ("remove", EventKind::Remove(RemoveKind::File), true),
            ("unknown", EventKind::Any, true),
            ("other", EventKind::Other, true),
        ];
        for (name, kind, change) in cases {
            assert_eq!(may_change_content(&kind), change, "{name}");
        }
    }
}
