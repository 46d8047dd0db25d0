//! The embedded state store: one SQLite file holds one batch, its mailbox records, folder
//! checkpoints and skipped messages. It implements [`CheckpointStore`] and [`BatchStore`] for
//! local runs (`mailhaul run`) and for tests of everything built on those ports.
//!
//! Every write is one SQLite transaction committed with `synchronous = FULL` in WAL mode, so a
//! crash (or a power cut) between two saves leaves the previous checkpoint intact. Calls run on
//! tokio's blocking pool behind a mutex: they are short, and the async tasks never stall on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::ledger::{Outcome, Run};
use crate::model::{FolderCheckpoint, MailboxStatus, SkipReason, SkippedMessage};
use crate::ports::{BatchMeta, BatchStore, CheckpointStore, MailboxRecord, StoreError};

/// The schema this build writes, kept in SQLite's `user_version`. Bump it (and migrate older
/// files in [`SqliteStore::open`]) whenever a table changes.
pub const SCHEMA_VERSION: i32 = 2;

/// How long a writer waits for another process holding the file (e.g. `mailhaul status`
/// reading while a run writes) before the call fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE batch (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    id          TEXT NOT NULL,
    headers     TEXT NOT NULL,
    total       INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE mailboxes (
    mailbox     TEXT PRIMARY KEY,
    row         INTEGER NOT NULL,
    source_user TEXT NOT NULL,
    cells       TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    hint        TEXT,
    started_at  TEXT,
    finished_at TEXT,
    seconds     REAL NOT NULL,
    passes      INTEGER NOT NULL
);
CREATE TABLE folders (
    mailbox       TEXT NOT NULL,
    source_folder TEXT NOT NULL,
    checkpoint    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (mailbox, source_folder)
);
CREATE TABLE skipped (
    mailbox     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uid         INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    message_id  TEXT,
    detail      TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, uid, reason)
);
";

/// Added in schema version 2: the per-message ledger, one row per run (see [`crate::ledger`]),
/// replayed in rowid order.
const LEDGER_SCHEMA: &str = "
CREATE TABLE ledger (
    mailbox          TEXT NOT NULL,
    folder           TEXT NOT NULL,
    uid_validity     INTEGER NOT NULL,
    source_uid       INTEGER NOT NULL,
    count            INTEGER NOT NULL,
    destination_uid  INTEGER,
    destination_uidv INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    detail           TEXT
);
CREATE INDEX ledger_folder ON ledger (mailbox, folder, uid_validity);
";

/// The SQLite adapter of the state ports. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// `None` for an in-memory store.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A failure inside a blocking call, turned into a [`StoreError`] with context outside.
enum Fail {
    Sql(rusqlite::Error),
    Data(String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Sql(e) => write!(f, "{e}"),
            Fail::Data(d) => f.write_str(d),
        }
    }
}

impl SqliteStore {
    /// Open (or create) the state file at `path`, creating the schema when the file is new.
    ///
    /// Fails with a clear message when the file is not a SQLite database or was written by a
    /// newer mailhaul (higher schema version).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::new(format!("{what} state file {}: {e}", path.display()))
        };
        let conn = Connection::open(path).map_err(|e| fail("cannot open", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail("cannot configure", &e))?;
        // WAL lets a reader (`mailhaul status`) look while a run writes; FULL makes each
        // committed checkpoint survive a power cut, not only a process crash.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| fail("cannot use (is it a mailhaul state file?)", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state file is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| fail("cannot configure", &e))?;
        let mut conn = conn;
        init_schema(&mut conn, &format!("state file {}", path.display()))?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), path: Some(path.to_path_buf()) })
    }

    /// A private store that lives in memory only, for tests and dry runs.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open_in_memory()
            .map_err(|e| StoreError::new(format!("cannot open an in-memory state store: {e}")))?;
        init_schema(&mut conn, "in-memory state")?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), path: None })
    }

    /// The state file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn location(&self) -> String {
        match &self.path {
            Some(p) => format!("state file {}", p.display()),
            None => "in-memory state".to_string(),
        }
    }

    /// Run `f` on the connection on tokio's blocking pool; errors say what was being done.
    async fn call<T, F>(&self, what: String, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Fail> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let location = self.location();
        let joined = tokio::task::spawn_blocking(move || {
            // A panic while the lock was held cannot leave a half-written transaction behind
            // (rusqlite rolls back on drop), so a poisoned lock is safe to reuse.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::new(format!("{what} in {location}: {e}"))),
            Err(e) => Err(StoreError::new(format!("{what} in {location}: task failed: {e}"))),
        }
    }
}

/// Insert or replace a folder's checkpoint. An upsert (not INSERT OR REPLACE) keeps the
/// rowid, hence the folder order.
fn upsert_checkpoint(conn: &Connection, mailbox: &str, folder: &str, json: &str) -> Result<(), Fail> {
    conn.prepare_cached(
        "INSERT INTO folders (mailbox, source_folder, checkpoint, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (mailbox, source_folder) DO UPDATE
         SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
    )?
    .execute(params![mailbox, folder, json, time_to_sql(&Utc::now())])?;
    Ok(())
}

/// Append ledger runs (inside the caller's transaction).
fn insert_runs(conn: &Connection, mailbox: &str, folder: &str, uid_validity: u32, runs: &[Run]) -> Result<(), Fail> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO ledger (mailbox, folder, uid_validity, source_uid, count, destination_uid,
                             destination_uidv, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for run in runs {
        insert.execute(params![
            mailbox,
            folder,
            uid_validity,
            run.source_uid,
            run.count,
            run.destination_uid,
            run.destination_uid_validity,
            run.outcome.as_str(),
            run.detail
        ])?;
    }
    Ok(())
}

/// Create the schema in a new file, or check the version of an existing one.
fn init_schema(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let result = (|| -> Result<(), Fail> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Fail::Data(format!(
                "it was written by a newer mailhaul (schema version {version}, this build \
                 knows up to {SCHEMA_VERSION}): upgrade mailhaul, or use another state file"
            )));
        }
        if version == 0 {
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
            if tables > 0 {
                return Err(Fail::Data(
                    "it is a SQLite database but not a mailhaul state file: choose another path".to_string(),
                ));
            }
            tx.execute_batch(SCHEMA)?;
        }
        if version < 2 {
            tx.execute_batch(LEDGER_SCHEMA)?;
        }
        if version < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    })();
    result.map_err(|e| StoreError::new(format!("cannot use {location}: {e}")))
}

fn time_to_sql(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn time_from_sql(column: &str, text: &str) -> Result<DateTime<Utc>, Fail> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Fail::Data(format!("column {column} holds {text:?}, not a timestamp: {e}")))
}

fn to_i64(column: &str, value: u64) -> Result<i64, Fail> {
    i64::try_from(value).map_err(|_| Fail::Data(format!("{column} {value} is too large to store")))
}

fn from_i64<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T, Fail> {
    T::try_from(value).map_err(|_| Fail::Data(format!("column {column} holds {value}, out of range")))
}

fn json_from_sql<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::Data(format!("column {column} is unreadable: {e}")))
}

fn json_to_sql<T: serde::Serialize>(column: &str, value: &T) -> Result<String, Fail> {
    serde_json::to_string(value).map_err(|e| Fail::Data(format!("cannot encode {column}: {e}")))
}

fn outcome_from_sql(text: &str) -> Result<Outcome, Fail> {
    use Outcome::*;
    [Copied, Duplicate, TooBig, ByDate, Refused, Unreadable, Gone, InLabelFolder]
        .into_iter()
        .find(|o| o.as_str() == text)
        .ok_or_else(|| Fail::Data(format!("unknown ledger outcome {text:?}")))
}

fn reason_from_sql(text: &str) -> Result<SkipReason, Fail> {
    match text {
        "too_big" => Ok(SkipReason::TooBig),
        "refused" => Ok(SkipReason::Refused),
        "unreadable" => Ok(SkipReason::Unreadable),
        other => Err(Fail::Data(format!("unknown skip reason {other:?}"))),
    }
}

/// The raw columns of a `mailboxes` row, decoded outside the rusqlite row closure so that
/// decoding errors keep their message.
struct MailboxRow {
    mailbox: String,
    row: i64,
    source_user: String,
    cells: String,
    status: String,
    error: Option<String>,
    hint: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    seconds: f64,
    passes: i64,
}

const MAILBOX_COLUMNS: &str =
    "mailbox, row, source_user, cells, status, error, hint, started_at, finished_at, seconds, passes";

impl MailboxRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<MailboxRow> {
        Ok(MailboxRow {
            mailbox: r.get(0)?,
            row: r.get(1)?,
            source_user: r.get(2)?,
            cells: r.get(3)?,
            status: r.get(4)?,
            error: r.get(5)?,
            hint: r.get(6)?,
            started_at: r.get(7)?,
            finished_at: r.get(8)?,
            seconds: r.get(9)?,
            passes: r.get(10)?,
        })
    }

    fn decode(self) -> Result<MailboxRecord, Fail> {
        let status = MailboxStatus::parse(&self.status)
            .ok_or_else(|| Fail::Data(format!("mailbox {} has unknown status {:?}", self.mailbox, self.status)))?;
        Ok(MailboxRecord {
            row: from_i64("row", self.row)?,
            source_user: self.source_user,
            cells: json_from_sql("cells", &self.cells)?,
            status,
            error: self.error,
            hint: self.hint,
            started_at: self.started_at.as_deref().map(|t| time_from_sql("started_at", t)).transpose()?,
            finished_at: self.finished_at.as_deref().map(|t| time_from_sql("finished_at", t)).transpose()?,
            seconds: self.seconds,
            passes: from_i64("passes", self.passes)?,
            mailbox: self.mailbox,
        })
    }
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn load_saved(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, StoreError> {
        let mailbox = mailbox.to_string();
        self.call(format!("loading folder checkpoints of mailbox {mailbox}"), move |conn| {
            // rowid order = the order folders were first saved (the engine's plan order).
            let mut stmt =
                conn.prepare_cached("SELECT source_folder, checkpoint FROM folders WHERE mailbox = ?1 ORDER BY rowid")?;
            let rows = stmt
                .query_map([&mailbox], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(folder, json)| json_from_sql(&format!("checkpoint of folder {folder}"), &json))
                .collect()
        })
        .await
    }

    async fn save_folder(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<(), StoreError> {
        let mailbox = mailbox.to_string();
        let folder = checkpoint.source_folder.clone();
        let what = format!("saving the checkpoint of mailbox {mailbox} folder {folder}");
        let json = json_to_sql("checkpoint", checkpoint).map_err(|e| StoreError::new(format!("{what}: {e}")))?;
        self.call(what, move |conn| upsert_checkpoint(conn, &mailbox, &folder, &json)).await
    }

    async fn record_skipped(&self, mailbox: &str, message: &SkippedMessage) -> Result<(), StoreError> {
        let mailbox = mailbox.to_string();
        let m = message.clone();
        let what = format!("recording skipped message UID {} of mailbox {mailbox} folder {}", m.uid, m.folder);
        self.call(what, move |conn| {
            let size = to_i64("size", m.size)?;
            // The first record wins: a retried pass sees the same message and reason again.
            conn.prepare_cached(
                "INSERT INTO skipped (mailbox, folder, uid, reason, size, message_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (mailbox, folder, uid, reason) DO NOTHING",
            )?
            .execute(params![
                mailbox,
                m.folder,
                m.uid,
                m.reason.as_str(),
                size,
                m.message_id,
                m.detail
            ])?;
            Ok(())
        })
        .await
    }

    async fn forget_skipped(&self, mailbox: &str, folder: &str, uid: u32) -> Result<(), StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), folder.to_string());
        let what = format!("clearing the skipped record of UID {uid} of mailbox {mailbox} folder {folder}");
        self.call(what, move |conn| {
            conn.prepare_cached("DELETE FROM skipped WHERE mailbox = ?1 AND folder = ?2 AND uid = ?3")?
                .execute(params![mailbox, folder, uid])?;
            Ok(())
        })
        .await
    }

    async fn record_ledger(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
        runs: &[Run],
    ) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let (mailbox, folder, runs) = (mailbox.to_string(), folder.to_string(), runs.to_vec());
        let what = format!("recording {} ledger run(s) of mailbox {mailbox} folder {folder}", runs.len());
        self.call(what, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_runs(&tx, &mailbox, &folder, uid_validity, &runs)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_batch(
        &self,
        mailbox: &str,
        uid_validity: u32,
        runs: &[Run],
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError> {
        let (mailbox, folder, runs) = (mailbox.to_string(), checkpoint.ledger_folder().to_string(), runs.to_vec());
        let key = checkpoint.source_folder.clone();
        let what = format!("recording a batch of mailbox {mailbox} folder {folder}");
        let json = json_to_sql("checkpoint", checkpoint).map_err(|e| StoreError::new(format!("{what}: {e}")))?;
        self.call(what, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_runs(&tx, &mailbox, &folder, uid_validity, &runs)?;
            upsert_checkpoint(&tx, &mailbox, &key, &json)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn load_ledger(&self, mailbox: &str, folder: &str, uid_validity: u32) -> Result<Vec<Run>, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), folder.to_string());
        self.call(format!("loading the ledger of mailbox {mailbox} folder {folder}"), move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT source_uid, count, destination_uid, destination_uidv, outcome, detail FROM ledger
                 WHERE mailbox = ?1 AND folder = ?2 AND uid_validity = ?3 ORDER BY rowid",
            )?;
            let rows = stmt
                .query_map(params![mailbox, folder, uid_validity], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Option<u32>>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(source_uid, count, destination_uid, destination_uid_validity, outcome, detail)| {
                    Ok(Run {
                        source_uid,
                        count,
                        destination_uid,
                        destination_uid_validity,
                        outcome: outcome_from_sql(&outcome)?,
                        detail,
                    })
                })
                .collect()
        })
        .await
    }

    async fn skipped(&self, mailbox: &str) -> Result<Vec<SkippedMessage>, StoreError> {
        let mailbox = mailbox.to_string();
        self.call(format!("loading skipped messages of mailbox {mailbox}"), move |conn| {
            // Ties on (folder, uid) follow SkipReason's Ord (too_big before refused).
            let mut stmt = conn.prepare_cached(
                "SELECT folder, uid, size, message_id, reason, detail FROM skipped
                 WHERE mailbox = ?1
                 ORDER BY folder, uid, CASE reason WHEN 'too_big' THEN 0 WHEN 'refused' THEN 1 ELSE 2 END",
            )?;
            let rows = stmt
                .query_map([&mailbox], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(folder, uid, size, message_id, reason, detail)| {
                    Ok(SkippedMessage {
                        folder,
                        uid: from_i64("uid", uid)?,
                        size: from_i64("size", size)?,
                        message_id,
                        reason: reason_from_sql(&reason)?,
                        detail,
                    })
                })
                .collect()
        })
        .await
    }
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn put_batch(&self, meta: &BatchMeta) -> Result<(), StoreError> {
        let meta = meta.clone();
        self.call(format!("saving batch {}", meta.id), move |conn| {
            let headers = json_to_sql("headers", &meta.headers)?;
            let total = to_i64("total", meta.total as u64)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<String> =
                tx.query_row("SELECT id FROM batch WHERE singleton = 1", [], |r| r.get(0)).optional()?;
            match existing {
                Some(id) if id == meta.id => {}
                Some(id) => {
                    return Err(Fail::Data(format!(
                        "this state file already holds batch {id}: resume that batch, or give \
                         batch {} its own state file",
                        meta.id
                    )))
                }
                None => {
                    tx.execute(
                        "INSERT INTO batch (singleton, id, headers, total, created_at) VALUES (1, ?1, ?2, ?3, ?4)",
                        params![meta.id, headers, total, time_to_sql(&meta.created_at)],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn batch(&self) -> Result<Option<BatchMeta>, StoreError> {
        self.call("loading the batch".to_string(), |conn| {
            let row = conn
                .query_row("SELECT id, headers, total, created_at FROM batch WHERE singleton = 1", [], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
                })
                .optional()?;
            row.map(|(id, headers, total, created_at)| {
                Ok(BatchMeta {
                    id,
                    headers: json_from_sql("headers", &headers)?,
                    total: from_i64("total", total)?,
                    created_at: time_from_sql("created_at", &created_at)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_mailbox(&self, record: &MailboxRecord) -> Result<(), StoreError> {
        let rec = record.clone();
        self.call(format!("saving mailbox {} (row {})", rec.mailbox, rec.row), move |conn| {
            let cells = json_to_sql("cells", &rec.cells)?;
            let row = to_i64("row", rec.row as u64)?;
            conn.prepare_cached(
                "INSERT INTO mailboxes (mailbox, row, source_user, cells, status, error, hint,
                                        started_at, finished_at, seconds, passes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (mailbox) DO UPDATE SET
                    row = excluded.row, source_user = excluded.source_user, cells = excluded.cells,
                    status = excluded.status, error = excluded.error, hint = excluded.hint,
                    started_at = excluded.started_at, finished_at = excluded.finished_at,
                    seconds = excluded.seconds, passes = excluded.passes",
            )?
            .execute(params![
                rec.mailbox,
                row,
                rec.source_user,
                cells,
                rec.status.as_str(),
                rec.error,
                rec.hint,
                rec.started_at.as_ref().map(time_to_sql),
                rec.finished_at.as_ref().map(time_to_sql),
                rec.seconds,
                rec.passes,
            ])?;
            Ok(())
        })
        .await
    }

    async fn mailbox(&self, mailbox: &str) -> Result<Option<MailboxRecord>, StoreError> {
        let mailbox = mailbox.to_string();
        self.call(format!("loading mailbox {mailbox}"), move |conn| {
            let row = conn
                .prepare_cached(&format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE mailbox = ?1"))?
                .query_row([&mailbox], MailboxRow::read)
                .optional()?;
            row.map(MailboxRow::decode).transpose()
        })
        .await
    }

    async fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError> {
        self.call("loading the mailboxes".to_string(), |conn| {
            let rows = conn
                .prepare_cached(&format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes ORDER BY row, mailbox"))?
                .query_map([], MailboxRow::read)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(MailboxRow::decode).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FolderCounts, Verdict};
    use chrono::TimeZone;

    fn checkpoint(folder: &str, last_uid: u32) -> FolderCheckpoint {
        FolderCheckpoint {
            source_folder: folder.to_string(),
            destination_folder: format!("Migrated/{folder}"),
            uid_validity: 1_700_000_000,
            last_uid,
            uid_next: last_uid + 1,
            highest_modseq: Some(42),
            in_flight: Some((last_uid + 1, last_uid + 5)),
            fence: Some((77, 1000)),
            destination_uid_validity: 77,
            destination_uid_next: 990,
            rescans: 1,
            counts: FolderCounts {
                copied: 10,
                skipped_duplicate: 1,
                skipped_too_big: 2,
                skipped_by_date: 3,
                refused: 4,
                bytes: 5_000_000_000,
                unreadable: 1,
                flags_updated: 7,
                in_label_folder: 2,
            },
            complete: false,
            verify: Some(Verdict {
                ok: false,
                source_messages: 20,
                destination_messages: 19,
                not_copied: 6,
                detail: "1 missing".to_string(),
            }),
            not_copied: None,
            renamed: None,
            range: None,
            splits_folded: 0,
        }
    }

    fn skipped(folder: &str, uid: u32, reason: SkipReason) -> SkippedMessage {
        SkippedMessage {
            folder: folder.to_string(),
            uid,
            size: 40_000_000,
            message_id: Some(format!("<{uid}@example.com>")),
            reason,
            detail: "larger than 35 MB".to_string(),
        }
    }

    fn record(mailbox: &str, row: usize, status: MailboxStatus) -> MailboxRecord {
        MailboxRecord {
            mailbox: mailbox.to_string(),
            row,
            source_user: format!("src-{mailbox}"),
            cells: vec![format!("src-{mailbox}"), String::new(), mailbox.to_string()],
            status,
            error: Some("LOGIN failed".to_string()),
            hint: Some("check the password".to_string()),
            started_at: Some(Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap()),
            finished_at: Some(Utc::now()),
            seconds: 12.5,
            passes: 3,
        }
    }

    fn meta(id: &str) -> BatchMeta {
        BatchMeta {
            id: id.to_string(),
            headers: vec!["SourceUser".into(), "SourcePassword".into(), "Mailbox".into()],
            total: 3,
            created_at: Utc::now(),
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<SqliteStore>();
    }

    #[tokio::test]
    async fn folder_checkpoints_round_trip_and_replace() {
        let store = SqliteStore::in_memory().unwrap();
        assert!(store.load_folders("a@x").await.unwrap().is_empty());
        let inbox = checkpoint("INBOX", 100);
        let sent = FolderCheckpoint { verify: None, in_flight: None, highest_modseq: None, ..checkpoint("Sent", 7) };
        store.save_folder("a@x", &inbox).await.unwrap();
        store.save_folder("a@x", &sent).await.unwrap();
        store.save_folder("b@x", &checkpoint("INBOX", 1)).await.unwrap();
        assert_eq!(store.load_folders("a@x").await.unwrap(), vec![inbox.clone(), sent.clone()]);

        // Replacing INBOX keeps its place (first-saved order) and its new values.
        let inbox2 = FolderCheckpoint { last_uid: 200, complete: true, ..inbox };
        store.save_folder("a@x", &inbox2).await.unwrap();
        assert_eq!(store.load_folders("a@x").await.unwrap(), vec![inbox2, sent]);
        assert_eq!(store.load_folders("b@x").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn record_skipped_is_idempotent_and_ordered() {
        let store = SqliteStore::in_memory().unwrap();
        store.record_skipped("a@x", &skipped("Sent", 9, SkipReason::TooBig)).await.unwrap();
        store.record_skipped("a@x", &skipped("INBOX", 30, SkipReason::Refused)).await.unwrap();
        store.record_skipped("a@x", &skipped("INBOX", 4, SkipReason::TooBig)).await.unwrap();
        // Same key twice, even with another detail: one row, the first one.
        let again = SkippedMessage { detail: "other".into(), ..skipped("INBOX", 4, SkipReason::TooBig) };
        store.record_skipped("a@x", &again).await.unwrap();
        // Same UID for another reason is another row.
        store.record_skipped("a@x", &skipped("INBOX", 4, SkipReason::Refused)).await.unwrap();
        store.record_skipped("b@x", &skipped("INBOX", 1, SkipReason::TooBig)).await.unwrap();

        let got = store.skipped("a@x").await.unwrap();
        let keys: Vec<_> = got.iter().map(|m| (m.folder.as_str(), m.uid, m.reason)).collect();
        assert_eq!(
            keys,
            vec![
                ("INBOX", 4, SkipReason::TooBig),
                ("INBOX", 4, SkipReason::Refused),
                ("INBOX", 30, SkipReason::Refused),
                ("Sent", 9, SkipReason::TooBig),
            ]
        );
        assert_eq!(got[0], skipped("INBOX", 4, SkipReason::TooBig));
        let no_id = SkippedMessage { message_id: None, ..skipped("X", 1, SkipReason::Refused) };
        store.record_skipped("c@x", &no_id).await.unwrap();
        assert_eq!(store.skipped("c@x").await.unwrap(), vec![no_id]);
    }

    #[tokio::test]
    async fn batch_round_trip_keeps_the_first_and_refuses_another() {
        let store = SqliteStore::in_memory().unwrap();
        assert_eq!(store.batch().await.unwrap(), None);
        let m = meta("b-1");
        store.put_batch(&m).await.unwrap();
        store.put_batch(&BatchMeta { total: 99, ..m.clone() }).await.unwrap();
        assert_eq!(store.batch().await.unwrap(), Some(m));
        let err = store.put_batch(&meta("b-2")).await.unwrap_err().to_string();
        assert!(err.contains("already holds batch b-1") && err.contains("b-2"), "{err}");
    }

    #[tokio::test]
    async fn mailboxes_round_trip_ordered_by_row() {
        let store = SqliteStore::in_memory().unwrap();
        assert_eq!(store.mailbox("a@x").await.unwrap(), None);
        let c = record("c@x", 3, MailboxStatus::Failed);
        let a = MailboxRecord {
            error: None,
            hint: None,
            started_at: None,
            finished_at: None,
            ..record("a@x", 1, MailboxStatus::Pending)
        };
        let b = record("b@x", 2, MailboxStatus::Partial);
        for r in [&c, &a, &b] {
            store.put_mailbox(r).await.unwrap();
        }
        assert_eq!(store.mailbox("c@x").await.unwrap(), Some(c.clone()));
        assert_eq!(store.mailbox("a@x").await.unwrap(), Some(a.clone()));
        let a2 = MailboxRecord { status: MailboxStatus::Done, seconds: 99.25, passes: 4, ..a };
        store.put_mailbox(&a2).await.unwrap();
        assert_eq!(store.mailboxes().await.unwrap(), vec![a2, b, c]);
    }

    #[tokio::test]
    async fn reopened_file_has_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(store.path(), Some(path.as_path()));
            store.put_batch(&meta("b-1")).await.unwrap();
            store.put_mailbox(&record("a@x", 1, MailboxStatus::Done)).await.unwrap();
            store.save_folder("a@x", &checkpoint("INBOX", 5)).await.unwrap();
            store.record_skipped("a@x", &skipped("INBOX", 3, SkipReason::TooBig)).await.unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.batch().await.unwrap().unwrap().id, "b-1");
        assert_eq!(store.mailboxes().await.unwrap(), vec![record_with_same_time(&store, "a@x").await]);
        assert_eq!(store.load_folders("a@x").await.unwrap(), vec![checkpoint("INBOX", 5)]);
        assert_eq!(store.skipped("a@x").await.unwrap(), vec![skipped("INBOX", 3, SkipReason::TooBig)]);
    }

    /// `record()` stamps `finished_at` with now: rebuild it with the stored time to compare the rest.
    async fn record_with_same_time(store: &SqliteStore, mailbox: &str) -> MailboxRecord {
        let stored = store.mailbox(mailbox).await.unwrap().unwrap();
        MailboxRecord { finished_at: stored.finished_at, ..record(mailbox, 1, MailboxStatus::Done) }
    }

    #[tokio::test]
    async fn newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer mailhaul") && err.contains(&path.display().to_string()), "{err}");
    }

    #[tokio::test]
    async fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, vec![b'x'; 4096]).unwrap();
        let err = SqliteStore::open(&text).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");

        let other = dir.path().join("other.db");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let err = SqliteStore::open(&other).unwrap_err().to_string();
        assert!(err.contains("not a mailhaul state file"), "{err}");
    }

    #[tokio::test]
    async fn an_unfinished_write_leaves_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        store.save_folder("a@x", &checkpoint("INBOX", 5)).await.unwrap();
        {
            // Another writer dies mid-transaction: its change never becomes visible.
            let mut raw = Connection::open(&path).unwrap();
            let tx = raw.transaction().unwrap();
            tx.execute("UPDATE folders SET checkpoint = 'garbage'", []).unwrap();
            tx.execute("DELETE FROM folders", []).unwrap();
            drop(tx);
        }
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load_folders("a@x").await.unwrap(), vec![checkpoint("INBOX", 5)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_saves_from_many_tasks_and_two_handles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = SqliteStore::open(&path).unwrap();
        // A second connection to the same file, as a second process would have.
        let second = SqliteStore::open(&path).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let store = if t % 2 == 0 { first.clone() } else { second.clone() };
            tasks.push(tokio::spawn(async move {
                let mailbox = format!("m{t}@x");
                for uid in 1..=20u32 {
                    store.save_folder(&mailbox, &checkpoint("INBOX", uid)).await.unwrap();
                    store.record_skipped(&mailbox, &skipped("INBOX", uid, SkipReason::TooBig)).await.unwrap();
                }
                store.put_mailbox(&record(&mailbox, t as usize + 1, MailboxStatus::Done)).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let records = first.mailboxes().await.unwrap();
        assert_eq!(records.iter().map(|r| r.row).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
        for t in 0..8 {
            let mailbox = format!("m{t}@x");
            assert_eq!(second.load_folders(&mailbox).await.unwrap(), vec![checkpoint("INBOX", 20)]);
            assert_eq!(first.skipped(&mailbox).await.unwrap().len(), 20);
        }
    }

    #[tokio::test]
    async fn no_password_reaches_the_file() {
        use crate::model::{Endpoint, Login, MailboxJob, Security, ServerSpec};
        use crate::Secret;

        const PASSWORD: &str = "Zq7-hunter2-unique-pw";
        let endpoint = |user: &str| Endpoint {
            server: ServerSpec {
                host: "imap.example.com".into(),
                port: 993,
                security: Security::Tls,
                ca_file: None,
                accept_invalid_certs: false,
                compress: crate::model::Compress::Auto,
            },
            login: Login {
                user: user.into(),
                authz: None,
                mechanism: Default::default(),
                password: Secret::new(PASSWORD),
                oauth2: None,
            },
        };
        let job = MailboxJob {
            row: 1,
            mailbox: "a@dest.example".into(),
            source: endpoint("a@src.example"),
            destination: endpoint("a@dest.example"),
            user_root: None,
        };
        assert_eq!(job.source.login.password.expose(), PASSWORD);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        store.put_batch(&meta("b-1")).await.unwrap();
        // What a runner stores about the job: the serialized job goes through serde like a
        // queue message would, the cells with the password cell emptied.
        let job_json = serde_json::to_string(&job).unwrap();
        let record = MailboxRecord {
            mailbox: job.mailbox.clone(),
            row: job.row,
            source_user: job.source.login.user.clone(),
            cells: vec![job.source.login.user.clone(), String::new(), job.mailbox.clone()],
            status: MailboxStatus::Failed,
            error: Some(format!("LOGIN failed for {:?}", job.source.login)),
            hint: Some(job_json),
            started_at: None,
            finished_at: None,
            seconds: 0.0,
            passes: 1,
        };
        store.put_mailbox(&record).await.unwrap();
        store.save_folder(&job.mailbox, &checkpoint("INBOX", 3)).await.unwrap();
        drop(store);

        let mut bytes = std::fs::read(&path).unwrap();
        for extra in ["state.db-wal", "state.db-shm"] {
            if let Ok(more) = std::fs::read(dir.path().join(extra)) {
                bytes.extend(more);
            }
        }
        assert!(bytes.windows(b"a@src.example".len()).any(|w| w == b"a@src.example"), "data is there");
        assert!(!bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "password found in the state file");
    }

    #[tokio::test]
    async fn ledger_runs_round_trip_per_folder_and_uidvalidity() {
        use crate::ledger::{FolderLedger, Outcome, Run};
        let store = SqliteStore::in_memory().unwrap();
        let copied = Run {
            source_uid: 1,
            count: 200,
            destination_uid: Some(501),
            destination_uid_validity: 9,
            outcome: Outcome::Copied,
            detail: None,
        };
        let unreadable = Run::one(201, None, Outcome::Unreadable, Some("BYE FETCH failed".into()));
        store.record_ledger("a@x", "INBOX", 5, &[copied.clone(), unreadable.clone()]).await.unwrap();
        store.record_ledger("a@x", "INBOX", 6, &[Run::one(1, None, Outcome::Gone, None)]).await.unwrap();
        store.record_ledger("b@x", "INBOX", 5, &[Run::one(1, None, Outcome::Gone, None)]).await.unwrap();
        let later = Run::one(201, Some((9, 701)), Outcome::Copied, None);
        store.record_ledger("a@x", "INBOX", 5, std::slice::from_ref(&later)).await.unwrap();
        let loaded = store.load_ledger("a@x", "INBOX", 5).await.unwrap();
        assert_eq!(loaded, vec![copied, unreadable, later]);
        let ledger = FolderLedger::from_recorded(loaded);
        assert_eq!(ledger.get(201), Some((Outcome::Copied, Some(701))));
        assert!(ledger.to_retry().is_empty());
        assert!(store.load_ledger("a@x", "Sent", 5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_version_1_state_file_gains_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        store
            .record_ledger("a@x", "INBOX", 1, &[crate::ledger::Run::one(3, None, crate::ledger::Outcome::Gone, None)])
            .await
            .unwrap();
        assert_eq!(store.load_ledger("a@x", "INBOX", 1).await.unwrap().len(), 1);
    }
}
