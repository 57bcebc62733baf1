//! Directory fsyncs shared by the writes that need one at the same time.
//!
//! A file renamed or linked into place is durable once its directory has
//! been fsync'd after that. Reports written side by side each used to
//! fsync their (common) directory: one journal commit and a few thread
//! switches apiece for the same directory. Here a write asks for a sync
//! once its file is named; a sync that *starts* after the request covers it, so
//! the writes that arrive while one sync runs share the next one (group
//! commit, as the database writer does for rows).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// The shared syncs of one directory.
#[derive(Debug, Default)]
pub struct DirSync {
    state: Mutex<SyncState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Requests so far; a request's number is its ticket.
    requested: u64,
    /// Every ticket up to this one is covered by a finished sync.
    covered: u64,
    /// A sync is running (its covering ticket is not yet `covered`).
    running: bool,
}

impl DirSync {
    /// Returns once a sync of `dir` that started after this call has
    /// finished. Errors are not reported: some file systems cannot sync a
    /// directory, and the file itself was already synced.
    pub fn sync(&self, dir: &Path) {
        self.sync_with(|| bsm_runtime::atomic_file::sync_dir(dir))
    }

    /// [`DirSync::sync`] with the sync itself given (tests).
    fn sync_with(&self, sync: impl Fn()) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.covered >= ticket {
                return;
            }
            if state.running {
                state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead a sync covering every request made so far, this one
            // included; requests made while it runs wait for the next.
            state.running = true;
            let covers = state.requested;
            drop(state);
            sync();
            state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.running = false;
            state.covered = state.covered.max(covers);
            self.finished.notify_all();
        }
    }
}

/// A [`DirSync`] per directory, made on first use.
#[derive(Debug, Default)]
pub struct DirSyncs(Mutex<HashMap<PathBuf, Arc<DirSync>>>);

impl DirSyncs {
    /// The shared syncs of `dir`.
    pub fn of(&self, dir: &Path) -> Arc<DirSync> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(dir) {
            Some(sync) => sync.clone(),
            None => map.entry(dir.to_path_buf()).or_default().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_lone_request_syncs_at_once() {
        let dir = DirSync::default();
        let syncs = AtomicU64::new(0);
        let count = || {
            syncs.fetch_add(1, Ordering::SeqCst);
        };
        dir.sync_with(count);
        dir.sync_with(count);
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn requests_made_during_a_sync_share_the_next_one_and_are_not_covered_by_the_running_one() {
        let dir = Arc::new(DirSync::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        // The first sync blocks until released, with four requests made
        // meanwhile.
        let leader = {
            let (dir, syncs) = (dir.clone(), syncs.clone());
            std::thread::spawn(move || {
                dir.sync_with(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    entered_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                })
            })
        };
        entered.recv().unwrap();
        // Whichever follower leads the second sync marks its end.
        let second_done = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel::<bool>();
        let followers: Vec<_> = (0..4)
            .map(|_| {
                let (dir, done_tx, second_done, syncs) = (
                    dir.clone(),
                    done_tx.clone(),
                    second_done.clone(),
                    syncs.clone(),
                );
                std::thread::spawn(move || {
                    dir.sync_with(|| {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        second_done.store(true, Ordering::SeqCst);
                    });
                    done_tx.send(second_done.load(Ordering::SeqCst)).unwrap();
                })
            })
            .collect();
        // Wait until all four have taken their tickets.
        while dir.state.lock().unwrap().requested < 5 {
            std::thread::yield_now();
        }
        // None of them may return on the sync that was running when they
        // asked: each return comes after a second sync.
        release.send(()).unwrap();
        leader.join().unwrap();
        for f in followers {
            f.join().unwrap();
        }
        drop(done_tx);
        let seen: Vec<bool> = done.iter().collect();
        assert_eq!(seen.len(), 4);
        assert!(
            seen.iter().all(|&after_second| after_second),
            "a request returned on a sync that started before it: {seen:?}"
        );
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "the four requests made during the first sync share one"
        );
    }

    #[test]
    fn each_directory_has_its_own_syncs() {
        let syncs = DirSyncs::default();
        let a = syncs.of(Path::new("/a"));
        assert!(Arc::ptr_eq(&a, &syncs.of(Path::new("/a"))));
        assert!(!Arc::ptr_eq(&a, &syncs.of(Path::new("/b"))));
    }
}
