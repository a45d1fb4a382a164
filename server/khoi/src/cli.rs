//! Command-line definitions. Every admin command talks to the running server
//! through its control socket, so changes take effect at once and are audited
//! exactly like changes made from the web page.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use khoi_state::ResetPolicy;

#[derive(Debug, Parser)]
#[command(name = "khoi", version, about = "Khoi diskless boot server")]
pub struct Cli {
    /// Server config (YAML). Without it, the embedded defaults apply.
    #[arg(long, global = true, env = "KHOI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder (overrides `data_dir` from the config).
    #[arg(long, global = true, env = "KHOI_DATA")]
    pub data: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Golden images and their versions.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Maintenance drafts: change an image, then publish it as a new version.
    #[command(subcommand)]
    Draft(DraftCmd),
    /// Seats (the workstations that boot from Khoi).
    #[command(subcommand)]
    Seat(SeatCmd),
    /// Print the one-time link that creates the first admin account (while
    /// there is none); only the server's owner can ask.
    SetupLink,
    /// Copy the state database and every image's version list into a new
    /// folder; safe while the server runs (layer files: see docs/operations.md).
    Backup { dest: PathBuf },
    /// Put a backup back into the data folder (the server must be stopped).
    Restore { src: PathBuf },
    /// Check this host before seats boot: boot interface, other DHCP servers,
    /// ports, firewall, space, time, iPXE files, version.
    Doctor,
    /// Province distribution: keys, a pass now, status, retirement.
    #[command(subcommand)]
    Sync(SyncCmd),
    /// The compliance report (directive item 4) of a period: seats, image
    /// versions with their gate results and overrides, nightly resets,
    /// admin actions. Days are YYYY-MM-DD in Vietnam time (default: the
    /// last 30 days); --pdf writes the Vietnamese A4 PDF to FILE.
    Report {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_name = "FILE")]
        pdf: Option<PathBuf>,
    },
    /// Warm standby: its state, and taking over from a dead primary.
    #[command(subcommand)]
    Standby(StandbyCmd),
    /// The audit and event log.
    Events {
        /// Only events about this seat, image or MAC.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncCmd {
    /// Make the province's signing key: the private key goes to FILE
    /// (owner-only, never replaced); the public key, for every site's
    /// `sync.trusted_keys`, is printed.
    Keygen { file: PathBuf },
    /// Print the public key of a private key file.
    Pubkey { file: PathBuf },
    /// Sync now instead of at the next interval.
    Now,
    /// What this server last did and, on a site, what it holds.
    Status,
    /// Publisher: order every site to remove a version (a site keeps it
    /// while one of its seats uses it).
    Retire { image: String, version: u32 },
}

#[derive(Debug, Subcommand)]
pub enum StandbyCmd {
    /// Its primary, the last verified snapshot, the images held.
    Status,
    /// Take over from the primary: restore the seats of its last verified
    /// snapshot and answer them (PXE, iSCSI). Seats reboot onto this server
    /// with fresh overlays. Move the service address first (keepalived).
    Promote,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Report unknown keys and bad values with file, line and column.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import a disk image (raw as is; qcow2, vmdk, vhdx and vdi are converted).
    /// Importing over an existing name adds a new version.
    Import {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List images.
    List,
    /// List an image's versions.
    Versions { name: String },
    /// Make an earlier version current again (seats move at their next reset).
    Rollback {
        name: String,
        #[arg(long)]
        to: u32,
        /// Admin only: make current a version that failed the image gate,
        /// with the reason (kept in the audit log with the findings).
        #[arg(long = "override", value_name = "REASON")]
        override_reason: Option<String>,
    },
    /// Run the image gate now on a version (NAME@N), the draft (NAME@draft)
    /// or the current version (NAME) and print what it found.
    Check { target: String },
    /// Admin only: open a draft (if none is open) and apply the safe
    /// remedies offline (saved passwords, browser password-manager
    /// policies, Wi-Fi profiles and service, Fast Startup, hiberfil.sys,
    /// the stored autologon password), then print what was fixed and what
    /// is left. Publish the draft afterwards as usual.
    Fix { name: String },
    /// Set the image's gate profile: counter (TTHC workstation) or kiosk
    /// (public computer, no enabled administrator at all).
    Profile {
        name: String,
        #[arg(value_parser = ["counter", "kiosk"])]
        profile: String,
    },
    /// Allow an account (user name, SID or RID) in Administrators on a
    /// counter image; --remove takes it off the allow-list.
    AllowAdmin {
        name: String,
        user: String,
        #[arg(long)]
        remove: bool,
    },
    /// Create an empty image (version 0, a blank disk) to install onto through
    /// its draft; the first publish becomes version 1.
    Create {
        name: String,
        /// Disk size, e.g. 64GiB.
        #[arg(long)]
        size: String,
    },
    /// Delete one version (refused while a seat uses it or it is current).
    DeleteVersion { name: String, version: u32 },
    /// Delete an image with all its versions (refused while seats use it).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DraftCmd {
    /// Open a maintenance draft over the image's current version (NBD export draft/IMAGE).
    Open { image: String },
    /// Publish the draft as the image's next version.
    Publish {
        image: String,
        #[arg(long)]
        note: String,
        /// Admin only: publish despite blocking findings of the image gate,
        /// with the reason (kept in the audit log with the findings).
        #[arg(long = "override", value_name = "REASON")]
        override_reason: Option<String>,
    },
    /// Throw the draft away.
    Discard { image: String },
}

#[derive(Debug, Subcommand)]
pub enum SeatCmd {
    /// Register a seat.
    Add(SeatAdd),
    /// List seats.
    List,
    /// Show a seat with its iSCSI target, portal, LUN and CHAP credentials.
    Show { name: String },
    /// A seat's recent boots: when DHCP, TFTP, the script, the first iSCSI
    /// login and the hand-over happened, and the bytes each boot read.
    Boots { name: String },
    /// Throw away a seat's changes (or every seat's with --all).
    Reset {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Power a seat on with Wake-on-LAN (or every seat with --all), on its
    /// boot network's interface (`pxe.interface`).
    Wake {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Move a seat to another boot network (a `name` under `pxe`); it is
    /// answered only there from its next boot on.
    Network { name: String, network: String },
    /// Remove a seat and its overlay.
    Remove { name: String },
    /// Capture mode: the seat's next network boot copies its local disk into
    /// the new image NEW (version 1); --status shows the progress, --cancel
    /// ends capture mode.
    Capture {
        name: String,
        #[arg(long, value_name = "NEW", required_unless_present_any = ["cancel", "status"])]
        image: Option<String>,
        #[arg(long, conflicts_with_all = ["image", "status"])]
        cancel: bool,
        #[arg(long, conflicts_with = "image")]
        status: bool,
    },
}

#[derive(Debug, Args)]
pub struct SeatAdd {
    pub name: String,
    #[arg(long)]
    pub mac: String,
    #[arg(long)]
    pub image: String,
    /// Pin a version; without it the seat follows the image's current version.
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long, value_parser = parse_policy, default_value = "on-boot")]
    pub policy: ResetPolicy,
    /// Overlay quota, e.g. 20GiB (default: the server's default_seat_quota).
    #[arg(long)]
    pub quota: Option<String>,
    /// Only this initiator IQN may log in to the seat's target.
    #[arg(long)]
    pub initiator_iqn: Option<String>,
    /// Mutual CHAP: the target proves itself to the seat with its own secret.
    #[arg(long)]
    pub mutual_chap: bool,
    /// The boot network the seat is answered on (default: the first under `pxe`).
    #[arg(long)]
    pub network: Option<String>,
    /// Admin only: pin to a version that failed the image gate anyway, with
    /// the reason (kept in the audit log with the findings).
    #[arg(long = "override", value_name = "REASON")]
    pub override_reason: Option<String>,
}

fn parse_policy(s: &str) -> Result<ResetPolicy, String> {
    s.parse()
}
