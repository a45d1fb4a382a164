//! The directive's rules as data: one [`RuleInfo`] per [`RuleId`], with its
//! severity under each [`Profile`], the directive item it serves, and the
//! sentences (Vietnamese and English) the page, the CLI and the report show.
//! `docs/image-gate.md` is written from this table; a test keeps them in step.

use serde::{Deserialize, Serialize};

/// What an image is used for; rules and their severities depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// A TTHC (administrative procedures) workstation used by staff.
    Counter,
    /// A public computer: no enabled administrator at all.
    Kiosk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Reported, never refuses a publish.
    Warning,
    /// Refuses a publish unless an admin overrides it with a written reason.
    Blocking,
}

/// The item of the provincial directive a rule serves. `Boot` is not an item
/// of the directive: it is what keeps a diskless seat from hanging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectiveItem {
    /// 1: staff on standard user accounts only.
    StandardUsers,
    /// 2: wired LAN only, all Wi-Fi removed.
    WiredOnly,
    /// 3: public kiosks without an administrator account.
    KioskNoAdmin,
    /// 4: written rules and evidence (the gate's results themselves).
    Evidence,
    /// 5: no saved passwords for the TTHC and document systems.
    NoSavedPasswords,
    /// Boot readiness of a diskless seat (not a directive item).
    Boot,
}

impl DirectiveItem {
    /// The item number in the directive, `None` for [`DirectiveItem::Boot`].
    pub fn number(self) -> Option<u8> {
        match self {
            DirectiveItem::StandardUsers => Some(1),
            DirectiveItem::WiredOnly => Some(2),
            DirectiveItem::KioskNoAdmin => Some(3),
            DirectiveItem::Evidence => Some(4),
            DirectiveItem::NoSavedPasswords => Some(5),
            DirectiveItem::Boot => None,
        }
    }
}

/// Every rule the gate knows. The serialized names are stable: they are
/// stored with results and in per-image policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleId {
    SavedBrowserPassword,
    PasswordManagerChrome,
    PasswordManagerEdge,
    PasswordManagerCocCoc,
    ExtraAdministrator,
    BuiltinAdministratorEnabled,
    AutologonStoredPassword,
    AutologonAdministrator,
    WlanProfileSaved,
    WlanServiceEnabled,
    FastStartupEnabled,
    HiberfilPresent,
    VolumeHibernated,
    NoBootNetworkDriver,
    NtfsDirty,
    RegistryHiveDirty,
    UnknownFilesystem,
    EncryptedVolume,
    NoWindowsVolume,
    MalformedImage,
}

/// One rule's catalogue entry.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: RuleId,
    /// The directive items it serves.
    pub items: &'static [DirectiveItem],
    /// Severity under `counter`; `None`: the rule does not apply.
    pub counter: Option<Severity>,
    /// Severity under `kiosk`; `None`: the rule does not apply.
    pub kiosk: Option<Severity>,
    pub title_vi: &'static str,
    pub title_en: &'static str,
    pub fix_vi: &'static str,
    pub fix_en: &'static str,
    /// `khoi image fix` can apply the remedy offline (`fix::Remedy`).
    pub auto_fix: bool,
}

impl RuleInfo {
    pub fn severity(&self, profile: Profile) -> Option<Severity> {
        match profile {
            Profile::Counter => self.counter,
            Profile::Kiosk => self.kiosk,
        }
    }
}

use DirectiveItem as D;
use Severity::{Blocking as B, Warning as W};

/// The catalogue, in the order the docs and the page list it.
pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        id: RuleId::SavedBrowserPassword,
        items: &[D::NoSavedPasswords],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Trình duyệt còn lưu mật khẩu (Chrome, Edge hoặc Cốc Cốc) trong ảnh đĩa.",
        title_en: "A browser (Chrome, Edge or Cốc Cốc) has a saved password in the image.",
        fix_vi: "Xoá mật khẩu đã lưu trong trình duyệt (hoặc xoá tệp Login Data) rồi phát hành lại.",
        fix_en: "Delete the saved passwords in the browser (or the Login Data files), then publish again.",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::PasswordManagerChrome,
        items: &[D::NoSavedPasswords],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Chính sách chưa tắt trình quản lý mật khẩu của Google Chrome.",
        title_en: "Google Chrome's password manager is not disabled by policy.",
        fix_vi: "Đặt HKLM\\SOFTWARE\\Policies\\Google\\Chrome\\PasswordManagerEnabled = 0 (DWORD).",
        fix_en: "Set HKLM\\SOFTWARE\\Policies\\Google\\Chrome\\PasswordManagerEnabled = 0 (DWORD).",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::PasswordManagerEdge,
        items: &[D::NoSavedPasswords],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Chính sách chưa tắt trình quản lý mật khẩu của Microsoft Edge.",
        title_en: "Microsoft Edge's password manager is not disabled by policy.",
        fix_vi: "Đặt HKLM\\SOFTWARE\\Policies\\Microsoft\\Edge\\PasswordManagerEnabled = 0 (DWORD).",
        fix_en: "Set HKLM\\SOFTWARE\\Policies\\Microsoft\\Edge\\PasswordManagerEnabled = 0 (DWORD).",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::PasswordManagerCocCoc,
        items: &[D::NoSavedPasswords],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Chính sách chưa tắt trình quản lý mật khẩu của Cốc Cốc.",
        title_en: "Cốc Cốc's password manager is not disabled by policy.",
        fix_vi: "Đặt PasswordManagerEnabled = 0 (DWORD) ở cả HKLM\\SOFTWARE\\Policies\\CocCoc\\Browser và HKLM\\SOFTWARE\\Policies\\CocCoc\\CocCoc.",
        fix_en: "Set PasswordManagerEnabled = 0 (DWORD) under both HKLM\\SOFTWARE\\Policies\\CocCoc\\Browser and HKLM\\SOFTWARE\\Policies\\CocCoc\\CocCoc.",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::ExtraAdministrator,
        items: &[D::StandardUsers, D::KioskNoAdmin],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Có tài khoản quản trị (nhóm Administrators) đang bật ngoài danh sách cho phép (máy công cộng: không được có tài khoản quản trị nào).",
        title_en: "An enabled member of Administrators is not on the image's allow-list (kiosk: no enabled administrator at all).",
        fix_vi: "Chuyển tài khoản về người dùng chuẩn hoặc vô hiệu hoá nó; hoặc thêm vào danh sách cho phép của ảnh (chỉ với máy quầy).",
        fix_en: "Make the account a standard user or disable it; or add it to the image's allow-list (counter images only).",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::BuiltinAdministratorEnabled,
        items: &[D::StandardUsers, D::KioskNoAdmin],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Tài khoản Administrator có sẵn (RID 500) đang được bật.",
        title_en: "The built-in Administrator account (RID 500) is enabled.",
        fix_vi: "Vô hiệu hoá tài khoản Administrator có sẵn (net user Administrator /active:no).",
        fix_en: "Disable the built-in Administrator (net user Administrator /active:no).",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::AutologonStoredPassword,
        items: &[D::StandardUsers, D::KioskNoAdmin],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Tự động đăng nhập có lưu mật khẩu (Winlogon DefaultPassword hoặc bí mật LSA).",
        title_en: "Automatic logon has a stored password (Winlogon DefaultPassword or the LSA secret).",
        fix_vi: "Xoá DefaultPassword trong Winlogon và bí mật LSA DefaultPassword; máy công cộng chỉ tự đăng nhập vào người dùng chuẩn không mật khẩu.",
        fix_en: "Remove Winlogon's DefaultPassword and the LSA DefaultPassword secret; kiosks may only log on automatically to a standard user without a password.",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::AutologonAdministrator,
        items: &[D::KioskNoAdmin],
        counter: Some(W),
        kiosk: Some(B),
        title_vi: "Tự động đăng nhập vào một tài khoản quản trị.",
        title_en: "Automatic logon goes to an administrator account.",
        fix_vi: "Cho tự động đăng nhập vào một người dùng chuẩn, hoặc tắt AutoAdminLogon.",
        fix_en: "Log on automatically to a standard user, or turn AutoAdminLogon off.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::WlanProfileSaved,
        items: &[D::WiredOnly],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Ảnh đĩa còn lưu cấu hình mạng Wi-Fi.",
        title_en: "The image has saved Wi-Fi profiles.",
        fix_vi: "Xoá các tệp trong ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces (netsh wlan delete profile name=*).",
        fix_en: "Delete the files under ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces (netsh wlan delete profile name=*).",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::WlanServiceEnabled,
        items: &[D::WiredOnly],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Dịch vụ WLAN AutoConfig (WlanSvc) chưa bị vô hiệu hoá.",
        title_en: "The WLAN AutoConfig service (WlanSvc) is not disabled.",
        fix_vi: "Đặt Services\\WlanSvc\\Start = 4 (Disabled).",
        fix_en: "Set Services\\WlanSvc\\Start = 4 (Disabled).",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::FastStartupEnabled,
        items: &[D::Boot],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Khởi động nhanh (Fast Startup) hoặc ngủ đông đang bật: máy trạm không ổ cứng có thể treo khi khởi động.",
        title_en: "Fast Startup or hibernation is enabled: a diskless seat may hang at boot.",
        fix_vi: "Tắt ngủ đông (powercfg /h off) hoặc đặt Session Manager\\Power\\HiberbootEnabled = 0.",
        fix_en: "Turn hibernation off (powercfg /h off) or set Session Manager\\Power\\HiberbootEnabled = 0.",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::HiberfilPresent,
        items: &[D::Boot],
        counter: Some(W),
        kiosk: Some(W),
        title_vi: "Ảnh đĩa có tệp hiberfil.sys.",
        title_en: "The image has a hiberfil.sys file.",
        fix_vi: "Chạy powercfg /h off rồi tắt máy bình thường trước khi chụp ảnh.",
        fix_en: "Run powercfg /h off and shut down normally before capturing the image.",
        auto_fix: true,
    },
    RuleInfo {
        id: RuleId::VolumeHibernated,
        items: &[D::Boot],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Windows đang ngủ đông (hoặc tắt bằng khởi động nhanh) trong ảnh đĩa: không thể kiểm tra hay sửa an toàn.",
        title_en: "Windows is hibernated (or shut down by Fast Startup) in the image: it cannot be checked or fixed safely.",
        fix_vi: "Khởi động ảnh đĩa, tắt khởi động nhanh, rồi tắt máy hẳn (shutdown /s /t 0).",
        fix_en: "Boot the image, turn Fast Startup off, then shut down fully (shutdown /s /t 0).",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::NoBootNetworkDriver,
        items: &[D::Boot],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Không thấy trình điều khiển card mạng nào khởi động cùng hệ thống (Start = 0): máy trạm không ổ cứng sẽ lỗi INACCESSIBLE_BOOT_DEVICE.",
        title_en: "No boot-start network adapter driver (Start = 0) was found: a diskless seat will stop with INACCESSIBLE_BOOT_DEVICE.",
        fix_vi: "Đặt Start = 0 cho dịch vụ trình điều khiển card mạng của máy trạm (nhóm NDIS).",
        fix_en: "Set Start = 0 on the seats' network adapter driver service (group NDIS).",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::NtfsDirty,
        items: &[D::Boot],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Phân vùng NTFS bị đánh dấu lỗi (dirty): Windows chưa tắt sạch.",
        title_en: "An NTFS volume is marked dirty: Windows was not shut down cleanly.",
        fix_vi: "Khởi động ảnh đĩa, chạy chkdsk, rồi tắt máy hẳn.",
        fix_en: "Boot the image, run chkdsk, then shut down fully.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::RegistryHiveDirty,
        items: &[D::Evidence],
        counter: Some(W),
        kiosk: Some(W),
        title_vi: "Tệp registry còn nhật ký giao dịch chưa ghi: kết quả kiểm tra có thể chưa đầy đủ.",
        title_en: "A registry hive has unapplied transaction logs: the results may be stale.",
        fix_vi: "Khởi động ảnh đĩa rồi tắt máy hẳn để Windows ghi nhật ký vào registry.",
        fix_en: "Boot the image and shut down fully so Windows writes the logs into the hive.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::UnknownFilesystem,
        items: &[D::Evidence],
        counter: Some(W),
        kiosk: Some(W),
        title_vi: "Có phân vùng với hệ thống tệp không đọc được: không kiểm tra được.",
        title_en: "A partition has a filesystem the gate cannot read: it was not checked.",
        fix_vi: "Kiểm tra phân vùng này bằng tay, hoặc xoá nó khỏi ảnh đĩa.",
        fix_en: "Check this partition by hand, or remove it from the image.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::EncryptedVolume,
        items: &[D::Evidence],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Phân vùng được mã hoá BitLocker: không kiểm tra được và máy trạm không khởi động được.",
        title_en: "A volume is BitLocker-encrypted: it cannot be checked and seats cannot boot it.",
        fix_vi: "Tắt BitLocker trên máy mẫu (manage-bde -off C:) rồi chụp lại ảnh đĩa.",
        fix_en: "Turn BitLocker off on the template machine (manage-bde -off C:) and capture again.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::NoWindowsVolume,
        items: &[D::Evidence],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Không tìm thấy phân vùng Windows (NTFS có Windows\\System32\\config).",
        title_en: "No Windows volume (NTFS with Windows\\System32\\config) was found.",
        fix_vi: "Kiểm tra lại ảnh đĩa đã nhập: có thể sai tệp hoặc sai định dạng.",
        fix_en: "Check the imported image: it may be the wrong file or format.",
        auto_fix: false,
    },
    RuleInfo {
        id: RuleId::MalformedImage,
        items: &[D::Evidence],
        counter: Some(B),
        kiosk: Some(B),
        title_vi: "Ảnh đĩa có cấu trúc hỏng (bảng phân vùng, NTFS, registry hoặc SQLite): không kiểm tra hết được.",
        title_en: "The image has a malformed structure (partition table, NTFS, registry or SQLite): it could not be fully checked.",
        fix_vi: "Khởi động ảnh đĩa, chạy chkdsk, tắt máy hẳn rồi nhập lại; xem chi tiết lỗi.",
        fix_en: "Boot the image, run chkdsk, shut down fully and import again; see the detail.",
        auto_fix: false,
    },
];

/// The catalogue entry of `id`.
pub fn rule(id: RuleId) -> &'static RuleInfo {
    RULES
        .iter()
        .find(|r| r.id == id)
        .expect("every RuleId has a catalogue entry (tested)")
}

/// The whole catalogue, for the docs and the page.
pub fn rules() -> &'static [RuleInfo] {
    RULES
}

fn rule_name(id: RuleId) -> String {
    serde_json::to_string(&id)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

fn severity_text(s: Option<Severity>) -> &'static str {
    match s {
        Some(Severity::Blocking) => "chặn / blocking",
        Some(Severity::Warning) => "cảnh báo / warning",
        None => "không áp dụng / not applied",
    }
}

/// The rule catalogue as the Markdown `docs/image-gate.md` embeds between
/// its `rules:begin`/`rules:end` markers (a test checks they match).
pub fn rules_markdown() -> String {
    let mut out = String::new();
    for r in RULES {
        let items: Vec<String> = r
            .items
            .iter()
            .map(|i| match i.number() {
                Some(n) => format!("{n}"),
                None => "boot".to_string(),
            })
            .collect();
        out.push_str(&format!(
            "### `{}`\n\n\
             - Mục chỉ thị / directive item: {}\n\
             - Mức độ / severity: counter: {}; kiosk: {}\n\
             - Sửa tự động bằng `khoi image fix` / auto-fix by `khoi image fix`: {}\n\
             - vi: {} **Cách sửa:** {}\n\
             - en: {} **Fix:** {}\n\n",
            rule_name(r.id),
            items.join(", "),
            severity_text(r.counter),
            severity_text(r.kiosk),
            if r.auto_fix {
                "có / yes"
            } else {
                "không / no"
            },
            r.title_vi,
            r.fix_vi,
            r.title_en,
            r.fix_en,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_one_entry_and_the_docs_match() {
        let all = [
            RuleId::SavedBrowserPassword,
            RuleId::PasswordManagerChrome,
            RuleId::PasswordManagerEdge,
            RuleId::PasswordManagerCocCoc,
            RuleId::ExtraAdministrator,
            RuleId::BuiltinAdministratorEnabled,
            RuleId::AutologonStoredPassword,
            RuleId::AutologonAdministrator,
            RuleId::WlanProfileSaved,
            RuleId::WlanServiceEnabled,
            RuleId::FastStartupEnabled,
            RuleId::HiberfilPresent,
            RuleId::VolumeHibernated,
            RuleId::NoBootNetworkDriver,
            RuleId::NtfsDirty,
            RuleId::RegistryHiveDirty,
            RuleId::UnknownFilesystem,
            RuleId::EncryptedVolume,
            RuleId::NoWindowsVolume,
            RuleId::MalformedImage,
        ];
        assert_eq!(RULES.len(), all.len());
        for id in all {
            assert_eq!(RULES.iter().filter(|r| r.id == id).count(), 1, "{id:?}");
        }
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/image-gate.md"
        ))
        .expect("docs/image-gate.md exists");
        let begin = "<!-- rules:begin -->\n";
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let end = doc.find("<!-- rules:end -->").expect("end marker");
        assert!(
            doc[start..end] == rules_markdown(),
            "docs/image-gate.md is out of date; regenerate the rules section with \
             KHOI_WRITE_RULES_MD=1 cargo test -p khoi-inspect rules"
        );
    }

    /// `KHOI_WRITE_RULES_MD=1` rewrites the rules section of the docs.
    #[test]
    fn write_rules_markdown_when_asked() {
        if std::env::var_os("KHOI_WRITE_RULES_MD").is_none() {
            return;
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/image-gate.md");
        let doc = std::fs::read_to_string(path).expect("docs/image-gate.md exists");
        let begin = "<!-- rules:begin -->\n";
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let end = doc.find("<!-- rules:end -->").expect("end marker");
        let new = format!("{}{}{}", &doc[..start], rules_markdown(), &doc[end..]);
        std::fs::write(path, new).expect("write docs");
    }
}
