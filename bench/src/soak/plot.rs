//! The soak's plot: PSS, open descriptors and outcomes per interval over time, four panels
//! of one PNG (plotters' bitmap backend; text by ab_glyph from Debian's DejaVu Sans).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::Run;
use super::load::Group;
use super::sample::Sample;

/// fonts-dejavu-core's file: read at run time, so no font library is linked.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";

pub fn draw(run: &Run, png: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("{FONT} (apt-get install fonts-dejavu-core)"))?;
    // Registered once per process; the plot is drawn once.
    plotters::style::register_font(
        FAMILY,
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a font ab_glyph reads"))?;
    let root = BitMapBackend::new(png, (1400, 1500)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "streamgate soak: {} s, {} clients, seed {}",
        run.args.secs, run.args.concurrency, run.seed
    );
    let root = root.titled(&title, (FAMILY, 28))?;
    let panels = root.split_evenly((4, 1));
    let secs = run.args.secs as f64 + 5.0;
    let s = &run.samples;

    let mib = |k: u64| k as f64 / 1024.0;
    // The gateway's and the sidecar's own PSS apart from the jobs': growth of the first two
    // is what the run judges, and the jobs' hundreds of MiB would flatten them.
    let own: [(&str, fn(&Sample) -> u64, RGBColor); 2] = [
        ("gateway", |s| s.gateway_pss, BLUE),
        ("sidecar", |s| s.sidecar_pss, RED),
    ];
    let top = s
        .iter()
        .map(|x| mib(x.gateway_pss.max(x.sidecar_pss)))
        .fold(1.0, f64::max);
    panel(
        &panels[0],
        "PSS of the gateway and the sidecar processes (MiB)",
        secs,
        top * 1.2,
        own.iter().map(|(name, get, color)| {
            (
                name.to_string(),
                *color,
                s.iter()
                    .map(|x| (x.at.as_secs_f64(), mib(get(x))))
                    .collect(),
            )
        }),
    )?;
    let top = s.iter().map(|x| mib(x.jobs_pss)).fold(1.0, f64::max);
    panel(
        &panels[1],
        "PSS of the jobs: yt-dlp, ffmpeg, the warm pool (MiB)",
        secs,
        top * 1.2,
        std::iter::once((
            "jobs".to_owned(),
            GREEN,
            s.iter()
                .map(|x| (x.at.as_secs_f64(), mib(x.jobs_pss)))
                .collect(),
        )),
    )?;

    let fds: [(&str, fn(&Sample) -> usize, RGBColor); 3] = [
        ("gateway fds", |s| s.gateway_fds, BLUE),
        ("sidecar fds", |s| s.sidecar_fds, RED),
        ("job processes", |s| s.jobs, GREEN),
    ];
    let top = s
        .iter()
        .map(|x| x.gateway_fds.max(x.sidecar_fds).max(x.jobs) as f64)
        .fold(1.0, f64::max);
    panel(
        &panels[2],
        "open descriptors, job processes",
        secs,
        top * 1.1,
        fds.iter().map(|(name, get, color)| {
            (
                name.to_string(),
                *color,
                s.iter()
                    .map(|x| (x.at.as_secs_f64(), get(x) as f64))
                    .collect(),
            )
        }),
    )?;

    // Requests finished per second in each sampling interval, by class.
    let colors = [GREEN, BLUE, CYAN, MAGENTA, RED, BLACK];
    let mut series: Vec<(String, RGBColor, Vec<(f64, f64)>)> = Group::ALL
        .iter()
        .zip(colors)
        .map(|(g, c)| (g.name().to_owned(), c, Vec::new()))
        .collect();
    let mut prev = &run.baseline;
    for x in s {
        let dt = (x.at.as_secs_f64() - prev.at.as_secs_f64()).max(1e-3);
        for (i, serie) in series.iter_mut().enumerate() {
            serie.2.push((
                x.at.as_secs_f64(),
                (x.by_group[i] - prev.by_group[i]) as f64 / dt,
            ));
        }
        prev = x;
    }
    let top = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    panel(
        &panels[3],
        "requests finished per second, by class",
        secs,
        top * 1.1,
        series.into_iter(),
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    x_max: f64,
    y_max: f64,
    series: impl Iterator<Item = (String, RGBColor, Vec<(f64, f64)>)>,
) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds of load")
        .label_style((FAMILY, 14))
        .draw()?;
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
