//! Admin accounts: who may administer Khoi and with which role, as audited
//! [`Service`] operations like every other admin change. Password rules and
//! argon2 hashes live here because they decide who an account is, whatever
//! front end asks; sessions, CSRF tokens and login rate limits belong to the
//! web page (`khoi-web`), which is the only place a login happens.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use khoi_state::User;
use serde::{Deserialize, Serialize};

use crate::service::{Actor, Result, Service, ServiceError};

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted: beyond this a login is refused before any
/// hashing, so a huge field costs the server nothing.
pub const MAX_PASSWORD: usize = 128;
/// Longest account name; longer names cannot exist, so a login with one is
/// refused before any hashing.
pub const MAX_USER_NAME: usize = 64;

const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

fn invalid(field: &str, reason: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The password rules: long enough to resist guessing, short enough to
/// hash cheaply, not blank, and not on the list every attacker tries first.
pub fn check_password_policy(password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(invalid(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if n > MAX_PASSWORD {
        return Err(invalid(
            "password",
            format!("must be at most {MAX_PASSWORD} characters"),
        ));
    }
    if password.trim().is_empty() {
        return Err(invalid("password", "must not be only spaces"));
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(invalid("password", "must not repeat one character"));
    }
    let lower = password.trim().to_lowercase();
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.trim() == lower);
    if common {
        return Err(invalid(
            "password",
            "is on the list of common passwords; choose another",
        ));
    }
    Ok(())
}

/// Account names: short, printable, no surrounding spaces.
pub fn check_user_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > MAX_USER_NAME {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_USER_NAME} characters"),
        ));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "must not have control characters or surrounding spaces",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ServiceError::Invalid {
                field: "role".into(),
                reason: format!("{other:?}: expected admin, operator or viewer"),
            }),
        }
    }
}

/// `bytes` random bytes as hex.
pub fn random_token(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)
        .map_err(|e| ServiceError::Internal(format!("no randomness available: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn hash_password(password: &str) -> Result<String> {
    check_password_policy(password)?;
    hash_unchecked(password)
}

fn hash_unchecked(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("cannot hash password: {e}")))
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Hash of a random password, verified when a user does not exist so a
/// wrong name costs the same time as a wrong password.
fn dummy_hash() -> Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_unchecked(&random_token(16)?)?;
    Ok(DUMMY.get_or_init(|| h))
}

/// Constant-time comparison for tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Service {
    pub fn users(&self) -> Result<Vec<User>> {
        Ok(self.state().users()?)
    }

    /// The account `name` with its role, if `password` is its password.
    /// Takes as long for an unknown name as for a wrong password.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Option<(User, Role)>> {
        // No account has such a name or password: refuse without hashing.
        if name.chars().count() > MAX_USER_NAME || password.chars().count() > MAX_PASSWORD {
            return Ok(None);
        }
        let dummy = dummy_hash()?;
        let user = self.state().user(name)?;
        let ok = match &user {
            Some(u) => verify(&u.hash, password),
            None => {
                let _ = verify(dummy, password);
                false
            }
        };
        match user.filter(|_| ok) {
            Some(u) => {
                let role = Role::parse(&u.role)?;
                Ok(Some((u, role)))
            }
            None => Ok(None),
        }
    }

    /// Warm the timing-equaliser hash, so the first failed login is not
    /// faster than the others.
    pub fn prepare_logins(&self) -> Result<()> {
        dummy_hash().map(|_| ())
    }

    /// With no account yet, create `admin` with the configured password.
    /// Returns whether it did. Not audited: it is configuration, applied
    /// before anyone can act.
    pub fn seed_admin(&self, password: &str) -> Result<bool> {
        if !self.state().users()?.is_empty() {
            return Ok(false);
        }
        self.state()
            .put_user("admin", Role::Admin.as_str(), &hash_password(password)?)?;
        Ok(true)
    }

    /// The first admin, from the web page's one-time setup link.
    pub fn create_first_admin(&self, actor: &Actor, name: &str, password: &str) -> Result<()> {
        check_user_name(name)?;
        let hash = hash_password(password)?;
        if !self.state().users()?.is_empty() {
            return Err(ServiceError::Conflict(
                "an admin account already exists".into(),
            ));
        }
        self.state().put_user(name, Role::Admin.as_str(), &hash)?;
        self.audit_args(
            actor,
            "user.add",
            name,
            "role admin (first start)",
            &[("role", "admin")],
        );
        Ok(())
    }

    pub fn add_user(&self, actor: &Actor, name: &str, role: &str, password: &str) -> Result<()> {
        check_user_name(name)?;
        if self.state().user(name)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "user {name:?} already exists"
            )));
        }
        let role = Role::parse(role)?;
        let hash = hash_password(password)?;
        self.state().put_user(name, role.as_str(), &hash)?;
        self.audit_args(
            actor,
            "user.add",
            name,
            &format!("role {}", role.as_str()),
            &[("role", role.as_str())],
        );
        Ok(())
    }

    pub fn set_user_role(&self, actor: &Actor, name: &str, role: &str) -> Result<()> {
        let role = Role::parse(role)?;
        let user = self.existing_user(name)?;
        if user.role == "admin" && role != Role::Admin {
            self.keep_an_admin(name)?;
        }
        self.state().put_user(name, role.as_str(), &user.hash)?;
        self.audit_args(
            actor,
            "user.role",
            name,
            &format!("role {}", role.as_str()),
            &[("role", role.as_str())],
        );
        Ok(())
    }

    pub fn set_user_password(&self, actor: &Actor, name: &str, password: &str) -> Result<()> {
        let user = self.existing_user(name)?;
        let hash = hash_password(password)?;
        self.state().put_user(name, &user.role, &hash)?;
        self.audit(actor, "user.password", name, "password changed");
        Ok(())
    }

    pub fn remove_user(&self, actor: &Actor, name: &str) -> Result<()> {
        let user = self.existing_user(name)?;
        if user.role == "admin" {
            self.keep_an_admin(name)?;
        }
        self.state().remove_user(name)?;
        self.audit(actor, "user.remove", name, "");
        Ok(())
    }

    fn existing_user(&self, name: &str) -> Result<User> {
        self.state()
            .user(name)?
            .ok_or_else(|| ServiceError::NotFound(format!("user {name:?} does not exist")))
    }

    fn keep_an_admin(&self, leaving: &str) -> Result<()> {
        let others = self
            .state()
            .users()?
            .into_iter()
            .filter(|u| u.role == "admin" && u.name != leaving)
            .count();
        if others == 0 {
            return Err(ServiceError::Conflict(
                "this is the last admin; make another user admin first".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!(Role::parse("operator").ok(), Some(Role::Operator));
        assert!(Role::parse("root").is_err());
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn password_policy() {
        for bad in [
            "password",
            "12345678",
            "matkhau",
            "matkhau123",
            "Password123",
            "          ",
            "        ",
            "aaaaaaaaaaaa",
            "anhyeuem123",
        ] {
            assert!(check_password_policy(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_password_policy(&"x1".repeat(65)).is_err(), "too long");
        assert!(check_password_policy("mat-khau-thu-nghiem").is_ok());
        assert!(check_password_policy(&"ab".repeat(64)).is_ok());
        assert!(check_user_name(&"n".repeat(65)).is_err());
        assert!(check_user_name(" admin").is_err());
        assert!(check_user_name("an").is_ok());
    }
}
