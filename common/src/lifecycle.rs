//! What a mailbox does after each pass of the engine: one pure function, used by the local
//! runner and by the copy function, so both treat every outcome alike and the rules are
//! tested in one table.

use std::time::Duration;

use crate::engine::{CopyStatus, MailboxOutcome};
use crate::error::CopyError;

/// How one pass ended.
#[derive(Debug)]
pub enum PassEnd<'a> {
    Copied(&'a MailboxOutcome),
    Error(&'a CopyError),
}

/// What the runner knows of the mailbox's earlier tries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tries {
    /// Tries of this pass so far, this one included (SQS: the message's receive count).
    pub attempt: u32,
    /// Throttled passes in a row before this one, and since when (time-boxed runners).
    pub throttled_passes: u32,
    pub throttled_for: Duration,
    /// The user asked to stop (Ctrl-C): nothing is retried.
    pub stopping: bool,
}

/// The runner's rules.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_attempts: u32,
    /// A pass that runs out of time continues in a new pass (Lambda); otherwise running out of
    /// time means the user stopped the run, and the mailbox waits for the next run.
    pub time_boxed: bool,
    /// Fixed wait before a retry; `None`: 2, 4, 8 ... seconds up to two minutes.
    pub retry_delay: Option<Duration>,
    /// Throttled passes are queued again, up to these bounds (time-boxed runners only:
    /// elsewhere a throttle is retried like any transient error).
    pub max_throttled_passes: u32,
    pub max_throttled: Duration,
    /// Wait when the server throttles without saying how long.
    pub throttle_delay: Duration,
}

/// The mailbox's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    /// More to copy: start the next pass now.
    Continue,
    /// Stopped before the end; the next run resumes from the checkpoints.
    Stopped {
        error: String,
        hint: String,
    },
    /// A transient error: try the same pass again after this long.
    RetryAfter(Duration),
    /// The server throttles: a new pass after this long, without holding a connection.
    Throttled(Duration),
    /// Final. `gave_up`: a transient error that outlasted every retry.
    Failed {
        reason: String,
        hint: String,
        gave_up: bool,
    },
}

/// The one rule book: from how a pass ended to what the mailbox does next.
pub fn next_step(end: PassEnd<'_>, tries: Tries, limits: &Limits) -> Next {
    match end {
        PassEnd::Copied(outcome) if outcome.status == CopyStatus::Done => match outcome.verification_failure() {
            // A copy that does not verify is not done.
            Some(reason) => {
                Next::Failed { reason, hint: MailboxOutcome::VERIFICATION_HINT.to_string(), gave_up: false }
            }
            None => Next::Done,
        },
        PassEnd::Copied(_) if limits.time_boxed => Next::Continue,
        PassEnd::Copied(_) => Next::Stopped {
            error: "stopped before the end".into(),
            hint: "run the same command again to resume".into(),
        },
        PassEnd::Error(e @ CopyError::Throttled { .. }) if limits.time_boxed => {
            if tries.throttled_passes >= limits.max_throttled_passes || tries.throttled_for >= limits.max_throttled {
                // A server that always says "try again" must not keep the batch open forever.
                Next::Failed {
                    reason: format!(
                        "throttled {} passes in a row over {} s; last reply: {e}",
                        tries.throttled_passes,
                        tries.throttled_for.as_secs()
                    ),
                    hint: "the server keeps refusing: ask its administrator to raise the limits for this account (or lower MaxConnectionsPerSourceHost), then upload the failed rows again".into(),
                    gave_up: false,
                }
            } else {
                Next::Throttled(e.retry_after().unwrap_or(limits.throttle_delay))
            }
        }
        PassEnd::Error(e) if e.is_retryable() && tries.stopping => {
            Next::Stopped { error: e.to_string(), hint: e.hint() }
        }
        PassEnd::Error(e) if e.is_retryable() && tries.attempt < limits.max_attempts => {
            let backoff = Duration::from_secs(1 << tries.attempt.min(5));
            Next::RetryAfter(e.retry_after().or(limits.retry_delay).unwrap_or(backoff).min(Duration::from_secs(120)))
        }
        PassEnd::Error(e) if e.is_retryable() => Next::Failed {
            reason: format!("{e} (gave up after {} tries)", tries.attempt),
            hint: e.hint(),
            gave_up: true,
        },
        PassEnd::Error(e) => Next::Failed { reason: e.to_string(), hint: e.hint(), gave_up: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Side;
    use crate::model::{FolderCounts, Verdict};

    fn outcome(status: CopyStatus, verified: bool) -> MailboxOutcome {
        let verdict = Verdict {
            ok: verified,
            source_messages: 3,
            destination_messages: if verified { 3 } else { 2 },
            not_copied: 0,
            detail: if verified { "ok".into() } else { "1 missing".into() },
        };
        MailboxOutcome {
            status,
            this_pass: FolderCounts::default(),
            verdicts: vec![("INBOX".into(), verdict)],
            renamed: Vec::new(),
            folders: 1,
        }
    }

    const LOCAL: Limits = Limits {
        max_attempts: 6,
        time_boxed: false,
        retry_delay: None,
        max_throttled_passes: 3,
        max_throttled: Duration::from_secs(3600),
        throttle_delay: Duration::from_secs(60),
    };
    const LAMBDA: Limits = Limits { time_boxed: true, retry_delay: Some(Duration::from_secs(60)), ..LOCAL };

    fn lost() -> CopyError {
        CopyError::ConnectionLost { side: Side::Source, server: "imap.example".into(), detail: "reset".into() }
    }
    fn throttled(after: Option<u64>) -> CopyError {
        CopyError::Throttled {
            side: Side::Source,
            server: "imap.example".into(),
            detail: "too many connections".into(),
            retry_after: after.map(Duration::from_secs),
        }
    }
    fn auth() -> CopyError {
        CopyError::Auth {
            side: Side::Source,
            server: "imap.example".into(),
            user: "alice".into(),
            reply: "NO".into(),
            hint: "fix it".into(),
        }
    }
    fn tries(attempt: u32) -> Tries {
        Tries { attempt, ..Tries::default() }
    }

    /// (case, how the pass ended, the tries so far, the runner, what the next step must be)
    type Case<'a> = (&'a str, PassEnd<'a>, Tries, &'a Limits, Box<dyn Fn(&Next) -> bool>);

    #[test]
    fn every_pass_end_has_one_next_step() {
        let done = outcome(CopyStatus::Done, true);
        let unverified = outcome(CopyStatus::Done, false);
        let more = outcome(CopyStatus::MoreToDo, true);
        let (lost, auth) = (lost(), auth());
        let (slow_down, slow_down_30) = (throttled(None), throttled(Some(30)));
        let stopping = Tries { attempt: 1, stopping: true, ..Tries::default() };
        let throttled_long = Tries { attempt: 1, throttled_passes: 3, ..Tries::default() };
        let s = Duration::from_secs;
        let failed = |next: &Next| matches!(next, Next::Failed { .. });
        let cases: Vec<Case> = vec![
            ("done and verified", PassEnd::Copied(&done), tries(1), &LOCAL, Box::new(|n| *n == Next::Done)),
            ("done, not verified", PassEnd::Copied(&unverified), tries(1), &LAMBDA, Box::new(failed)),
            (
                "time box ran out on Lambda",
                PassEnd::Copied(&more),
                tries(1),
                &LAMBDA,
                Box::new(|n| *n == Next::Continue),
            ),
            (
                "stopped locally",
                PassEnd::Copied(&more),
                tries(1),
                &LOCAL,
                Box::new(|n| matches!(n, Next::Stopped { .. })),
            ),
            (
                "transient, local backoff",
                PassEnd::Error(&lost),
                tries(3),
                &LOCAL,
                Box::new(move |n| *n == Next::RetryAfter(s(8))),
            ),
            (
                "transient, Lambda's fixed delay",
                PassEnd::Error(&lost),
                tries(2),
                &LAMBDA,
                Box::new(move |n| *n == Next::RetryAfter(s(60))),
            ),
            (
                "transient while stopping",
                PassEnd::Error(&lost),
                stopping,
                &LOCAL,
                Box::new(|n| matches!(n, Next::Stopped { .. })),
            ),
            (
                "transient, out of tries",
                PassEnd::Error(&lost),
                tries(6),
                &LOCAL,
                Box::new(
                    |n| matches!(n, Next::Failed { gave_up: true, reason, .. } if reason.contains("gave up after 6")),
                ),
            ),
            (
                "login refused: never retried",
                PassEnd::Error(&auth),
                tries(1),
                &LOCAL,
                Box::new(|n| matches!(n, Next::Failed { gave_up: false, .. })),
            ),
            (
                "throttled on Lambda, server's delay",
                PassEnd::Error(&slow_down_30),
                tries(1),
                &LAMBDA,
                Box::new(move |n| *n == Next::Throttled(s(30))),
            ),
            (
                "throttled on Lambda, default delay",
                PassEnd::Error(&slow_down),
                tries(1),
                &LAMBDA,
                Box::new(move |n| *n == Next::Throttled(s(60))),
            ),
            ("throttled too often", PassEnd::Error(&slow_down), throttled_long, &LAMBDA, Box::new(failed)),
            (
                "throttled locally: retried in place",
                PassEnd::Error(&slow_down_30),
                tries(1),
                &LOCAL,
                Box::new(move |n| *n == Next::RetryAfter(s(30))),
            ),
        ];
        for (case, end, tries, limits, expected) in cases {
            let next = next_step(end, tries, limits);
            assert!(expected(&next), "{case}: {next:?}");
        }
    }
}
