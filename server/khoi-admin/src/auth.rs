//! Web login: argon2 password hashes in the state database, sessions in
//! memory (a restart logs everyone out, which is acceptable for a handful of
//! officers and keeps session tokens off the disk), per-session CSRF tokens,
//! and a login rate limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use khoi_state::{State, User};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::service::ServiceError;

/// Sessions idle longer than this are dropped.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Failed logins allowed per address and per user name within [`WINDOW`].
const MAX_FAILURES: usize = 5;
const WINDOW: Duration = Duration::from_secs(300);
const MIN_PASSWORD: usize = 8;

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

    pub fn parse(s: &str) -> Result<Role, ServiceError> {
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

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    last_seen: Instant,
    flash: Option<(bool, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Invalid,
    #[error("too many failed logins; try again in {0} seconds")]
    Limited(u64),
    #[error("{0}")]
    Service(#[from] ServiceError),
}

#[derive(Debug)]
pub struct Auth {
    state: Arc<State>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    setup_token: Mutex<Option<String>>,
    /// Hash of a random password, verified when a user does not exist so a
    /// wrong name costs the same time as a wrong password.
    dummy_hash: String,
}

pub fn random_token(bytes: usize) -> Result<String, ServiceError> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)
        .map_err(|e| ServiceError::Internal(format!("no randomness available: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn hash_password(password: &str) -> Result<String, ServiceError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ServiceError::Invalid {
            field: "password".into(),
            reason: format!("must be at least {MIN_PASSWORD} characters"),
        });
    }
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

/// Constant-time comparison for tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    /// With no users yet, create `admin` from `initial_password`, or make a
    /// one-time setup token the caller must print.
    pub fn new(state: Arc<State>, initial_password: Option<&str>) -> Result<Auth, ServiceError> {
        let dummy_hash = hash_password(&random_token(16)?)?;
        let auth = Auth {
            state,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            setup_token: Mutex::new(None),
            dummy_hash,
        };
        if auth.state.users()?.is_empty() {
            match initial_password {
                Some(pw) => {
                    auth.state.put_user("admin", "admin", &hash_password(pw)?)?;
                }
                None => *auth.setup_token.lock() = Some(random_token(16)?),
            }
        }
        Ok(auth)
    }

    /// The one-time token that creates the first admin, while there is none.
    pub fn setup_token(&self) -> Option<String> {
        self.setup_token.lock().clone()
    }

    pub fn complete_setup(
        &self,
        token: &str,
        name: &str,
        password: &str,
    ) -> Result<(), ServiceError> {
        let mut guard = self.setup_token.lock();
        match guard.as_deref() {
            Some(t) if same_token(t, token) => {}
            _ => {
                return Err(ServiceError::Invalid {
                    field: "token".into(),
                    reason: "the setup link is wrong or was already used".into(),
                });
            }
        }
        let hash = hash_password(password)?;
        self.state.put_user(name, "admin", &hash)?;
        *guard = None;
        Ok(())
    }

    fn limited(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut f = self.failures.lock();
        let mut wait = None;
        for k in keys {
            if let Some(q) = f.get_mut(k) {
                while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                    q.pop_front();
                }
                if q.len() >= MAX_FAILURES
                    && let Some(first) = q.front()
                {
                    let left = WINDOW.saturating_sub(now.duration_since(*first)).as_secs() + 1;
                    wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                }
            }
        }
        wait
    }

    /// Check a password and open a session; returns the session id.
    pub fn login(&self, name: &str, password: &str, addr: &str) -> Result<String, LoginError> {
        let keys = [format!("addr:{addr}"), format!("user:{name}")];
        if let Some(wait) = self.limited(&keys) {
            return Err(LoginError::Limited(wait));
        }
        let user = self.state.user(name).map_err(ServiceError::from)?;
        let ok = match &user {
            Some(u) => verify(&u.hash, password),
            None => {
                let _ = verify(&self.dummy_hash, password);
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            let now = Instant::now();
            let mut f = self.failures.lock();
            for k in keys {
                f.entry(k).or_default().push_back(now);
            }
            return Err(LoginError::Invalid);
        };
        self.failures.lock().remove(&keys[0]);
        let id = random_token(32)?;
        let session = Session {
            user: user.name,
            role: Role::parse(&user.role)?,
            csrf: random_token(32)?,
            last_seen: Instant::now(),
            flash: None,
        };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.last_seen.elapsed() < IDLE);
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    pub fn session(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock();
        let s = sessions.get_mut(id)?;
        if s.last_seen.elapsed() > IDLE {
            sessions.remove(id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    pub fn logout(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    /// A message for the next page the session sees (after a redirect).
    pub fn flash(&self, id: &str, ok: bool, msg: impl Into<String>) {
        if let Some(s) = self.sessions.lock().get_mut(id) {
            s.flash = Some((ok, msg.into()));
        }
    }

    pub fn take_flash(&self, id: &str) -> Option<(bool, String)> {
        self.sessions.lock().get_mut(id)?.flash.take()
    }

    // ---- user management (admin only; the web layer checks the role) ----

    pub fn users(&self) -> Result<Vec<User>, ServiceError> {
        Ok(self.state.users()?)
    }

    pub fn put_user(&self, name: &str, role: &str, password: &str) -> Result<(), ServiceError> {
        let role = Role::parse(role)?;
        let hash = hash_password(password)?;
        self.state.put_user(name, role.as_str(), &hash)?;
        self.end_sessions_of(name);
        Ok(())
    }

    pub fn set_role(&self, name: &str, role: &str) -> Result<(), ServiceError> {
        let role = Role::parse(role)?;
        let user = self
            .state
            .user(name)?
            .ok_or_else(|| ServiceError::NotFound(format!("user {name:?} does not exist")))?;
        if user.role == "admin" && role != Role::Admin {
            self.keep_an_admin(name)?;
        }
        self.state.put_user(name, role.as_str(), &user.hash)?;
        // A demoted user must not keep the powers of their open session.
        self.end_sessions_of(name);
        Ok(())
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<(), ServiceError> {
        let user = self
            .state
            .user(name)?
            .ok_or_else(|| ServiceError::NotFound(format!("user {name:?} does not exist")))?;
        let hash = hash_password(password)?;
        self.state.put_user(name, &user.role, &hash)?;
        Ok(())
    }

    pub fn remove_user(&self, name: &str) -> Result<(), ServiceError> {
        let user = self
            .state
            .user(name)?
            .ok_or_else(|| ServiceError::NotFound(format!("user {name:?} does not exist")))?;
        if user.role == "admin" {
            self.keep_an_admin(name)?;
        }
        self.state.remove_user(name)?;
        self.end_sessions_of(name);
        Ok(())
    }

    fn keep_an_admin(&self, leaving: &str) -> Result<(), ServiceError> {
        let others = self
            .state
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

    fn end_sessions_of(&self, name: &str) {
        self.sessions.lock().retain(|_, s| s.user != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_login_limit_and_roles() {
        let state = Arc::new(State::open_in_memory().expect("db"));
        let auth = Auth::new(Arc::clone(&state), None).expect("auth");
        let token = auth.setup_token().expect("token");
        assert!(auth.complete_setup("wrong", "an", "secret-123").is_err());
        assert!(auth.complete_setup(&token, "an", "short").is_err());
        auth.complete_setup(&token, "an", "secret-123")
            .expect("setup");
        assert!(auth.setup_token().is_none());
        assert!(auth.complete_setup(&token, "evil", "secret-123").is_err());
        let id = auth.login("an", "secret-123", "1.2.3.4").expect("login");
        let s = auth.session(&id).expect("session");
        assert_eq!((s.user.as_str(), s.role), ("an", Role::Admin));
        assert!(auth.remove_user("an").is_err(), "last admin stays");
        auth.put_user("bo", "viewer", "password-1").expect("add");
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                auth.login("bo", "nope", "5.6.7.8"),
                Err(LoginError::Invalid)
            ));
        }
        assert!(matches!(
            auth.login("bo", "password-1", "5.6.7.8"),
            Err(LoginError::Limited(_))
        ));
        auth.logout(&id);
        assert!(auth.session(&id).is_none());
        // A second Auth over the same database does not offer setup again.
        assert!(
            Auth::new(state, None)
                .expect("auth")
                .setup_token()
                .is_none()
        );
    }

    #[test]
    fn token_compare() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
