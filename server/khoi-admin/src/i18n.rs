//! Every string of the web page, in Vietnamese (the default) and English.
//! One flat table: the officer's language is a cookie, and a missing key
//! shows the key itself rather than failing the page (the unit tests make
//! sure none is missing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    Vi,
    En,
}

impl Lang {
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
}

/// key, Vietnamese, English.
pub const TABLE: &[(&str, &str, &str)] = &[
    ("nav.dashboard", "Tổng quan", "Dashboard"),
    ("nav.images", "Ảnh đĩa", "Images"),
    ("nav.seats", "Máy trạm", "Seats"),
    ("nav.schedule", "Lịch khôi phục", "Schedule"),
    ("nav.audit", "Nhật ký", "Audit log"),
    ("nav.users", "Người dùng", "Users"),
    ("nav.logout", "Đăng xuất", "Log out"),
    ("role.admin", "quản trị", "admin"),
    ("role.operator", "vận hành", "operator"),
    ("role.viewer", "chỉ xem", "viewer"),
    ("offline", "tắt", "offline"),
    ("booting", "đang khởi động", "booting"),
    ("online", "đang chạy", "online"),
    ("maintenance", "bảo trì", "maintenance"),
    ("on-boot", "mỗi lần khởi động", "at every boot"),
    ("nightly", "hằng đêm", "nightly"),
    ("persistent", "giữ nguyên", "persistent"),
    ("action.delete", "Xoá", "Delete"),
    ("action.save", "Lưu", "Save"),
    (
        "login.intro",
        "Quản trị máy chủ khởi động không đĩa",
        "Diskless boot server administration",
    ),
    ("login.name", "Tên đăng nhập", "User name"),
    ("login.password", "Mật khẩu", "Password"),
    ("login.submit", "Đăng nhập", "Log in"),
    (
        "login.invalid",
        "Sai tên đăng nhập hoặc mật khẩu.",
        "Wrong user name or password.",
    ),
    (
        "login.limited",
        "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau vài phút.",
        "Too many failed logins. Try again in a few minutes.",
    ),
    (
        "login.setup_hint",
        "Chưa có tài khoản quản trị: mở đường dẫn cài đặt được in trong nhật ký máy chủ.",
        "No admin account yet: open the setup link printed in the server log.",
    ),
    (
        "setup.title",
        "Tạo tài khoản quản trị",
        "Create the admin account",
    ),
    (
        "setup.intro",
        "Mã dùng một lần được in trong nhật ký máy chủ khi khởi động lần đầu.",
        "The one-time token is printed in the server log at first start.",
    ),
    ("setup.token", "Mã cài đặt", "Setup token"),
    ("setup.submit", "Tạo tài khoản", "Create account"),
    ("error.home", "Về trang chủ", "Back to the dashboard"),
    (
        "err.cross_site",
        "Yêu cầu từ trang khác bị từ chối.",
        "Cross-site request refused.",
    ),
    (
        "err.csrf",
        "Mã bảo vệ biểu mẫu sai hoặc thiếu. Hãy tải lại trang và thử lại.",
        "Form protection token missing or wrong. Reload the page and try again.",
    ),
    (
        "err.forbidden",
        "Vai trò của bạn không được phép làm việc này.",
        "Your role is not allowed to do this.",
    ),
    ("err.login_required", "Cần đăng nhập.", "Login required."),
    ("err.too_large", "Yêu cầu quá lớn.", "Request too large."),
    ("msg.failed", "Không thực hiện được:", "Failed:"),
    ("msg.imported", "Đã nhập ảnh", "Imported image"),
    ("msg.deleted", "Đã xoá", "Deleted"),
    (
        "msg.draft_opened",
        "Đã mở bản nháp của",
        "Opened the draft of",
    ),
    (
        "msg.draft_discarded",
        "Đã huỷ bản nháp của",
        "Discarded the draft of",
    ),
    (
        "msg.published",
        "Đã phát hành phiên bản",
        "Published version",
    ),
    (
        "msg.current_now",
        "Phiên bản hiện hành bây giờ là",
        "Current version is now",
    ),
    ("msg.seat_added", "Đã thêm máy trạm", "Added seat"),
    ("msg.saved", "Đã lưu", "Saved"),
    ("msg.reset", "Số máy đã khôi phục:", "Seats reset:"),
    ("msg.reset_one", "Đã khôi phục máy", "Reset seat"),
    ("msg.skipped", "bỏ qua:", "skipped:"),
    (
        "msg.maintenance_on",
        "Đã bật chế độ bảo trì cho",
        "Maintenance mode on for",
    ),
    (
        "msg.maintenance_off",
        "Đã tắt chế độ bảo trì cho",
        "Maintenance mode off for",
    ),
    ("health.free", "Dung lượng trống", "Free space"),
    ("health.sessions", "Phiên đang mở", "Open sessions"),
    ("health.errors", "Lỗi trong 24 giờ", "Errors in 24 hours"),
    (
        "unknown.title",
        "Thiết bị lạ xin khởi động",
        "Unknown devices asking to boot",
    ),
    (
        "unknown.intro",
        "Các địa chỉ MAC này đã gửi yêu cầu PXE nhưng chưa được đăng ký. Chọn ảnh đĩa và bấm Đăng ký để tạo máy trạm.",
        "These MAC addresses sent PXE requests but are not registered. Pick an image and press Enrol to create a seat.",
    ),
    ("unknown.seen", "Lần cuối", "Last seen"),
    ("unknown.count", "Số lần", "Requests"),
    ("unknown.detail", "Chi tiết", "Detail"),
    ("unknown.enrol", "Đăng ký", "Enrol"),
    ("seats.none", "Chưa có máy trạm nào.", "No seats yet."),
    ("seats.add", "Thêm máy trạm", "Add seat"),
    (
        "seats.need_image",
        "Hãy nhập một ảnh đĩa trước khi thêm máy trạm.",
        "Import an image before adding seats.",
    ),
    ("seats.reset_all", "Khôi phục tất cả", "Reset all"),
    (
        "seats.confirm_reset_all",
        "Khôi phục TẤT CẢ máy trạm? Mọi thay đổi trên các máy sẽ bị xoá.",
        "Reset ALL seats? Every change made on them is thrown away.",
    ),
    ("seat.name", "Tên", "Name"),
    ("seat.state", "Trạng thái", "State"),
    ("seat.peer", "Địa chỉ", "Address"),
    ("seat.image", "Ảnh đĩa", "Image"),
    ("seat.version", "Phiên bản", "Version"),
    ("seat.active", "Đang dùng", "Running"),
    ("seat.latest", "mới nhất", "latest"),
    ("seat.pinned", "cố định", "pinned"),
    ("seat.last_boot", "Khởi động lần cuối", "Last boot"),
    ("seat.overlay", "Dữ liệu thay đổi", "Overlay use"),
    ("seat.throughput", "Tốc độ đọc/ghi", "Read/write rate"),
    ("seat.policy", "Khôi phục", "Reset policy"),
    (
        "seat.quota_gib",
        "Hạn mức (GiB, 0 = mặc định)",
        "Quota (GiB, 0 = default)",
    ),
    (
        "seat.initiator",
        "IQN máy trạm (tuỳ chọn)",
        "Initiator IQN (optional)",
    ),
    ("seat.mutual_chap", "CHAP hai chiều", "Mutual CHAP"),
    ("seat.reset", "Khôi phục ngay", "Reset now"),
    (
        "seat.confirm_reset",
        "Khôi phục máy này? Mọi thay đổi trên máy sẽ bị xoá.",
        "Reset this seat? Every change made on it is thrown away.",
    ),
    (
        "seat.confirm_delete",
        "Xoá máy trạm này?",
        "Remove this seat?",
    ),
    ("seat.maintenance_on", "Bật bảo trì", "Start maintenance"),
    ("seat.maintenance_off", "Tắt bảo trì", "End maintenance"),
    (
        "seat.maintenance_help",
        "Ở chế độ bảo trì, máy khởi động từ bản nháp của ảnh đĩa: cài phần mềm, cập nhật, rồi tắt máy và phát hành bản nháp thành phiên bản mới.",
        "In maintenance the seat boots the image's draft: install and update, shut it down, then publish the draft as a new version.",
    ),
    ("seat.status", "Tình trạng", "Status"),
    ("seat.iscsi", "Thông số iSCSI", "iSCSI details"),
    ("iscsi.target", "Target IQN", "Target IQN"),
    ("iscsi.portal", "Cổng (portal)", "Portal"),
    ("iscsi.chap_user", "Người dùng CHAP", "CHAP user"),
    ("iscsi.chap_secret", "Mật khẩu CHAP", "CHAP secret"),
    (
        "iscsi.mutual",
        "CHAP hai chiều (target)",
        "Mutual CHAP (target)",
    ),
    ("images.none", "Chưa có ảnh đĩa nào.", "No images yet."),
    ("image.name", "Tên ảnh", "Image name"),
    ("image.size", "Dung lượng", "Size"),
    ("image.current", "hiện hành", "current"),
    ("image.versions", "Phiên bản", "Versions"),
    ("image.draft", "Bản nháp", "Draft"),
    ("image.draft_open", "đang mở", "open"),
    ("image.rolled_back", "đã quay lui", "rolled back"),
    ("image.delete", "Xoá ảnh đĩa", "Delete image"),
    (
        "image.confirm_delete",
        "Xoá ảnh đĩa này cùng mọi phiên bản?",
        "Delete this image and all its versions?",
    ),
    (
        "import.path_title",
        "Nhập từ máy chủ",
        "Import from the server",
    ),
    (
        "import.path_intro",
        "Đường dẫn tới tệp ảnh đĩa trên máy chủ (raw, qcow2, vmdk, vhdx, vdi). Nếu tên ảnh đã có, tệp trở thành phiên bản mới.",
        "Path of a disk image on the server (raw, qcow2, vmdk, vhdx, vdi). If the image exists, the file becomes a new version.",
    ),
    ("import.path", "Đường dẫn", "Path"),
    ("import.submit", "Nhập", "Import"),
    (
        "import.upload_title",
        "Tải lên từ trình duyệt",
        "Upload from the browser",
    ),
    (
        "import.upload_intro",
        "Tệp được ghi thẳng vào thư mục tạm trên máy chủ rồi chuyển đổi nếu cần.",
        "The file is streamed into the server's staging folder, then converted if needed.",
    ),
    ("import.file", "Tệp ảnh đĩa", "Disk image file"),
    ("import.upload", "Tải lên", "Upload"),
    ("import.done", "Đã nhập xong", "Import finished"),
    ("import.staging", "Thư mục tạm:", "Staging folder:"),
    ("draft.title", "Bản nháp bảo trì", "Maintenance draft"),
    (
        "draft.is_open",
        "Bản nháp đang mở. Các máy đang bảo trì khởi động từ bản nháp này:",
        "A draft is open. Seats in maintenance boot from it:",
    ),
    (
        "draft.none",
        "Chưa có bản nháp. Mở bản nháp rồi bật bảo trì cho một máy để sửa ảnh đĩa.",
        "No draft. Open one, then put a seat in maintenance to change the image.",
    ),
    ("draft.open", "Mở bản nháp", "Open draft"),
    ("draft.publish", "Phát hành", "Publish"),
    (
        "draft.force",
        "Phát hành dù máy bảo trì còn chạy",
        "Publish even if a maintenance seat is running",
    ),
    ("draft.discard", "Huỷ bản nháp", "Discard draft"),
    (
        "draft.confirm_publish",
        "Phát hành bản nháp thành phiên bản mới? Các máy sẽ nhận phiên bản này ở lần khôi phục tiếp theo.",
        "Publish the draft as a new version? Seats get it at their next reset.",
    ),
    (
        "draft.confirm_discard",
        "Huỷ bản nháp? Mọi thay đổi trong bản nháp sẽ mất.",
        "Discard the draft? Every change in it is lost.",
    ),
    ("version.note", "Ghi chú", "Note"),
    ("version.author", "Người tạo", "Author"),
    ("version.date", "Ngày", "Date"),
    ("version.delta", "Dung lượng thay đổi", "Delta size"),
    ("version.used_by", "Máy đang dùng", "Used by"),
    ("version.make_current", "Dùng phiên bản này", "Make current"),
    (
        "version.confirm_current",
        "Đặt phiên bản này làm hiện hành (quay lui)? Các máy nhận nó ở lần khôi phục tiếp theo.",
        "Make this version current (roll back)? Seats get it at their next reset.",
    ),
    (
        "version.confirm_delete",
        "Xoá phiên bản này? Không thể hoàn tác.",
        "Delete this version? This cannot be undone.",
    ),
    (
        "version.help",
        "Chỉ xoá được phiên bản không phải hiện hành và không máy nào dùng.",
        "Only versions that are not current and used by no seat can be deleted.",
    ),
    ("schedule.title", "Khôi phục hằng đêm", "Nightly reset"),
    (
        "schedule.intro",
        "Các máy đang tắt được khôi phục về ảnh gốc theo lịch (giờ Việt Nam). Máy giữ nguyên và máy bảo trì không bị khôi phục.",
        "Offline seats are reset to their image on this schedule (Vietnam time). Persistent seats and seats in maintenance are left alone.",
    ),
    ("schedule.next", "Lần chạy tới", "Next run"),
    ("schedule.last", "Lần chạy trước", "Last run"),
    ("schedule.cron", "Biểu thức cron", "Cron expression"),
    (
        "schedule.cron_help",
        "Ví dụ: \"0 2 * * *\" là 02:00 mỗi ngày; \"30 22 * * 1-5\" là 22:30 từ thứ Hai đến thứ Sáu.",
        "Examples: \"0 2 * * *\" is 02:00 every day; \"30 22 * * 1-5\" is 22:30 Monday to Friday.",
    ),
    (
        "schedule.online",
        "Máy còn đang chạy",
        "Seats still running",
    ),
    ("schedule.skip", "Bỏ qua và báo cáo", "Skip and report"),
    ("schedule.force", "Vẫn khôi phục", "Reset anyway"),
    ("schedule.run_now", "Chạy ngay", "Run now"),
    (
        "schedule.confirm_run",
        "Chạy khôi phục ngay bây giờ?",
        "Run the reset now?",
    ),
    ("schedule.history", "Các lần chạy gần đây", "Recent runs"),
    // Event kinds, shown beside their codes in the audit log.
    ("ev.login", "Đăng nhập trang quản trị", "Admin login"),
    ("ev.logout", "Đăng xuất trang quản trị", "Admin logout"),
    ("ev.draft.discard", "Huỷ bản nháp", "Draft discarded"),
    ("ev.draft.open", "Mở bản nháp", "Draft opened"),
    (
        "ev.draft.publish",
        "Phát hành phiên bản mới",
        "New version published",
    ),
    ("ev.image.delete", "Xoá ảnh đĩa", "Image deleted"),
    ("ev.image.import", "Nhập ảnh đĩa", "Image imported"),
    (
        "ev.image.rollback",
        "Quay lui phiên bản",
        "Version rolled back",
    ),
    (
        "ev.image.version.delete",
        "Xoá phiên bản",
        "Version deleted",
    ),
    (
        "ev.iscsi.login",
        "Máy trạm kết nối ổ đĩa (iSCSI)",
        "iSCSI login",
    ),
    (
        "ev.iscsi.login.failed",
        "Kết nối ổ đĩa bị từ chối (iSCSI)",
        "iSCSI login refused",
    ),
    (
        "ev.iscsi.session.end",
        "Ngắt kết nối ổ đĩa (iSCSI)",
        "iSCSI session ended",
    ),
    (
        "ev.login.failed",
        "Đăng nhập quản trị sai",
        "Admin login failed",
    ),
    ("ev.nightly.run", "Khôi phục hằng đêm", "Nightly reset"),
    (
        "ev.nightly.seat.failed",
        "Khôi phục hằng đêm lỗi ở một máy",
        "Nightly reset failed for a seat",
    ),
    (
        "ev.nightly.seat.skipped",
        "Khôi phục hằng đêm bỏ qua một máy",
        "Nightly reset skipped a seat",
    ),
    (
        "ev.overlay.discarded",
        "Bỏ dữ liệu thay đổi không khớp phiên bản",
        "Overlay discarded (other version)",
    ),
    (
        "ev.overlay.full",
        "Hết chỗ ghi: lệnh ghi bị từ chối",
        "Overlay full: write refused",
    ),
    (
        "ev.overlay.quota",
        "Máy trạm dùng hết hạn mức ghi",
        "Seat reached its overlay quota",
    ),
    (
        "ev.pxe.unknown_mac",
        "Máy chưa đăng ký xin khởi động",
        "Unregistered machine tried to boot",
    ),
    (
        "ev.schedule.update",
        "Đổi lịch khôi phục",
        "Schedule changed",
    ),
    ("ev.seat.add", "Thêm máy trạm", "Seat added"),
    ("ev.seat.boot", "Máy trạm khởi động", "Seat booted"),
    (
        "ev.seat.boot.reset_failed",
        "Không khôi phục được khi khởi động",
        "Reset at boot failed",
    ),
    ("ev.seat.remove", "Xoá máy trạm", "Seat removed"),
    ("ev.seat.reset", "Khôi phục máy trạm", "Seat reset"),
    ("ev.seat.update", "Sửa máy trạm", "Seat changed"),
    ("ev.server.start", "Máy chủ khởi động", "Server started"),
    ("ev.server.stop", "Máy chủ dừng", "Server stopped"),
    ("ev.storage.low", "Ổ lưu trữ sắp đầy", "Storage almost full"),
    (
        "ev.storage.orphan",
        "Dọn tệp không còn dùng",
        "Unused file removed",
    ),
    ("ev.user.add", "Thêm người dùng", "User added"),
    ("ev.user.password", "Đổi mật khẩu", "Password changed"),
    ("ev.user.remove", "Xoá người dùng", "User removed"),
    (
        "ev.user.role",
        "Đổi vai trò người dùng",
        "User role changed",
    ),
    // Event details by kind, filled from the values the event recorded.
    (
        "evd.seat.boot",
        "Máy {mac} tải kịch bản khởi động (chính sách {policy})",
        "Boot script fetched by {mac} (policy {policy})",
    ),
    (
        "evd.seat.add",
        "MAC {mac}, ảnh {image}, phiên bản {version}, chính sách {policy}",
        "MAC {mac}, image {image}, version {version}, policy {policy}",
    ),
    (
        "evd.seat.reset",
        "Chuyển sang phiên bản {version} (trước là {was})",
        "Now on version {version} (was {was})",
    ),
    (
        "evd.seat.reset/2",
        "Về phiên bản {version}",
        "On version {version}",
    ),
    (
        "evd.pxe.unknown_mac",
        "Máy chưa đăng ký xin khởi động ({arch})",
        "Unregistered machine asked to boot ({arch})",
    ),
    (
        "evd.iscsi.login",
        "{initiator} kết nối từ {peer}, phiên {session}",
        "{initiator} from {peer}, session {session}",
    ),
    (
        "evd.iscsi.session.end",
        "{initiator} từ {peer} đã ngắt, phiên {session}",
        "{initiator} from {peer} left, session {session}",
    ),
    (
        "evd.overlay.quota",
        "Dữ liệu thay đổi đã đầy hạn mức {quota} byte; lệnh ghi mới bị từ chối đến khi khôi phục",
        "Overlay reached its quota of {quota} bytes; new writes fail until reset",
    ),
    (
        "evd.storage.low",
        "Ổ dữ liệu chỉ còn {free} byte, dưới ngưỡng {floor}; lệnh ghi mới bị từ chối",
        "Data filesystem has {free} bytes free, below the floor of {floor}; new writes fail",
    ),
    (
        "evd.storage.orphan",
        "Đã xoá một tệp không phiên bản hay máy nào dùng",
        "Removed a file no version or overlay uses",
    ),
    ("evd.server.start", "Dữ liệu tại {data}", "Data in {data}"),
    (
        "evd.image.import",
        "Phiên bản {version} ({bytes} byte): {note}",
        "Version {version} ({bytes} bytes): {note}",
    ),
    (
        "evd.image.import/2",
        "Phiên bản {version} ({bytes} byte)",
        "Version {version} ({bytes} bytes)",
    ),
    (
        "evd.image.rollback",
        "Phiên bản hiện hành {from} → {to}",
        "Current version {from} → {to}",
    ),
    (
        "evd.image.version.delete",
        "Phiên bản {version}",
        "Version {version}",
    ),
    (
        "evd.draft.open",
        "Dựa trên phiên bản {version}",
        "Over version {version}",
    ),
    (
        "evd.draft.publish",
        "Phiên bản {version}: {note}",
        "Version {version}: {note}",
    ),
    (
        "evd.draft.publish/2",
        "Phiên bản {version}",
        "Version {version}",
    ),
    ("evd.user.add", "Vai trò {role}", "Role {role}"),
    ("evd.user.role", "Vai trò {role}", "Role {role}"),
    ("evd.user.password", "Đã đổi mật khẩu", "Password changed"),
    (
        "evd.schedule.update",
        "Lịch {cron}, máy còn chạy: {online}",
        "Schedule {cron}, seats still running: {online}",
    ),
    (
        "evd.nightly.seat.skipped",
        "Máy còn đang chạy nên không khôi phục",
        "Still online; not reset",
    ),
    (
        "evd.nightly.run",
        "{trigger}: khôi phục {reset_n}: {reset}; buộc khôi phục {forced_n}: {forced}; bỏ qua {skipped_n}: {skipped}; lỗi {failed_n}: {failed}",
        "{trigger}: reset {reset_n}: {reset}; forced {forced_n}: {forced}; skipped {skipped_n}: {skipped}; failed {failed_n}: {failed}",
    ),
    ("audit.time", "Thời gian", "Time"),
    ("audit.kind", "Loại", "Kind"),
    ("audit.actor", "Người thực hiện", "Who"),
    ("audit.source", "Từ địa chỉ", "From"),
    ("audit.subject", "Đối tượng", "Subject"),
    ("audit.detail", "Chi tiết", "Detail"),
    ("audit.text", "Tìm chữ", "Text"),
    ("audit.from", "Từ ngày", "From date"),
    ("audit.to", "Đến ngày", "To date"),
    ("audit.filter", "Lọc", "Filter"),
    ("audit.csv", "Xuất CSV", "Export CSV"),
    ("users.role", "Vai trò", "Role"),
    ("users.created", "Ngày tạo", "Created"),
    (
        "users.new_password",
        "mật khẩu mới (tuỳ chọn)",
        "new password (optional)",
    ),
    ("users.add", "Thêm người dùng", "Add user"),
    (
        "users.confirm_delete",
        "Xoá người dùng này?",
        "Remove this user?",
    ),
    (
        "users.roles_help",
        "Quản trị: mọi việc. Vận hành: khôi phục, phát hành, quản lý máy và ảnh đĩa, không quản lý người dùng. Chỉ xem: không thay đổi gì.",
        "Admin: everything. Operator: resets, publishing, seats and images, but not users. Viewer: cannot change anything.",
    ),
];

/// A readable name for an event kind, or `None` for kinds this build does
/// not know (the code itself is then shown alone).
pub fn event_kind(lang: Lang, kind: &str) -> Option<&'static str> {
    let key = format!("ev.{kind}");
    TABLE
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, vi, en)| match lang {
            Lang::Vi => *vi,
            Lang::En => *en,
        })
}

/// An event's detail worded in `lang` from the values it recorded, or `None`
/// when this build has no wording for the kind or the event lacks a value
/// every wording needs (events recorded before values were kept): the page
/// then shows the English detail as recorded. A kind may have several
/// wordings (`evd.<kind>`, `evd.<kind>/2`, ...); the first whose values are
/// all there is used.
pub fn event_detail(lang: Lang, kind: &str, args: &BTreeMap<String, String>) -> Option<String> {
    let key = format!("evd.{kind}");
    TABLE
        .iter()
        .filter(|(k, _, _)| {
            k.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .find_map(|(_, vi, en)| {
            fill(
                match lang {
                    Lang::Vi => vi,
                    Lang::En => en,
                },
                args,
            )
        })
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
    match TABLE.iter().find(|(k, _, _)| *k == key) {
        Some((_, vi, en)) => match lang {
            Lang::Vi => vi,
            Lang::En => en,
        },
        None => {
            tracing::warn!(key, "missing translation");
            "?"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_has_both_languages_once() {
        let mut seen = HashSet::new();
        for (k, vi, en) in TABLE {
            assert!(seen.insert(*k), "duplicate key {k}");
            assert!(!vi.trim().is_empty(), "{k} has no Vietnamese");
            assert!(!en.trim().is_empty(), "{k} has no English");
        }
    }

    /// Every key a template or the page code asks for exists.
    #[test]
    fn every_used_key_is_translated() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/templates");
        let templates: Vec<String> = std::fs::read_dir(dir)
            .expect("templates dir")
            .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
            .collect();
        let code = include_str!("web.rs").to_string();
        let keys: HashSet<&str> = TABLE.iter().map(|(k, _, _)| *k).collect();
        let mut missing = Vec::new();
        let mut check = |src: &str, markers: &[&str]| {
            for marker in markers {
                for part in src.split(marker).skip(1) {
                    if let Some(key) = part.split('"').next()
                        && !keys.contains(key)
                    {
                        missing.push(key.to_string());
                    }
                }
            }
        };
        for t in &templates {
            check(t, &["p.t(\"", "{{ t(\""]);
        }
        check(&code, &["t(ctx.lang, \"", ", lang, \"", "ok_msg(&ctx, \""]);
        // Keys chosen at run time: seat states and reset policies.
        for key in [
            "offline",
            "booting",
            "online",
            "maintenance",
            "on-boot",
            "nightly",
            "persistent",
        ] {
            if !keys.contains(key) {
                missing.push(key.into());
            }
        }
        assert!(missing.is_empty(), "untranslated keys: {missing:?}");
    }

    /// Every event kind the server records has a name in both languages:
    /// the kinds are the string literals at the recording call sites.
    #[test]
    fn every_recorded_event_kind_is_named() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut sources = Vec::new();
        for krate in ["khoi", "khoi-admin", "khoi-state"] {
            let dir = format!("{root}/{krate}/src");
            for e in std::fs::read_dir(&dir).expect("src dir") {
                let path = e.expect("entry").path();
                if path.extension().is_some_and(|x| x == "rs") {
                    sources.push(std::fs::read_to_string(path).expect("read"));
                }
            }
        }
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
        let missing: Vec<_> = kinds
            .iter()
            .filter(|k| event_kind(Lang::Vi, k).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "event kinds without a name: {missing:?}"
        );
        // And no name for a kind nothing records.
        let unused: Vec<_> = TABLE
            .iter()
            .filter_map(|(k, _, _)| k.strip_prefix("ev."))
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
        for (k, vi, en) in TABLE {
            if let Some(kind) = k
                .strip_prefix("evd.")
                .map(|w| w.split('/').next().unwrap_or(w))
            {
                assert!(event_kind(Lang::Vi, kind).is_some(), "{k} has no kind name");
                for text in [vi, en] {
                    assert_eq!(text.matches('{').count(), text.matches('}').count(), "{k}");
                }
            }
        }
    }

    #[test]
    fn vietnamese_is_default() {
        assert_eq!(Lang::from_code("fr"), Lang::Vi);
        assert_eq!(t(Lang::default(), "nav.seats"), "Máy trạm");
        assert_eq!(t(Lang::En, "nav.seats"), "Seats");
    }
}
