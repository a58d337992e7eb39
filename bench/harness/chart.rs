//! The bar chart of the results (req/s and p99 per row) as a PNG, drawn with plotters into an
//! RGB buffer and encoded here (zlib via flate2, CRC via crc32fast) to keep image crates out.

use std::io::Write;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::FontStyle;

pub struct Bar {
    pub label: String,
    pub value: Option<f64>,
    pub color: RGBColor,
}

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_CANDIDATES
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(path)
                .map_err(|e| format!("{path}: {e}"))?
                .into_boxed_slice(),
        );
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws the bars of `$bars` on `$chart` (a chart whose x axis starts at `$x0`).
macro_rules! draw_bars {
    ($chart:expr, $bars:expr, $n:expr, $x0:expr, $e:expr) => {
        for (i, b) in $bars.iter().enumerate() {
            let s = $n - 1 - i as i32;
            match b.value {
                Some(v) => {
                    let mut bar = Rectangle::new(
                        [
                            ($x0, SegmentValue::Exact(s)),
                            (v, SegmentValue::Exact(s + 1)),
                        ],
                        b.color.filled(),
                    );
                    bar.set_margin(5, 5, 0, 0);
                    $chart.draw_series(std::iter::once(bar)).map_err($e)?;
                    $chart
                        .draw_series(std::iter::once(Text::new(
                            format!(" {}", fmt_value(v)),
                            (v, SegmentValue::CenterOf(s)),
                            ("sans-serif", 14).into_font().color(&BLACK),
                        )))
                        .map_err($e)?;
                }
                None => {
                    $chart
                        .draw_series(std::iter::once(Text::new(
                            " not run",
                            ($x0, SegmentValue::CenterOf(s)),
                            ("sans-serif", 14).into_font().color(&RED),
                        )))
                        .map_err($e)?;
                }
            }
        }
    };
}

/// One horizontal bar chart, row 1 on top; a log scale when the values span orders of
/// magnitude that a linear one would flatten (latency: milliseconds next to seconds).
fn panel(area: &Area<'_>, title: &str, unit: &str, bars: &[Bar], log: bool) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let n = bars.len() as i32;
    let values: Vec<f64> = bars
        .iter()
        .filter_map(|b| b.value)
        .filter(|v| *v > 0.0)
        .collect();
    let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    // Segment n-1-i holds bar i.
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(s) if (0..n).contains(s) => bars[(n - 1 - s) as usize].label.clone(),
        _ => String::new(),
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(330);
    if log {
        let min = values.iter().copied().fold(max, f64::min);
        let lo = 10f64.powf((min / 2.0).log10().floor());
        let hi = 10f64.powf((max * 3.0).log10().ceil());
        let mut chart = builder
            .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len())
            .y_label_formatter(&label)
            .y_label_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 13))
            .x_desc(format!("{unit} (log scale)"))
            .x_label_formatter(&|v| fmt_value(*v))
            .draw()
            .map_err(e)?;
        draw_bars!(chart, bars, n, lo, e);
    } else {
        let mut chart = builder
            .build_cartesian_2d(0f64..max * 1.22, (0..n).into_segmented())
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len())
            .y_label_formatter(&label)
            .y_label_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 13))
            .x_desc(unit)
            .x_label_formatter(&|v| fmt_value(*v))
            .draw()
            .map_err(e)?;
        draw_bars!(chart, bars, n, 0.0, e);
    }
    Ok(())
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v < 10_000.0 {
        format!("{v:.0}")
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        let t = format!("{v:.2}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Two panels, one above the other: requests per second and p99 latency, a bar per row.
pub fn draw(path: &Path, title: &str, rps: &[Bar], p99: &[Bar]) -> Result<(), String> {
    register_font()?;
    let (w, h) = (1200u32, 180 + 2 * (70 + 44 * rps.len() as u32));
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (head, body) = root.split_vertically(60);
        head.draw(&Text::new(
            title.to_string(),
            (14, 18),
            ("sans-serif", 20).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
        let (top, bottom) = body.split_vertically((h - 60) / 2);
        panel(
            &top,
            "Throughput: requests per second (higher is better)",
            "req/s",
            rps,
            false,
        )?;
        panel(
            &bottom,
            "Latency at full load: p99 (lower is better)",
            "ms",
            p99,
            true,
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    write_png(path, w, h, &buf)
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// An 8-bit RGB PNG: filter type 0 on every row, one zlib stream.
fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<(), String> {
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks((w * 3) as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw).map_err(|e| e.to_string())?;
    let idat = z.finish().map_err(|e| e.to_string())?;
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
}
