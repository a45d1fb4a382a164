//! The report as a Vietnamese A4 PDF, made by the server itself (the
//! packaged service has no browser to print with).
//!
//! `krilla` writes the PDF and embeds a subset of each font with a
//! ToUnicode map, so the Vietnamese text can be searched and copied (and
//! `pdftotext` reads it back in the tests). The fonts are DejaVu from the
//! Debian package `fonts-dejavu-core` (free licence, every Vietnamese letter),
//! read at run time: nothing is vendored, and the Debian package depends on
//! it. The body is set in DejaVu Sans Mono so a table is columns of
//! characters: widths are exact without a shaper's measurements, and
//! Vietnamese text (NFC, one code point per letter) lines up.

use std::sync::Arc;

use chrono::{FixedOffset, TimeZone};
use krilla::Document;
use krilla::geom::Point;
use krilla::page::PageSettings;
use krilla::text::{Font, TextDirection};

use super::{ComplianceReport, EventRow, TITLE_VI};
use crate::gate::GateStatus;

/// Where Debian's `fonts-dejavu-core` puts its fonts.
pub const FONT_DIRS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/truetype/noto",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/noto",
    "/usr/share/fonts/TTF",
];

const A4_W: f32 = 595.28;
const A4_H: f32 = 841.89;
const MARGIN: f32 = 42.0;
const BODY_PT: f32 = 8.0;
/// Noto Sans Mono's advance is 600/1000 em.
const MONO_ADVANCE: f32 = 0.6;
const LINE: f32 = 11.0;

/// Characters on one body line.
fn columns() -> usize {
    let w = (A4_W - 2.0 * MARGIN) / (BODY_PT * MONO_ADVANCE);
    // Truncation is intended: a partial column does not fit.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = w.floor() as usize;
    n
}

/// The fonts the PDF embeds.
#[derive(Clone)]
pub struct Fonts {
    title: Font,
    mono: Font,
    mono_bold: Font,
    /// The characters each font has: (title, body).
    covered: Arc<(
        std::collections::HashSet<char>,
        std::collections::HashSet<char>,
    )>,
}

fn charset(bytes: &[u8]) -> std::collections::HashSet<char> {
    use skrifa::MetadataProvider;
    skrifa::FontRef::new(bytes).map_or_else(
        |_| std::collections::HashSet::new(),
        |f| {
            f.charmap()
                .mappings()
                .filter_map(|(c, _)| char::from_u32(c))
                .collect()
        },
    )
}

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fonts(DejaVu)")
    }
}

impl Fonts {
    /// Load DejaVu from the system (package `fonts-dejavu-core`).
    pub fn load() -> Result<Fonts, String> {
        let read = |name: &str, package: &str| -> Result<(Font, Vec<u8>), String> {
            for dir in FONT_DIRS {
                let p = std::path::Path::new(dir).join(name);
                if let Ok(bytes) = std::fs::read(&p) {
                    let font = Font::new(Arc::new(bytes.clone()).into(), 0)
                        .ok_or_else(|| format!("{} is not a font", p.display()))?;
                    return Ok((font, bytes));
                }
            }
            Err(format!(
                "font {name} not found in {}: install the Debian package {package}",
                FONT_DIRS.join(", ")
            ))
        };
        let (title, title_bytes) = read("DejaVuSans-Bold.ttf", "fonts-dejavu-core")?;
        let (mono, mono_bytes) = read("NotoSansMono-Regular.ttf", "fonts-noto-mono")?;
        let (mono_bold, _) = read("NotoSansMono-Bold.ttf", "fonts-noto-mono")?;
        Ok(Fonts {
            title,
            mono,
            mono_bold,
            covered: Arc::new((charset(&title_bytes), charset(&mono_bytes))),
        })
    }

    /// `text` with every character `font` lacks replaced by `?`.
    fn printable(&self, style: Style, text: &str) -> String {
        let set = if style == Style::Title {
            &self.covered.0
        } else {
            &self.covered.1
        };
        text.chars()
            .map(|c| if c == ' ' || set.contains(&c) { c } else { '?' })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Title,
    Heading,
    Body,
}

/// Date and time in Vietnam (UTC+7, no daylight saving).
pub fn vn_time(unix: i64) -> String {
    let tz = FixedOffset::east_opt(7 * 3600).unwrap_or_else(|| unreachable!("7 h is in range"));
    tz.timestamp_opt(unix, 0)
        .single()
        .map_or_else(|| "-".into(), |t| t.format("%d/%m/%Y %H:%M").to_string())
}

pub fn vn_date(unix: i64) -> String {
    let tz = FixedOffset::east_opt(7 * 3600).unwrap_or_else(|| unreachable!("7 h is in range"));
    tz.timestamp_opt(unix, 0)
        .single()
        .map_or_else(|| "-".into(), |t| t.format("%d/%m/%Y").to_string())
}

pub fn gate_vi(s: GateStatus) -> &'static str {
    match s {
        GateStatus::Passed => "Đạt",
        GateStatus::Warnings => "Có cảnh báo",
        GateStatus::Failed => "Không đạt",
        GateStatus::Overridden => "Đã bỏ qua",
        GateStatus::NotChecked => "Chưa kiểm tra",
    }
}

pub fn profile_vi(p: &str) -> &str {
    match p {
        "counter" => "Máy quầy",
        "kiosk" => "Máy công cộng",
        other => other,
    }
}

/// Cut or pad `s` to exactly `w` characters.
fn cell(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        let mut t = s.to_string();
        t.extend(std::iter::repeat_n(' ', w - n));
        t
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Split `s` into lines of at most `w` characters, at spaces when it can.
fn wrap(s: &str, w: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in s.split(' ') {
        let (ln, wn) = (line.chars().count(), word.chars().count());
        if ln > 0 && ln + 1 + wn > w {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > w {
            let head: String = line.chars().take(w).collect();
            line = line.chars().skip(w).collect();
            out.push(head);
        }
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

struct Lines {
    items: Vec<(Style, String)>,
    width: usize,
}

impl Lines {
    fn push(&mut self, style: Style, s: impl Into<String>) {
        self.items.push((style, s.into()));
    }
    fn text(&mut self, s: &str) {
        for l in wrap(s, self.width) {
            self.push(Style::Body, l);
        }
    }
    fn blank(&mut self) {
        self.push(Style::Body, "");
    }
    /// A table: a bold header row, a rule, then the rows.
    fn table(&mut self, widths: &[usize], head: &[&str], rows: &[Vec<String>]) {
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(widths)
                .map(|(c, w)| cell(c, *w))
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end()
                .to_string()
        };
        let head: Vec<String> = head.iter().map(|s| (*s).to_string()).collect();
        self.push(Style::Heading, line(&head));
        let total = widths.iter().sum::<usize>() + widths.len().saturating_sub(1);
        self.push(Style::Body, "-".repeat(total.min(self.width)));
        if rows.is_empty() {
            self.push(Style::Body, "(không có)");
        }
        for r in rows {
            self.push(Style::Body, line(r));
        }
    }
}

fn event_rows(events: &[EventRow], with_actor: bool) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            let mut r = vec![vn_time(e.ts)];
            if with_actor {
                r.push(e.actor.clone());
            }
            r.push(e.subject.clone());
            r.push(e.detail.clone());
            r
        })
        .collect()
}

/// The report's text, line by line, as the PDF sets it.
fn lines(r: &ComplianceReport) -> Lines {
    let width = columns();
    let mut l = Lines {
        items: Vec::new(),
        width,
    };
    l.push(Style::Title, TITLE_VI);
    l.blank();
    l.text("Đơn vị: ..............................................................");
    l.text(&format!("Ngày lập báo cáo: {}", vn_time(r.generated)));
    l.text(&format!(
        "Kỳ báo cáo: từ {} đến {}",
        vn_date(r.from),
        vn_date(r.to)
    ));
    let n = &r.network;
    l.text(&format!(
        "Máy chủ: {}",
        if n.server.is_empty() { "-" } else { &n.server }
    ));
    l.text(&format!(
        "Giao diện mạng phục vụ máy trạm: {}",
        if n.boot_interfaces.is_empty() {
            "(không bật khởi động qua mạng)".to_string()
        } else {
            n.boot_interfaces.join(", ")
        }
    ));
    if let Some(p) = &n.iscsi_portal {
        l.text(&format!("Cổng iSCSI: {p}"));
    }
    l.text(&format!(
        "Địa chỉ trang quản trị: {}",
        n.admin_address.as_deref().unwrap_or("(tắt)")
    ));
    l.blank();

    l.push(
        Style::Heading,
        format!("1. Máy trạm ({} máy)", r.seats.len()),
    );
    let seats: Vec<Vec<String>> = r
        .seats
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.image.clone(),
                s.version.map_or("-".into(), |v| {
                    if s.pinned {
                        format!("{v} (ghim)")
                    } else {
                        v.to_string()
                    }
                }),
                profile_vi(&s.profile).to_string(),
                s.policy.clone(),
                s.last_boot.map_or("-".into(), vn_time),
                s.last_reset.map_or("-".into(), vn_time),
            ]
        })
        .collect();
    l.table(
        &[18, 10, 10, 13, 9, 16, 16],
        &[
            "Máy",
            "Ảnh đĩa",
            "Phiên bản",
            "Loại máy",
            "Làm sạch",
            "Khởi động cuối",
            "Làm sạch cuối",
        ],
        &seats,
    );
    l.blank();

    l.push(
        Style::Heading,
        "2. Phiên bản ảnh đĩa và kết quả cổng kiểm tra",
    );
    let versions: Vec<Vec<String>> = r
        .versions
        .iter()
        .map(|v| {
            vec![
                v.image.clone(),
                format!("{}{}", v.version, if v.current { " *" } else { "" }),
                i64::try_from(v.created).map_or("-".into(), vn_date),
                gate_vi(v.gate).to_string(),
                format!("{}/{}", v.blocking, v.warnings),
                match (&v.override_by, &v.override_reason) {
                    (Some(by), Some(why)) => format!("{by}: {why}"),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    l.table(
        &[14, 6, 10, 13, 8, 43],
        &[
            "Ảnh đĩa",
            "PB",
            "Ngày tạo",
            "Kết quả",
            "Chặn/CB",
            "Bỏ qua bởi: lý do",
        ],
        &versions,
    );
    l.text("(* phiên bản hiện hành; Chặn/CB: số phát hiện mức chặn / cảnh báo)");
    l.blank();

    l.push(
        Style::Heading,
        format!(
            "3. Làm sạch hằng đêm trong kỳ ({} lần)",
            r.nightly_runs.len()
        ),
    );
    l.table(
        &[16, 14, 70],
        &["Thời điểm", "Đối tượng", "Kết quả"],
        &event_rows(&r.nightly_runs, false),
    );
    l.blank();

    l.push(
        Style::Heading,
        format!("4. Thao tác quản trị trong kỳ ({} thao tác)", r.admin_total),
    );
    let counts: Vec<Vec<String>> = r
        .admin_actions
        .iter()
        .map(|k| vec![k.kind.clone(), k.count.to_string()])
        .collect();
    l.table(&[40, 10], &["Loại thao tác", "Số lần"], &counts);
    l.blank();
    l.push(
        Style::Heading,
        format!("Các lần bỏ qua cổng kiểm tra ({} lần)", r.overrides.len()),
    );
    l.table(
        &[16, 12, 12, 60],
        &["Thời điểm", "Người", "Ảnh đĩa", "Nội dung và lý do"],
        &event_rows(&r.overrides, true),
    );
    l.blank();
    l.blank();
    l.push(Style::Heading, "5. Xác nhận");
    l.text("Người lập báo cáo (ký, ghi rõ họ tên): ..................................");
    l.blank();
    l.text("Cán bộ phụ trách an toàn thông tin (ký, ghi rõ họ tên): ..................");
    l.blank();
    l.text("Thủ trưởng đơn vị (ký tên, đóng dấu): ....................................");
    l.blank();
    l.text("Ngày ..... tháng ..... năm ........");
    l
}

/// Lay the report out on A4 pages.
pub fn render(r: &ComplianceReport, fonts: &Fonts) -> Result<Vec<u8>, String> {
    let mut doc = Document::new();
    let settings = PageSettings::from_wh(A4_W, A4_H).ok_or_else(|| "A4 page size".to_string())?;
    let all = lines(r);
    let bottom = A4_H - MARGIN;
    let mut i = 0;
    let mut page_no = 0;
    while i < all.items.len() {
        page_no += 1;
        let mut page = doc.start_page_with(settings.clone());
        let mut s = page.surface();
        let mut y = MARGIN;
        while i < all.items.len() {
            let (style, text) = &all.items[i];
            let (font, size, step) = match style {
                Style::Title => (fonts.title.clone(), 13.0, 20.0),
                Style::Heading => (fonts.mono_bold.clone(), BODY_PT, LINE),
                Style::Body => (fonts.mono.clone(), BODY_PT, LINE),
            };
            if y + step > bottom - LINE && y > MARGIN {
                break;
            }
            y += step;
            if !text.is_empty() {
                s.draw_text(
                    Point::from_xy(MARGIN, y),
                    font,
                    size,
                    &fonts.printable(*style, text),
                    false,
                    TextDirection::Auto,
                );
            }
            i += 1;
        }
        s.draw_text(
            Point::from_xy(MARGIN, A4_H - MARGIN / 2.0),
            fonts.mono.clone(),
            7.0,
            &format!("Khoi · {TITLE_VI} · trang {page_no}"),
            false,
            TextDirection::Auto,
        );
        s.finish();
        page.finish();
    }
    doc.finish().map_err(|e| format!("PDF: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_wraps_count_vietnamese_letters_as_one() {
        assert_eq!(cell("Đạt", 5), "Đạt  ");
        assert_eq!(cell("Không đạt", 5), "Khôn…");
        assert_eq!(wrap("một hai ba", 7), ["một hai", "ba"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert!(columns() >= 100, "{}", columns());
        assert_eq!(vn_time(0), "01/01/1970 07:00");
    }

    /// Every Vietnamese letter, in both cases, with every tone mark, is in
    /// both fonts: nothing in a report prints as `?`.
    #[test]
    fn fonts_cover_vietnamese() {
        let fonts = Fonts::load().expect("fonts-dejavu-core and fonts-noto-mono");
        let letters = "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ";
        let all: String = letters
            .chars()
            .chain(letters.chars().flat_map(char::to_uppercase))
            .chain("0123456789.,:;()/*-–…".chars())
            .collect();
        for style in [Style::Title, Style::Body] {
            assert_eq!(fonts.printable(style, &all), all, "{style:?}");
        }
        assert_eq!(fonts.printable(Style::Body, "a\u{2603}b"), "a?b");
    }
}
