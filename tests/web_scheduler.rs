//! The nightly reset with an injected clock: offline seats are reset, online
//! seats are skipped or forced by policy, and a run missed while the server
//! was down happens at the next start.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use khoi_admin::schedule::{Clock, OnlinePolicy, ScheduleSettings, Scheduler, vietnam};
use khoi_admin::service::AddSeat;
use khoi_admin::{Actor, Service, ServiceConfig};
use khoi_block::{Store, StoreOptions};
use khoi_state::{ResetPolicy, State};
use parking_lot::Mutex;

#[derive(Debug)]
struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        vietnam()
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid time")
            .with_timezone(&Utc)
    }
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock() = t;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock()
    }
}

fn service(dir: &std::path::Path) -> Arc<Service> {
    let store = Arc::new(Store::open(dir, StoreOptions::default()).expect("store"));
    let state = Arc::new(State::open(&dir.join("khoi.db")).expect("state"));
    Arc::new(Service::new(
        store,
        state,
        ServiceConfig {
            data_dir: dir.to_path_buf(),
            default_seat_quota: 0,
            target_prefix: "iqn.2025-07.vn.khoi".into(),
            iscsi_portal: None,
            nbd_address: None,
            import_roots: Vec::new(),
        },
    ))
}

fn scheduler(svc: &Arc<Service>, clock: &Arc<TestClock>, online: OnlinePolicy) -> Scheduler {
    Scheduler::new(
        Arc::clone(svc),
        Arc::clone(clock) as Arc<dyn Clock>,
        ScheduleSettings {
            cron: "0 2 * * *".into(),
            online,
        },
    )
    .expect("scheduler")
}

fn resets(svc: &Service, seat: &str) -> usize {
    svc.state()
        .events(Some(seat), 100)
        .expect("events")
        .iter()
        .filter(|e| e.kind == "seat.reset" && e.actor == "nightly")
        .count()
}

fn setup(dir: &std::path::Path) -> Arc<Service> {
    let svc = service(dir);
    let staging = svc.staging_dir();
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("base.raw"), vec![0u8; 1 << 20]).expect("image");
    let admin = Actor::server();
    svc.import(&admin, "win10", "base.raw", "base")
        .expect("import");
    for (name, mac, policy) in [
        ("off-1", "02:00:00:00:00:01", ResetPolicy::OnBoot),
        ("on-1", "02:00:00:00:00:02", ResetPolicy::Nightly),
        ("keep", "02:00:00:00:00:03", ResetPolicy::Persistent),
    ] {
        svc.add_seat(
            &admin,
            &AddSeat {
                name: name.into(),
                mac: mac.into(),
                image: "win10".into(),
                version: None,
                policy: Some(policy),
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
        .expect("seat");
    }
    svc.activity().connected("on-1", "iscsi", "10.0.0.2:50000");
    svc.activity().meter("keep", "nbd").record(
        khoi_admin::IoOp::Read,
        4096,
        Some(std::time::Duration::from_micros(50)),
    );
    svc
}

#[test]
fn offline_reset_online_skipped_or_forced() {
    let dir = tempfile::tempdir().expect("tmp");
    let svc = setup(dir.path());
    let clock = Arc::new(TestClock(Mutex::new(TestClock::at(2026, 11, 20, 18, 0))));
    let s = scheduler(&svc, &clock, OnlinePolicy::Skip);
    assert!(
        s.tick().expect("tick").is_none(),
        "first start only records the time"
    );
    let next = s.view().next_run.expect("next");
    assert_eq!(
        next,
        TestClock::at(2026, 11, 21, 2, 0).timestamp(),
        "02:00 Vietnam time"
    );
    clock.set(TestClock::at(2026, 11, 21, 1, 59));
    assert!(s.tick().expect("tick").is_none(), "not yet");
    clock.set(TestClock::at(2026, 11, 21, 2, 0));
    let r = s.tick().expect("tick").expect("ran");
    assert_eq!(r.trigger, "schedule");
    assert_eq!(r.reset, ["off-1"]);
    assert_eq!(r.skipped, ["on-1"]);
    assert!(r.forced.is_empty() && r.failed.is_empty());
    // Who was still on, whatever the policy: the persistent seat read a
    // little in the evening without a session (an NBD tool, say).
    assert_eq!(r.still_on, ["keep", "on-1"]);
    let run = &s.history(1)[0];
    assert_eq!(run.args["still_on"], "keep on-1");
    assert!(
        run.detail.ends_with("still on 2: keep on-1"),
        "{}",
        run.detail
    );
    assert_eq!(
        (
            resets(&svc, "off-1"),
            resets(&svc, "on-1"),
            resets(&svc, "keep")
        ),
        (1, 0, 0)
    );
    let skipped = svc.state().events(Some("on-1"), 10).expect("events");
    assert!(skipped.iter().any(|e| e.kind == "nightly.seat.skipped"));
    assert!(s.tick().expect("tick").is_none(), "once per scheduled time");
    assert_eq!(s.history(10).len(), 1);

    // The same night with the force policy resets the running seat too.
    s.update(
        &Actor::server(),
        &ScheduleSettings {
            cron: "0 2 * * *".into(),
            online: OnlinePolicy::Force,
        },
    )
    .expect("update");
    clock.set(TestClock::at(2026, 11, 22, 2, 0));
    let r = s.tick().expect("tick").expect("ran");
    assert_eq!(
        (r.reset.as_slice(), r.forced.as_slice()),
        (&["off-1".to_string()][..], &["on-1".to_string()][..])
    );
    assert_eq!(resets(&svc, "on-1"), 1);
    assert_eq!(
        resets(&svc, "keep"),
        0,
        "persistent seats are never reset at night"
    );
}

#[test]
fn missed_run_is_caught_up_after_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = Arc::new(TestClock(Mutex::new(TestClock::at(2026, 11, 20, 23, 0))));
    {
        let svc = setup(dir.path());
        let s = scheduler(&svc, &clock, OnlinePolicy::Skip);
        assert!(s.tick().expect("tick").is_none());
        // The server goes down before 02:00 ...
    }
    // ... and comes back at 07:30 the next morning, with nothing connected.
    clock.set(TestClock::at(2026, 11, 21, 7, 30));
    let svc = service(dir.path());
    let s = scheduler(&svc, &clock, OnlinePolicy::Skip);
    let r = s.tick().expect("tick").expect("caught up");
    assert_eq!(r.trigger, "catch-up");
    assert_eq!(r.reset, ["off-1", "on-1"]);
    assert!(s.tick().expect("tick").is_none(), "and only once");
    // Down for three nights: still one catch-up run, not three.
    clock.set(TestClock::at(2026, 11, 24, 9, 0));
    let s = scheduler(&svc, &clock, OnlinePolicy::Skip);
    s.tick().expect("tick").expect("caught up");
    assert!(s.tick().expect("tick").is_none());
    assert_eq!(s.history(10).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_loop_runs_and_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let svc = setup(dir.path());
    let clock = Arc::new(TestClock(Mutex::new(TestClock::at(2026, 11, 20, 23, 0))));
    let s = Arc::new(scheduler(&svc, &clock, OnlinePolicy::Skip));
    s.tick().expect("first start");
    clock.set(TestClock::at(2026, 11, 21, 2, 0));
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&s).run(token.clone()));
    for _ in 0..50 {
        if !s.history(1).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(s.history(10).len(), 1);
    token.cancel();
    task.await.expect("loop ends");
}
