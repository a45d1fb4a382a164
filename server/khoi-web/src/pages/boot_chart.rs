//! Boot times as charts, drawn here as inline SVG (no script, no chart
//! library; the page's CSS colours the phases): one bar per boot, its
//! phases stacked left to right on a common time scale. The seat page shows
//! the seat's last boots; the dashboard shows the room's last morning, one
//! bar per seat, with the seats that were slow and the phase that made them
//! slow.
//!
//! Every text in the drawing is escaped: seat names pass the name rule, but
//! the chart does not rely on it.

use std::fmt::Write as _;

use khoi_state::{BootPhase, BootStep, BootTiming};

use super::fmt_bytes;
use crate::i18n::{Lang, t};

/// One bar.
#[derive(Debug, Clone)]
pub struct ChartRow {
    pub label: String,
    /// Where the label leads (the seat's page), if anywhere.
    pub href: Option<String>,
    pub timing: BootTiming,
    /// Said after the bar instead of the total (the dashboard's "slow: …").
    pub note: Option<String>,
}

const WIDTH: u32 = 720;
const LABEL_W: u32 = 130;
const BAR_W: u32 = 440;
const ROW_H: u32 = 22;
const BAR_H: u32 = 14;
const AXIS_H: u32 = 18;

/// The phase's name in `lang`.
pub fn phase_name(lang: Lang, phase: BootPhase) -> &'static str {
    match phase {
        BootPhase::Dhcp => t(lang, "boot.phase.dhcp"),
        BootPhase::Tftp => t(lang, "boot.phase.tftp"),
        BootPhase::Script => t(lang, "boot.phase.script"),
        BootPhase::Disk => t(lang, "boot.phase.disk"),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds with one decimal.
pub fn secs(ms: i64) -> String {
    format!("{}.{}", ms / 1000, (ms % 1000) / 100)
}

/// The time a boot's known phases add up to (its total when complete).
fn drawn_ms(b: &BootTiming) -> i64 {
    BootPhase::ALL.iter().filter_map(|p| b.phase_ms(*p)).sum()
}

/// A round scale end at or above `ms`: 1, 1.5, 2, 3, 5 or 7.5 times a
/// power of ten seconds, so the five ticks fall on round numbers and the
/// longest bar fills most of the width.
fn scale_end(ms: i64) -> i64 {
    let mut unit: i64 = 100;
    loop {
        for m in [10, 15, 20, 30, 50, 75] {
            if unit * m >= ms {
                return unit * m;
            }
        }
        unit = unit.saturating_mul(10);
    }
}

fn px(ms: i64, end: i64) -> u32 {
    let w = i64::from(BAR_W) * ms.max(0) / end.max(1);
    u32::try_from(w).unwrap_or(BAR_W).min(BAR_W)
}

/// What a bar's tooltip says: each phase, the total and the bytes read.
fn tooltip(lang: Lang, row: &ChartRow) -> String {
    let b = &row.timing;
    let mut parts = vec![row.label.clone()];
    for p in BootPhase::ALL {
        if let Some(ms) = b.phase_ms(p) {
            parts.push(format!("{} {} s", phase_name(lang, p), secs(ms)));
        }
    }
    match b.total_ms() {
        Some(ms) => parts.push(format!("{} {} s", t(lang, "boot.total"), secs(ms))),
        None => parts.push(t(lang, "boot.incomplete").to_string()),
    }
    if b.at(BootStep::Login).is_some() {
        parts.push(format!(
            "{} {}",
            t(lang, "boot.read"),
            fmt_bytes(b.bytes_read)
        ));
    }
    parts.join(" · ")
}

/// The chart of `rows` (top to bottom), or an empty string when there is
/// nothing to draw.
pub fn boot_chart(lang: Lang, rows: &[ChartRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let end = scale_end(rows.iter().map(|r| drawn_ms(&r.timing)).max().unwrap_or(0));
    let rows_h = u32::try_from(rows.len()).unwrap_or(u32::MAX / ROW_H) * ROW_H;
    let height = AXIS_H + rows_h + 4;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="boot-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}">"#,
        esc(t(lang, "boot.chart"))
    );
    // The time axis: five ticks from 0 to the scale's end.
    for i in 0..=5 {
        let ms = end * i / 5;
        let x = LABEL_W + px(ms, end);
        let _ = write!(
            svg,
            r#"<line class="tick" x1="{x}" y1="{AXIS_H}" x2="{x}" y2="{}"/><text class="axis" x="{x}" y="12" text-anchor="middle">{} s</text>"#,
            height - 2,
            secs(ms)
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let top = AXIS_H + u32::try_from(i).unwrap_or(0) * ROW_H;
        let text_y = top + 15;
        let label = esc(&row.label);
        match &row.href {
            Some(h) => {
                let _ = write!(
                    svg,
                    r#"<a href="{}"><text class="label" x="4" y="{text_y}">{label}</text></a>"#,
                    esc(h)
                );
            }
            None => {
                let _ = write!(
                    svg,
                    r#"<text class="label" x="4" y="{text_y}">{label}</text>"#
                );
            }
        }
        let _ = write!(
            svg,
            r#"<g class="boot" data-label="{label}"><title>{}</title>"#,
            esc(&tooltip(lang, row))
        );
        let mut x = LABEL_W;
        for p in BootPhase::ALL {
            let Some(ms) = row.timing.phase_ms(p) else {
                continue;
            };
            // A phase always shows, however short.
            let w = px(ms, end).max(1);
            let _ = write!(
                svg,
                r#"<rect class="ph-{}" x="{x}" y="{}" width="{w}" height="{BAR_H}" data-ms="{ms}"/>"#,
                p.as_str(),
                top + 4
            );
            x += w;
        }
        let after = match (&row.note, row.timing.total_ms()) {
            (Some(n), _) => n.clone(),
            (None, Some(ms)) => format!("{} s", secs(ms)),
            (None, None) => t(lang, "boot.incomplete").to_string(),
        };
        let class = if row.timing.complete() {
            "total"
        } else {
            "total stuck"
        };
        let _ = write!(
            svg,
            r#"<text class="{class}" x="{}" y="{text_y}">{}</text></g>"#,
            x + 6,
            esc(&after)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<i64>) -> Option<i64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Why a boot of the room's morning stands out, if it does: it did not
/// finish (and where it stopped), or it took half again the room's median
/// and at least 10 s more, because of the phase furthest above its own
/// median.
pub fn slow_reason(lang: Lang, b: &BootTiming, room: &[BootTiming]) -> Option<String> {
    let Some(total) = b.total_ms() else {
        let stuck = BootPhase::ALL
            .iter()
            .rev()
            .find(|p| b.at(p.start()).is_some())
            .map_or("", |p| phase_name(lang, *p));
        return Some(format!("{}: {stuck}", t(lang, "boot.incomplete")));
    };
    let mid = median(room.iter().filter_map(BootTiming::total_ms).collect())?;
    if total * 2 < mid * 3 || total - mid < 10_000 {
        return None;
    }
    let (phase, _) = BootPhase::ALL
        .iter()
        .filter_map(|p| {
            let ms = b.phase_ms(*p)?;
            let m = median(room.iter().filter_map(|r| r.phase_ms(*p)).collect()).unwrap_or(0);
            Some((*p, ms - m))
        })
        .max_by_key(|(_, excess)| *excess)?;
    Some(format!(
        "{} s · {}: {}",
        secs(total),
        t(lang, "boot.slow"),
        phase_name(lang, phase)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(seat: &str, phases: [i64; 4]) -> BootTiming {
        let mut at = 1_000_000;
        let mut steps = [None; 5];
        for (i, ms) in phases.iter().enumerate() {
            steps[i] = Some(at);
            at += ms;
        }
        steps[4] = Some(at);
        BootTiming {
            seat: seat.into(),
            steps,
            bytes_read: 200 << 20,
        }
    }

    fn row(b: BootTiming) -> ChartRow {
        ChartRow {
            label: b.seat.clone(),
            href: Some(format!("/seats/{}", b.seat)),
            timing: b,
            note: None,
        }
    }

    #[test]
    fn phases_are_stacked_in_order_on_one_scale() {
        let a = boot("pc01", [2_000, 1_000, 500, 16_500]);
        let mut stuck = boot("pc02", [3_000, 1_000, 0, 0]);
        stuck.steps[3] = None;
        stuck.steps[4] = None;
        let svg = boot_chart(Lang::En, &[row(a), row(stuck)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // 20 s is the longest drawn: the scale ends there, so 2 s is 44 px.
        assert!(svg.contains(">20.0 s</text>"), "{svg}");
        let dhcp = svg.find(r#"class="ph-dhcp" x="130""#).expect("dhcp first");
        let tftp = svg.find(r#"class="ph-tftp" x="174""#).expect("tftp after");
        let disk = svg.find(r#"class="ph-disk""#).expect("disk");
        assert!(dhcp < tftp && tftp < disk, "{svg}");
        assert!(svg.contains(r#"data-ms="16500""#));
        // The stuck boot draws what it reached and says it did not finish.
        assert_eq!(svg.matches("class=\"ph-disk\"").count(), 1);
        assert!(svg.contains(r#"<text class="total stuck""#), "{svg}");
        assert!(svg.contains(">Did not finish</text>"), "{svg}");
        assert!(svg.contains("Disk 16.5 s"), "tooltip: {svg}");
        assert!(svg.contains("Read 200 MiB"), "tooltip: {svg}");
        assert_eq!(boot_chart(Lang::En, &[]), "");
    }

    #[test]
    fn labels_and_notes_are_escaped() {
        let mut r = row(boot("x", [1, 1, 1, 1]));
        r.label = "<script>alert(1)</script>".into();
        r.href = Some("/seats/\"><script>".into());
        r.note = Some("a & b".into());
        let svg = boot_chart(Lang::Vi, &[r]);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(svg.contains(">a &amp; b</text>"));
    }

    #[test]
    fn slow_seats_are_named_with_the_phase_that_made_them_slow() {
        let room: Vec<BootTiming> = (0..9)
            .map(|i| boot(&format!("pc{i}"), [2_000, 1_000, 500, 20_000]))
            .chain([boot("slowdhcp", [40_000, 1_000, 500, 20_000])])
            .chain([boot("slowdisk", [2_000, 1_000, 500, 90_000])])
            .collect();
        assert_eq!(slow_reason(Lang::En, &room[0], &room), None);
        let why = slow_reason(Lang::En, &room[9], &room).expect("slow");
        assert!(why.ends_with("Slow: DHCP"), "{why}");
        let why = slow_reason(Lang::Vi, &room[10], &room).expect("slow");
        assert!(why.starts_with("93.5 s"), "{why}");
        assert!(why.ends_with(t(Lang::Vi, "boot.phase.disk")), "{why}");
        let mut stuck = boot("stuck", [2_000, 1_000, 0, 0]);
        stuck.steps[3] = None;
        stuck.steps[4] = None;
        let why = slow_reason(Lang::En, &stuck, &room).expect("stuck");
        assert_eq!(why, "Did not finish: Script");
        // A little over the median is not slow.
        let near = boot("near", [2_000, 1_000, 500, 29_000]);
        assert_eq!(slow_reason(Lang::En, &near, &room), None);
    }

    #[test]
    fn scales_end_on_round_numbers() {
        assert_eq!(scale_end(0), 1_000);
        assert_eq!(scale_end(1_500), 1_500);
        assert_eq!(scale_end(23_500), 30_000);
        assert_eq!(scale_end(51_000), 75_000);
        assert_eq!(scale_end(100_000), 100_000);
        assert_eq!(secs(16_549), "16.5");
    }
}
