//! The DynamoDB state table (one table, pk/sk, on demand): batches, mailbox records,
//! checkpoints, skipped messages, mailbox leases, per-source-host connection slots and the
//! "mailbox is in a running batch" claims. Adapters of `CheckpointStore` and `BatchStore`
//! are views of it scoped to one batch.
//!
//! Items:
//! - `BATCH#<id>` / `META`: BatchMeta (`data`), `state`, `total_count`, counters `done`,
//!   `failed`, `messages_copied`, `bytes_copied`, `secret_names`, `finalize_sent`, `finished_at`.
//! - `BATCH#<id>` / `MBX#<mailbox>`: MailboxRecord (`data`), `status`, `row`, `pass_seq`.
//! - `CKPT#<id>#<mailbox>` / `F#<folder>`: FolderCheckpoint; `/ S#<folder>#<uid>#<reason>`: SkippedMessage.
//! - `LEASE#<mailbox>` / `LEASE` and `SLOT#<host:port>` / `<n>`: `holder`, `expires_at` (epoch s), `ttl`.
//! - `ACTIVE#<mailbox>` / `ACTIVE`: `batch_id` holding the mailbox until it is final.
//!
//! Leases carry their own expiry and are checked in the condition, so they work where
//! TTL deletion is late (up to days on AWS) or absent (moto).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use mailhaul_common::model::{FolderCheckpoint, MailboxStatus, SkippedMessage};
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
}

/// The state table.
#[derive(Clone, Debug)]
pub struct Table {
    client: aws_sdk_dynamodb::Client,
    name: String,
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
    async fn query(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.name)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":p", s(prefix))
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
        let mut item = key(batch_pk(&meta.id), "META");
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

    /// Claims the right to send the batch's finalize message: true for exactly one caller.
    pub async fn claim_finalize(&self, batch: &str) -> Result<bool, StoreError> {
        self.update_if(
            key(batch_pk(batch), "META"),
            "SET finalize_sent = :t",
            Some("attribute_exists(pk) AND attribute_not_exists(finalize_sent)"),
            HashMap::new(),
            HashMap::from([(":t".into(), AttributeValue::Bool(true))]),
            batch,
        )
        .await
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

    // ---- "mailbox in a running batch" claims ----

    /// Claims `mailbox` for `batch`. `Ok(None)` when claimed (or already ours), else the
    /// id of the running batch that holds it.
    pub async fn claim_mailbox(&self, mailbox: &str, batch: &str) -> Result<Option<String>, StoreError> {
        let mut item = key(format!("ACTIVE#{mailbox}"), "ACTIVE");
        item.insert("batch_id".into(), s(batch));
        let ok = self
            .put_if(
                item,
                "attribute_not_exists(pk) OR batch_id = :b",
                HashMap::from([(":b".into(), s(batch))]),
                mailbox,
            )
            .await?;
        if ok {
            return Ok(None);
        }
        let holder = self.get(key(format!("ACTIVE#{mailbox}"), "ACTIVE"), mailbox).await?;
        Ok(Some(holder.as_ref().and_then(|i| get_s(i, "batch_id")).unwrap_or("another batch").to_string()))
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

    /// Creates a mailbox record at pass 0 unless it exists (an upload retried keeps progress).
    pub async fn create_mailbox(&self, batch: &str, record: &MailboxRecord) -> Result<(), StoreError> {
        let mut item = key(batch_pk(batch), mailbox_sk(&record.mailbox));
        item.insert("data".into(), to_json(record)?);
        item.insert("status".into(), s(record.status.as_str()));
        item.insert("row".into(), n(record.row));
        item.insert("pass_seq".into(), n(0));
        self.put_if(item, "attribute_not_exists(pk)", Item::new(), &record.mailbox).await?;
        Ok(())
    }

    /// The mailbox's record and current pass number.
    pub async fn mailbox_item(&self, batch: &str, mailbox: &str) -> Result<Option<(MailboxRecord, u32)>, StoreError> {
        let Some(item) = self.get(key(batch_pk(batch), mailbox_sk(mailbox)), mailbox).await? else { return Ok(None) };
        let record = from_json(&item, mailbox)?;
        Ok(Some((record, get_n(&item, "pass_seq") as u32)))
    }

    /// Moves the mailbox from pass `from` to `from + 1`; false when it was not at `from`.
    pub async fn advance_seq(&self, batch: &str, mailbox: &str, from: u32) -> Result<bool, StoreError> {
        self.update_if(
            key(batch_pk(batch), mailbox_sk(mailbox)),
            "SET pass_seq = :next",
            Some("pass_seq = :cur"),
            HashMap::new(),
            HashMap::from([(":next".into(), n(from + 1)), (":cur".into(), n(from))]),
            mailbox,
        )
        .await
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
        let mailbox_update = Update::builder()
            .table_name(&self.name)
            .set_key(Some(key(batch_pk(batch), mailbox_sk(&record.mailbox))))
            .update_expression("SET #d = :d, #st = :st")
            .condition_expression("#st <> :done AND #st <> :failed")
            .expression_attribute_names("#d", "data")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":d", to_json(record)?)
            .expression_attribute_values(":st", s(record.status.as_str()))
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":failed", s("failed"))
            .build()
            .map_err(tx)?;
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
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(mailbox_update).build())
            .transact_items(TransactWriteItem::builder().update(batch_update).build())
            .send()
            .await;
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

    /// The [`CheckpointStore`] of one batch.
    pub fn checkpoints(&self, batch: &str) -> DynamoCheckpoints {
        DynamoCheckpoints { table: self.clone(), batch: batch.to_string() }
    }
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
        Ok(self.table.mailbox_item(&self.batch, mailbox).await?.map(|(r, _)| r))
    }

    async fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError> {
        let items = self.table.query(&batch_pk(&self.batch), "MBX#").await?;
        let mut records =
            items.iter().map(|i| from_json::<MailboxRecord>(i, &self.batch)).collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.row);
        Ok(records)
    }
}

/// [`CheckpointStore`] on the table, for one batch.
#[derive(Clone, Debug)]
pub struct DynamoCheckpoints {
    table: Table,
    batch: String,
}

impl DynamoCheckpoints {
    fn pk(&self, mailbox: &str) -> String {
        format!("CKPT#{}#{mailbox}", self.batch)
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

#[async_trait]
impl CheckpointStore for DynamoCheckpoints {
    async fn load_folders(&self, mailbox: &str) -> Result<Vec<FolderCheckpoint>, StoreError> {
        let items = self.table.query(&self.pk(mailbox), "F#").await?;
        items.iter().map(|i| from_json(i, mailbox)).collect()
    }

    async fn save_folder(&self, mailbox: &str, checkpoint: &FolderCheckpoint) -> Result<(), StoreError> {
        let mut item = key(self.pk(mailbox), format!("F#{}", checkpoint.source_folder));
        item.insert("data".into(), to_json(checkpoint)?);
        self.put(item, mailbox).await
    }

    async fn record_skipped(&self, mailbox: &str, message: &SkippedMessage) -> Result<(), StoreError> {
        let sk = format!("S#{}#{:010}#{}", message.folder, message.uid, message.reason.as_str());
        let mut item = key(self.pk(mailbox), sk);
        item.insert("data".into(), to_json(message)?);
        self.put(item, mailbox).await
    }

    async fn skipped(&self, mailbox: &str) -> Result<Vec<SkippedMessage>, StoreError> {
        let items = self.table.query(&self.pk(mailbox), "S#").await?;
        let mut list = items.iter().map(|i| from_json::<SkippedMessage>(i, mailbox)).collect::<Result<Vec<_>, _>>()?;
        list.sort_by(|a, b| (&a.folder, a.uid, a.reason).cmp(&(&b.folder, b.uid, b.reason)));
        Ok(list)
    }
}
