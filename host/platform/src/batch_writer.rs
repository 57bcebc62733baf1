//! Group commit for the database: the writes of concurrent jobs are
//! committed together, one transaction (one WAL commit) per batch instead
//! of one per statement, by one writer thread instead of a blocking task
//! per statement. A job's rows are as durable as before: a write is
//! answered only after the transaction holding it has committed (or with
//! the error that stopped it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 256;

/// A write: a function of the database, run again if its batch is
/// (see [`commit`]).
type Apply = Box<dyn Fn(&Connection) -> rusqlite::Result<()> + Send>;

type Answer = oneshot::Sender<Result<(), String>>;

struct Write {
    apply: Apply,
    done: Answer,
}

/// The writer thread's inbox.
pub struct BatchWriter {
    tx: mpsc::Sender<Write>,
    commits: Arc<AtomicU64>,
}

impl BatchWriter {
    /// Starts the writer thread on `conn`; it stops when the writer is dropped.
    pub fn start(conn: Arc<Mutex<Connection>>) -> Self {
        let (tx, rx) = mpsc::channel::<Write>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name("bsm-db-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    take_queued(&rx, &mut batch);
                    if batch.len() > 1 {
                        linger(&rx, &mut batch);
                    }
                    // Counted before its writes are answered, so that whoever
                    // saw an answer sees its transaction counted.
                    counted.fetch_add(1, Ordering::Release);
                    commit(&conn, batch);
                }
            })
            .expect("spawning the database writer thread");
        Self { tx, commits }
    }

    /// Runs `apply` in the next transaction; answers once it committed.
    /// `apply` may run twice (its first run rolled back with its batch's).
    pub async fn write(
        &self,
        apply: impl Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), String> {
        self.queue(apply).await
    }

    /// Queues `apply` now and returns what answers once it committed, for
    /// a caller that need not wait for it before going on. Writes commit
    /// in the order they were queued: once a later write has committed,
    /// this one has too (in the same transaction or an earlier one), so a
    /// job waits only for its last write.
    pub fn queue(
        &self,
        apply: impl Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Committed {
        let (done, answer) = oneshot::channel();
        let queued = self.tx.send(Write {
            apply: Box::new(apply),
            done,
        });
        Committed(queued.is_ok().then_some(answer))
    }

    /// Transactions committed (or committing) so far: every answered
    /// write's transaction is counted.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }
}

/// The longest the writer waits for more writes before it commits a batch.
/// Each commit writes back every page it touched (the last leaf of every
/// table and index a job writes to, ~10 pages), whatever the batch holds:
/// under load, batches of a few writes wrote ~26 WAL pages per job.
pub const LINGER: Duration = Duration::from_millis(2);

/// Moves what is queued now into `batch`, up to [`MAX_BATCH`].
fn take_queued(rx: &mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(write) => batch.push(write),
            Err(_) => break,
        }
    }
}

/// Writes are arriving side by side (the batch found more than one
/// queued): wait in short steps for more, up to [`LINGER`], while each step
/// brings some, so that concurrent jobs share a commit. A lone write (a
/// quiet server) is committed at once, without waiting.
fn linger(rx: &mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    let started = Instant::now();
    while batch.len() < MAX_BATCH && started.elapsed() < LINGER {
        std::thread::sleep(LINGER / 8);
        let before = batch.len();
        take_queued(rx, batch);
        if batch.len() == before {
            return;
        }
    }
}

/// A queued write's answer: ready once the transaction holding it has
/// committed, with the error that stopped it otherwise. Dropping it does
/// not withdraw the write.
#[must_use = "a queued write's error is only seen by awaiting its answer"]
pub struct Committed(Option<oneshot::Receiver<Result<(), String>>>);

impl std::future::Future for Committed {
    type Output = Result<(), String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let stopped = || "the database writer has stopped".to_string();
        match self.0.as_mut() {
            None => std::task::Poll::Ready(Err(stopped())),
            Some(answer) => std::pin::Pin::new(answer)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(stopped()))),
        }
    }
}

/// One transaction for the batch. The writes go in side by side first:
/// they rarely fail, and a savepoint around each made SQLite copy every
/// page a write touched again into its statement journal (~10% of the
/// writer's time in the fan-out's profile, the `SAVEPOINT`/`RELEASE`
/// statements besides). If one fails, the whole transaction is rolled back
/// and the batch is written again, each write in a savepoint of its own
/// ([`commit_isolated`]): a write of several statements lands whole or not
/// at all, and a failing write fails alone. A failed commit fails them all.
fn commit(conn: &Mutex<Connection>, batch: Vec<Write>) {
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let all_applied = exec(&conn, "BEGIN IMMEDIATE")
        .map(|_| batch.iter().all(|write| (write.apply)(&conn).is_ok()));
    match all_applied {
        Ok(true) => {
            let answers = batch.into_iter().map(|w| (w.done, Ok(()))).collect();
            finish(&conn, answers);
        }
        // Some write failed: none of the batch is kept, and the writes are
        // tried again one savepoint each (a write is a function of the
        // database, so running it again is running it once).
        Ok(false) => {
            let _ = conn.execute_batch("ROLLBACK");
            match exec(&conn, "BEGIN IMMEDIATE") {
                Ok(_) => commit_isolated(&conn, batch),
                Err(e) => fail_all(batch, &e.to_string()),
            }
        }
        Err(e) => fail_all(batch, &e.to_string()),
    }
}

/// The batch again, each write in a savepoint of its own, in a transaction
/// already begun.
fn commit_isolated(conn: &Connection, batch: Vec<Write>) {
    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        let result = exec(conn, "SAVEPOINT write")
            .and_then(|_| match (write.apply)(conn) {
                Ok(()) => exec(conn, "RELEASE write").map(|_| ()),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
                    Err(e)
                }
            })
            .map_err(|e| e.to_string());
        answers.push((write.done, result));
    }
    finish(conn, answers);
}

/// Runs one of the writer's own statements, prepared once per connection
/// like every statement a write runs (parsing SQL showed in the writer's
/// profile).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([]))
}

/// Commits and answers each write: its own result once committed, the
/// commit's error otherwise.
fn finish(conn: &Connection, answers: Vec<(Answer, Result<(), String>)>) {
    match exec(conn, "COMMIT") {
        Ok(_) => {
            for (done, result) in answers {
                let _ = done.send(result);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            for (done, _) in answers {
                let _ = done.send(Err(format!("the transaction did not commit: {e}")));
            }
        }
    }
}

fn fail_all(batch: Vec<Write>, error: &str) {
    for write in batch {
        let _ = write.done.send(Err(error.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Arc<Mutex<Connection>> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        Arc::new(Mutex::new(conn))
    }

    /// A write of one row.
    fn insert(id: i64) -> impl Fn(&Connection) -> rusqlite::Result<()> {
        move |c| {
            c.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [id])
                .map(|_| ())
        }
    }

    fn count(conn: &Mutex<Connection>) -> i64 {
        conn.lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_transactions_and_all_land() {
        let conn = table();
        let writer = Arc::new(BatchWriter::start(conn.clone()));
        // Hold the database (on another thread) while 200 writes arrive:
        // they queue, then go in (at most) a couple of transactions.
        let (locked_tx, locked) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let holder = {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let _held = conn.lock().unwrap();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        locked.recv().unwrap();
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(move |c| {
                            c.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])
                                .map(|_| ())
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(()).unwrap();
        holder.join().unwrap();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        assert_eq!(count(&conn), 200);
        assert!(
            writer.commits() <= 4,
            "200 writes in {} transactions",
            writer.commits()
        );
    }

    #[tokio::test]
    async fn writes_arriving_side_by_side_share_commits_instead_of_one_each() {
        let conn = table();
        let writer = Arc::new(BatchWriter::start(conn.clone()));
        // Two writers at a time, a pair every 100 us: without waiting for
        // more, the writer would commit each pair as it came.
        let sender = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let mut last = None;
                for pair in 0..200 {
                    for i in [2 * pair, 2 * pair + 1] {
                        last = Some(writer.queue(move |c| {
                            c.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])
                                .map(|_| ())
                        }));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                last.unwrap()
            })
        };
        let last = tokio::task::spawn_blocking(move || sender.join().unwrap())
            .await
            .unwrap();
        last.await.unwrap();
        assert_eq!(count(&conn), 400);
        assert!(
            writer.commits() <= 100,
            "200 pairs of writes in {} transactions",
            writer.commits()
        );
    }

    #[tokio::test]
    async fn queued_writes_are_committed_by_the_time_a_later_write_answers() {
        let conn = table();
        let writer = BatchWriter::start(conn.clone());
        // Nobody waits for these: their answers are dropped at once.
        for i in 0..100 {
            drop(writer.queue(move |c| {
                c.execute("INSERT INTO t (id, v) VALUES (?1, 'behind')", [i])
                    .map(|_| ())
            }));
        }
        writer
            .write(|c| {
                c.execute("INSERT INTO t (id, v) VALUES (1000, 'last')", [])
                    .map(|_| ())
            })
            .await
            .unwrap();
        assert_eq!(count(&conn), 101, "every earlier write has committed");
        // A kept answer reports its own write's fate.
        let duplicate = writer.queue(|c| {
            c.execute("INSERT INTO t (id, v) VALUES (5, 'again')", [])
                .map(|_| ())
        });
        assert!(duplicate.await.unwrap_err().contains("UNIQUE"));
    }

    #[tokio::test]
    async fn a_failing_statement_fails_alone() {
        let conn = table();
        let writer = BatchWriter::start(conn.clone());
        writer
            .write(|c| {
                c.execute("INSERT INTO t (id, v) VALUES (1, 'a')", [])
                    .map(|_| ())
            })
            .await
            .unwrap();
        let (dup, ok) = tokio::join!(
            writer.write(|c| c
                .execute("INSERT INTO t (id, v) VALUES (1, 'b')", [])
                .map(|_| ())),
            writer.write(|c| c
                .execute("INSERT INTO t (id, v) VALUES (2, 'c')", [])
                .map(|_| ())),
        );
        assert!(
            dup.unwrap_err().contains("UNIQUE"),
            "the duplicate is refused"
        );
        ok.unwrap();
        assert_eq!(count(&conn), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_failing_halfway_leaves_nothing_and_the_rest_of_its_batch_lands() {
        let conn = table();
        let writer = BatchWriter::start(conn.clone());
        writer.write(insert(1)).await.unwrap();
        // A gate write that waits inside its own batch until told to go:
        // the three writes queued meanwhile make the next batch together.
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let gate = writer.queue(move |c| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            insert(10)(c)
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let before = writer.queue(insert(2));
        let halfway = writer.queue(|c| {
            c.execute("INSERT INTO t (id, v) VALUES (3, 'half')", [])?;
            c.execute("INSERT INTO t (id, v) VALUES (1, 'again')", [])
                .map(|_| ())
        });
        let after = writer.queue(insert(4));
        go.send(()).unwrap();
        gate.await.unwrap();
        before.await.unwrap();
        assert!(halfway.await.unwrap_err().contains("UNIQUE"));
        after.await.unwrap();
        assert_eq!(
            writer.commits(),
            3,
            "the first write, the gate, then the three together"
        );
        let ids: Vec<i64> = {
            let c = conn.lock().unwrap();
            let mut stmt = c.prepare("SELECT id FROM t ORDER BY id").unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(ids, [1, 2, 4, 10], "nothing of the failed write is kept");
    }
}
