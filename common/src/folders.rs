//! Folder planning: which source folders to copy and what each is called on the destination.
//! Pure: LIST results and settings in, a plan out.

use std::collections::BTreeMap;

use crate::model::{CopyOptions, FolderStrategy};

/// A special-use role (RFC 6154) or INBOX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Inbox,
    Sent,
    Trash,
    Junk,
    Drafts,
    Archive,
    /// Gmail's "All Mail": every message again; only what no other folder holds is copied
    /// (into Archive).
    All,
    /// Gmail's "Starred"/"Important"-style views: virtual, never copied.
    Flagged,
}

impl Role {
    /// The name used on the destination when it has no folder with this role.
    fn default_name(self) -> &'static str {
        match self {
            Role::Inbox => "INBOX",
            Role::Sent => "Sent",
            Role::Trash => "Trash",
            Role::Junk => "Junk",
            Role::Drafts => "Drafts",
            Role::Archive => "Archive",
            Role::All => "All Mail",
            Role::Flagged => "Flagged",
        }
    }

    /// From a LIST attribute such as `\Sent`.
    pub fn from_attribute(attribute: &str) -> Option<Role> {
        Some(match attribute.trim_start_matches('\\').to_ascii_lowercase().as_str() {
            "sent" => Role::Sent,
            "trash" => Role::Trash,
            "junk" => Role::Junk,
            "drafts" => Role::Drafts,
            "archive" => Role::Archive,
            "all" => Role::All,
            // Gmail's `[Gmail]/Important` (`\Important`, RFC 8457): a view like Starred.
            "flagged" | "important" => Role::Flagged,
            _ => return None,
        })
    }

    /// Where a well-known name stands among those of its role: the default name first.
    fn rank_of_name(name: &str) -> usize {
        match Role::from_known_name(name) {
            Some(role) if role.default_name().eq_ignore_ascii_case(name) => 0,
            _ => 1,
        }
    }

    /// Well-known top-level names of other clients and servers (Outlook, Apple, Gmail's web names).
    fn from_known_name(name: &str) -> Option<Role> {
        Some(match name.to_ascii_lowercase().as_str() {
            "inbox" => Role::Inbox,
            "sent" | "sent items" | "sent messages" | "sent mail" | "gesendete elemente" | "sent-mail" => Role::Sent,
            "trash" | "deleted items" | "deleted messages" | "bin" | "gelöschte elemente" => Role::Trash,
            "junk" | "junk email" | "junk e-mail" | "spam" | "bulk mail" => Role::Junk,
            "drafts" | "draft" | "entwürfe" => Role::Drafts,
            "archive" | "archives" => Role::Archive,
            _ => return None,
        })
    }
}

/// One folder as LIST reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFolder {
    /// Exactly as the server sent it (modified UTF-7).
    pub raw: String,
    pub delimiter: Option<char>,
    pub roles: Vec<Role>,
    pub noselect: bool,
}

impl ListedFolder {
    /// The decoded name split into hierarchy levels.
    pub fn segments(&self, root: Option<&str>) -> Vec<String> {
        let decoded = crate::mutf7::decode(&self.raw);
        let mut name = decoded.as_str();
        if let (Some(root), Some(delim)) = (root, self.delimiter) {
            let root = root.trim_matches(delim).trim_matches('/');
            // Only a whole leading level counts: root "INBOX" strips "INBOX.Sent", not "INBOXES".
            if let Some(rest) = name.strip_prefix(root).and_then(|rest| rest.strip_prefix(delim)) {
                name = rest;
            }
        }
        match self.delimiter {
            Some(d) => name.split(d).map(str::to_string).collect(),
            None => vec![name.to_string()],
        }
    }
}

/// What happens to one source folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderPlan {
    /// Source name as the server spells it: the checkpoint key.
    pub source_raw: String,
    /// Source name for people, levels joined with `/`.
    pub source_display: String,
    /// Destination levels, decoded.
    pub destination: Vec<String>,
    /// Why the destination name differs from the source beyond role mapping.
    pub renamed: Option<String>,
    /// Gmail's All Mail (`\All`): only its messages found in no other copied folder (archived
    /// without a label) are copied, into the destination's Archive.
    pub all_mail: bool,
}

impl FolderPlan {
    /// The destination name as the server wants it: levels joined with its delimiter, modified UTF-7.
    pub fn destination_raw(&self, delimiter: char) -> String {
        if self.destination.len() == 1 && self.destination[0].eq_ignore_ascii_case("INBOX") {
            return "INBOX".into();
        }
        crate::mutf7::encode(&self.destination.join(&delimiter.to_string()))
    }

    pub fn destination_display(&self) -> String {
        self.destination.join("/")
    }
}

/// A source folder left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    pub source_display: String,
    pub reason: String,
}

/// The destination as far as naming is concerned.
#[derive(Clone, Debug, Default)]
pub struct DestinationLayout {
    pub delimiter: char,
    /// Levels every personal folder lives under (`["INBOX"]` on Courier and cPanel-style
    /// servers whose folders are all `INBOX.Name`); empty elsewhere.
    pub prefix: Vec<String>,
    /// Existing destination folders by role (decoded, `/`-joined levels).
    pub by_role: BTreeMap<Role, Vec<String>>,
}

/// Map every listed source folder to a destination folder, or exclude it.
pub fn plan_folders(
    source: &[ListedFolder],
    destination: &DestinationLayout,
    options: &CopyOptions,
    user_root: Option<&str>,
) -> (Vec<FolderPlan>, Vec<Excluded>) {
    let mut plans = Vec::new();
    let mut excluded = Vec::new();
    for folder in source {
        let segments = folder.segments(user_root);
        let display = segments.join("/");
        if folder.noselect || display.is_empty() {
            continue; // a container: its children are planned on their own
        }
        let exclude = |reason: &str| Excluded { source_display: display.clone(), reason: reason.into() };
        let role = folder.roles.first().copied().or_else(|| {
            if segments.len() == 1 {
                Role::from_known_name(&segments[0])
            } else {
                None
            }
        });
        if role == Some(Role::Flagged) {
            excluded.push(exclude("virtual folder (it shows messages stored in other folders)"));
            continue;
        }
        if options.folders == FolderStrategy::Standard && matches!(role, Some(Role::Junk) | Some(Role::Trash)) {
            excluded.push(exclude("folder strategy `standard` skips Junk and Trash"));
            continue;
        }
        if !options.include.is_empty() && !options.include.iter().any(|p| glob_match(p, &display)) {
            excluded.push(exclude("not matched by [copy] include"));
            continue;
        }
        if options.exclude.iter().any(|p| glob_match(p, &display)) {
            excluded.push(exclude("matched by [copy] exclude"));
            continue;
        }

        let under_prefix = |levels: Vec<String>| -> Vec<String> {
            let is_inbox = levels.len() == 1 && levels[0].eq_ignore_ascii_case("INBOX");
            if is_inbox || destination.prefix.is_empty() {
                levels
            } else {
                destination.prefix.iter().cloned().chain(levels).collect()
            }
        };
        let all_mail = role == Some(Role::All);
        let mapped: Vec<String> = if let Some(target) = options.folder_map.get(&display) {
            under_prefix(target.split('/').map(str::to_string).collect())
        } else if all_mail {
            // What is only in All Mail was archived: it goes to the Archive folder.
            match destination.by_role.get(&Role::Archive) {
                Some(existing) => existing.clone(),
                None => under_prefix(vec![Role::Archive.default_name().to_string()]),
            }
        } else if let Some(role) = role {
            match destination.by_role.get(&role) {
                Some(existing) => existing.clone(),
                None => under_prefix(vec![role.default_name().to_string()]),
            }
        } else {
            under_prefix(segments.clone())
        };

        let (destination_levels, renamed) = fit_levels(mapped, destination.delimiter);
        plans.push(FolderPlan {
            source_raw: folder.raw.clone(),
            source_display: display,
            destination: destination_levels,
            renamed,
            all_mail,
        });
    }
    (plans, excluded)
}

/// A level holding the destination's delimiter would become extra levels there, and `.`-
/// separator servers (Courier) refuse `/` in a name: such a folder is kept under a changed
/// name (each refused character becomes `_`) rather than dropped, and the change is said.
fn fit_levels(levels: Vec<String>, delimiter: char) -> (Vec<String>, Option<String>) {
    let refused = |c: char| c == delimiter || (delimiter == '.' && c == '/');
    let mut renamed = None;
    let fitted = levels
        .into_iter()
        .map(|level| {
            let Some(bad) = level.chars().find(|c| refused(*c)) else { return level };
            let fixed: String = level.chars().map(|c| if refused(c) { '_' } else { c }).collect();
            renamed = Some(if bad == delimiter {
                format!("{level:?} contains the destination's hierarchy delimiter {delimiter:?}: created as {fixed:?}")
            } else {
                format!("{level:?} contains {bad:?}, which a {delimiter:?}-separator destination refuses: created as {fixed:?}")
            });
            fixed
        })
        .collect();
    (fitted, renamed)
}

/// Other users' and shared folders the source account sees, copied on request under
/// `under` (a `/`-separated destination folder, itself under the destination's prefix),
/// their whole source path kept: `Shared/Other Users/bob/Archive`.
pub fn plan_shared(source: &[ListedFolder], destination: &DestinationLayout, under: &str) -> Vec<FolderPlan> {
    source
        .iter()
        .filter(|f| !f.noselect)
        .map(|folder| {
            let segments = folder.segments(None);
            let levels = destination
                .prefix
                .iter()
                .cloned()
                .chain(under.split('/').filter(|l| !l.is_empty()).map(str::to_string))
                .chain(segments.iter().cloned())
                .collect();
            let (destination_levels, renamed) = fit_levels(levels, destination.delimiter);
            FolderPlan {
                source_raw: folder.raw.clone(),
                source_display: segments.join("/"),
                destination: destination_levels,
                renamed,
                all_mail: false,
            }
        })
        .collect()
}

/// Destination folders by role: SPECIAL-USE attributes first; for a role no folder has by
/// attribute (a server without SPECIAL-USE, such as Courier), a top-level folder (under the
/// personal prefix `root`) with a well-known name (Sent, Sent Items, Deleted Items, Junk
/// Email, ...), so existing folders are reused rather than doubled.
pub fn roles_of(folders: &[ListedFolder], root: Option<&str>) -> BTreeMap<Role, Vec<String>> {
    let mut by_role = BTreeMap::new();
    for folder in folders.iter().filter(|f| !f.noselect) {
        for role in &folder.roles {
            by_role.entry(*role).or_insert_with(|| folder.segments(None));
        }
    }
    let mut by_name = BTreeMap::new();
    for folder in folders.iter().filter(|f| !f.noselect && !f.raw.eq_ignore_ascii_case("INBOX")) {
        let below_root = folder.segments(root);
        let full = folder.segments(None);
        // Only folders directly under the prefix: `INBOX.Sent Items`, not `Projects.Sent`.
        let expected_len = if root.is_some() && full.len() > below_root.len() { 2 } else { 1 };
        if below_root.len() != 1 || full.len() != expected_len {
            continue;
        }
        if let Some(role) = Role::from_known_name(&below_root[0]).filter(|r| *r != Role::Inbox) {
            // The plainest name wins when several match (Sent before Sent Items).
            let rank = Role::rank_of_name(&below_root[0]);
            let entry = by_name.entry(role).or_insert((rank, full.clone()));
            if rank < entry.0 {
                *entry = (rank, full);
            }
        }
    }
    for (role, (_, levels)) in by_name {
        by_role.entry(role).or_insert(levels);
    }
    by_role
}

/// The personal-namespace prefix of a server whose folders all live under INBOX
/// (`INBOX.Sent`, `INBOX.Trash`: Courier, many cPanel hosts), as its levels (`["INBOX"]`).
/// Without NAMESPACE parsing in async-imap, this is read off the folder list: every
/// selectable folder but INBOX itself sits under `INBOX<delimiter>`.
pub fn detect_prefix(folders: &[ListedFolder]) -> Vec<String> {
    let others: Vec<&ListedFolder> =
        folders.iter().filter(|f| !f.noselect && !f.raw.eq_ignore_ascii_case("INBOX")).collect();
    let under_inbox = |f: &&ListedFolder| {
        // Byte-safe: a server may send raw UTF-8 names where byte 5 is inside a character.
        let (head, tail) = (f.raw.get(..5), f.raw.get(5..));
        f.delimiter.is_some_and(|d| {
            head.is_some_and(|h| h.eq_ignore_ascii_case("INBOX"))
                && tail.is_some_and(|t| t.len() > 1 && t.starts_with(d))
        })
    };
    if !others.is_empty() && others.iter().all(under_inbox) {
        vec!["INBOX".to_string()]
    } else {
        Vec::new()
    }
}

/// The prefix levels of one side: the configured prefix (`"INBOX."`; `""` for none), or the
/// one [`detect_prefix`] reads off the folder list.
pub fn prefix_levels(configured: Option<&str>, folders: &[ListedFolder]) -> Vec<String> {
    match configured {
        Some(prefix) => prefix.split(['.', '/']).filter(|level| !level.is_empty()).map(str::to_string).collect(),
        None => detect_prefix(folders),
    }
}

/// The parents a destination folder needs, shortest first (`a`, `a/b` for `a/b/c`).
pub fn parents(levels: &[String]) -> Vec<Vec<String>> {
    (1..levels.len()).map(|n| levels[..n].to_vec()).collect()
}

fn glob_match(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).map(|p| p.matches(name)).unwrap_or(pattern == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(raw: &str, delimiter: char, roles: &[Role]) -> ListedFolder {
        ListedFolder { raw: raw.into(), delimiter: Some(delimiter), roles: roles.to_vec(), noselect: false }
    }

    fn layout(delimiter: char) -> DestinationLayout {
        let mut by_role = BTreeMap::new();
        by_role.insert(Role::Sent, vec!["Sent".to_string()]);
        by_role.insert(Role::Trash, vec!["Trash".to_string()]);
        DestinationLayout { delimiter, prefix: Vec::new(), by_role }
    }

    #[test]
    fn destination_roles_by_attribute_then_by_known_name_under_the_prefix() {
        let courier_outlook = [
            listed("INBOX", '.', &[]),
            listed("INBOX.Sent Items", '.', &[]),
            listed("INBOX.Deleted Items", '.', &[]),
            listed("INBOX.Junk Email", '.', &[]),
            listed("INBOX.Projects.Sent", '.', &[]), // not directly under the prefix
        ];
        let roles = roles_of(&courier_outlook, Some("INBOX"));
        let levels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(roles.get(&Role::Sent), Some(&levels(&["INBOX", "Sent Items"])));
        assert_eq!(roles.get(&Role::Trash), Some(&levels(&["INBOX", "Deleted Items"])));
        assert_eq!(roles.get(&Role::Junk), Some(&levels(&["INBOX", "Junk Email"])));
        assert_eq!(roles.get(&Role::Drafts), None);
        // The attribute wins over a name; among names the plain one (Sent) wins.
        let mixed = [
            listed("Sent Items", '/', &[]),
            listed("Sent", '/', &[]),
            listed("Spam", '/', &[]),
            listed("Old Junk", '/', &[Role::Junk]),
        ];
        let roles = roles_of(&mixed, None);
        assert_eq!(roles.get(&Role::Sent), Some(&levels(&["Sent"])));
        assert_eq!(roles.get(&Role::Junk), Some(&levels(&["Old Junk"])));
        // Without a prefix, INBOX.Sent is a subfolder of INBOX, not a role.
        assert_eq!(roles_of(&[listed("INBOX.Sent", '.', &[])], None).get(&Role::Sent), None);
    }

    #[test]
    fn gmail_views_are_not_copied() {
        assert_eq!(Role::from_attribute("\\Important"), Some(Role::Flagged));
        let source = [
            listed("INBOX", '/', &[]),
            listed("[Gmail]/Important", '/', &[Role::from_attribute("\\Important").unwrap()]),
            listed("[Gmail]/Starred", '/', &[Role::Flagged]),
        ];
        let (plans, excluded) = plan_folders(&source, &layout('/'), &CopyOptions::default(), None);
        assert_eq!(plans.iter().map(|p| p.source_display.as_str()).collect::<Vec<_>>(), ["INBOX"]);
        assert_eq!(excluded.len(), 2);
    }

    #[test]
    fn configured_prefix_wins() {
        let only_inbox = [listed("INBOX", '.', &[])];
        assert_eq!(prefix_levels(Some("INBOX."), &only_inbox), vec!["INBOX".to_string()]);
        let cpanel = [listed("INBOX", '.', &[]), listed("INBOX.Sent", '.', &[])];
        assert!(prefix_levels(Some(""), &cpanel).is_empty());
        assert_eq!(prefix_levels(None, &cpanel), vec!["INBOX".to_string()]);
    }

    #[test]
    fn inbox_prefixed_servers() {
        let cpanel =
            [listed("INBOX", '.', &[]), listed("INBOX.Sent", '.', &[Role::Sent]), listed("INBOX.Work.2024", '.', &[])];
        assert_eq!(detect_prefix(&cpanel), vec!["INBOX".to_string()]);
        let plain = [listed("INBOX", '/', &[]), listed("INBOX/Receipts", '/', &[]), listed("Sent", '/', &[])];
        assert!(detect_prefix(&plain).is_empty());
        assert!(detect_prefix(&[listed("INBOX", '.', &[])]).is_empty(), "INBOX alone tells nothing");
        assert!(detect_prefix(&[listed("INBOX", '.', &[]), listed("INBOXES", '.', &[])]).is_empty());
        assert!(
            detect_prefix(&[listed("INBOX", '.', &[]), listed("Entwürfe", '.', &[])]).is_empty(),
            "no panic on UTF-8"
        );

        // From a prefixed source to a prefixed destination: levels below INBOX map across.
        let mut dest = layout('.');
        dest.prefix = vec!["INBOX".into()];
        dest.by_role.insert(Role::Sent, vec!["INBOX".into(), "Sent".into()]);
        let (plans, _) = plan_folders(&cpanel, &dest, &CopyOptions::default(), Some("INBOX."));
        let names: Vec<String> = plans.iter().map(|p| p.destination_raw('.')).collect();
        assert_eq!(names, vec!["INBOX", "INBOX.Sent", "INBOX.Work.2024"]);
        // From a prefixed source to a plain one: the INBOX level goes.
        let (plans, _) = plan_folders(&cpanel, &layout('/'), &CopyOptions::default(), Some("INBOX."));
        let names: Vec<String> = plans.iter().map(|p| p.destination_raw('/')).collect();
        assert_eq!(names, vec!["INBOX", "Sent", "Work/2024"]);
    }

    fn map_one(folder: ListedFolder, options: &CopyOptions, dest: &DestinationLayout) -> Option<FolderPlan> {
        plan_folders(&[folder], dest, options, None).0.into_iter().next()
    }

    #[test]
    fn names_map_by_role_then_known_name_then_custom_map() {
        let options = CopyOptions::default();
        let dest = layout('/');
        let cases: &[(ListedFolder, &str)] = &[
            (listed("INBOX", '/', &[]), "INBOX"),
            (listed("Sent Items", '/', &[]), "Sent"),
            (listed("Deleted Items", '/', &[]), "Trash"),
            (listed("Junk Email", '/', &[]), "Junk"),
            (listed("Gesendet", '/', &[Role::Sent]), "Sent"),
            (listed("Projects/Sent Items", '/', &[]), "Projects/Sent Items"),
            (listed("Work.Clients", '.', &[]), "Work/Clients"),
            (listed("Migr&AOk-", '/', &[]), "Migré"),
        ];
        for (folder, expected) in cases {
            let plan = map_one(folder.clone(), &options, &dest).expect("planned");
            assert_eq!(plan.destination_display(), *expected, "{folder:?}");
        }
        let mut mapped = CopyOptions::default();
        mapped.folder_map.insert("Sent Items".into(), "Old/Sent".into());
        let plan = map_one(listed("Sent Items", '/', &[]), &mapped, &dest).expect("planned");
        assert_eq!(plan.destination, vec!["Old", "Sent"]);
    }

    #[test]
    fn destination_names_use_its_delimiter_and_utf7() {
        let plan = map_one(listed("A/Migré", '/', &[]), &CopyOptions::default(), &layout('.'));
        let plan = plan.expect("planned");
        assert_eq!(plan.destination_raw('.'), "A.Migr&AOk-");
        assert_eq!(plan.destination_raw('/'), "A/Migr&AOk-");
    }

    #[test]
    fn delimiter_inside_a_name_is_renamed_and_reported() {
        let plan =
            map_one(listed("Reports/2024.Q1", '/', &[]), &CopyOptions::default(), &layout('.')).expect("planned");
        assert_eq!(plan.destination, vec!["Reports", "2024_Q1"]);
        assert!(plan.renamed.as_deref().unwrap_or("").contains("2024.Q1"));
        // A `/` inside a level (from a `.`-separator source) to a `.` destination: Courier
        // refuses it in a name.
        let plan =
            map_one(listed("INBOX.Clients A/B", '.', &[]), &CopyOptions::default(), &layout('.')).expect("planned");
        assert_eq!(plan.destination, vec!["INBOX", "Clients A_B"]);
        assert!(plan.renamed.as_deref().unwrap_or("").contains("refuses"), "{:?}", plan.renamed);
        // To a `/` destination the same name is two levels apart already: nothing to rename.
        let plan = map_one(listed("Clients.A", '/', &[]), &CopyOptions::default(), &layout('/')).expect("planned");
        assert_eq!((plan.destination, plan.renamed), (vec!["Clients.A".to_string()], None));
    }

    #[test]
    fn exclusions() {
        let dest = layout('/');
        let mut standard = CopyOptions { folders: FolderStrategy::Standard, ..CopyOptions::default() };
        standard.exclude.push("Archive/*".into());
        let source = vec![
            listed("INBOX", '/', &[]),
            listed("Deleted Items", '/', &[]),
            listed("Spam", '/', &[]),
            listed("[Gmail]/All Mail", '/', &[Role::All]),
            listed("Archive/2019", '/', &[]),
            ListedFolder { raw: "Parent".into(), delimiter: Some('/'), roles: vec![], noselect: true },
        ];
        let (plans, excluded) = plan_folders(&source, &dest, &standard, None);
        // All Mail is planned, into Archive, for what no other folder holds.
        let planned: Vec<_> =
            plans.iter().map(|p| (p.source_display.as_str(), p.destination_display(), p.all_mail)).collect();
        assert_eq!(
            planned,
            vec![("INBOX", "INBOX".to_string(), false), ("[Gmail]/All Mail", "Archive".to_string(), true)]
        );
        let names: Vec<_> = excluded.iter().map(|e| e.source_display.as_str()).collect();
        assert_eq!(names, vec!["Deleted Items", "Spam", "Archive/2019"]);

        let only = CopyOptions { include: vec!["INBOX".into()], ..CopyOptions::default() };
        let (plans, _) = plan_folders(&source, &dest, &only, None);
        assert_eq!(plans.len(), 1);
    }

    #[test]
    fn user_root_is_stripped() {
        let folder = listed("users/alberta/Projects", '/', &[]);
        let (plans, _) = plan_folders(&[folder], &layout('/'), &CopyOptions::default(), Some("/users/alberta"));
        assert_eq!(plans[0].destination_display(), "Projects");
    }

    #[test]
    fn parents_come_first() {
        let levels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(parents(&levels), vec![vec!["a".to_string()], vec!["a".to_string(), "b".to_string()]]);
    }
}
