//! Logins to the web page: sessions in memory (a restart logs everyone out,
//! which is acceptable for a handful of officers and keeps session tokens
//! off the disk), per-session CSRF tokens and flash messages, the login rate
//! limit and the one-time link that creates the first admin.
//!
//! Accounts themselves (roles, password rules, hashes, the last-admin rule)
//! are admin operations of `khoi_admin::users`; this side only adds what a
//! browser needs, and ends the sessions of an account whose powers change.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use khoi_admin::users::{Role, random_token, same_token};
use khoi_admin::{Actor, Service, ServiceError};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Sessions idle longer than this are dropped.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Failed logins allowed per address within [`WINDOW`]. Only the address is
/// limited, never the account: a limit per account would let anyone on the
/// LAN lock the real admin out by typing wrong passwords for them.
const MAX_FAILURES: usize = 5;
const WINDOW: Duration = Duration::from_secs(300);
/// Addresses remembered at most; beyond it the oldest records go first, so
/// a flood of made-up proxy addresses cannot grow the table without end.
const MAX_ADDRESSES: usize = 4096;
/// Password checks at once. Each argon2 check takes its 19 MiB for a moment;
/// unbounded, a burst of 300 logins took the server to almost 1 GB.
const HASHES_AT_ONCE: usize = 2;
/// Logins waiting for a hash slot at most; more are told to come back, so a
/// burst neither queues for minutes nor holds memory.
const HASH_QUEUE: usize = 16;

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
    #[error("too many logins at once; try again in a moment")]
    Busy,
    #[error("{0}")]
    Service(#[from] ServiceError),
}

#[derive(Debug)]
pub struct Auth {
    service: Arc<Service>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    hashing: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    setup_token: Mutex<Option<String>>,
}

impl Auth {
    /// With no users yet, create `admin` from `initial_password`, or make a
    /// one-time setup token the caller must print.
    pub fn new(
        service: Arc<Service>,
        initial_password: Option<&str>,
    ) -> Result<Auth, ServiceError> {
        service.prepare_logins()?;
        let mut setup = None;
        if service.users()?.is_empty() {
            match initial_password {
                Some(pw) => {
                    service.seed_admin(pw)?;
                }
                None => setup = Some(random_token(16)?),
            }
        }
        Ok(Auth {
            service,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            hashing: Arc::new(Semaphore::new(HASHES_AT_ONCE)),
            waiting: Arc::new(Semaphore::new(HASH_QUEUE + HASHES_AT_ONCE)),
            setup_token: Mutex::new(setup),
        })
    }

    /// The one-time token that creates the first admin, while there is none.
    pub fn setup_token(&self) -> Option<String> {
        self.setup_token.lock().clone()
    }

    pub fn complete_setup(
        &self,
        who: &Actor,
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
        self.service.create_first_admin(who, name, password)?;
        *guard = None;
        Ok(())
    }

    /// Count this attempt against `addr` before any hashing, so parallel
    /// attempts cannot all pass a limit that only failures update; or say
    /// how long the address must wait.
    fn reserve(&self, addr: &str) -> Result<Instant, u64> {
        let now = Instant::now();
        let mut f = self.failures.lock();
        if f.len() >= MAX_ADDRESSES && !f.contains_key(addr) {
            f.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if f.len() >= MAX_ADDRESSES {
                // Still full of fresh records: forget the oldest one.
                let oldest = f
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    f.remove(&k);
                }
            }
        }
        let q = f.entry(addr.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            q.pop_front();
        }
        if q.len() >= MAX_FAILURES
            && let Some(first) = q.front()
        {
            return Err(WINDOW.saturating_sub(now.duration_since(*first)).as_secs() + 1);
        }
        q.push_back(now);
        Ok(now)
    }

    /// A right password clears the address's record, its own reservation
    /// included; a wrong one leaves the reservation as the failure.
    fn settle(&self, addr: &str, ok: bool) {
        if ok {
            self.failures.lock().remove(addr);
        }
    }

    /// Check a password and open a session; returns the session id. Limits:
    /// per address (see [`MAX_FAILURES`]), and at most [`HASHES_AT_ONCE`]
    /// password checks at once with [`HASH_QUEUE`] waiting.
    pub async fn login(
        self: &Arc<Self>,
        name: &str,
        password: &str,
        addr: &str,
    ) -> Result<String, LoginError> {
        let Ok(_queued) = Arc::clone(&self.waiting).try_acquire_owned() else {
            return Err(LoginError::Busy);
        };
        self.reserve(addr).map_err(LoginError::Limited)?;
        let Ok(_slot) = Arc::clone(&self.hashing).acquire_owned().await else {
            return Err(LoginError::Busy);
        };
        let svc = Arc::clone(&self.service);
        let (n, p) = (name.to_string(), password.to_string());
        let checked = tokio::task::spawn_blocking(move || svc.check_password(&n, &p))
            .await
            .map_err(|e| ServiceError::Internal(format!("login task failed: {e}")))?;
        let Some((user, role)) = checked? else {
            self.settle(addr, false);
            return Err(LoginError::Invalid);
        };
        self.settle(addr, true);
        let id = random_token(32)?;
        let session = Session {
            user: user.name,
            role,
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

    // ---- accounts: the service's operations, then the sessions ----

    pub fn add_user(
        &self,
        who: &Actor,
        name: &str,
        role: &str,
        password: &str,
    ) -> Result<(), ServiceError> {
        self.service.add_user(who, name, role, password)?;
        self.end_sessions_of(name);
        Ok(())
    }

    /// A demoted user must not keep the powers of their open session.
    pub fn set_role(&self, who: &Actor, name: &str, role: &str) -> Result<(), ServiceError> {
        self.service.set_user_role(who, name, role)?;
        self.end_sessions_of(name);
        Ok(())
    }

    /// A new password ends every session of the account but `keep` (the
    /// session that changed it, when it changed its own): whoever knew the
    /// old password must not stay logged in.
    pub fn set_password(
        &self,
        who: &Actor,
        name: &str,
        password: &str,
        keep: Option<&str>,
    ) -> Result<(), ServiceError> {
        self.service.set_user_password(who, name, password)?;
        self.sessions
            .lock()
            .retain(|id, s| s.user != name || keep.is_some_and(|k| k == id));
        Ok(())
    }

    pub fn remove_user(&self, who: &Actor, name: &str) -> Result<(), ServiceError> {
        self.service.remove_user(who, name)?;
        self.end_sessions_of(name);
        Ok(())
    }

    fn end_sessions_of(&self, name: &str) {
        self.sessions.lock().retain(|_, s| s.user != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use khoi_admin::ServiceConfig;
    use khoi_block::{Store, StoreOptions};
    use khoi_state::State;

    fn service(dir: &std::path::Path) -> Arc<Service> {
        let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
        let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
        Arc::new(Service::new(
            store,
            state,
            ServiceConfig {
                data_dir: dir.to_path_buf(),
                default_seat_quota: 1 << 30,
                target_prefix: "iqn.2025-07.vn.khoi".into(),
                iscsi_portal: None,
                nbd_address: None,
                import_roots: Vec::new(),
            },
        ))
    }

    #[tokio::test]
    async fn setup_login_limit_and_roles() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let who = Actor::server();
        let auth = Arc::new(Auth::new(Arc::clone(&svc), None).expect("auth"));
        let token = auth.setup_token().expect("token");
        assert!(
            auth.complete_setup(&who, "wrong", "an", "secret-123")
                .is_err()
        );
        assert!(auth.complete_setup(&who, &token, "an", "short").is_err());
        auth.complete_setup(&who, &token, "an", "secret-123")
            .expect("setup");
        assert!(auth.setup_token().is_none());
        assert!(
            auth.complete_setup(&who, &token, "evil", "secret-123")
                .is_err()
        );
        let id = auth
            .login("an", "secret-123", "1.2.3.4")
            .await
            .expect("login");
        let s = auth.session(&id).expect("session");
        assert_eq!((s.user.as_str(), s.role), ("an", Role::Admin));
        assert!(auth.remove_user(&who, "an").is_err(), "last admin stays");
        auth.add_user(&who, "bo", "viewer", "password-1")
            .expect("add");
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                auth.login("bo", "nope", "5.6.7.8").await,
                Err(LoginError::Invalid)
            ));
        }
        assert!(matches!(
            auth.login("bo", "password-1", "5.6.7.8").await,
            Err(LoginError::Limited(_))
        ));
        // The limit is the address's, not the account's: the real user on
        // another machine still logs in.
        auth.login("bo", "password-1", "5.6.7.9")
            .await
            .expect("another address");
        auth.logout(&id);
        assert!(auth.session(&id).is_none());
        // A second Auth over the same database does not offer setup again.
        assert!(Auth::new(svc, None).expect("auth").setup_token().is_none());
    }

    #[tokio::test]
    async fn a_demoted_user_loses_their_session() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let who = Actor::server();
        let auth = Arc::new(Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth"));
        auth.add_user(&who, "op", "operator", "operator-pass")
            .expect("add");
        let id = auth
            .login("op", "operator-pass", "1.2.3.4")
            .await
            .expect("login");
        auth.set_role(&who, "op", "viewer").expect("demote");
        assert!(auth.session(&id).is_none());
        let kinds: Vec<String> = svc
            .state()
            .events(Some("op"), 10)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"user.role".to_string()), "{kinds:?}");
    }

    /// Parallel wrong passwords from one address: the limit holds, because
    /// each attempt is counted before its hash, not after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_attempts_cannot_pass_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let auth = Arc::new(Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth"));
        let tries: Vec<_> = (0..12)
            .map(|_| {
                let a = Arc::clone(&auth);
                tokio::spawn(async move { a.login("admin", "wrong-pass", "9.9.9.9").await })
            })
            .collect();
        let mut invalid = 0;
        for t in tries {
            if matches!(t.await.expect("join"), Err(LoginError::Invalid)) {
                invalid += 1;
            }
        }
        assert_eq!(invalid, MAX_FAILURES, "hashed attempts");
    }

    /// A password change ends the account's other sessions, not the one
    /// that made it.
    #[tokio::test]
    async fn a_new_password_ends_other_sessions() {
        let dir = tempfile::tempdir().expect("tmp");
        let svc = service(dir.path());
        let who = Actor::server();
        let auth = Arc::new(Auth::new(Arc::clone(&svc), Some("admin-pass-1")).expect("auth"));
        let here = auth
            .login("admin", "admin-pass-1", "1.1.1.1")
            .await
            .expect("1");
        let there = auth
            .login("admin", "admin-pass-1", "2.2.2.2")
            .await
            .expect("2");
        auth.set_password(&who, "admin", "a-new-pass-2", Some(&here))
            .expect("change");
        assert!(auth.session(&here).is_some());
        assert!(auth.session(&there).is_none(), "the other session ended");
    }
}
