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
    /// Gmail's "All Mail": every message again; never copied as a folder.
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
            "flagged" => Role::Flagged,
            _ => return None,
        })
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
        if matches!(role, Some(Role::All) | Some(Role::Flagged)) {
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
        let mapped: Vec<String> = if let Some(target) = options.folder_map.get(&display) {
            under_prefix(target.split('/').map(str::to_string).collect())
        } else if let Some(role) = role {
            match destination.by_role.get(&role) {
                Some(existing) => existing.clone(),
                None => under_prefix(vec![role.default_name().to_string()]),
            }
        } else {
            under_prefix(segments.clone())
        };

        // A level holding the destination's delimiter would become extra levels there:
        // keep the folder under a changed name rather than dropping it.
        let mut renamed = None;
        let destination_levels: Vec<String> = mapped
            .into_iter()
            .map(|level| {
                if level.contains(destination.delimiter) {
                    let fixed = level.replace(destination.delimiter, "_");
                    renamed = Some(format!(
                        "{level:?} contains the destination's hierarchy delimiter {:?}: created as {fixed:?}",
                        destination.delimiter
                    ));
                    fixed
                } else {
                    level
                }
            })
            .collect();
        plans.push(FolderPlan {
            source_raw: folder.raw.clone(),
            source_display: display,
            destination: destination_levels,
            renamed,
        });
    }
    (plans, excluded)
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
        assert_eq!(plans.iter().map(|p| p.source_display.as_str()).collect::<Vec<_>>(), vec!["INBOX"]);
        let names: Vec<_> = excluded.iter().map(|e| e.source_display.as_str()).collect();
        assert_eq!(names, vec!["Deleted Items", "Spam", "[Gmail]/All Mail", "Archive/2019"]);

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
