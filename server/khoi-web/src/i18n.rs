//! Every string of the web page, in Vietnamese (the default) and English,
//! read from `web/i18n/{vi,en}.txt` (compiled in). The officer's language
//! is a cookie, and a missing key shows `?` rather than failing the page
//! (the tests make sure no key is missing in either file and that every key
//! in them is used).
//!
//! The files are one `key = value` a line (`#` starts a comment line): the
//! page needs plain strings and `{name}` substitution only, so a parser of a
//! few lines does the job without a localisation framework in the build.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    Vi,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Vi, Lang::En];

    pub fn from_code(code: &str) -> Lang {
        match code {
            "en" => Lang::En,
            _ => Lang::Vi,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }

    fn catalog(self) -> &'static Catalog {
        match self {
            Lang::Vi => &VI,
            Lang::En => &EN,
        }
    }
}

pub const VI_TEXT: &str = include_str!("../../../web/i18n/vi.txt");
pub const EN_TEXT: &str = include_str!("../../../web/i18n/en.txt");

/// One language's strings, in file order (the order of a kind's detail
/// wordings matters: the first that fits wins).
#[derive(Debug)]
pub struct Catalog {
    entries: Vec<(&'static str, &'static str)>,
    by_key: HashMap<&'static str, &'static str>,
}

impl Catalog {
    /// Parse a translation file. Errors name the line, so a broken edit
    /// fails the tests with a pointer rather than a blank page.
    pub fn parse(text: &'static str) -> Result<Catalog, String> {
        let mut entries = Vec::new();
        let mut by_key = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                return Err(format!("line {}: expected `key = value`", n + 1));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.contains(char::is_whitespace) || value.is_empty() {
                return Err(format!(
                    "line {}: empty or spaced key, or empty value",
                    n + 1
                ));
            }
            if by_key.insert(key, value).is_some() {
                return Err(format!("line {}: {key} appears twice", n + 1));
            }
            entries.push((key, value));
        }
        Ok(Catalog { entries, by_key })
    }

    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|(k, _)| *k)
    }

    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.by_key.get(key).copied()
    }
}

fn load(text: &'static str) -> Catalog {
    // The files are compiled in and parsed by the tests, so a build whose
    // file does not parse never passes them.
    Catalog::parse(text).unwrap_or_else(|e| panic!("translation file: {e}"))
}

static VI: LazyLock<Catalog> = LazyLock::new(|| load(VI_TEXT));
static EN: LazyLock<Catalog> = LazyLock::new(|| load(EN_TEXT));

/// A readable name for an event kind, or `None` for kinds this build does
/// not know (the code itself is then shown alone).
pub fn event_kind(lang: Lang, kind: &str) -> Option<&'static str> {
    lang.catalog().get(&format!("ev.{kind}"))
}

/// An event's detail worded in `lang` from the values it recorded, or `None`
/// when this build has no wording for the kind or the event lacks a value
/// every wording needs (events recorded before values were kept): the page
/// then shows the English detail as recorded. A kind may have several
/// wordings (`evd.<kind>`, `evd.<kind>/2`, ...); the first whose values are
/// all there is used.
pub fn event_detail(lang: Lang, kind: &str, args: &BTreeMap<String, String>) -> Option<String> {
    let key = format!("evd.{kind}");
    lang.catalog()
        .entries
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .find_map(|(_, text)| fill(text, args))
}

/// `{name}` in `text` replaced by its value; `None` if a value is missing.
fn fill(text: &str, args: &BTreeMap<String, String>) -> Option<String> {
    let mut rest = text;
    let mut out = String::new();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        out.push_str(args.get(&after[..close])?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

pub fn t(lang: Lang, key: &str) -> &'static str {
    lang.catalog().get(key).unwrap_or_else(|| {
        tracing::warn!(key, "missing translation");
        "?"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

    /// Functions whose string-literal arguments are translation keys, in
    /// Rust, templates and JavaScript alike (`t`, `p.t`, `i18n::t`, ...).
    const KEY_CALLS: &[&str] = &["t", "ok_msg", "deny", "refuse"];

    fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let path = e.expect("entry").path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n != "node_modules" && n != "target")
                {
                    files(&path, ext, out);
                }
            } else if path.extension().is_some_and(|x| x == ext) {
                out.push(path);
            }
        }
    }

    fn read_all(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect()
    }

    /// The string literals among the arguments of every call to one of
    /// [`KEY_CALLS`] in `src`.
    fn keys_in(src: &str) -> Vec<String> {
        let bytes = src.as_bytes();
        let mut found = Vec::new();
        for name in KEY_CALLS {
            let pat = format!("{name}(");
            let mut from = 0;
            while let Some(at) = src[from..].find(&pat) {
                let start = from + at;
                from = start + pat.len();
                let before = start.checked_sub(1).map(|i| bytes[i]);
                if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    continue;
                }
                // Walk the arguments to the matching `)`, collecting literals.
                let (mut depth, mut i, mut lit) = (1, from, None::<usize>);
                while i < bytes.len() && depth > 0 {
                    match (bytes[i], lit) {
                        (b'\\', Some(_)) => i += 1,
                        (b'"', Some(s)) => {
                            found.push(src[s..i].to_string());
                            lit = None;
                        }
                        (b'"', None) => lit = Some(i + 1),
                        (b'(', None) => depth += 1,
                        (b')', None) => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
            }
        }
        found
    }

    /// Every key that templates, Rust code of any crate, and scripts use.
    fn used_keys() -> HashSet<String> {
        let mut paths = Vec::new();
        files(&Path::new(ROOT).join("web"), "html", &mut paths);
        files(&Path::new(ROOT).join("web"), "js", &mut paths);
        files(&Path::new(ROOT).join("server"), "rs", &mut paths);
        assert!(paths.len() > 20, "sources not found under {ROOT}");
        let mut keys: HashSet<String> = read_all(&paths)
            .iter()
            .flat_map(|s| keys_in(s))
            // Arguments that are not keys: format strings, seat names, ...
            .filter(|k| !k.is_empty() && !k.contains([' ', '{', '/']))
            .collect();
        // Keys chosen at run time: seat states and reset policies. The
        // matches are exhaustive so a new variant fails to build here.
        use khoi_admin::SeatState as S;
        use khoi_state::ResetPolicy as P;
        for s in [S::Offline, S::Booting, S::Online, S::Maintenance, S::Fenced] {
            match s {
                S::Offline | S::Booting | S::Online | S::Maintenance | S::Fenced => {}
            }
            keys.insert(s.as_str().to_string());
        }
        for p in [P::OnBoot, P::Nightly, P::Persistent] {
            match p {
                P::OnBoot | P::Nightly | P::Persistent => {}
            }
            keys.insert(p.as_str().to_string());
        }
        use khoi_state::CaptureStatus as C;
        for c in [
            C::Armed,
            C::Offered,
            C::Copying,
            C::Done,
            C::Held,
            C::Refused,
            C::Failed,
        ] {
            match c {
                C::Armed | C::Offered | C::Copying | C::Done | C::Held | C::Refused | C::Failed => {
                }
            }
            keys.insert(c.key().to_string());
        }
        use khoi_admin::gate::GateStatus as G;
        for g in [
            G::Passed,
            G::Warnings,
            G::Failed,
            G::Overridden,
            G::NotChecked,
        ] {
            match g {
                G::Passed | G::Warnings | G::Failed | G::Overridden | G::NotChecked => {}
            }
            keys.insert(g.key().to_string());
        }
        keys
    }

    #[test]
    fn both_files_parse_and_hold_the_same_keys() {
        let vi = Catalog::parse(VI_TEXT).expect("vi.txt");
        let en = Catalog::parse(EN_TEXT).expect("en.txt");
        let vk: Vec<_> = vi.keys().collect();
        let ek: Vec<_> = en.keys().collect();
        let only_vi: Vec<_> = vk.iter().filter(|k| en.get(k).is_none()).collect();
        let only_en: Vec<_> = ek.iter().filter(|k| vi.get(k).is_none()).collect();
        assert!(only_vi.is_empty(), "keys only in vi.txt: {only_vi:?}");
        assert!(only_en.is_empty(), "keys only in en.txt: {only_en:?}");
        assert!(Catalog::parse("a.b = x\nnot a pair\n").is_err());
        assert!(Catalog::parse("a.b = x\na.b = y\n").is_err());
    }

    /// Every key used anywhere exists in both languages, and every key
    /// in the files is used (event kinds and details are checked by the
    /// tests below, against what the server records).
    #[test]
    fn every_used_key_is_translated_and_every_key_used() {
        let used = used_keys();
        for probe in [
            "nav.audit",
            "login.invalid",
            "err.csrf",
            "msg.saved",
            "role.viewer",
        ] {
            assert!(used.contains(probe), "scan missed {probe}");
        }
        for lang in Lang::ALL {
            let missing: Vec<_> = used
                .iter()
                .filter(|k| lang.catalog().get(k).is_none())
                .collect();
            assert!(
                missing.is_empty(),
                "{lang:?}: untranslated keys: {missing:?}"
            );
        }
        let unused: Vec<_> = VI
            .keys()
            .filter(|k| !k.starts_with("ev.") && !k.starts_with("evd."))
            .filter(|k| !used.contains(*k))
            .collect();
        assert!(unused.is_empty(), "keys nothing uses: {unused:?}");
    }

    /// Every event kind the server records has a name in both languages:
    /// the kinds are the string literals at the recording call sites.
    #[test]
    fn every_recorded_event_kind_is_named() {
        let mut paths = Vec::new();
        for krate in ["khoi", "khoi-admin", "khoi-web", "khoi-state", "khoi-sync"] {
            files(
                &Path::new(ROOT).join("server").join(krate).join("src"),
                "rs",
                &mut paths,
            );
        }
        let sources = read_all(&paths);
        let mut kinds = HashSet::new();
        for src in &sources {
            for marker in [
                "audit(",
                "audit_args(",
                "record(",
                "record_args(",
                "session_event(",
                "kind: \"",
            ] {
                for part in src.split(marker).skip(1) {
                    // The kind is the first dotted literal within the call.
                    let head: String = part.chars().take(120).collect();
                    let Some(lit) = head
                        .split('"')
                        .nth(if marker.ends_with('"') { 0 } else { 1 })
                    else {
                        continue;
                    };
                    // Kinds are lowercase words, dotted except for a few
                    // (`login`, `logout`) that audit() records.
                    let shaped = !lit.is_empty()
                        && lit
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
                        && (lit.contains('.') || marker.starts_with("audit"));
                    if shaped {
                        kinds.insert(lit.to_string());
                    }
                }
            }
        }
        for k in [
            "seat.add",
            "iscsi.login.failed",
            "pxe.unknown_mac",
            "server.start",
            "login",
            "logout",
        ] {
            assert!(kinds.contains(k), "scan missed {k}: {kinds:?}");
        }
        for lang in Lang::ALL {
            let missing: Vec<_> = kinds
                .iter()
                .filter(|k| event_kind(lang, k).is_none())
                .collect();
            assert!(
                missing.is_empty(),
                "{lang:?}: event kinds without a name: {missing:?}"
            );
        }
        // And no name for a kind nothing records.
        let unused: Vec<_> = VI
            .keys()
            .filter_map(|k| k.strip_prefix("ev."))
            .filter(|k| !kinds.contains(*k))
            .collect();
        assert!(unused.is_empty(), "named kinds nothing records: {unused:?}");
        assert_eq!(event_kind(Lang::En, "seat.reset"), Some("Seat reset"));
        assert_eq!(event_kind(Lang::Vi, "no.such.kind"), None);
    }

    #[test]
    fn event_details_are_worded_from_their_values() {
        let args: BTreeMap<String, String> = [("version", "3"), ("was", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            event_detail(Lang::Vi, "seat.reset", &args).as_deref(),
            Some("Chuyển sang phiên bản 3 (trước là 2)")
        );
        assert_eq!(
            event_detail(Lang::En, "seat.reset", &args).as_deref(),
            Some("Now on version 3 (was 2)")
        );
        // Without the earlier version, the kind's second wording fits.
        let mut only = args.clone();
        only.remove("was");
        assert_eq!(
            event_detail(Lang::Vi, "seat.reset", &only).as_deref(),
            Some("Về phiên bản 3")
        );
        // An import without a note does not end on an empty colon.
        let import: BTreeMap<String, String> = [("version", "1"), ("bytes", "512")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            event_detail(Lang::En, "image.import", &import).as_deref(),
            Some("Version 1 (512 bytes)")
        );
        // No wording fits (an event from before values were kept): no
        // sentence, so the page falls back to the recorded detail.
        assert_eq!(event_detail(Lang::Vi, "seat.reset", &BTreeMap::new()), None);
        // Wordings without values need none; unknown kinds have none.
        assert_eq!(
            event_detail(Lang::Vi, "user.password", &BTreeMap::new()).as_deref(),
            Some("Đã đổi mật khẩu")
        );
        assert_eq!(event_detail(Lang::Vi, "overlay.full", &args), None);
        // Every wording belongs to a named kind and has balanced braces.
        for lang in Lang::ALL {
            for (k, text) in &lang.catalog().entries {
                if let Some(kind) = k
                    .strip_prefix("evd.")
                    .map(|w| w.split('/').next().unwrap_or(w))
                {
                    assert!(event_kind(lang, kind).is_some(), "{k} has no kind name");
                    assert_eq!(text.matches('{').count(), text.matches('}').count(), "{k}");
                }
            }
        }
    }

    /// A nightly run names the seats still on; a run recorded before it
    /// did is still worded (without them).
    #[test]
    fn nightly_runs_are_worded_with_and_without_the_seats_still_on() {
        let mut args: BTreeMap<String, String> = [
            ("trigger", "schedule"),
            ("reset_n", "1"),
            ("reset", "pc01"),
            ("forced_n", "0"),
            ("forced", "-"),
            ("skipped_n", "0"),
            ("skipped", "-"),
            ("failed_n", "0"),
            ("failed", "-"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let old = event_detail(Lang::En, "nightly.run", &args).expect("worded");
        assert!(old.ends_with("failed 0: -"), "{old}");
        args.insert("still_on_n".into(), "2".into());
        args.insert("still_on".into(), "pc02 pc03".into());
        let new = event_detail(Lang::Vi, "nightly.run", &args).expect("worded");
        assert!(new.ends_with("còn bật 2: pc02 pc03"), "{new}");
    }

    #[test]
    fn vietnamese_is_default() {
        assert_eq!(Lang::from_code("fr"), Lang::Vi);
        assert_eq!(t(Lang::default(), "nav.seats"), "Máy trạm");
        assert_eq!(t(Lang::En, "nav.seats"), "Seats");
        // Through a variable, so the key scan does not count it as used.
        let absent = "no.such.key";
        assert_eq!(t(Lang::En, absent), "?");
    }
}
