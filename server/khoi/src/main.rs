//! Khoi: a diskless boot server for rooms of Windows workstations.

mod backup;
mod boot;
mod cli;
mod client;
mod config;
mod doctor;
mod exports;
mod import;
mod metered;
mod prewarm;
mod recorder;
mod sdnotify;
mod serve;
mod standby;
mod sync;
#[cfg(test)]
mod testlan;
mod wake;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use khoi_admin::gate::GateResult;
use khoi_admin::service::{AddSeat, ImageView, ResetReport, SeatDetails, SeatView, VersionView};
use khoi_web::api::{
    CaptureRequest, CaptureState, CheckRequest, CreateImage, ImportRequest, Info, PublishRequest,
    RollbackRequest,
};
use serde::Serialize;

use crate::cli::{Cli, Command, ConfigCmd, DraftCmd, ImageCmd, SeatCmd, StandbyCmd, SyncCmd};
use crate::client::Client;
use crate::config::{Config, Size};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("khoi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &cli.data {
        config.data_dir.clone_from(dir);
    }
    Ok(config)
}

/// `config check`'s one-line view of where NBD listens.
fn nbd_summary(config: &config::Config) -> String {
    let mut parts = Vec::new();
    if let Some(p) = config.nbd_socket_path() {
        parts.push(format!("socket {}", p.display()));
    }
    if let Some(a) = config.listen.nbd {
        let tls = if config.nbd_tls.is_some() {
            "TLS"
        } else {
            "no TLS"
        };
        parts.push(format!("tcp {a} ({tls})"));
    }
    if parts.is_empty() {
        "off".into()
    } else {
        parts.join(", ")
    }
}

/// `config check`'s view of the admin page, with the certificate's
/// fingerprint for an officer to compare with what the browser shows.
fn admin_summary(config: &config::Config) -> String {
    let a = &config.admin;
    let Some(listen) = a.listen else {
        return "off".into();
    };
    if !a.tls_enabled() {
        return format!("http://{listen}");
    }
    let cert = a
        .tls_cert
        .clone()
        .unwrap_or_else(|| config.data_dir.join(khoi_web::server::SELF_SIGNED_CERT));
    let fp = khoi_web::server::cert_fingerprint(&cert)
        .unwrap_or_else(|_| "no certificate yet (a self-signed one is made at first start)".into());
    format!("https://{listen}, certificate SHA-256 {fp}")
}

/// A seat's NBD URI from the server's NBD address: a socket path or a
/// `nbd://`/`nbds://` base.
fn nbd_uri(address: Option<&str>, export: &str) -> String {
    match address {
        None => "(off)".into(),
        Some(a) if a.starts_with('/') => format!("nbd+unix:///{export}?socket={a}"),
        Some(a) => format!("{a}/{export}"),
    }
}

/// Seats (name, network) whose network `config` does not define.
fn seats_off_networks(config: &Config, seats: &[(String, Option<String>)]) -> Vec<String> {
    let Some(nets) = &config.pxe else {
        return seats
            .iter()
            .filter_map(|(s, n)| n.as_ref().map(|n| format!("{s} (on {n})")))
            .collect();
    };
    seats
        .iter()
        .filter_map(|(s, n)| {
            let n = n.as_deref()?;
            nets.get(n).is_none().then(|| format!("{s} (on {n})"))
        })
        .collect()
}

/// `config check` with the server of that data folder running: its seats'
/// networks must all be in the file, or those seats would boot nowhere
/// after a restart. The seats come from the server (the control socket),
/// never from opening its database.
fn check_seat_networks(config: &Config) -> anyhow::Result<()> {
    let sock = serve::control_socket(&config.data_dir);
    if std::os::unix::net::UnixStream::connect(&sock).is_err() {
        println!(
            "seats: not checked (no server running on {})",
            sock.display()
        );
        return Ok(());
    }
    let seats: Vec<SeatView> = Client::new(&sock).get("/v1/seats")?;
    let seats: Vec<(String, Option<String>)> =
        seats.into_iter().map(|s| (s.name, s.network)).collect();
    let off = seats_off_networks(config, &seats);
    if !off.is_empty() {
        anyhow::bail!(
            "seats on boot networks this file does not have (they could not boot): {}; add the \
             networks under pxe, or move the seats first (khoi seat network SEAT NETWORK)",
            off.join(", ")
        );
    }
    println!(
        "seats: {} checked, each on a boot network of this file",
        seats.len()
    );
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config(ConfigCmd::Check { file }) = &cli.command {
        let config = Config::load(file)?;
        println!(
            "{}: ok (data in {}, NBD {}, iSCSI {})",
            file.display(),
            config.data_dir.display(),
            nbd_summary(&config),
            config.listen.iscsi.map_or("off".into(), |a| a.to_string()),
        );
        println!("admin page: {}", admin_summary(&config));
        for n in config.pxe.iter().flat_map(|n| n.iter()) {
            println!(
                "boot network {}: {} on {} ({}), DHCP {:?}",
                n.network_name(),
                n.kind,
                n.interface,
                n.server_ip,
                n.mode
            );
        }
        check_seat_networks(&config)?;
        return Ok(());
    }
    let config = load_config(&cli)?;
    if let Command::Serve = cli.command {
        harden_process();
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KHOI_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // Block I/O runs on the blocking pool; bound it so forty seats
            // booting at once queue instead of spawning hundreds of threads.
            .max_blocking_threads(64)
            .build()?;
        return rt.block_on(serve::run(config));
    }
    let out = Out { json: cli.json };
    match &cli.command {
        Command::Backup { dest } => {
            let m = backup::backup(&config.data_dir, dest)?;
            return out.print(&m, |m| {
                println!(
                    "backed up the state database and {} image version list(s) of {} into {}",
                    m.images.len(),
                    config.data_dir.display(),
                    dest.display()
                );
            });
        }
        Command::Restore { src } => {
            let r = backup::restore(src, &config.data_dir)?;
            return out.print(&r, |r| {
                println!(
                    "restored the backup of {} (Khoi {}) into {}",
                    khoi_web::pages::fmt_time(r.from.created),
                    r.from.khoi_version,
                    config.data_dir.display()
                );
                if let Some(p) = &r.previous_db {
                    println!("the database it replaced is kept as {}", p.display());
                }
            });
        }
        Command::Sync(SyncCmd::Keygen { file }) => {
            let key = khoi_sync::sign::generate()?;
            khoi_sync::sign::write_secret(file, &key)
                .with_context(|| format!("cannot create {}", file.display()))?;
            println!(
                "private key in {} (keep it on the publisher only); public key for sync.trusted_keys:\n{}",
                file.display(),
                khoi_sync::sign::public_hex(&key.verifying_key())
            );
            return Ok(());
        }
        Command::Sync(SyncCmd::Pubkey { file }) => {
            let key = khoi_sync::sign::read_secret(file).map_err(anyhow::Error::msg)?;
            println!("{}", khoi_sync::sign::public_hex(&key.verifying_key()));
            return Ok(());
        }
        Command::Doctor => {
            let report = doctor::run(&config, doctor::Lang::from_env());
            out.print(&report, |r| print!("{}", r.render()))?;
            if report.failed() {
                anyhow::bail!("{}", report.summary());
            }
            return Ok(());
        }
        _ => {}
    }
    let client = Client::new(&serve::control_socket(&config.data_dir));
    match cli.command {
        Command::Serve
        | Command::Config(_)
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Doctor => unreachable!("handled above"),
        Command::Image(cmd) => image(&client, &out, cmd),
        Command::Draft(cmd) => draft(&client, &out, cmd),
        Command::Seat(cmd) => seat(&client, &out, cmd),
        Command::Sync(cmd) => sync_cmd(&client, &out, cmd),
        Command::Standby(cmd) => standby_cmd(&client, &out, cmd),
        Command::SetupLink => {
            let link: khoi_web::api::SetupLinkView = client.get("/v1/setup-link")?;
            out.print(&link, |l| match &l.url {
                Some(url) => println!("open {url} to create the first admin account (works once)"),
                None => println!("an admin account exists, or the admin page is off"),
            })
        }
        Command::Report { from, to, pdf } => {
            let mut q = Vec::new();
            if let Some(f) = &from {
                q.push(format!("from={}", urlencode(f)));
            }
            if let Some(t) = &to {
                q.push(format!("to={}", urlencode(t)));
            }
            let q = q.join("&");
            if let Some(file) = pdf {
                let bytes = client.get_bytes(&format!("/v1/report.pdf?{q}"))?;
                std::fs::write(&file, &bytes)
                    .with_context(|| format!("writing {}", file.display()))?;
                println!("wrote {} ({} bytes)", file.display(), bytes.len());
                return Ok(());
            }
            let r: khoi_admin::report::ComplianceReport = client.get(&format!("/v1/report?{q}"))?;
            out.print(&r, |r| {
                use khoi_admin::report::pdf::{gate_vi, vn_date};
                println!("{}", khoi_admin::report::TITLE_VI);
                println!("{} – {}", vn_date(r.from), vn_date(r.to));
                println!("seats ({}):", r.seats.len());
                for s in &r.seats {
                    println!(
                        "  {:<18} {:<12} v{:<4} {:<8} {}",
                        s.name,
                        s.image,
                        s.version.map_or("-".into(), |v| v.to_string()),
                        s.profile,
                        s.policy
                    );
                }
                println!("versions ({}):", r.versions.len());
                for v in &r.versions {
                    println!(
                        "  {:<12} {:<4} {:<14} {}",
                        v.image,
                        v.version,
                        gate_vi(v.gate),
                        v.override_reason.as_deref().unwrap_or("")
                    );
                }
                println!("nightly resets: {}", r.nightly_runs.len());
                println!("admin actions: {}", r.admin_total);
                for k in &r.admin_actions {
                    println!("  {:<28} {}", k.kind, k.count);
                }
                println!("gate overrides: {}", r.overrides.len());
                for e in &r.overrides {
                    println!(
                        "  {}  {}  {}",
                        khoi_web::pages::fmt_time(e.ts),
                        e.actor,
                        e.detail
                    );
                }
            })
        }
        Command::Events { subject, limit } => {
            let mut path = format!("/v1/events?limit={limit}");
            if let Some(s) = subject {
                path.push_str(&format!("&subject={}", urlencode(&s)));
            }
            let events: Vec<khoi_state::Event> = client.get(&path)?;
            out.print(&events, |events| {
                for e in events.iter().rev() {
                    // Local (Vietnam) time as on the admin page; --json keeps Unix seconds.
                    println!(
                        "{}  {:<22} {:<14} {:<16} {}",
                        khoi_web::pages::fmt_time(e.ts),
                        e.kind,
                        e.actor,
                        e.subject,
                        e.detail
                    );
                }
            })
        }
    }
}

/// Process-wide settings `khoi serve` needs before it opens anything.
fn harden_process() {
    // SAFETY: umask, getrlimit/setrlimit and mallopt only change this
    // process's own settings; they run before any other thread exists.
    unsafe {
        // Every file the server makes (state database, overlays, staging,
        // certificates) holds CHAP secrets, password hashes or seats'
        // disks: owner only, whatever the service manager's umask.
        libc::umask(0o077);
        // Seats, officers and scrapers all need descriptors; the soft
        // limit (often 1024) ran out under a flood of idle connections.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        // glibc raises its mmap threshold after freeing a large block, and
        // from then on keeps argon2's 19 MiB login buffers in each thread's
        // arena instead of returning them: a burst of logins left the
        // server at almost 1 GB. A fixed threshold returns them at once.
        #[cfg(target_env = "gnu")]
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Out {
    json: bool,
}

impl Out {
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(())
    }
}

/// The image gate's findings, one per line, for the terminal (English, like
/// the rest of the CLI): severity, rule, subject, the rule's sentence and fix.
pub(crate) fn findings_text(findings: &[khoi_admin::gate::Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let sev = match f.severity {
            khoi_admin::gate::Severity::Blocking => "BLOCKING",
            khoi_admin::gate::Severity::Warning => "warning",
        };
        let info = f.info();
        out.push_str(&format!(
            "  {sev:<8} {}: {}\n           {}\n           fix: {}\n",
            khoi_admin::gate::rule_name(f.rule),
            f.subject,
            info.title_en,
            info.fix_en
        ));
    }
    out
}

/// A seat's boots, one a line: when it started (UTC+7, like the schedule),
/// each phase's seconds, the total and the bytes read.
fn print_boot_times(t: &khoi_admin::boot_times::SeatBootTimes) {
    use khoi_state::BootPhase;
    let secs = |ms: Option<i64>| {
        #[allow(clippy::cast_precision_loss)]
        ms.map_or_else(
            || "-".to_string(),
            |ms| format!("{:.1}", ms as f64 / 1000.0),
        )
    };
    println!(
        "{:<19} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10}  OUTCOME",
        "STARTED", "DHCP", "TFTP", "SCRIPT", "DISK", "TOTAL", "READ"
    );
    let rows = t.in_progress.iter().map(|b| (b, "in progress"));
    let rows = rows.chain(
        t.boots
            .iter()
            .map(|b| (b, if b.complete() { "ok" } else { "incomplete" })),
    );
    for (b, outcome) in rows {
        let started = b
            .started()
            .and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.with_timezone(&khoi_admin::schedule::vietnam()))
            })
            .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        println!(
            "{:<19} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10}  {}",
            started,
            secs(b.phase_ms(BootPhase::Dhcp)),
            secs(b.phase_ms(BootPhase::Tftp)),
            secs(b.phase_ms(BootPhase::Script)),
            secs(b.phase_ms(BootPhase::Disk)),
            secs(b.total_ms()),
            Size(b.bytes_read).to_string(),
            outcome
        );
    }
}

fn print_versions(versions: &[VersionView]) {
    println!(
        "{:>4} {:<3} {:>10} {:>10}  {:<11} {:<16} {:<12} NOTE",
        "VER", "CUR", "SIZE", "DELTA", "GATE", "AUTHOR", "USED BY"
    );
    for v in versions {
        println!(
            "{:>4} {:<3} {:>10} {:>10}  {:<11} {:<16} {:<12} {}",
            v.number,
            if v.current { "*" } else { "" },
            Size(v.size).to_string(),
            Size(v.delta_bytes).to_string(),
            v.gate.as_str(),
            v.author,
            v.used_by.join(","),
            v.note
        );
    }
}

fn image(client: &Client, out: &Out, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Import { name, file, note } => {
            let info: Info = client.get("/v1/info")?;
            let staged = import::stage(&file, &info)?;
            let staged_name = staged.file_name().context("staged file has no name")?;
            let v: anyhow::Result<VersionView> = client.post(
                "/v1/images",
                &ImportRequest {
                    name: name.clone(),
                    staged: staged_name,
                    note,
                },
            );
            // On success the server moved the file into the store.
            staged.finish(v.is_ok());
            let v = v?;
            out.print(&v, |v| {
                println!("imported {name} version {} ({})", v.number, Size(v.size));
            })
        }
        ImageCmd::Create { name, size } => {
            let size: Size = size.parse().map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let v: VersionView = client.post(
                "/v1/images/create",
                &CreateImage {
                    name: name.clone(),
                    size: size.0,
                },
            )?;
            out.print(&v, |v| {
                println!(
                    "created {name}: an empty {} disk (version {}); install onto it with: \
                     khoi draft open {name}",
                    Size(v.size),
                    v.number
                );
            })
        }
        ImageCmd::List => {
            let images: Vec<ImageView> = client.get("/v1/images")?;
            out.print(&images, |images| {
                println!(
                    "{:<20} {:>10} {:>8} {:>7} {:<5} GATE",
                    "IMAGE", "SIZE", "CURRENT", "LATEST", "DRAFT"
                );
                for i in images {
                    println!(
                        "{:<20} {:>10} {:>8} {:>7} {:<5} {}",
                        i.name,
                        Size(i.size).to_string(),
                        i.current,
                        i.latest,
                        if i.has_draft { "open" } else { "-" },
                        i.gate.as_str()
                    );
                }
            })
        }
        ImageCmd::Versions { name } => {
            let v: Vec<VersionView> =
                client.get(&format!("/v1/images/{}/versions", urlencode(&name)))?;
            out.print(&v, |v| print_versions(v))
        }
        ImageCmd::Rollback {
            name,
            to,
            override_reason,
        } => {
            let v: VersionView = client.post(
                &format!("/v1/images/{}/rollback", urlencode(&name)),
                &RollbackRequest {
                    to,
                    override_reason,
                },
            )?;
            out.print(&v, |v| {
                println!(
                    "{name}: version {} is current; seats following it move at their next reset",
                    v.number
                );
            })
        }
        ImageCmd::Check { target } => {
            let (name, req) = match target.rsplit_once('@') {
                Some((n, "draft")) => (
                    n.to_string(),
                    CheckRequest {
                        version: None,
                        draft: true,
                    },
                ),
                Some((n, v)) => (
                    n.to_string(),
                    CheckRequest {
                        version: Some(v.parse().map_err(|_| {
                            anyhow::anyhow!("{target}: expected NAME, NAME@VERSION or NAME@draft")
                        })?),
                        draft: false,
                    },
                ),
                None => (target.clone(), CheckRequest::default()),
            };
            let r: GateResult =
                client.post(&format!("/v1/images/{}/check", urlencode(&name)), &req)?;
            out.print(&r, |r| {
                let what = r
                    .version
                    .map_or_else(|| "draft".to_string(), |n| format!("version {n}"));
                println!("{name} {what}: {}", r.status.as_str());
                if let Some(o) = &r.r#override {
                    println!("overridden by {}: {}", o.by, o.reason);
                }
                if let Some(rep) = &r.report {
                    print!("{}", findings_text(&rep.findings));
                }
            })
        }
        ImageCmd::Fix { name } => {
            let v: khoi_admin::gate::FixView =
                client.post(&format!("/v1/images/{}/fix", urlencode(&name)), &())?;
            out.print(&v, |v| {
                if v.remedies.is_empty() {
                    println!("{name}: nothing the fix can change");
                } else {
                    let names: Vec<&str> = v.remedies.iter().map(|r| r.name()).collect();
                    println!(
                        "{name}: fixed in the draft{}: {}",
                        if v.opened_draft {
                            " (opened for it)"
                        } else {
                            ""
                        },
                        names.join(", ")
                    );
                }
                println!("fixed ({}):", v.diff.fixed.len());
                print!("{}", findings_text(&v.diff.fixed));
                println!("left ({}):", v.after.findings.len());
                print!("{}", findings_text(&v.after.findings));
                if !v.remedies.is_empty() {
                    println!("publish it with: khoi draft publish {name} --note \"...\"");
                }
            })
        }
        ImageCmd::Profile { name, profile } => {
            let path = format!("/v1/images/{}/gate", urlencode(&name));
            let mut g: serde_json::Value = client.get(&path)?;
            g["profile"] = profile.into();
            let g: serde_json::Value = client.put(&path, &g)?;
            out.print(&g, |g| {
                println!(
                    "{name}: profile {}; the current version is checked again in the background",
                    g["profile"].as_str().unwrap_or("?")
                );
            })
        }
        ImageCmd::AllowAdmin { name, user, remove } => {
            let path = format!("/v1/images/{}/gate", urlencode(&name));
            let mut g: serde_json::Value = client.get(&path)?;
            let mut list: Vec<String> =
                serde_json::from_value(g["admin_allow"].take()).unwrap_or_default();
            list.retain(|u| !u.eq_ignore_ascii_case(&user));
            if !remove {
                list.push(user);
            }
            g["admin_allow"] = list.into();
            let g: serde_json::Value = client.put(&path, &g)?;
            out.print(&g, |g| {
                println!("{name}: administrators allowed: {}", g["admin_allow"]);
            })
        }
        ImageCmd::DeleteVersion { name, version } => {
            let r: () = client.delete(&format!(
                "/v1/images/{}/versions/{version}",
                urlencode(&name)
            ))?;
            out.print(&r, |_| println!("deleted {name} version {version}"))
        }
        ImageCmd::Delete { name } => {
            let r: () = client.delete(&format!("/v1/images/{}", urlencode(&name)))?;
            out.print(&r, |_| println!("deleted image {name}"))
        }
    }
}

fn draft(client: &Client, out: &Out, cmd: DraftCmd) -> anyhow::Result<()> {
    match cmd {
        DraftCmd::Open { image } => {
            let r: () = client.post(&format!("/v1/images/{}/draft", urlencode(&image)), &())?;
            out.print(&r, |_| {
                println!("draft of {image} is open: NBD export draft/{image}");
            })
        }
        DraftCmd::Publish {
            image,
            note,
            override_reason,
        } => {
            let v: VersionView = client.post(
                &format!("/v1/images/{}/draft/publish", urlencode(&image)),
                &PublishRequest {
                    note,
                    override_reason,
                },
            )?;
            out.print(&v, |v| println!("published {image} version {}", v.number))
        }
        DraftCmd::Discard { image } => {
            let r: () = client.delete(&format!("/v1/images/{}/draft", urlencode(&image)))?;
            out.print(&r, |_| println!("discarded the draft of {image}"))
        }
    }
}

fn seat(client: &Client, out: &Out, cmd: SeatCmd) -> anyhow::Result<()> {
    match cmd {
        SeatCmd::Add(a) => {
            let quota = a
                .quota
                .as_deref()
                .map(str::parse::<Size>)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--quota: {e}"))?;
            let s: SeatView = client.post(
                "/v1/seats",
                &khoi_web::api::AddSeatRequest {
                    seat: AddSeat {
                        name: a.name,
                        mac: a.mac,
                        image: a.image,
                        version: a.version,
                        policy: Some(a.policy),
                        quota: quota.map(|q| q.0),
                        initiator_iqn: a.initiator_iqn,
                        mutual_chap: a.mutual_chap,
                    },
                    network: a.network,
                    override_reason: a.override_reason,
                },
            )?;
            out.print(&s, |s| {
                println!(
                    "added seat {} ({}) on {} {}; see its iSCSI login with: khoi seat show {}",
                    s.name,
                    s.mac,
                    s.image,
                    s.pinned_version
                        .map_or_else(|| "(latest)".into(), |n| format!("version {n}")),
                    s.name
                );
            })
        }
        SeatCmd::List => {
            let seats: Vec<SeatView> = client.get("/v1/seats")?;
            out.print(&seats, |seats| {
                // The network column only when some seat names one.
                let nets = seats.iter().any(|s| s.network.is_some());
                let net = |n: Option<&str>| {
                    if nets {
                        format!("{:<12} ", n.unwrap_or("(first)"))
                    } else {
                        String::new()
                    }
                };
                println!(
                    "{:<16} {:<17} {}{:<14} {:>6} {:>6} {:<10} {:>21}  STATUS",
                    "SEAT",
                    "MAC",
                    net(Some("NETWORK")),
                    "IMAGE",
                    "PIN",
                    "ACTIVE",
                    "POLICY",
                    "OVERLAY/QUOTA"
                );
                for s in seats {
                    println!(
                        "{:<16} {:<17} {}{:<14} {:>6} {:>6} {:<10} {:>21}  {}",
                        s.name,
                        s.mac,
                        net(s.network.as_deref()),
                        s.image,
                        s.pinned_version.map_or("latest".into(), |n| n.to_string()),
                        s.active_version.map_or("-".into(), |n| n.to_string()),
                        s.policy.as_str(),
                        format!("{}/{}", Size(s.overlay_bytes), Size(s.quota)),
                        if s.fenced { "waiting for reboot" } else { "" },
                    );
                }
            })
        }
        SeatCmd::Boots { name } => {
            let t: khoi_admin::boot_times::SeatBootTimes =
                client.get(&format!("/v1/seats/{}/boots", urlencode(&name)))?;
            out.print(&t, print_boot_times)
        }
        SeatCmd::Show { name } => {
            let d: SeatDetails = client.get(&format!("/v1/seats/{}", urlencode(&name)))?;
            out.print(&d, |d| {
                println!("seat:        {}", d.seat.name);
                println!("mac:         {}", d.seat.mac);
                println!(
                    "image:       {} (pinned: {}, running: {})",
                    d.seat.image,
                    d.seat
                        .pinned_version
                        .map_or("latest".into(), |n| n.to_string()),
                    d.seat.active_version.map_or("-".into(), |n| n.to_string())
                );
                println!("policy:      {}", d.seat.policy);
                if let Some(n) = &d.seat.network {
                    println!("network:     {n}");
                }
                println!(
                    "overlay:     {} of {}",
                    Size(d.seat.overlay_bytes),
                    Size(d.seat.quota)
                );
                println!("target:      {}", d.target_iqn);
                println!(
                    "portal:      {}",
                    d.portal.as_deref().unwrap_or("(iSCSI off)")
                );
                println!("lun:         {}", d.lun);
                println!("chap user:   {}", d.chap_user);
                println!("chap secret: {}", d.chap_secret);
                if let (Some(u), Some(p)) = (&d.mutual_chap_user, &d.mutual_chap_secret) {
                    println!("mutual user: {u}");
                    println!("mutual secret: {p}");
                }
                if let Some(i) = &d.initiator_iqn {
                    println!("initiator:   {i} (only this initiator may log in)");
                }
                println!(
                    "nbd:         {}",
                    nbd_uri(d.nbd_address.as_deref(), &d.nbd_export)
                );
            })
        }
        SeatCmd::Reset { name, all } => {
            if all {
                let r: ResetReport = client.post("/v1/reset-all", &())?;
                out.print(&r, |r| println!("reset {} seats", r.reset.len()))
            } else {
                let name = name.context("give a seat name or --all")?;
                let s: SeatView =
                    client.post(&format!("/v1/seats/{}/reset", urlencode(&name)), &())?;
                out.print(&s, |s| {
                    println!(
                        "reset {}: clean on version {}",
                        s.name,
                        s.active_version.map_or("-".into(), |n| n.to_string())
                    );
                })
            }
        }
        SeatCmd::Wake { name, all } => {
            let woken: Vec<wake::Woken> = if all {
                client.post("/v1/wake-all", &())?
            } else {
                let name = name.context("give a seat name or --all")?;
                vec![client.post(&format!("/v1/seats/{}/wake", urlencode(&name)), &())?]
            };
            out.print(&woken, |woken| {
                for w in woken {
                    println!(
                        "sent a wake-up packet to {} ({}) on {}",
                        w.seat, w.mac, w.interface
                    );
                }
                if woken.is_empty() {
                    println!("no seats to wake");
                }
            })
        }
        SeatCmd::Network { name, network } => {
            let s: SeatView = client.patch(
                &format!("/v1/seats/{}", urlencode(&name)),
                &khoi_state::SeatUpdate {
                    network: Some(network),
                    ..Default::default()
                },
            )?;
            out.print(&s, |s| {
                println!(
                    "seat {} is on boot network {} from its next boot",
                    s.name,
                    s.network.as_deref().unwrap_or("-")
                );
            })
        }
        SeatCmd::Remove { name } => {
            let r: () = client.delete(&format!("/v1/seats/{}", urlencode(&name)))?;
            out.print(&r, |_| println!("removed seat {name}"))
        }
        SeatCmd::Capture {
            name,
            image,
            cancel,
            status: _,
        } => {
            let path = format!("/v1/seats/{}/capture", urlencode(&name));
            if cancel {
                let r: () = client.delete(&path)?;
                return out.print(&r, |_| println!("{name} left capture mode"));
            }
            let st: CaptureState = match image {
                Some(image) => client.post(&path, &CaptureRequest { image })?,
                None => client.get(&path)?,
            };
            out.print(&st, |st| print_capture(&name, st))
        }
    }
}

fn print_capture(seat: &str, st: &CaptureState) {
    match &st.capture {
        None => println!("{seat} has never been captured"),
        Some(c) => {
            println!("seat:     {seat}");
            println!("image:    {}", c.image);
            println!("status:   {}", c.status.as_str());
            if let (Some(d), Some(t)) = (c.done_bytes, c.total_bytes) {
                println!(
                    "copied:   {} of {} ({}/s{})",
                    Size(d),
                    Size(t),
                    Size(c.rate.unwrap_or(0)),
                    c.seconds_left
                        .map_or_else(String::new, |s| format!(", about {s} s left"))
                );
            }
            if let Some(m) = &c.message {
                println!("result:   {m}");
            }
        }
    }
    if st.environment.built {
        println!("environment: built ({})", st.environment.dir);
    } else {
        println!(
            "environment: NOT built; put vmlinuz and initrd.gz from images/capture/build.sh in {}",
            st.environment.dir
        );
    }
}

fn standby_cmd(client: &Client, out: &Out, cmd: StandbyCmd) -> anyhow::Result<()> {
    let when = |t: u64| khoi_web::pages::fmt_time(i64::try_from(t).unwrap_or(i64::MAX));
    match cmd {
        StandbyCmd::Status => {
            let s: sync::StandbyStatus = client.get("/v1/standby/status")?;
            out.print(&s, |s| {
                match &s.promoted {
                    Some(p) => println!("promoted in place of {}: {p}", s.primary),
                    None => println!("standby of {}", s.primary),
                }
                if s.last_snapshot == 0 {
                    println!("no verified snapshot yet");
                } else {
                    println!(
                        "last snapshot {} ({} seats)",
                        when(s.last_snapshot),
                        s.seats
                    );
                }
                if let Some(r) = &s.refused {
                    println!("refused: {r}");
                }
                if s.images_missing.is_empty() {
                    println!("images in sync: {}", s.images_held.join(", "));
                } else {
                    println!("images missing: {}", s.images_missing.join(", "));
                }
            })
        }
        StandbyCmd::Promote => {
            let p: standby::Promoted = client.post("/v1/standby/promote", &())?;
            out.print(&p, |p| {
                println!(
                    "promoted in place of {} (snapshot {}): {} seats restored; seats reboot onto this server",
                    p.primary,
                    when(p.snapshot),
                    p.restored.len()
                );
                for s in &p.kept {
                    println!("seat {s}: already here, left as it is");
                }
                for s in &p.unpinned {
                    println!("seat {s}: its pinned version is not here, it follows the current one");
                }
                for (s, e) in &p.failed {
                    println!("seat {s}: not restored: {e}");
                }
            })
        }
    }
}

fn sync_cmd(client: &Client, out: &Out, cmd: SyncCmd) -> anyhow::Result<()> {
    match cmd {
        SyncCmd::Keygen { .. } | SyncCmd::Pubkey { .. } => unreachable!("handled above"),
        SyncCmd::Now => {
            let r: () = client.post("/v1/sync/now", &())?;
            out.print(&r, |_| {
                println!("a sync pass starts now (see `khoi events`)")
            })
        }
        SyncCmd::Status => {
            let s: sync::SyncStatus = client.get("/v1/sync/status")?;
            out.print(&s, |s| {
                println!("{} {}", s.role, s.name);
                if s.last_pass == 0 {
                    println!("no pass finished yet");
                } else {
                    println!(
                        "last pass {}: {}",
                        khoi_web::pages::fmt_time(i64::try_from(s.last_pass).unwrap_or(i64::MAX)),
                        s.last_error.as_deref().unwrap_or("ok")
                    );
                }
                for (site, state) in &s.sites {
                    println!("site {site}: {state}");
                }
                if let Some(held) = &s.held {
                    for (image, versions) in &held.images {
                        for (id, h) in versions {
                            println!("{image} v{} = province v{} ({id})", h.local, h.number);
                        }
                    }
                }
            })
        }
        SyncCmd::Retire { image, version } => {
            let r: () = client.post(
                "/v1/sync/retire",
                &sync::RetireRequest {
                    image: image.clone(),
                    version,
                },
            )?;
            out.print(&r, |_| {
                println!("version {version} of {image} retired for every site")
            })
        }
    }
}

#[cfg(test)]
mod network_check_tests {
    use super::*;

    #[test]
    fn seats_on_networks_the_file_lacks_are_named() {
        let config = Config::parse(
            std::path::Path::new("khoi.yaml"),
            "listen:\n  iscsi: 0.0.0.0:3260\npxe:\n  - name: quay\n    interface: br0\n    \
             server_ip: 10.77.0.1\n    tftp_root: /t\n",
        )
        .expect("config");
        let seats = [
            ("pc01".to_string(), None),
            ("pc02".to_string(), Some("quay".to_string())),
            ("kiosk-1".to_string(), Some("public".to_string())),
        ];
        assert_eq!(seats_off_networks(&config, &seats), ["kiosk-1 (on public)"]);
        // Without a pxe section, every seat that names a network is off.
        let bare = Config::default();
        assert_eq!(
            seats_off_networks(&bare, &seats),
            ["pc02 (on quay)", "kiosk-1 (on public)"]
        );
    }
}
