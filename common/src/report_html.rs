//! report.html: the batch report for people, one self-contained page (inline CSS, SVG and a
//! little script; nothing fetched) rendered from the same [`BatchReport`] as report.json.
//!
//! Everything that comes from a server or a user (folder names, server replies, addresses)
//! goes through [`escape`]. A Content-Security-Policy allows only this page's own script, by
//! its hash, so even a missed escape could not run anything or load anything.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{human_seconds, BatchTotals, FolderReport, MailboxReport};
use crate::model::MailboxStatus;

/// How a mailbox is shown and sorted: the worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Failed,
    /// Stopped before the end (`partial`).
    Unfinished,
    /// Not started or still running.
    Pending,
    /// Done, but some messages were left out or a folder did not verify.
    Warnings,
    Done,
}

impl Standing {
    pub fn of(m: &MailboxReport) -> Standing {
        match m.status {
            MailboxStatus::Failed => Standing::Failed,
            MailboxStatus::Partial => Standing::Unfinished,
            MailboxStatus::Pending | MailboxStatus::Running => Standing::Pending,
            MailboxStatus::Done if has_warnings(m) => Standing::Warnings,
            MailboxStatus::Done => Standing::Done,
        }
    }

    /// The class and filter value in the page.
    pub fn key(self) -> &'static str {
        match self {
            Standing::Failed => "failed",
            Standing::Unfinished => "partial",
            Standing::Pending => "pending",
            Standing::Warnings => "warnings",
            Standing::Done => "done",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Standing::Failed => "failed",
            Standing::Unfinished => "stopped before the end",
            Standing::Pending => "pending",
            Standing::Warnings => "done with warnings",
            Standing::Done => "done",
        }
    }

    pub(crate) const ALL: [Standing; 5] =
        [Standing::Failed, Standing::Unfinished, Standing::Pending, Standing::Warnings, Standing::Done];
}

fn has_warnings(m: &MailboxReport) -> bool {
    let t = &m.totals;
    t.not_copied() > 0 || !m.skipped.is_empty() || m.verify.starts_with("mismatch")
}

/// `text` safe inside HTML text and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters from a server reply have no business in the page.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// What the top of the page says, gathered as the mailboxes go by (the page is written in
/// one go after them, so it never needs them all at once).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    pub totals: BatchTotals,
    /// Mailboxes by [`Standing`], worst first.
    pub standings: [usize; Standing::ALL.len()],
    pub first_start: Option<DateTime<Utc>>,
    pub last_finish: Option<DateTime<Utc>>,
    pub most_passes: u32,
}

impl Tally {
    pub fn add(&mut self, m: &MailboxReport) {
        self.totals.add_mailbox(m);
        self.standings[Standing::of(m) as usize] += 1;
        self.first_start = self.first_start.into_iter().chain(m.started_at).min();
        self.last_finish = self.last_finish.into_iter().chain(m.finished_at).max();
        self.most_passes = self.most_passes.max(m.passes);
    }

    fn mailboxes(&self) -> usize {
        self.standings.iter().sum()
    }

    /// Wall time of the batch: first mailbox started to last one finished, when both are known.
    fn wall_time(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let (start, end) = (self.first_start?, self.last_finish?);
        (end > start).then_some((start, end))
    }
}

const STYLE: &str = r##"
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#5b6470;--line:#d8dde3;--card:#f5f7f9;
--failed:#c62828;--partial:#e07b00;--pending:#6b7785;--warnings:#b8860b;--done:#2e7d32;--link:#0b5cad}
@media (prefers-color-scheme:dark){:root{--bg:#15181c;--fg:#e6e9ed;--muted:#9aa4b0;--line:#2f353d;--card:#1e2328;
--failed:#ef5350;--partial:#ffa726;--pending:#90a4ae;--warnings:#e6c04a;--done:#66bb6a;--link:#7cb7ff}}
*{box-sizing:border-box}
body{margin:0;padding:1rem;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:72rem;margin:0 auto}
h1{font-size:1.35rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.muted{color:var(--muted)}
.glance{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.5rem;margin:1rem 0}
.tile{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.5rem .75rem}
.tile b{display:block;font-size:1.25rem}
.tile span{color:var(--muted);font-size:.85rem}
svg.chart{width:100%;height:2.2rem;display:block}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;font-size:.85rem;margin:.35rem 0 0;padding:0;list-style:none}
.dot{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.3rem;vertical-align:-.05rem}
.failed{--c:var(--failed)}.partial{--c:var(--partial)}.pending{--c:var(--pending)}.warnings{--c:var(--warnings)}.done{--c:var(--done)}
.dot,.bar{background:var(--c);fill:var(--c)}
.controls{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;margin:.5rem 0}
.controls button,.controls select{font:inherit;color:inherit;background:var(--card);border:1px solid var(--line);border-radius:1rem;padding:.2rem .7rem;cursor:pointer}
.controls button[aria-pressed=true]{border-color:var(--fg);font-weight:600}
.head,summary{display:grid;grid-template-columns:8.5rem minmax(10rem,2fr) 5.5rem 5.5rem 5rem minmax(6rem,1.2fr);gap:.5rem;align-items:baseline}
.head{font-size:.8rem;color:var(--muted);padding:0 .75rem 0 1.75rem}
.num{text-align:right;font-variant-numeric:tabular-nums}
details.mailbox{border:1px solid var(--line);border-left:.3rem solid var(--c);border-radius:.4rem;margin:.35rem 0;background:var(--bg)}
details.mailbox>summary{padding:.45rem .75rem;cursor:pointer;list-style-position:outside;margin-left:1rem}
details.mailbox[open]>summary{border-bottom:1px solid var(--line)}
.status{font-weight:600;color:var(--c)}
.who{overflow-wrap:anywhere}.who small{display:block;color:var(--muted)}
.short{overflow-wrap:anywhere;font-size:.9rem}
.body{padding:.5rem .75rem .75rem}
.problem{border-left:.25rem solid var(--c);background:var(--card);padding:.4rem .6rem;margin:.4rem 0;overflow-wrap:anywhere}
.fix{display:block;margin-top:.2rem}.fix::before{content:"What to do: ";font-weight:600}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.88rem;margin:.3rem 0}
th,td{border-bottom:1px solid var(--line);padding:.25rem .4rem;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600;white-space:nowrap}
td.name{overflow-wrap:anywhere;min-width:8rem}
.bad{color:var(--failed);font-weight:600}.good{color:var(--done)}
@media (max-width:40rem){body{padding:.6rem}.head{display:none}
summary{grid-template-columns:1fr auto;row-gap:.1rem}
summary .who{grid-column:1/-1;order:-1}summary .short{grid-column:1/-1}
summary .num::before{content:attr(data-label) " ";color:var(--muted)}}
"##;

/// Sorting and filtering; the page is complete and in its default order without it.
const SCRIPT: &str = r##"
(function(){
var list=document.getElementById("mailboxes");
var boxes=Array.prototype.slice.call(list.querySelectorAll("details.mailbox"));
var shown=document.getElementById("shown");
var filter="all";
var keys={standing:function(d){return [+d.dataset.rank,+d.dataset.row];},row:function(d){return [+d.dataset.row];},
mailbox:function(d){return [d.dataset.mailbox];},copied:function(d){return [-d.dataset.copied,+d.dataset.row];},
bytes:function(d){return [-d.dataset.bytes,+d.dataset.row];},seconds:function(d){return [-d.dataset.seconds,+d.dataset.row];}};
function compare(a,b){for(var i=0;i<a.length;i++){if(a[i]<b[i])return -1;if(a[i]>b[i])return 1;}return 0;}
function apply(){
var key=keys[document.getElementById("sort").value]||keys.standing;
boxes.sort(function(a,b){return compare(key(a),key(b));});
var n=0;
boxes.forEach(function(d){list.appendChild(d);var hide=filter!=="all"&&d.dataset.standing!==filter;d.hidden=hide;if(!hide)n++;});
shown.textContent="Showing "+n+" of "+boxes.length+" mailboxes";
}
Array.prototype.forEach.call(document.querySelectorAll("#filters button"),function(b){
b.addEventListener("click",function(){filter=b.dataset.filter;
Array.prototype.forEach.call(document.querySelectorAll("#filters button"),function(o){o.setAttribute("aria-pressed",o===b?"true":"false");});
apply();});});
document.getElementById("sort").addEventListener("change",apply);
document.getElementById("expand").addEventListener("click",function(){var open=!boxes.some(function(d){return d.open&&!d.hidden;});
boxes.forEach(function(d){if(!d.hidden)d.open=open;});});
apply();
document.documentElement.dataset.ready="1";
})();
"##;

/// The page down to the list of mailboxes: the batch at a glance and the list's controls.
/// [`mailbox`] entries follow, worst first, then [`page_tail`].
pub(crate) fn page_head(
    batch: &str,
    delta_of: Option<&str>,
    generated_at: DateTime<Utc>,
    tally: &Tally,
    done_folders_shown: bool,
) -> String {
    let script_hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT.as_bytes()));
    let title = format!("mailhaul report: {batch}");
    let mut h = String::with_capacity(16_384);
    // Writing into a String cannot fail: the fmt::Results below are ignored on purpose.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>\n",
        escape(&title)
    );
    let _ = writeln!(
        h,
        "<h1>{}</h1><p class=\"muted\">Batch <b>{}</b> · report generated {} UTC</p>",
        escape("mailhaul migration report"),
        escape(batch),
        generated_at.format("%Y-%m-%d %H:%M:%S")
    );
    glance(&mut h, delta_of, tally);
    mailbox_list_head(&mut h, tally, done_folders_shown);
    h
}

/// The page after the last mailbox.
pub(crate) fn page_tail() -> String {
    format!(
        "</div></section>\n<p class=\"muted\">The same data as report.json; report.csv has one line per mailbox and failed.csv the rows to fix and run again.</p>\
         </main><script>{SCRIPT}</script></body></html>\n"
    )
}

fn glance(h: &mut String, delta_of: Option<&str>, tally: &Tally) {
    let t = &tally.totals;
    let counts: Vec<(Standing, usize)> = Standing::ALL.iter().map(|&s| (s, tally.standings[s as usize])).collect();

    h.push_str("<section aria-label=\"The batch at a glance\"><h2>At a glance</h2>");
    // A stacked bar: one segment per standing, widths in percent of the mailboxes.
    let _ = write!(
        h,
        "<svg class=\"chart\" viewBox=\"0 0 100 6\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{} mailboxes by status\">",
        t.mailboxes
    );
    let total = tally.mailboxes().max(1) as f64;
    let mut x = 0.0;
    for &(standing, n) in counts.iter().filter(|(_, n)| *n > 0) {
        let w = n as f64 * 100.0 / total;
        let _ = write!(
            h,
            "<rect class=\"bar {}\" x=\"{x:.3}\" y=\"0\" width=\"{w:.3}\" height=\"6\"><title>{n} {}</title></rect>",
            standing.key(),
            standing.label()
        );
        x += w;
    }
    h.push_str("</svg><ul class=\"legend\">");
    for &(standing, n) in &counts {
        let _ = write!(
            h,
            "<li class=\"{}\"><span class=\"dot\"></span><b>{n}</b> {}</li>",
            standing.key(),
            standing.label()
        );
    }
    h.push_str("</ul><div class=\"glance\">");

    let tile = |h: &mut String, value: String, label: &str| {
        let _ = write!(h, "<div class=\"tile\"><b>{}</b><span>{}</span></div>", escape(&value), escape(label));
    };
    tile(h, t.mailboxes.to_string(), "mailboxes");
    tile(h, t.messages.to_string(), "messages copied");
    tile(h, size(t.bytes), "copied");
    let not_copied = t.not_copied();
    tile(h, not_copied.to_string(), "messages not copied (listed below)");
    let wall = tally.wall_time().map(|(start, end)| (end - start).num_milliseconds() as f64 / 1000.0);
    match wall {
        Some(seconds) => {
            tile(h, human_seconds(seconds), "duration (first start to last finish)");
            tile(h, format!("{:.1} MB/s", t.bytes as f64 / 1e6 / seconds), "throughput");
            tile(h, format!("{:.0}", t.messages as f64 * 60.0 / seconds), "messages per minute");
        }
        None => tile(h, human_seconds(t.seconds), "copying time, summed over mailboxes"),
    }
    let pass = match (delta_of, tally.most_passes) {
        (Some(first), _) => format!("delta pass after batch {first}"),
        (None, 0 | 1) => "first pass".to_string(),
        (None, n) => format!("up to {n} passes per mailbox; counts are totals over all of them"),
    };
    tile(h, pass, "pass");
    h.push_str("</div>");
    if t.skipped_duplicate + t.skipped_by_date > 0 {
        let _ = write!(
            h,
            "<p class=\"muted\">Not copied on purpose: {} already in the destination (duplicates), {} before the <code>since</code> date.</p>",
            t.skipped_duplicate, t.skipped_by_date
        );
    }
    if t.in_label_folder > 0 {
        let _ = write!(
            h,
            "<p class=\"muted\">Gmail: {} messages of All Mail were copied from their label folders, not again from All Mail.</p>",
            t.in_label_folder
        );
    }
    h.push_str("</section>\n");
}

fn mailbox_list_head(h: &mut String, tally: &Tally, done_folders_shown: bool) {
    h.push_str("<section aria-label=\"Mailboxes\"><h2>Mailboxes</h2>");
    if !done_folders_shown {
        let _ = write!(
            h,
            "<p class=\"muted\">A batch of more than {FOLDERS_OF_DONE_MAILBOXES_UP_TO} mailboxes: the folders of mailboxes done without warnings are in report.json, not on this page.</p>"
        );
    }
    h.push_str("<div class=\"controls\"><span id=\"filters\">");
    let _ = write!(
        h,
        "<button type=\"button\" data-filter=\"all\" aria-pressed=\"true\">all {}</button> ",
        tally.mailboxes()
    );
    for standing in Standing::ALL {
        let n = tally.standings[standing as usize];
        if n > 0 {
            let _ = write!(
                h,
                "<button type=\"button\" class=\"{0}\" data-filter=\"{0}\" aria-pressed=\"false\"><span class=\"dot\"></span>{1} {n}</button> ",
                standing.key(),
                standing.label()
            );
        }
    }
    h.push_str(
        "</span><label>Sort <select id=\"sort\"><option value=\"standing\">failed first</option>\
         <option value=\"row\">CSV row</option><option value=\"mailbox\">mailbox</option>\
         <option value=\"copied\">most messages</option><option value=\"bytes\">largest</option>\
         <option value=\"seconds\">longest</option></select></label>\
         <button type=\"button\" id=\"expand\">expand / collapse all</button>\
         <span id=\"shown\" class=\"muted\"></span></div>\
         <div class=\"head\" aria-hidden=\"true\"><span>status</span><span>mailbox</span>\
         <span class=\"num\">messages</span><span class=\"num\">size</span><span class=\"num\">time</span><span>verification / error</span></div>\
         <div id=\"mailboxes\">\n",
    );
}

/// Above this many mailboxes, a mailbox done without warnings is one line whose folders are
/// left to report.json: 50,000 mailboxes of 20 folders made a 360 MB page no browser opens.
/// Every mailbox that needs a look keeps its folders, whatever the batch's size.
pub const FOLDERS_OF_DONE_MAILBOXES_UP_TO: usize = 1_000;

/// One mailbox's entry: a line that expands to its folders (`with_folders`, always for a
/// mailbox that is not simply done) and messages not copied.
pub(crate) fn mailbox(h: &mut String, m: &MailboxReport, with_folders: bool) {
    let standing = Standing::of(m);
    let with_folders = with_folders || standing != Standing::Done;
    let t = &m.totals;
    let _ = write!(
        h,
        "<details class=\"mailbox {key}\" data-standing=\"{key}\" data-rank=\"{rank}\" data-row=\"{row}\" \
         data-mailbox=\"{mailbox}\" data-copied=\"{copied}\" data-bytes=\"{bytes}\" data-seconds=\"{seconds:.1}\">\
         <summary><span class=\"status\">{label}</span><span class=\"who\">{mailbox}<small>row {row} · from {source}</small></span>\
         <span class=\"num\" data-label=\"messages\">{copied}</span><span class=\"num\" data-label=\"size\">{size}</span>\
         <span class=\"num\" data-label=\"time\">{time}</span><span class=\"short\">{short}</span></summary><div class=\"body\">",
        key = standing.key(),
        rank = standing as u8,
        row = m.row,
        mailbox = escape(&m.mailbox),
        source = escape(&m.source_user),
        copied = t.copied,
        bytes = t.bytes,
        seconds = m.seconds,
        label = standing.label(),
        size = size(t.bytes),
        time = human_seconds(m.seconds),
        short = escape(&m.error.clone().unwrap_or_else(|| match m.skipped.len() {
            0 => format!("verification: {}", m.verify),
            n => format!("{n} not copied; verification: {}", m.verify),
        })),
    );
    if let Some(error) = &m.error {
        let hint = m.hint.as_deref().unwrap_or("see the error; run the batch again once it is fixed");
        let _ = write!(
            h,
            "<p class=\"problem {}\">{}<span class=\"fix\">{}</span></p>",
            standing.key(),
            escape(error),
            escape(hint)
        );
    }
    if m.verify.starts_with("mismatch") {
        let _ = write!(
            h,
            "<p class=\"problem warnings\">Verification: {}<span class=\"fix\">run the batch again: the next pass copies what is missing; if the mismatch stays, compare the folder on both servers</span></p>",
            escape(&m.verify),
        );
    }
    let _ = write!(
        h,
        "<p class=\"muted\">{} folder(s), {} pass(es){}{}</p>",
        m.folders.len(),
        m.passes,
        m.started_at.map(|s| format!(", started {} UTC", s.format("%Y-%m-%d %H:%M:%S"))).unwrap_or_default(),
        m.finished_at.map(|s| format!(", finished {} UTC", s.format("%Y-%m-%d %H:%M:%S"))).unwrap_or_default(),
    );
    if !m.folders.is_empty() && with_folders {
        folders(h, &m.folders);
    }
    if !m.skipped.is_empty() {
        let _ = write!(
            h,
            "<h3>Messages not copied ({})</h3><div class=\"scroll\"><table><thead><tr><th>folder</th><th class=\"num\">UID</th>\
             <th class=\"num\">size</th><th>Message-ID</th><th>reason</th><th>server's words / what to do</th></tr></thead><tbody>",
            m.skipped.len()
        );
        for s in &m.skipped {
            let _ = write!(
                h,
                "<tr><td class=\"name\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"name\">{}</td>\
                 <td>{}</td><td class=\"name\">{}<span class=\"fix\">{}</span></td></tr>",
                escape(&s.folder),
                s.uid,
                size(s.size),
                escape(s.message_id.as_deref().unwrap_or("")),
                s.reason.as_str().replace('_', " "),
                escape(&s.detail),
                escape(s.reason.hint()),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</div></details>\n");
}

fn folders(h: &mut String, folders: &[FolderReport]) {
    h.push_str(
        "<div class=\"scroll\"><table class=\"folders\"><thead><tr><th>source folder</th><th>→ destination</th>\
         <th class=\"num\">copied</th><th class=\"num\">already there</th><th class=\"num\">too big</th>\
         <th class=\"num\">before since</th><th class=\"num\">refused</th><th class=\"num\">unreadable</th>\
         <th class=\"num\">size</th><th>verification</th></tr></thead><tbody>",
    );
    for f in folders {
        let c = &f.counts;
        let verification = match (&f.verify, f.complete) {
            _ if f.left_alone() => escape(f.not_copied.as_deref().unwrap_or_default()),
            (_, false) => "<span class=\"bad\">not finished: the next pass goes on</span>".to_string(),
            (Some(v), true) if v.ok => format!(
                "<span class=\"good\">ok</span> ({} in source, {} in destination)",
                v.source_messages, v.destination_messages
            ),
            (Some(v), true) => format!(
                "<span class=\"bad\">mismatch</span>: {} ({} in source, {} in destination)",
                escape(&v.detail),
                v.source_messages,
                v.destination_messages
            ),
            (None, true) => "not verified".to_string(),
        };
        let flag = |n: u64| if n > 0 { format!("<span class=\"bad\">{n}</span>") } else { "0".to_string() };
        let _ = write!(
            h,
            "<tr><td class=\"name\">{}</td><td class=\"name\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&f.source),
            escape(&f.destination),
            c.copied,
            c.skipped_duplicate,
            flag(c.skipped_too_big),
            c.skipped_by_date,
            flag(c.refused),
            flag(c.unreadable),
            size(c.bytes),
            verification,
        );
    }
    h.push_str("</tbody></table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_left_alone_says_why_not_that_it_is_unfinished() {
        let shared = FolderReport {
            source: "Shared Folders/Team".into(),
            destination: String::new(),
            counts: Default::default(),
            complete: false,
            verify: None,
            not_copied: Some("not copied: shared namespace".into()),
            renamed: None,
        };
        let unfinished = FolderReport { source: "INBOX".into(), not_copied: None, ..shared.clone() };
        let mut h = String::new();
        folders(&mut h, &[shared, unfinished]);
        let rows: Vec<&str> = h.split("<tr>").skip(2).collect();
        assert_eq!(rows.len(), 2, "{h}");
        assert!(rows[0].contains("not copied: shared namespace") && !rows[0].contains("not finished"), "{}", rows[0]);
        assert!(rows[1].contains("not finished"), "{}", rows[1]);
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape("tab\tnl\nbell\u{7}"), "tab\tnl\nbell\u{FFFD}");
    }
}
