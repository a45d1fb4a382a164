//! Chromium's `Login Data` SQLite files: the origins of saved passwords.
//!
//! The bytes are copied to a private temporary file (mode 0600, deleted on
//! drop) and opened read-only and immutable, so SQLite neither looks for a
//! journal nor writes anything. Only `origin_url` is read: never the user
//! name or the password.

use std::io::Write;

use rusqlite::{Connection, OpenFlags};

use crate::vol::R;

/// The browsers whose profiles are searched, and where under a user's
/// profile their `User Data` folder lives.
pub(crate) const BROWSERS: &[(&str, &[&str])] = &[
    (
        "Google Chrome",
        &["AppData", "Local", "Google", "Chrome", "User Data"],
    ),
    (
        "Microsoft Edge",
        &["AppData", "Local", "Microsoft", "Edge", "User Data"],
    ),
    (
        "Cốc Cốc",
        &["AppData", "Local", "CocCoc", "Browser", "User Data"],
    ),
];

/// The login databases of one profile.
pub(crate) const LOGIN_FILES: &[&str] = &["Login Data", "Login Data For Account"];

/// A Chromium profile folder: `Default`, `Profile N`, `Guest Profile`,
/// `System Profile`.
pub(crate) fn is_profile_dir(name: &str) -> bool {
    name == "Default"
        || name
            .strip_prefix("Profile ")
            .is_some_and(|n| n.parse::<u32>().is_ok())
        || name == "Guest Profile"
        || name == "System Profile"
}

/// Origins (scheme://host[:port]) of the saved passwords in `bytes`, one per
/// saved row, sorted and deduplicated.
pub(crate) fn saved_origins(bytes: &[u8]) -> R<Vec<String>> {
    let mut tmp = tempfile::Builder::new()
        .prefix("khoi-inspect-")
        .tempfile()
        .map_err(|e| format!("temporary file: {e}"))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.flush())
        .map_err(|e| format!("temporary file: {e}"))?;
    let path = tmp.path().to_str().ok_or("temporary path is not UTF-8")?;
    // `immutable=1`: no locking, no journal lookup, no write-back.
    let uri = format!("file:{path}?immutable=1");
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("SQLite: {e}"))?;
    let err = |e: rusqlite::Error| format!("SQLite: {e}");
    // A crafted file must not run code through the schema.
    conn.execute_batch("PRAGMA trusted_schema = OFF; PRAGMA cell_size_check = ON;")
        .map_err(err)?;
    let has_logins: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'logins'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if !has_logins {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT origin_url FROM logins WHERE blacklisted_by_user = 0 LIMIT 10000")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| r.get::<_, Option<String>>(0))
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(origin(row.map_err(err)?.as_deref().unwrap_or("")));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Cut a URL down to its origin: the path and query may hold tokens.
pub(crate) fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(no origin)".to_string();
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Drop "user:pass@" if a URL ever carries it.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_credentials() {
        assert_eq!(
            origin("https://dvc.gov.vn/login?next=/x"),
            "https://dvc.gov.vn"
        );
        assert_eq!(
            origin("https://u:p@qlvb.tinh.vn:8443/a"),
            "https://qlvb.tinh.vn:8443"
        );
        assert_eq!(origin("android://abc"), "android://abc");
        assert_eq!(origin("garbage"), "(no origin)");
        assert!(is_profile_dir("Profile 12"));
        assert!(!is_profile_dir("Profile x"));
        assert!(!is_profile_dir("Crashpad"));
    }

    #[test]
    fn counts_only_rows_not_blacklisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ld");
        let c = Connection::open(&p).expect("open");
        c.execute_batch(
            "CREATE TABLE logins (origin_url VARCHAR NOT NULL, username_value VARCHAR, \
             password_value BLOB, blacklisted_by_user INTEGER NOT NULL);
             INSERT INTO logins VALUES ('https://dvc.gov.vn/x', 'u', x'01', 0);
             INSERT INTO logins VALUES ('https://never.example/', '', x'', 1);",
        )
        .expect("schema");
        drop(c);
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(
            saved_origins(&bytes).expect("reads"),
            vec!["https://dvc.gov.vn"]
        );
        assert!(saved_origins(b"not a database at all, not at all").is_err());
    }
}
