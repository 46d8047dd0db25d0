//! Progress on stderr: bars on a terminal (indicatif), plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mailhaul_common::engine::ProgressSink;

/// Totals and per-mailbox bars for one run.
pub struct Progress {
    bars: Option<Bars>,
    started: Instant,
    state: Mutex<Totals>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    per_mailbox: Mutex<HashMap<String, ProgressBar>>,
}

#[derive(Default)]
struct Totals {
    planned_messages: u64,
    planned_bytes: u64,
    copied_messages: u64,
    copied_bytes: u64,
}

impl Progress {
    pub fn new() -> Progress {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template("total {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Bars { multi, total, per_mailbox: Mutex::new(HashMap::new()) }
        });
        Progress { bars, started: Instant::now(), state: Mutex::new(Totals::default()) }
    }

    /// A line above the bars (or on stderr).
    pub fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn mailbox_finished(&self, mailbox: &str, text: &str) {
        if let Some(bars) = &self.bars {
            if let Some(bar) = bars.per_mailbox.lock().map(|mut m| m.remove(mailbox)).ok().flatten() {
                bar.finish_and_clear();
            }
        }
        self.line(&format!("{mailbox}: {text}"));
    }

    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.total.finish_and_clear();
        }
    }

    fn totals_message(&self, totals: &Totals) -> String {
        let minutes = self.started.elapsed().as_secs_f64() / 60.0;
        let rate = if minutes > 0.0 { totals.copied_messages as f64 / minutes } else { 0.0 };
        format!("{}/{} messages, {rate:.0} msg/min", totals.copied_messages, totals.planned_messages)
    }

    fn mailbox_bar(&self, bars: &Bars, mailbox: &str) -> Option<ProgressBar> {
        let mut map = bars.per_mailbox.lock().ok()?;
        let bar = map.entry(mailbox.to_string()).or_insert_with(|| {
            let bar = bars.multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template("  {prefix:30!} {bar:20} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(mailbox.to_string());
            bar
        });
        Some(bar.clone())
    }
}

impl ProgressSink for Progress {
    fn planned(&self, mailbox: &str, folder: &str, messages: u64, bytes: u64) {
        let Ok(mut totals) = self.state.lock() else { return };
        totals.planned_messages += messages;
        totals.planned_bytes += bytes;
        match &self.bars {
            Some(bars) => {
                bars.total.set_length(totals.planned_bytes);
                bars.total.set_message(self.totals_message(&totals));
                if let Some(bar) = self.mailbox_bar(bars, mailbox) {
                    bar.inc_length(messages);
                    bar.set_message(folder.to_string());
                }
            }
            None if messages > 0 => {
                eprintln!("{mailbox}: {folder}: {messages} message(s) to copy, {:.1} MB", bytes as f64 / 1e6)
            }
            None => {}
        }
    }

    fn copied(&self, mailbox: &str, _folder: &str, messages: u64, bytes: u64) {
        let Ok(mut totals) = self.state.lock() else { return };
        totals.copied_messages += messages;
        totals.copied_bytes += bytes;
        if let Some(bars) = &self.bars {
            bars.total.set_position(totals.copied_bytes);
            bars.total.set_message(self.totals_message(&totals));
            if let Some(bar) = self.mailbox_bar(bars, mailbox) {
                bar.inc(messages);
            }
        }
    }
}
