//! Events from the protocol servers and the block core are recorded by one
//! thread: they are raised on async and I/O threads that must not wait for an
//! SQLite fsync.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use khoi_state::{NewEvent, State};

/// An event waiting to be written.
#[derive(Debug)]
pub struct Owned {
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
    pub args: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
pub struct Recorder {
    tx: SyncSender<Owned>,
}

impl Recorder {
    pub fn start(state: Arc<State>) -> Recorder {
        // Bounded: a storm of failed logins must not grow memory without end;
        // past this, events are counted in the log instead of the database.
        let (tx, rx) = sync_channel(4096);
        let spawned = std::thread::Builder::new()
            .name("khoi-events".into())
            .spawn(move || drain(&state, &rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the event recorder: {e}");
        }
        Recorder { tx }
    }

    pub fn record(
        &self,
        kind: &'static str,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.record_args(kind, subject, detail, Vec::new());
    }

    /// `record` with the detail's values by name, for pages in other languages.
    pub fn record_args(
        &self,
        kind: &'static str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        args: Vec<(&'static str, String)>,
    ) {
        let ev = Owned {
            kind,
            subject: subject.into(),
            detail: detail.into(),
            args,
        };
        tracing::info!(kind, subject = %ev.subject, "{}", ev.detail);
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                tracing::warn!(kind = ev.kind, subject = %ev.subject, "event queue full; not recorded");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn drain(state: &State, rx: &Receiver<Owned>) {
    while let Ok(ev) = rx.recv() {
        let args: Vec<(&str, &str)> = ev.args.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = state.record(&NewEvent {
            kind: ev.kind,
            actor: "khoi",
            source: "-",
            subject: &ev.subject,
            detail: &ev.detail,
            args: &args,
        });
        if let Err(e) = res {
            tracing::error!(kind = ev.kind, "cannot record event: {e}");
        }
    }
}
