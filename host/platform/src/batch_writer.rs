//! Group commit for the database: the writes of concurrent jobs are
//! committed together, one transaction (one WAL commit) per batch instead
//! of one per statement, by one writer thread instead of a blocking task
//! per statement. A job's rows are as durable as before: a write is
//! answered only after the transaction holding it has committed (or with
//! the error that stopped it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 256;

type Apply = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

struct Write {
    apply: Apply,
    done: oneshot::Sender<Result<(), String>>,
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
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(write) => batch.push(write),
                            Err(_) => break,
                        }
                    }
                    commit(&conn, batch);
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the database writer thread");
        Self { tx, commits }
    }

    /// Runs `apply` in the next transaction; answers once it committed.
    pub async fn write(
        &self,
        apply: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Write {
                apply: Box::new(apply),
                done,
            })
            .map_err(|_| "the database writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the database writer has stopped".to_string())?
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// One transaction for the batch, each write in a savepoint of its own: a
/// write of several statements lands whole or not at all, and a failing
/// write fails alone; a failed commit fails them all.
fn commit(conn: &Mutex<Connection>, batch: Vec<Write>) {
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        for write in batch {
            let _ = write.done.send(Err(e.to_string()));
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        // Prepared once per connection: these run twice per write.
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        let result = run("SAVEPOINT write")
            .and_then(|_| match (write.apply)(&conn) {
                Ok(()) => run("RELEASE write").map(|_| ()),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
                    Err(e)
                }
            })
            .map_err(|e| e.to_string());
        answers.push((write.done, result));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Arc<Mutex<Connection>> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        Arc::new(Mutex::new(conn))
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
}
