//! The DynamoDB state table (one table, pk/sk, on demand): batches, mailbox records,
//! checkpoints, skipped messages, mailbox leases, per-source-host connection slots and the
//! "mailbox is in a running batch" claims. Adapters of `CheckpointStore` and `BatchStore`
//! are views of it scoped to one batch.
//!
//! Items:
//! - `BATCH#<id>` / `META`: BatchMeta (`data`), `state`, `total_count`, counters `done`,
//!   `failed`, `messages_copied`, `bytes_copied`, `secret_names`, `finalize_sent`, `finished_at`.
//! - `BATCH#<id>` / `MBX#<mailbox>`: MailboxRecord (`data`), `status`, `row`, `pass_seq`, the
//!   job message without passwords (`job`, for the sweeper to re-drive), `pass_until` (epoch s,
//!   set while a pass holds the mailbox: still there after it expired means the pass crashed),
//!   `crashes`, `throttled_passes`, `throttled_since`.
//! - `RUNNING` / `BATCH#<id>`: the batches the sweeper looks at, until they are announced.
//! - `SCHEDULE` / `BATCH#<id>`: a batch's delta schedule (`[schedule]`): `every`, `until`,
//!   `next_at` (epoch s), `st` (`on`, `stopped`, `ended`), `last_delta`, `deltas`.
//! - `CKPT#<pair>` / `F#<folder>`: FolderCheckpoint; `/ S#<folder>#<uid>#<reason>`: SkippedMessage;
//!   `/ L#...`: ledger runs. `<pair>` is [`crate::messages::pair_key`] of the mailbox pair, not the
//!   batch: a later batch of the same pair resumes from them (a delta pass).
//! - `LEASE#<mailbox>` / `LEASE` and `SLOT#<host:port>` / `<n>`: `holder`, `expires_at` (epoch s), `ttl`.
//! - `ACTIVE#<mailbox>` / `ACTIVE`: `batch_id` holding the mailbox until it is final. A claim
//!   whose batch is over, rejected, or never got past submitting is taken over (claims expire).
//!
//! Leases carry their own expiry and are checked in the condition, so they work where
//! TTL deletion is late (up to days on AWS) or absent (moto).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use mailhaul_common::ledger::Run;
use mailhaul_common::model::{FolderCheckpoint, MailboxStatus, SkipReason, SkippedMessage};
use mailhaul_common::ports::{BatchMeta, BatchStore, CheckpointStore, MailboxRecord, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}
fn get_n(item: &Item, k: &str) -> u64 {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}
fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}
fn to_json<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    Ok(s(serde_json::to_string(v).map_err(StoreError::new)?))
}
fn from_json<T: DeserializeOwned>(item: &Item, what: &str) -> Result<T, StoreError> {
    let text = get_s(item, "data").ok_or_else(|| StoreError::new(format!("{what}: item has no data")))?;
    serde_json::from_str(text).map_err(|e| StoreError::new(format!("{what}: unreadable item: {e}")))
}
fn err(op: &str, what: &str, e: impl std::error::Error) -> StoreError {
    StoreError::new(format!("DynamoDB {op} {what}: {}", DisplayErrorContext(&e)))
}
fn now_epoch() -> i64 {
    Utc::now().timestamp()
}

/// Batch-level state as the pipeline sees it (the META item).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchState {
    pub meta: BatchMeta,
    /// `submitting`, `running`, `rejected` or `completed`.
    pub state: String,
    pub source_key: String,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub messages_copied: u64,
    pub bytes_copied: u64,
    /// Names of the secrets holding this batch's passwords.
    pub secrets: Vec<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `BatchCompleted` was published.
    pub announced: bool,
    /// For a delta pass: the completed batch whose file was uploaded again.
    pub delta_of: Option<String>,
}

/// A batch's delta schedule: the sweeper starts a delta pass of its rows at `next_at` until
/// `until`, then deletes its passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub batch: String,
    /// Seconds between passes.
    pub every: i64,
    /// Epoch seconds: the cut-over; no pass starts after it.
    pub until: i64,
    /// Epoch seconds: when the next pass is due.
    pub next_at: i64,
    /// `on`, `stopped` (by `mailhaul submit --stop`) or `ended` (passwords deleted).
    pub state: String,
    /// The delta batch started last.
    pub last_delta: Option<String>,
    /// Delta passes started so far.
    pub deltas: u64,
}

/// A mailbox item as the copy function and the sweeper see it.
#[derive(Clone, Debug)]
pub struct MailboxItem {
    pub record: MailboxRecord,
    /// The current pass number.
    pub seq: u32,
    /// The job message body (no passwords), as upload queued it.
    pub job: Option<String>,
    /// End of the lease of the pass in progress; `None` when no pass is running.
    pub pass_until: Option<i64>,
    /// Passes the sweeper found crashed.
    pub crashes: u32,
    /// Throttled passes in a row, and when the first of them began (epoch s).
    pub throttled_passes: u32,
    pub throttled_since: Option<i64>,
    /// Messages and bytes the pair's checkpoints counted before this batch's first pass.
    pub baseline: Option<(u64, u64)>,
    /// A part of a split mailbox: the mailbox.
    pub part_of: Option<String>,
    /// A mailbox surveyed for a split: into how many parts (1: not split).
    pub parts: Option<u32>,
    /// Its parts that are final.
    pub parts_final: u32,
}

impl MailboxItem {
    /// The mailbox was split: its parts copy it, and the last of them to end finishes it.
    pub fn is_split(&self) -> bool {
        self.parts.is_some_and(|n| n > 1)
    }
}

/// How a claim on a mailbox turned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed (or already ours, or taken over from a batch that is over).
    Ours,
    /// Another batch is running it.
    HeldBy(String),
}

/// The state table.
#[derive(Clone, Debug)]
pub struct Table {
    client: aws_sdk_dynamodb::Client,
    name: String,
}

/// `#st`: the schedule item's state attribute (`st`).
fn schedule_state_name() -> HashMap<String, String> {
    HashMap::from([("#st".to_string(), "st".to_string())])
}

fn batch_pk(batch: &str) -> String {
    format!("BATCH#{batch}")
}
fn mailbox_sk(mailbox: &str) -> String {
    format!("MBX#{mailbox}")
}

impl Table {
    /// A table named `name`.
    pub fn new(client: aws_sdk_dynamodb::Client, name: impl Into<String>) -> Table {
        Table { client, name: name.into() }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table (tests and local setups; the stack creates it on AWS).
    pub async fn create(&self) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let ks = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
        self.client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk").map_err(|e| err("CreateTable", &self.name, e))?)
            .attribute_definitions(attr("sk").map_err(|e| err("CreateTable", &self.name, e))?)
            .key_schema(ks("pk", KeyType::Hash).map_err(|e| err("CreateTable", &self.name, e))?)
            .key_schema(ks("sk", KeyType::Range).map_err(|e| err("CreateTable", &self.name, e))?)
            .send()
            .await
            .map_err(|e| err("CreateTable", &self.name, e))?;
        Ok(())
    }

    async fn get(&self, k: Item, what: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(k))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| err("GetItem", what, e))?;
        Ok(out.item)
    }

    /// Every item under `pk` whose sort key starts with `prefix`, following pages.
    /// Every item of `pk` whose sort key begins with `prefix` (all of them for "").
    async fn query(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        // DynamoDB refuses an empty string in a key condition.
        let (condition, prefix) = match prefix {
            "" => ("pk = :pk", None),
            prefix => ("pk = :pk AND begins_with(sk, :p)", Some(s(prefix))),
        };
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.name)
                .key_condition_expression(condition)
                .set_expression_attribute_values(Some(
                    std::iter::once((":pk".to_string(), s(pk)))
                        .chain(prefix.clone().map(|p| (":p".to_string(), p)))
                        .collect(),
                ))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| err("Query", pk, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// A conditional put; `Ok(false)` when the condition did not hold.
    async fn put_if(&self, item: Item, condition: &str, values: Item, what: &str) -> Result<bool, StoreError> {
        let mut req =
            self.client.put_item().table_name(&self.name).set_item(Some(item)).condition_expression(condition);
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(err("PutItem", what, e)),
        }
    }

    /// A conditional delete; `Ok(false)` when the condition did not hold.
    async fn delete_if(&self, k: Item, condition: &str, values: Item, what: &str) -> Result<bool, StoreError> {
        match self
            .client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(k))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(err("DeleteItem", what, e)),
        }
    }

    /// A conditional update; `Ok(false)` when the condition did not hold.
    async fn update_if(
        &self,
        k: Item,
        update: &str,
        condition: Option<&str>,
        names: HashMap<String, String>,
        values: Item,
        what: &str,
    ) -> Result<bool, StoreError> {
        let mut req = self.client.update_item().table_name(&self.name).set_key(Some(k)).update_expression(update);
        if let Some(c) = condition {
            req = req.condition_expression(c);
        }
        if !names.is_empty() {
            req = req.set_expression_attribute_names(Some(names));
        }
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(values));
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(err("UpdateItem", what, e)),
        }
    }

    // ---- batches ----

    /// Creates the batch in state `submitting`; `Ok(false)` when it already exists
    /// (the same object delivered or uploaded twice never makes two batches).
    pub async fn create_batch(&self, meta: &BatchMeta, source_key: &str) -> Result<bool, StoreError> {
        self.create_delta_batch(meta, source_key, None).await
    }

    /// [`Table::create_batch`], marking a delta pass of the completed batch `delta_of`.
    pub async fn create_delta_batch(
        &self,
        meta: &BatchMeta,
        source_key: &str,
        delta_of: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut item = key(batch_pk(&meta.id), "META");
        if let Some(d) = delta_of {
            item.insert("delta_of".into(), s(d));
        }
        item.insert("data".into(), to_json(meta)?);
        item.insert("state".into(), s("submitting"));
        item.insert("source_key".into(), s(source_key));
        item.insert("total_count".into(), n(meta.total));
        for c in ["done", "failed", "messages_copied", "bytes_copied"] {
            item.insert(c.into(), n(0));
        }
        item.insert("created_epoch".into(), n(meta.created_at.timestamp()));
        self.put_if(item, "attribute_not_exists(pk)", Item::new(), &meta.id).await
    }

    /// The batch's META item, when the batch exists.
    pub async fn batch_state(&self, batch: &str) -> Result<Option<BatchState>, StoreError> {
        let Some(item) = self.get(key(batch_pk(batch), "META"), batch).await? else { return Ok(None) };
        let meta: BatchMeta = from_json(&item, batch)?;
        let secrets = match get_s(&item, "secret_names") {
            Some(t) => serde_json::from_str(t).map_err(|e| StoreError::new(format!("{batch}: secrets: {e}")))?,
            None => Vec::new(),
        };
        Ok(Some(BatchState {
            meta,
            state: get_s(&item, "state").unwrap_or("").to_string(),
            source_key: get_s(&item, "source_key").unwrap_or("").to_string(),
            total: get_n(&item, "total_count"),
            done: get_n(&item, "done"),
            failed: get_n(&item, "failed"),
            messages_copied: get_n(&item, "messages_copied"),
            bytes_copied: get_n(&item, "bytes_copied"),
            secrets,
            finished_at: get_s(&item, "finished_at")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            announced: item.get("announced").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
            delta_of: get_s(&item, "delta_of").map(str::to_string),
        }))
    }

    /// Sets the batch's `state`.
    pub async fn set_batch_state(&self, batch: &str, state: &str) -> Result<(), StoreError> {
        let names = HashMap::from([("#st".to_string(), "state".to_string())]);
        self.update_if(
            key(batch_pk(batch), "META"),
            "SET #st = :s",
            None,
            names,
            HashMap::from([(":s".into(), s(state))]),
            batch,
        )
        .await?;
        Ok(())
    }

    /// Records the names of the batch's secrets (finalize deletes them).
    pub async fn set_secrets(&self, batch: &str, names: &[String]) -> Result<(), StoreError> {
        let v = to_json(&names)?;
        self.update_if(
            key(batch_pk(batch), "META"),
            "SET secret_names = :v",
            None,
            HashMap::new(),
            HashMap::from([(":v".into(), v)]),
            batch,
        )
        .await?;
        Ok(())
    }

    /// Lists the batch among those the sweeper watches (from submit until announced).
    pub async fn watch_batch(&self, batch: &str) -> Result<(), StoreError> {
        let mut item = key("RUNNING", batch_pk(batch));
        item.insert("batch_id".into(), s(batch));
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| err("PutItem", batch, e))?;
        Ok(())
    }

    /// The batches the sweeper watches.
    pub async fn watched_batches(&self) -> Result<Vec<String>, StoreError> {
        let items = self.query("RUNNING", "BATCH#").await?;
        Ok(items.iter().filter_map(|i| get_s(i, "batch_id").map(str::to_string)).collect())
    }

    /// Marks `BatchCompleted` published and stops watching the batch.
    pub async fn mark_announced(&self, batch: &str) -> Result<(), StoreError> {
        self.update_if(
            key(batch_pk(batch), "META"),
            "SET announced = :t",
            Some("attribute_exists(pk)"),
            HashMap::new(),
            HashMap::from([(":t".into(), AttributeValue::Bool(true))]),
            batch,
        )
        .await?;
        self.client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(key("RUNNING", batch_pk(batch))))
            .send()
            .await
            .map_err(|e| err("DeleteItem", batch, e))?;
        Ok(())
    }

    /// Marks the batch completed; false when it already was.
    pub async fn complete_batch(&self, batch: &str, finished_at: DateTime<Utc>) -> Result<bool, StoreError> {
        let names = HashMap::from([("#st".to_string(), "state".to_string())]);
        self.update_if(
            key(batch_pk(batch), "META"),
            "SET #st = :c, finished_at = :f",
            Some("#st <> :c"),
            names,
            HashMap::from([(":c".into(), s("completed")), (":f".into(), s(finished_at.to_rfc3339()))]),
            batch,
        )
        .await
    }

    // ---- delta schedules ----

    /// Records the batch's schedule (once: an upload retried keeps the first).
    pub async fn create_schedule(&self, batch: &str, every: i64, until: i64, next_at: i64) -> Result<(), StoreError> {
        let mut item = key("SCHEDULE", batch_pk(batch));
        item.insert("batch_id".into(), s(batch));
        item.insert("every".into(), n(every));
        item.insert("until".into(), n(until));
        item.insert("next_at".into(), n(next_at));
        item.insert("st".into(), s("on"));
        item.insert("deltas".into(), n(0));
        self.put_if(item, "attribute_not_exists(pk)", Item::new(), batch).await?;
        Ok(())
    }

    fn schedule_of(item: &Item) -> Option<Schedule> {
        Some(Schedule {
            batch: get_s(item, "batch_id")?.to_string(),
            every: get_n(item, "every") as i64,
            until: get_n(item, "until") as i64,
            next_at: get_n(item, "next_at") as i64,
            state: get_s(item, "st").unwrap_or("").to_string(),
            last_delta: get_s(item, "last_delta").map(str::to_string),
            deltas: get_n(item, "deltas"),
        })
    }

    /// The batch's schedule, if it has one.
    pub async fn schedule(&self, batch: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.get(key("SCHEDULE", batch_pk(batch)), batch).await?.as_ref().and_then(Self::schedule_of))
    }

    /// Every schedule not yet ended (the sweeper's work list).
    pub async fn live_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let items = self.query("SCHEDULE", "BATCH#").await?;
        Ok(items.iter().filter_map(Self::schedule_of).filter(|s| s.state != "ended").collect())
    }

    /// Moves the schedule on after starting `delta`; false when another sweep did first.
    pub async fn advance_schedule(
        &self,
        batch: &str,
        seen_next: i64,
        next_at: i64,
        delta: &str,
    ) -> Result<bool, StoreError> {
        self.update_if(
            key("SCHEDULE", batch_pk(batch)),
            "SET next_at = :next, last_delta = :d ADD deltas :one",
            Some("next_at = :seen AND #st = :on"),
            schedule_state_name(),
            HashMap::from([
                (":next".into(), n(next_at)),
                (":d".into(), s(delta)),
                (":one".into(), n(1)),
                (":seen".into(), n(seen_next)),
                (":on".into(), s("on")),
            ]),
            batch,
        )
        .await
    }

    /// `mailhaul submit --delta`: the next pass is due now. False when there is no live schedule.
    pub async fn delta_now(&self, batch: &str) -> Result<bool, StoreError> {
        self.update_if(
            key("SCHEDULE", batch_pk(batch)),
            "SET next_at = :now",
            Some("#st = :on"),
            schedule_state_name(),
            HashMap::from([(":now".into(), n(now_epoch())), (":on".into(), s("on"))]),
            batch,
        )
        .await
    }

    /// `mailhaul submit --stop`: no more passes; the sweeper ends the schedule. Only a
    /// schedule that is on can be stopped.
    pub async fn stop_schedule(&self, batch: &str) -> Result<bool, StoreError> {
        let values = HashMap::from([(":s".into(), s("stopped")), (":on".into(), s("on"))]);
        self.update_if(
            key("SCHEDULE", batch_pk(batch)),
            "SET #st = :s",
            Some("#st = :on"),
            schedule_state_name(),
            values,
            batch,
        )
        .await
    }

    /// The sweeper, once the passwords are deleted and the end announced.
    pub async fn end_schedule(&self, batch: &str) -> Result<bool, StoreError> {
        let values = HashMap::from([(":s".into(), s("ended"))]);
        let exists = Some("attribute_exists(pk)");
        self.update_if(key("SCHEDULE", batch_pk(batch)), "SET #st = :s", exists, schedule_state_name(), values, batch)
            .await
    }

    // ---- "mailbox in a running batch" claims ----

    /// Claims `mailbox` for `batch`. A claim held by a batch that no longer runs the mailbox
    /// (the mailbox is final there, the batch is completed or rejected, or its upload died
    /// while submitting) has expired and is taken over.
    pub async fn claim_mailbox(&self, mailbox: &str, batch: &str) -> Result<Claim, StoreError> {
        let claim_key = || key(format!("ACTIVE#{mailbox}"), "ACTIVE");
        let item = || {
            let mut item = claim_key();
            item.insert("batch_id".into(), s(batch));
            item
        };
        for _ in 0..3 {
            let ok = self
                .put_if(
                    item(),
                    "attribute_not_exists(pk) OR batch_id = :b",
                    HashMap::from([(":b".into(), s(batch))]),
                    mailbox,
                )
                .await?;
            if ok {
                return Ok(Claim::Ours);
            }
            let Some(holder) = self.get(claim_key(), mailbox).await? else { continue };
            let other = get_s(&holder, "batch_id").unwrap_or("another batch").to_string();
            if !self.claim_expired(&other, mailbox).await? {
                return Ok(Claim::HeldBy(other));
            }
            if self.put_if(item(), "batch_id = :o", HashMap::from([(":o".into(), s(&other))]), mailbox).await? {
                return Ok(Claim::Ours);
            }
        }
        Ok(Claim::HeldBy("another batch".into()))
    }

    /// Whether `other`'s claim on `mailbox` is over: see [`Table::claim_mailbox`].
    async fn claim_expired(&self, other: &str, mailbox: &str) -> Result<bool, StoreError> {
        /// Longer than the upload function's timeout (900 s) and Lambda's two retries of it: a
        /// batch still submitting after this died.
        const SUBMIT_AT_MOST: i64 = 3600;
        let Some(state) = self.batch_state(other).await? else { return Ok(true) };
        match state.state.as_str() {
            "completed" | "rejected" => return Ok(true),
            "submitting" if now_epoch() - state.meta.created_at.timestamp() > SUBMIT_AT_MOST => return Ok(true),
            _ => {}
        }
        Ok(self.mailbox_item(other, mailbox).await?.is_some_and(|m| m.record.status.is_final()))
    }

    /// Releases `batch`'s claim on `mailbox` (no-op when another batch holds it).
    pub async fn release_mailbox(&self, mailbox: &str, batch: &str) -> Result<(), StoreError> {
        self.delete_if(
            key(format!("ACTIVE#{mailbox}"), "ACTIVE"),
            "batch_id = :b",
            HashMap::from([(":b".into(), s(batch))]),
            mailbox,
        )
        .await?;
        Ok(())
    }

    // ---- mailboxes ----

    /// Creates a mailbox record at pass 0 unless it exists (an upload retried keeps progress),
    /// with its job message (no passwords) for the sweeper.
    pub async fn create_mailbox(&self, batch: &str, record: &MailboxRecord, job: &str) -> Result<(), StoreError> {
        let mut item = key(batch_pk(batch), mailbox_sk(&record.mailbox));
        item.insert("data".into(), to_json(record)?);
        item.insert("job".into(), s(job));
        item.insert("status".into(), s(record.status.as_str()));
        item.insert("row".into(), n(record.row));
        item.insert("pass_seq".into(), n(0));
        self.put_if(item, "attribute_not_exists(pk)", Item::new(), &record.mailbox).await?;
        Ok(())
    }

    /// The mailbox's item.
    pub async fn mailbox_item(&self, batch: &str, mailbox: &str) -> Result<Option<MailboxItem>, StoreError> {
        let Some(item) = self.get(key(batch_pk(batch), mailbox_sk(mailbox)), mailbox).await? else { return Ok(None) };
        Ok(Some(mailbox_item(&item, mailbox)?))
    }

    /// Every mailbox item of a batch, by row (not the parts of split mailboxes).
    pub async fn mailbox_items(&self, batch: &str) -> Result<Vec<MailboxItem>, StoreError> {
        let mut out = self.units(batch).await?;
        out.retain(|m| m.part_of.is_none());
        Ok(out)
    }

    /// Every item a copy job runs on: the mailboxes of a batch and the parts of split ones.
    pub async fn units(&self, batch: &str) -> Result<Vec<MailboxItem>, StoreError> {
        let items = self.query(&batch_pk(batch), "MBX#").await?;
        let mut out = items.iter().map(|i| mailbox_item(i, batch)).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|m| m.record.row);
        Ok(out)
    }

    /// The parts of a split mailbox.
    pub async fn part_items(&self, batch: &str, mailbox: &str) -> Result<Vec<MailboxItem>, StoreError> {
        let items = self.query(&batch_pk(batch), &mailbox_sk(&crate::messages::parts_prefix(mailbox))).await?;
        let mut out = items.iter().map(|i| mailbox_item(i, batch)).collect::<Result<Vec<_>, _>>()?;
        out.retain(|m| m.part_of.as_deref() == Some(mailbox));
        Ok(out)
    }

    /// A survey found the mailbox not worth splitting: later passes do not ask again.
    pub async fn keep_whole(&self, batch: &str, mailbox: &str) -> Result<(), StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "SET parts = :one",
            Some("attribute_not_exists(parts)"),
            HashMap::new(),
            HashMap::from([(":one".into(), n(1))]),
            mailbox,
        )
        .await?;
        Ok(())
    }

    /// Splits the mailbox into `parts` (item name, record, job message), in one transaction:
    /// false when it was split before (a re-driven pass), and nothing is written then.
    pub async fn split_mailbox(
        &self,
        batch: &str,
        mailbox: &str,
        parts: &[(String, MailboxRecord, String)],
    ) -> Result<bool, StoreError> {
        let tx = |e: aws_sdk_dynamodb::error::BuildError| err("TransactWriteItems", mailbox, e);
        let mut writes = vec![TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.name)
                    .set_key(Some(key(batch_pk(batch), mailbox_sk(mailbox))))
                    .update_expression("SET parts = :n, parts_final = :zero")
                    .condition_expression("attribute_exists(pk) AND (attribute_not_exists(parts) OR parts = :one)")
                    .expression_attribute_values(":n", n(parts.len()))
                    .expression_attribute_values(":zero", n(0))
                    .expression_attribute_values(":one", n(1))
                    .build()
                    .map_err(tx)?,
            )
            .build()];
        for (unit, record, job) in parts {
            let mut item = key(batch_pk(batch), mailbox_sk(unit));
            item.insert("data".into(), to_json(record)?);
            item.insert("job".into(), s(job));
            item.insert("status".into(), s(record.status.as_str()));
            item.insert("row".into(), n(record.row));
            item.insert("pass_seq".into(), n(0));
            item.insert("part_of".into(), s(mailbox));
            let put = aws_sdk_dynamodb::types::Put::builder()
                .table_name(&self.name)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(tx)?;
            writes.push(TransactWriteItem::builder().put(put).build());
        }
        self.transact(writes, mailbox).await
    }

    /// Every part of a split mailbox is done and one of them copied a UID range: the mailbox
    /// is whole again (`parts = 1`, so no second survey) with `record` (the parts' passes
    /// summed) and a lease that has run out, so that the sweeper re-drives its pass if the
    /// caller dies before queuing it. False when another caller did it first.
    pub async fn rejoin_split(
        &self,
        batch: &str,
        mailbox: &str,
        parts: u32,
        record: &MailboxRecord,
    ) -> Result<bool, StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "SET parts = :one, pass_until = :now, #d = :record",
            Some("parts = :n"),
            HashMap::from([("#d".into(), "data".into())]),
            HashMap::from([
                (":one".into(), n(1)),
                (":n".into(), n(parts)),
                (":now".into(), n(Utc::now().timestamp())),
                (":record".into(), to_json(record)?),
            ]),
            mailbox,
        )
        .await
    }

    /// Makes a part final (once) and counts it in its mailbox: false when it was final before.
    pub async fn finish_part(&self, batch: &str, mailbox: &str, record: &MailboxRecord) -> Result<bool, StoreError> {
        let tx = |e: aws_sdk_dynamodb::error::BuildError| err("TransactWriteItems", &record.mailbox, e);
        let part = self.final_record(batch, record)?;
        let whole = Update::builder()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), mailbox_sk(mailbox))))
            .update_expression("ADD parts_final :one")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(tx)?;
        self.transact(
            vec![TransactWriteItem::builder().update(part).build(), TransactWriteItem::builder().update(whole).build()],
            &record.mailbox,
        )
        .await
    }

    /// A pass holds the mailbox until `until` (epoch s): if it is still marked after that,
    /// the pass crashed.
    pub async fn begin_pass(&self, batch: &str, mailbox: &str, until: i64) -> Result<(), StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "SET pass_until = :u",
            None,
            HashMap::new(),
            HashMap::from([(":u".into(), n(until))]),
            mailbox,
        )
        .await?;
        Ok(())
    }

    /// The pass ended without moving on (a transient error retried by SQS).
    pub async fn end_pass(&self, batch: &str, mailbox: &str) -> Result<(), StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "REMOVE pass_until",
            None,
            HashMap::new(),
            Item::new(),
            mailbox,
        )
        .await?;
        Ok(())
    }

    /// Moves the mailbox to pass `to` (never backwards) and ends the pass in progress; a pass
    /// that was not throttled also clears the throttle count. Called after the message of
    /// pass `to` is sent, so a crash in between leaves a message that is not stale.
    pub async fn advance_seq(&self, batch: &str, mailbox: &str, to: u32, throttled: bool) -> Result<bool, StoreError> {
        let update = if throttled {
            "SET pass_seq = :next REMOVE pass_until"
        } else {
            "SET pass_seq = :next REMOVE pass_until, throttled_passes, throttled_since"
        };
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            update,
            Some("attribute_exists(pk) AND pass_seq < :next"),
            HashMap::new(),
            HashMap::from([(":next".into(), n(to))]),
            mailbox,
        )
        .await
    }

    /// Records what the pair's checkpoints counted before this batch copied anything (once).
    pub async fn set_baseline(&self, batch: &str, mailbox: &str, copied: u64, bytes: u64) -> Result<(), StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "SET baseline_copied = :c, baseline_bytes = :b",
            Some("attribute_not_exists(baseline_copied)"),
            HashMap::new(),
            HashMap::from([(":c".into(), n(copied)), (":b".into(), n(bytes))]),
            mailbox,
        )
        .await?;
        Ok(())
    }

    /// Counts a throttled pass: (throttled passes in a row, epoch s of the first).
    pub async fn count_throttled(&self, batch: &str, mailbox: &str) -> Result<(u32, i64), StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), mailbox_sk(mailbox))))
            .update_expression("ADD throttled_passes :one SET throttled_since = if_not_exists(throttled_since, :now)")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now_epoch()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| err("UpdateItem", mailbox, e))?;
        let item = out.attributes.unwrap_or_default();
        Ok((get_n(&item, "throttled_passes") as u32, get_n(&item, "throttled_since") as i64))
    }

    /// The sweeper found the pass that held the mailbox until `seen_until` crashed: ends it and
    /// counts the crash. `None` when another sweeper (or the pass itself) got there first.
    pub async fn count_crash(&self, batch: &str, mailbox: &str, seen_until: i64) -> Result<Option<u32>, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), mailbox_sk(mailbox))))
            .update_expression("REMOVE pass_until ADD crashes :one")
            .condition_expression("pass_until = :seen")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(seen_until))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(get_n(&out.attributes.unwrap_or_default(), "crashes") as u32)),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_conditional_check_failed_exception()) => Ok(None),
            Err(e) => Err(err("UpdateItem", mailbox, e)),
        }
    }

    /// Saves a final record and counts it in the batch, atomically and once: false when the
    /// mailbox was already final (a duplicate delivery finishing late).
    pub async fn finish_mailbox(
        &self,
        batch: &str,
        record: &MailboxRecord,
        messages: u64,
        bytes: u64,
    ) -> Result<bool, StoreError> {
        let what = &record.mailbox;
        let tx = |e: aws_sdk_dynamodb::error::BuildError| err("TransactWriteItems", what, e);
        let counter = if record.status == MailboxStatus::Done { "done" } else { "failed" };
        let mailbox_update = self.final_record(batch, record)?;
        let batch_update = Update::builder()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), "META")))
            .update_expression("ADD #c :one, messages_copied :m, bytes_copied :b")
            .expression_attribute_names("#c", counter)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":m", n(messages))
            .expression_attribute_values(":b", n(bytes))
            .build()
            .map_err(tx)?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(mailbox_update).build(),
                TransactWriteItem::builder().update(batch_update).build(),
            ],
            what,
        )
        .await
    }

    /// Saves a final record, on the condition that it was not final before.
    fn final_record(&self, batch: &str, record: &MailboxRecord) -> Result<Update, StoreError> {
        Update::builder()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), mailbox_sk(&record.mailbox))))
            .update_expression("SET #d = :d, #st = :st REMOVE pass_until")
            .condition_expression("#st <> :done AND #st <> :failed")
            .expression_attribute_names("#d", "data")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":d", to_json(record)?)
            .expression_attribute_values(":st", s(record.status.as_str()))
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":failed", s("failed"))
            .build()
            .map_err(|e| err("TransactWriteItems", &record.mailbox, e))
    }

    /// All of `writes` or none: false when a condition of one of them did not hold.
    async fn transact(&self, writes: Vec<TransactWriteItem>, what: &str) -> Result<bool, StoreError> {
        let result = self.client.transact_write_items().set_transact_items(Some(writes)).send().await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => {
                let condition_failed = e.as_service_error().is_some_and(|x| {
                    x.is_transaction_canceled_exception()
                        && match x {
                            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                                t.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed"))
                            }
                            _ => false,
                        }
                });
                if condition_failed {
                    Ok(false)
                } else {
                    Err(err("TransactWriteItems", what, e))
                }
            }
        }
    }

    // ---- leases and slots ----

    async fn take(&self, pk: String, sk: String, owner: &str, until: i64) -> Result<bool, StoreError> {
        let mut item = key(pk.clone(), sk);
        item.insert("holder".into(), s(owner));
        item.insert("expires_at".into(), n(until));
        // TTL only tidies up: the condition below is what frees an expired lease.
        item.insert("ttl".into(), n(until + 86_400));
        self.put_if(
            item,
            "attribute_not_exists(pk) OR expires_at < :now OR holder = :me",
            HashMap::from([(":now".into(), n(now_epoch())), (":me".into(), s(owner))]),
            &pk,
        )
        .await
    }

    async fn give_back(&self, pk: String, sk: String, owner: &str) -> Result<(), StoreError> {
        self.delete_if(key(pk.clone(), sk), "holder = :me", HashMap::from([(":me".into(), s(owner))]), &pk).await?;
        Ok(())
    }

    /// Leases `mailbox` to `owner` until `until` (epoch seconds): false when someone else
    /// holds an unexpired lease (two deliveries of one job never copy it at once).
    pub async fn acquire_lease(&self, mailbox: &str, owner: &str, until: i64) -> Result<bool, StoreError> {
        self.take(format!("LEASE#{mailbox}"), "LEASE".into(), owner, until).await
    }

    /// Gives the lease back, if `owner` still holds it.
    pub async fn release_lease(&self, mailbox: &str, owner: &str) -> Result<(), StoreError> {
        self.give_back(format!("LEASE#{mailbox}"), "LEASE".into(), owner).await
    }

    /// Takes one of the `cap` connection slots of `host` until `until`: the slot number,
    /// or `None` when all are held.
    pub async fn acquire_slot(
        &self,
        host: &str,
        cap: usize,
        owner: &str,
        until: i64,
    ) -> Result<Option<usize>, StoreError> {
        let cap = cap.max(1);
        // Start at an owner-dependent slot so concurrent callers do not all fight over slot 0.
        let start = owner.bytes().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize)) % cap;
        for i in 0..cap {
            let slot = (start + i) % cap;
            if self.take(format!("SLOT#{host}"), slot.to_string(), owner, until).await? {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Gives a slot back, if `owner` still holds it.
    pub async fn release_slot(&self, host: &str, slot: usize, owner: &str) -> Result<(), StoreError> {
        self.give_back(format!("SLOT#{host}"), slot.to_string(), owner).await
    }

    /// Whether someone holds an unexpired lease on `mailbox` (for tests and status).
    pub async fn lease_held(&self, mailbox: &str) -> Result<bool, StoreError> {
        let now = now_epoch();
        Ok(self.query(&format!("LEASE#{mailbox}"), "").await?.iter().any(|i| get_n(i, "expires_at") as i64 >= now))
    }

    /// How many slots of `host` are held now (for tests and status).
    pub async fn slots_held(&self, host: &str) -> Result<usize, StoreError> {
        let now = now_epoch();
        Ok(self
            .query(&format!("SLOT#{host}"), "")
            .await?
            .iter()
            .filter(|i| get_n(i, "expires_at") as i64 >= now)
            .count())
    }

    /// The [`BatchStore`] of one batch.
    pub fn batch_store(&self, batch: &str) -> DynamoBatchStore {
        DynamoBatchStore { table: self.clone(), batch: batch.to_string() }
    }

    /// The [`CheckpointStore`] of one mailbox pair (see [`crate::messages::pair_key`]).
    pub fn pair_checkpoints(&self, mailbox: &str, pair: &str) -> DynamoCheckpoints {
        let pairs = HashMap::from([(mailbox.to_string(), pair.to_string())]);
        DynamoCheckpoints { table: self.clone(), pairs: std::sync::Arc::new(pairs) }
    }

    /// The [`CheckpointStore`] of every mailbox of a batch (for its report), from the pairs
    /// of the jobs stored on its mailbox items.
    pub async fn checkpoints(&self, batch: &str) -> Result<DynamoCheckpoints, StoreError> {
        let mut pairs = HashMap::new();
        for item in self.mailbox_items(batch).await? {
            let Some(job) = item.job.as_deref() else { continue };
            let job: crate::messages::JobMessage =
                serde_json::from_str(job).map_err(|e| StoreError::new(format!("{batch}: stored job: {e}")))?;
            pairs.insert(job.job.mailbox.clone(), crate::messages::pair_key(&job.job));
        }
        Ok(DynamoCheckpoints { table: self.clone(), pairs: std::sync::Arc::new(pairs) })
    }
}

fn mailbox_item(item: &Item, what: &str) -> Result<MailboxItem, StoreError> {
    let opt_n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
    Ok(MailboxItem {
        record: from_json(item, what)?,
        seq: get_n(item, "pass_seq") as u32,
        job: get_s(item, "job").map(str::to_string),
        pass_until: opt_n("pass_until"),
        crashes: get_n(item, "crashes") as u32,
        throttled_passes: get_n(item, "throttled_passes") as u32,
        throttled_since: opt_n("throttled_since"),
        baseline: item.get("baseline_copied").map(|_| (get_n(item, "baseline_copied"), get_n(item, "baseline_bytes"))),
        part_of: get_s(item, "part_of").map(str::to_string),
        parts: item.get("parts").map(|_| get_n(item, "parts") as u32),
        parts_final: get_n(item, "parts_final") as u32,
    })
}

/// [`BatchStore`] on the table, for one batch.
#[derive(Clone, Debug)]
pub struct DynamoBatchStore {
    table: Table,
    batch: String,
}

#[async_trait]
impl BatchStore for DynamoBatchStore {
    async fn put_batch(&self, meta: &BatchMeta) -> Result<(), StoreError> {
        self.table.create_batch(meta, "").await?;
        Ok(())
    }

    async fn batch(&self) -> Result<Option<BatchMeta>, StoreError> {
        Ok(self.table.batch_state(&self.batch).await?.map(|b| b.meta))
    }

    async fn put_mailbox(&self, record: &MailboxRecord) -> Result<(), StoreError> {
        let names = HashMap::from([
            ("#d".to_string(), "data".to_string()),
            ("#st".to_string(), "status".to_string()),
            ("#r".to_string(), "row".to_string()),
        ]);
        let values = HashMap::from([
            (":d".into(), to_json(record)?),
            (":st".into(), s(record.status.as_str())),
            (":r".into(), n(record.row)),
        ]);
        self.table
            .update_if(
                key(batch_pk(&self.batch), mailbox_sk(&record.mailbox)),
                "SET #d = :d, #st = :st, #r = :r",
                None,
                names,
                values,
                &record.mailbox,
            )
            .await?;
        Ok(())
    }

    async fn mailbox(&self, mailbox: &str) -> Result<Option<MailboxRecord>, StoreError> {
        Ok(self.table.mailbox_item(&self.batch, mailbox).await?.map(|m| m.record))
    }

    async fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError> {
        Ok(self.table.mailbox_items(&self.batch).await?.into_iter().map(|m| m.record).collect())
    }
}

/// [`CheckpointStore`] on the table, keyed by mailbox pair.
#[derive(Clone, Debug)]
pub struct DynamoCheckpoints {
    table: Table,
    /// Mailbox -> pair key.
    pairs: std::sync::Arc<HashMap<String, String>>,
}

impl DynamoCheckpoints {
    /// A folder's checkpoint item.
    fn checkpoint_item(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<Item, StoreError> {
        let mut item = key(self.pk(mailbox), format!("F#{}", checkpoint.source_folder));
        item.insert("data".into(), to_json(checkpoint)?);
        Ok(item)
    }

    /// Ledger items of `runs`: one per 500 runs (a batch: at most a few hundred runs, far
    /// below 400 KB, and one item), keyed so a prefix query returns them in the order
    /// written. Micros since the epoch order the writes of one folder's UIDs: each UID has one
    /// writer (the folder's, or its UID range's part), and the first UID keeps writers apart.
    fn ledger_items(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
        runs: &[Run],
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        for chunk in runs.chunks(500) {
            let micros = Utc::now().timestamp_micros();
            let sk = format!("{}{micros:020}#{:010}", ledger_prefix(folder, uid_validity), chunk[0].source_uid);
            let mut item = key(self.pk(mailbox), sk);
            item.insert("data".into(), to_json(&chunk)?);
            items.push(item);
        }
        Ok(items)
    }

    fn pk(&self, mailbox: &str) -> String {
        match self.pairs.get(mailbox) {
            Some(pair) => format!("CKPT#{pair}"),
            // Not a mailbox of this batch: a partition that holds nothing.
            None => format!("CKPT#none#{mailbox}"),
        }
    }

    /// Write one item of this mailbox's checkpoint partition.
    async fn put(&self, item: HashMap<String, AttributeValue>, mailbox: &str) -> Result<(), StoreError> {
        self.table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| err("PutItem", mailbox, e))?;
        Ok(())
    }
}

/// Sort-key prefix of one folder's ledger items. The name's length makes a folder's prefix
/// no prefix of another folder's (`A` and `A#B`).
fn ledger_prefix(folder: &str, uid_validity: u32) -> String {
    format!("L#{uid_validity:010}#{}:{folder}#", folder.len())
}

#[async_trait]
impl CheckpointStore for DynamoCheckpoints {
    async fn load_saved(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, StoreError> {
        let items = self.table.query(&self.pk(mailbox), "F#").await?;
        items.iter().map(|i| from_json(i, mailbox)).collect()
    }

    async fn save_folder(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<(), StoreError> {
        self.put(self.checkpoint_item(mailbox, checkpoint)?, mailbox).await
    }

    async fn record_skipped(&self, mailbox: &str, message: &SkippedMessage) -> Result<(), StoreError> {
        let sk = format!("S#{}#{:010}#{}", message.folder, message.uid, message.reason.as_str());
        let mut item = key(self.pk(mailbox), sk);
        item.insert("data".into(), to_json(message)?);
        self.put(item, mailbox).await
    }

    async fn forget_skipped(&self, mailbox: &str, folder: &str, uid: u32) -> Result<(), StoreError> {
        for reason in [SkipReason::TooBig, SkipReason::Refused, SkipReason::Unreadable] {
            let sk = format!("S#{folder}#{uid:010}#{}", reason.as_str());
            self.table
                .client
                .delete_item()
                .table_name(&self.table.name)
                .set_key(Some(key(self.pk(mailbox), sk)))
                .send()
                .await
                .map_err(|e| err("DeleteItem", mailbox, e))?;
        }
        Ok(())
    }

    async fn record_ledger(
        &self,
        mailbox: &str,
        folder: &str,
        uid_validity: u32,
        runs: &[Run],
    ) -> Result<(), StoreError> {
        for item in self.ledger_items(mailbox, folder, uid_validity, runs)? {
            self.put(item, mailbox).await?;
        }
        Ok(())
    }

    async fn record_batch(
        &self,
        mailbox: &str,
        uid_validity: u32,
        runs: &[Run],
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError> {
        let tx = |e: aws_sdk_dynamodb::error::BuildError| err("TransactWriteItems", mailbox, e);
        let mut items = self.ledger_items(mailbox, checkpoint.ledger_folder(), uid_validity, runs)?;
        items.push(self.checkpoint_item(mailbox, checkpoint)?);
        let mut writes = Vec::new();
        for item in items {
            let put = aws_sdk_dynamodb::types::Put::builder()
                .table_name(&self.table.name)
                .set_item(Some(item))
                .build()
                .map_err(tx)?;
            writes.push(TransactWriteItem::builder().put(put).build());
        }
        self.table.transact(writes, mailbox).await?;
        Ok(())
    }

    async fn load_ledger(&self, mailbox: &str, folder: &str, uid_validity: u32) -> Result<Vec<Run>, StoreError> {
        let items = self.table.query(&self.pk(mailbox), &ledger_prefix(folder, uid_validity)).await?;
        let mut runs = Vec::new();
        for item in &items {
            runs.extend(from_json::<Vec<Run>>(item, mailbox)?);
        }
        Ok(runs)
    }

    async fn skipped(&self, mailbox: &str) -> Result<Vec<SkippedMessage>, StoreError> {
        let items = self.table.query(&self.pk(mailbox), "S#").await?;
        let mut list = items.iter().map(|i| from_json::<SkippedMessage>(i, mailbox)).collect::<Result<Vec<_>, _>>()?;
        list.sort_by(|a, b| (&a.folder, a.uid, a.reason).cmp(&(&b.folder, b.uid, b.reason)));
        Ok(list)
    }
}
