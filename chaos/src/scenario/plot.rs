//! A PNG picture of one chaos scenario's timeline.
//!
//! A scenario's verdict is a handful of numbers, but whether a fault was absorbed shows best on a
//! timeline: each scenario publishes a plot of throughput and errors (upper panel) and p99 latency
//! (lower panel) over time, with the fault window shaded and its events (kill, restart, …) marked,
//! so a reader sees at a glance when the errors started, how long they lasted and how fast the
//! cluster recovered.
//!
//! Text is drawn with a TrueType font loaded at run time (see [`write_png`]), so the binary does
//! not embed one and needs no fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// One time bucket of the load (e.g. 0.5 s or 1 s wide).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Start of the bucket, seconds since the load started.
    pub t: f64,
    /// Requests that completed in this bucket with the expected outcome.
    pub ok: u64,
    /// Requests that completed in this bucket with an unexpected outcome (error status, transport error, timeout).
    pub failed: u64,
    /// 99th percentile latency of the requests completed in this bucket, milliseconds (0.0 when none).
    pub p99_ms: f64,
}

/// A moment to mark with a vertical line and a label (e.g. "node 2 killed", "restarted").
#[derive(Debug, Clone)]
pub struct Marker {
    pub at: f64,
    pub label: String,
}

pub struct Plot<'a> {
    pub title: &'a str,
    /// Width of each bucket in seconds (rates are count / bucket_secs).
    pub bucket_secs: f64,
    pub samples: &'a [Sample],
    /// The fault window [start, end) in seconds, drawn as a shaded band.
    pub fault: (f64, f64),
    pub markers: &'a [Marker],
}

/// Overrides [`DEFAULT_FONT`]: the path of any TrueType/OpenType font file.
pub const FONT_ENV: &str = "GATEHOUSE_CHAOS_FONT";
/// Debian's `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 700;
/// The family every text style asks for; plotters' own defaults use it too.
const FAMILY: &str = "sans-serif";

const TITLE_SIZE: u32 = 24;
const LEGEND_SIZE: u32 = 16;
const TICK_SIZE: u32 = 15;
const AXIS_DESC_SIZE: u32 = 17;
const MARKER_SIZE: u32 = 15;

/// Shared by both panels so that their x axes line up.
const Y_LABEL_AREA: u32 = 84;
const RIGHT_MARGIN: u32 = 24;
const MARKER_ROW_HEIGHT: i32 = MARKER_SIZE as i32 + 6;
const MAX_MARKER_ROWS: usize = 4;
const MARKER_GAP: i32 = 10;

const OK_COLOR: RGBColor = RGBColor(31, 119, 180);
const FAILED_COLOR: RGBColor = RGBColor(214, 39, 40);
const P99_COLOR: RGBColor = RGBColor(117, 74, 165);
const FAULT_COLOR: RGBColor = RGBColor(255, 150, 30);
const FAULT_ALPHA: f64 = 0.18;
const MARKER_COLOR: RGBColor = RGBColor(70, 70, 70);
const GRID_LIGHT: RGBColor = RGBColor(242, 242, 242);
const GRID_BOLD: RGBColor = RGBColor(220, 220, 220);

/// Writes a PNG (about 1200x700) to `path`. Errors are human-readable strings (e.g. the font is missing).
///
/// The font is [`DEFAULT_FONT`] unless [`FONT_ENV`] names another file; it is read and registered
/// on the first call of the process, and that outcome (success or error) holds for later calls.
///
/// Empty `samples` still give a valid PNG: the title, the legend, empty axes spanning the fault
/// window and markers, and "no samples" in each panel. `bucket_secs` must be positive.
///
/// The picture is rendered next to `path` and renamed onto it, so `path` never holds half a PNG,
/// and its extension does not matter.
pub fn write_png(path: &Path, plot: &Plot) -> Result<(), String> {
    if !(plot.bucket_secs.is_finite() && plot.bucket_secs > 0.0) {
        return Err(format!(
            "plot {:?}: bucket width must be a positive number of seconds, got {}",
            plot.title, plot.bucket_secs
        ));
    }
    ensure_font()?;
    let timeline = Timeline::new(plot);
    let staging = staging_path(path);
    let result = render(&staging, plot, &timeline)
        .map_err(|e| format!("drawing plot {}: {e}", path.display()))
        .and_then(|()| {
            std::fs::rename(&staging, path)
                .map_err(|e| format!("writing plot {}: {e}", path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(load_font).clone()
}

fn load_font() -> Result<(), String> {
    match std::env::var_os(FONT_ENV).filter(|v| !v.is_empty()) {
        Some(p) => register(Path::new(&p), &format!("set by {FONT_ENV}")),
        None => register(
            Path::new(DEFAULT_FONT),
            &format!(
                "install it with `apt-get install fonts-dejavu-core`, \
                 or point {FONT_ENV} at another TrueType font"
            ),
        ),
    }
}

fn register(path: &Path, hint: &str) -> Result<(), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("plot font {} cannot be read ({e}); {hint}", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        format!(
            "plot font {} is not a TrueType/OpenType font; {hint}",
            path.display()
        )
    })
}

/// `timeline.png` is staged as `.timeline.png.partial.png`: plotters picks the image format
/// from the extension.
fn staging_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot".to_owned());
    path.with_file_name(format!(".{name}.partial.png"))
}

/// The plot's data in chart coordinates: each bucket is drawn at its middle.
struct Timeline {
    x: (f64, f64),
    ok: Vec<(f64, f64)>,
    failed: Vec<(f64, f64)>,
    /// Runs of consecutive buckets that have a latency; a bucket without one breaks the line.
    p99_runs: Vec<Vec<(f64, f64)>>,
    ok_total: u64,
    failed_total: u64,
    fault: Option<(f64, f64)>,
    markers: Vec<(f64, String)>,
}

impl Timeline {
    fn new(plot: &Plot) -> Self {
        let bucket = plot.bucket_secs;
        let samples: Vec<&Sample> = plot.samples.iter().filter(|s| s.t.is_finite()).collect();
        let ok = samples
            .iter()
            .map(|s| (s.t + bucket / 2.0, s.ok as f64 / bucket))
            .collect();
        let failed = samples
            .iter()
            .map(|s| (s.t + bucket / 2.0, s.failed as f64 / bucket))
            .collect();
        let mut p99_runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut run = Vec::new();
        for s in &samples {
            if s.p99_ms.is_finite() && s.p99_ms > 0.0 {
                run.push((s.t + bucket / 2.0, s.p99_ms));
            } else if !run.is_empty() {
                p99_runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            p99_runs.push(run);
        }
        let fault = Some(plot.fault).filter(|(a, b)| a.is_finite() && b.is_finite() && a < b);
        let mut markers: Vec<(f64, String)> = plot
            .markers
            .iter()
            .filter(|m| m.at.is_finite())
            .map(|m| (m.at, m.label.clone()))
            .collect();
        markers.sort_by(|a, b| a.0.total_cmp(&b.0));

        let mut lo: f64 = 0.0;
        let mut hi = f64::NEG_INFINITY;
        for s in &samples {
            lo = lo.min(s.t);
            hi = hi.max(s.t + bucket);
        }
        if let Some((start, _)) = fault {
            lo = lo.min(start);
        }
        let data_end = hi;
        for (at, _) in &markers {
            lo = lo.min(*at);
            hi = hi.max(*at);
        }
        if let Some((_, end)) = fault {
            hi = hi.max(end);
        }
        if hi <= lo {
            hi = lo + bucket.max(1.0);
        }
        if hi > data_end {
            hi += (hi - lo) * 0.02;
        }
        Timeline {
            x: (lo, hi),
            ok,
            failed,
            p99_runs,
            ok_total: samples.iter().map(|s| s.ok).sum(),
            failed_total: samples.iter().map(|s| s.failed).sum(),
            fault,
            markers,
        }
    }

    fn is_empty(&self) -> bool {
        self.ok.is_empty()
    }

    fn rate_max(&self) -> f64 {
        self.ok
            .iter()
            .chain(&self.failed)
            .map(|p| p.1)
            .fold(0.0, f64::max)
    }

    fn p99_points(&self) -> impl Iterator<Item = &(f64, f64)> {
        self.p99_runs.iter().flatten()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>;

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn text(size: u32, color: &RGBColor) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(color)
}

fn render(file: &Path, plot: &Plot, tl: &Timeline) -> Result<(), String> {
    let root = BitMapBackend::new(file, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(msg)?;
    let header = draw_header(&root, plot.title, tl)?;
    let (_, body) = root.split_vertically(header);
    let body = body.margin(4, 6, 10, 0);
    let upper_height = body.dim_in_pixel().1 * 54 / 100;
    let (upper, lower) = body.split_vertically(upper_height);
    rates_panel(&upper, tl)?;
    latency_panel(&lower, tl)?;
    root.present().map_err(msg)
}

enum Swatch {
    Line(RGBColor),
    LineWithDots(RGBColor),
    Band,
    Dashed,
}

/// Draws the title and the legend: on one line when they fit, else the legend below the title.
/// Returns the header's height.
fn draw_header(root: &Area, title: &str, tl: &Timeline) -> Result<u32, String> {
    const SWATCH: i32 = 28;
    const PAD: i32 = 16;
    let title_style = text(TITLE_SIZE, &BLACK);
    let legend_style = text(LEGEND_SIZE, &BLACK);
    let entries = [
        (
            Swatch::Line(OK_COLOR),
            format!("successful req/s (total {})", tl.ok_total),
        ),
        (
            Swatch::LineWithDots(FAILED_COLOR),
            format!("failed req/s (total {})", tl.failed_total),
        ),
        (Swatch::Line(P99_COLOR), "p99 latency".to_owned()),
        (Swatch::Band, "fault window".to_owned()),
        (Swatch::Dashed, "event".to_owned()),
    ];
    let mut widths = Vec::with_capacity(entries.len());
    for (_, label) in &entries {
        widths.push(
            root.estimate_text_size(label, &legend_style)
                .map_err(msg)?
                .0 as i32,
        );
    }
    let legend_width: i32 =
        widths.iter().map(|w| SWATCH + 6 + w).sum::<i32>() + 20 * (entries.len() as i32 - 1);
    let title_width = root.estimate_text_size(title, &title_style).map_err(msg)?.0 as i32;
    root.draw(&Text::new(title.to_owned(), (PAD, 10), title_style))
        .map_err(msg)?;

    let one_line = PAD + title_width + 40 + legend_width + PAD <= WIDTH as i32;
    let (mut x, y, height) = if one_line {
        (WIDTH as i32 - PAD - legend_width, 14, 44)
    } else {
        ((WIDTH as i32 - legend_width).max(PAD * 2) / 2, 46, 74)
    };
    for ((swatch, label), w) in entries.iter().zip(&widths) {
        let mid = y + LEGEND_SIZE as i32 / 2;
        match swatch {
            Swatch::Line(c) => {
                root.draw(&PathElement::new(
                    vec![(x, mid), (x + SWATCH, mid)],
                    c.stroke_width(2),
                ))
                .map_err(msg)?;
            }
            Swatch::LineWithDots(c) => {
                root.draw(&PathElement::new(
                    vec![(x, mid), (x + SWATCH, mid)],
                    c.stroke_width(2),
                ))
                .map_err(msg)?;
                root.draw(&Circle::new((x + SWATCH / 2, mid), 3, c.filled()))
                    .map_err(msg)?;
            }
            Swatch::Band => {
                root.draw(&Rectangle::new(
                    [(x, mid - 7), (x + SWATCH, mid + 7)],
                    FAULT_COLOR.mix(FAULT_ALPHA * 2.0).filled(),
                ))
                .map_err(msg)?;
            }
            Swatch::Dashed => {
                root.draw(&DashedPathElement::new(
                    vec![(x + SWATCH / 2, mid - 8), (x + SWATCH / 2, mid + 9)],
                    4,
                    3,
                    MARKER_COLOR.stroke_width(1),
                ))
                .map_err(msg)?;
            }
        }
        x += SWATCH + 6;
        root.draw(&Text::new(label.clone(), (x, y), legend_style.clone()))
            .map_err(msg)?;
        x += w + 20;
    }
    Ok(height)
}

fn rates_panel(area: &Area, tl: &Timeline) -> Result<(), String> {
    let build = |y_max: f64| {
        ChartBuilder::on(area)
            .margin_top(6)
            .margin_right(RIGHT_MARGIN)
            .x_label_area_size(8)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(tl.x.0..tl.x.1, 0.0..y_max)
            .map_err(msg)
    };

    // The marker labels sit in rows at the top of this panel; the y range leaves them room.
    let probe = build(1.0)?;
    let (px_range, py_range) = probe.plotting_area().get_pixel_range();
    let style = text(MARKER_SIZE, &MARKER_COLOR);
    let mut spans = Vec::with_capacity(tl.markers.len());
    for (at, label) in &tl.markers {
        let w = area.estimate_text_size(label, &style).map_err(msg)?.0 as i32;
        let px = probe.backend_coord(&(*at, 0.0)).0;
        let x0 = if px + 6 + w <= px_range.end - 2 {
            px + 6
        } else {
            (px - 6 - w).max(px_range.start + 2)
        };
        spans.push((x0, x0 + w));
    }
    drop(probe);
    let rows = stagger(&spans, MAX_MARKER_ROWS);
    let used_rows = rows.iter().map(|r| r + 1).max().unwrap_or(0) as i32;
    let plot_height = (py_range.end - py_range.start).max(1) as f64;
    let reserved = (used_rows * MARKER_ROW_HEIGHT + 8) as f64;
    let data_max = tl.rate_max();
    let y_max = if data_max > 0.0 {
        let headroom = if reserved < plot_height * 0.6 {
            plot_height / (plot_height - reserved)
        } else {
            1.0
        };
        data_max * headroom.max(1.08)
    } else {
        1.0
    };

    let mut chart = build(y_max)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| fmt_number(*v))
        .y_desc("requests/s")
        .label_style(text(TICK_SIZE, &BLACK))
        .axis_desc_style(text(AXIS_DESC_SIZE, &BLACK))
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .draw()
        .map_err(msg)?;
    draw_fault_and_markers(&mut chart, tl, 0.0, y_max)?;

    if tl.is_empty() {
        no_samples(&chart)?;
    } else {
        draw_rates(&mut chart, tl)?;
    }

    let base = area.get_base_pixel();
    for (((_, label), (x0, x1)), row) in tl.markers.iter().zip(&spans).zip(&rows) {
        let y = py_range.start + 4 + *row as i32 * MARKER_ROW_HEIGHT;
        let (x0, y, x1) = (x0 - base.0, y - base.1, x1 - base.0);
        area.draw(&Rectangle::new(
            [(x0 - 3, y - 2), (x1 + 3, y + MARKER_SIZE as i32 + 2)],
            WHITE.mix(0.85).filled(),
        ))
        .map_err(msg)?;
        area.draw(&Text::new(label.clone(), (x0, y), style.clone()))
            .map_err(msg)?;
    }
    Ok(())
}

fn draw_rates(chart: &mut Chart<'_, RangedCoordf64>, tl: &Timeline) -> Result<(), String> {
    chart
        .draw_series(LineSeries::new(
            tl.ok.iter().copied(),
            OK_COLOR.stroke_width(2),
        ))
        .map_err(msg)?;
    if tl.ok.len() == 1 {
        chart
            .draw_series(tl.ok.iter().map(|p| Circle::new(*p, 4, OK_COLOR.filled())))
            .map_err(msg)?;
    }
    chart
        .draw_series(LineSeries::new(
            tl.failed.iter().copied(),
            FAILED_COLOR.stroke_width(2),
        ))
        .map_err(msg)?;
    chart
        .draw_series(
            tl.failed
                .iter()
                .filter(|p| p.1 > 0.0)
                .map(|p| Circle::new(*p, 3, FAILED_COLOR.filled())),
        )
        .map_err(msg)?;
    Ok(())
}

fn latency_panel(area: &Area, tl: &Timeline) -> Result<(), String> {
    let (lo, hi, log) = latency_range(tl.p99_points().map(|p| p.1));
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(10)
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(52)
        .y_label_area_size(Y_LABEL_AREA);
    if log {
        let chart = builder
            .build_cartesian_2d(tl.x.0..tl.x.1, (lo..hi).log_scale())
            .map_err(msg)?;
        draw_latency(chart, tl, lo, hi, "p99 latency, ms (log scale)")
    } else {
        let chart = builder
            .build_cartesian_2d(tl.x.0..tl.x.1, lo..hi)
            .map_err(msg)?;
        draw_latency(chart, tl, lo, hi, "p99 latency, ms")
    }
}

/// A log scale once the latencies span more than a factor of 20, else linear from zero.
fn latency_range(values: impl Iterator<Item = f64>) -> (f64, f64, bool) {
    let (min, max) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if max <= 0.0 {
        (0.0, 1.0, false)
    } else if max / min > 20.0 {
        (min / 1.5, max * 1.5, true)
    } else {
        (0.0, max * 1.12, false)
    }
}

fn draw_latency<'a, Y>(
    mut chart: Chart<'a, Y>,
    tl: &Timeline,
    lo: f64,
    hi: f64,
    desc: &str,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_label_formatter(&|v| fmt_number(*v))
        .y_label_formatter(&|v| fmt_number(*v))
        .x_desc("time since the load started, s")
        .y_desc(desc)
        .label_style(text(TICK_SIZE, &BLACK))
        .axis_desc_style(text(AXIS_DESC_SIZE, &BLACK))
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .draw()
        .map_err(msg)?;
    draw_fault_and_markers(&mut chart, tl, lo, hi)?;
    if tl.is_empty() {
        return no_samples(&chart);
    }
    for run in &tl.p99_runs {
        if let [single] = run.as_slice() {
            chart
                .draw_series(std::iter::once(Circle::new(*single, 3, P99_COLOR.filled())))
                .map_err(msg)?;
        } else {
            chart
                .draw_series(LineSeries::new(
                    run.iter().copied(),
                    P99_COLOR.stroke_width(2),
                ))
                .map_err(msg)?;
        }
    }
    Ok(())
}

fn draw_fault_and_markers<Y>(
    chart: &mut Chart<'_, Y>,
    tl: &Timeline,
    lo: f64,
    hi: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    if let Some((start, end)) = tl.fault {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start, lo), (end, hi)],
                FAULT_COLOR.mix(FAULT_ALPHA).filled(),
            )))
            .map_err(msg)?;
    }
    for (at, _) in &tl.markers {
        chart
            .draw_series(DashedLineSeries::new(
                [(*at, lo), (*at, hi)],
                6,
                4,
                MARKER_COLOR.stroke_width(1),
            ))
            .map_err(msg)?;
    }
    Ok(())
}

fn no_samples<Y>(chart: &Chart<'_, Y>) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    let area = chart.plotting_area().strip_coord_spec();
    let (w, h) = area.dim_in_pixel();
    let style = text(AXIS_DESC_SIZE, &MARKER_COLOR).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Center,
    ));
    area.draw(&Text::new(
        "no samples",
        (w as i32 / 2, h as i32 / 2),
        style,
    ))
    .map_err(msg)
}

/// Assigns each label span (pixel `x0..x1`, sorted by `x0`) the first row where it does not
/// overlap the previous label; past `max_rows`, the row whose last label ends leftmost.
fn stagger(spans: &[(i32, i32)], max_rows: usize) -> Vec<usize> {
    let mut row_ends: Vec<i32> = Vec::new();
    spans
        .iter()
        .map(|&(x0, x1)| {
            let row = match row_ends.iter().position(|&end| end + MARKER_GAP <= x0) {
                Some(r) => r,
                None if row_ends.len() < max_rows => {
                    row_ends.push(i32::MIN);
                    row_ends.len() - 1
                }
                None => (0..row_ends.len())
                    .min_by_key(|&r| row_ends[r])
                    .unwrap_or(0),
            };
            row_ends[row] = row_ends[row].max(x1);
            row
        })
        .collect()
}

/// Tick labels: whole numbers without decimals, others with at most two.
fn fmt_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round() + 0.0)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// Checks the PNG signature and returns the IHDR chunk's width and height.
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).expect("the plot was written");
        assert!(
            bytes.len() > 33,
            "{} bytes is too short for a PNG",
            bytes.len()
        );
        assert_eq!(bytes[..8], PNG_SIGNATURE, "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR", "first chunk");
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    /// 60 s of load in 0.5 s buckets; a node is killed at 20 s and restarted at 35 s.
    fn timeline() -> Vec<Sample> {
        (0..120)
            .map(|i| {
                let t = i as f64 * 0.5;
                let in_fault = (20.0..35.0).contains(&t);
                let failed = match i {
                    _ if in_fault && i % 3 == 0 => 40,
                    _ if in_fault => 3,
                    100 => 1,
                    _ => 0,
                };
                Sample {
                    t,
                    ok: if in_fault { 900 } else { 1500 + (i % 7) * 10 },
                    failed,
                    p99_ms: if in_fault {
                        800.0 + t
                    } else {
                        12.0 + (i % 5) as f64
                    },
                }
            })
            .collect()
    }

    fn markers() -> Vec<Marker> {
        [
            "node 2 killed",
            "failover done",
            "restarted",
            "rejoined the cluster",
        ]
        .iter()
        .zip([20.0, 21.0, 35.0, 35.5])
        .map(|(label, at)| Marker {
            at,
            label: label.to_string(),
        })
        .collect()
    }

    #[test]
    fn writes_timeline_with_fault_failures_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kill-node.png");
        let samples = timeline();
        let markers = markers();
        let plot = Plot {
            title: "kill node 2: throughput, errors and p99 latency",
            bucket_secs: 0.5,
            samples: &samples,
            fault: (20.0, 35.0),
            markers: &markers,
        };
        write_png(&path, &plot).unwrap();
        assert_eq!(png_size(&path), (WIDTH, HEIGHT));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "kill-node.png")
            .collect();
        assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    }

    #[test]
    fn empty_samples_still_write_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let markers = markers();
        let plot = Plot {
            title: "no load at all",
            bucket_secs: 1.0,
            samples: &[],
            fault: (20.0, 35.0),
            markers: &markers,
        };
        write_png(&path, &plot).unwrap();
        assert_eq!(png_size(&path), (WIDTH, HEIGHT));

        let bare = Plot {
            title: "no load, no fault",
            bucket_secs: 1.0,
            samples: &[],
            fault: (0.0, 0.0),
            markers: &[],
        };
        write_png(&path, &bare).unwrap();
        assert_eq!(png_size(&path), (WIDTH, HEIGHT));
    }

    #[test]
    fn single_sample_without_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("single");
        let samples = [Sample {
            t: 0.0,
            ok: 10,
            failed: 0,
            p99_ms: 3.5,
        }];
        let plot = Plot {
            title: "one bucket",
            bucket_secs: 1.0,
            samples: &samples,
            fault: (0.2, 0.6),
            markers: &[],
        };
        write_png(&path, &plot).unwrap();
        assert_eq!(png_size(&path), (WIDTH, HEIGHT));
    }

    #[test]
    fn buckets_without_latency_and_a_wide_latency_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gaps.png");
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                t: i as f64,
                ok: if (10..15).contains(&i) { 0 } else { 100 },
                failed: if i == 12 { 5 } else { 0 },
                p99_ms: match i {
                    10 | 11 | 13 | 14 => 0.0,
                    12 => 5000.0,
                    _ => 2.0,
                },
            })
            .collect();
        let plot = Plot {
            title: "partition",
            bucket_secs: 1.0,
            samples: &samples,
            fault: (10.0, 15.0),
            markers: &[],
        };
        write_png(&path, &plot).unwrap();
        assert_eq!(png_size(&path), (WIDTH, HEIGHT));
        assert!(latency_range([2.0, 5000.0].into_iter()).2, "log scale");
        assert!(!latency_range([10.0, 50.0].into_iter()).2, "linear scale");
    }

    #[test]
    fn rejects_a_non_positive_bucket_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let plot = Plot {
            title: "bad",
            bucket_secs: 0.0,
            samples: &[],
            fault: (0.0, 0.0),
            markers: &[],
        };
        let err = write_png(&path, &plot).unwrap_err();
        assert!(err.contains("bucket width"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn close_marker_labels_go_to_separate_rows() {
        let spans = [(100, 200), (120, 180), (150, 260), (215, 300), (400, 450)];
        assert_eq!(stagger(&spans, 4), vec![0, 1, 2, 0, 0]);
        let crowded = [(0, 100), (10, 110), (20, 120)];
        assert_eq!(stagger(&crowded, 2), vec![0, 1, 0]);
    }

    #[test]
    fn font_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("DejaVuSans.ttf");
        let err = register(&missing, "install fonts-dejavu-core").unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("fonts-dejavu-core"), "{err}");

        let junk = dir.path().join("junk.ttf");
        std::fs::write(&junk, b"not a font").unwrap();
        let err = register(&junk, "hint").unwrap_err();
        assert!(err.contains("not a TrueType"), "{err}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_number(1500.0), "1500");
        assert_eq!(fmt_number(0.25), "0.25");
        assert_eq!(fmt_number(2.5), "2.5");
        assert_eq!(fmt_number(-0.0), "0");
    }
}
