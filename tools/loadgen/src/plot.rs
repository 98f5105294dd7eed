//! SVG output: latency percentile curve (top) and per-second throughput (bottom).

use std::path::Path;

use plotters::prelude::*;

use crate::scenarios::Outcome;

/// Percentile on a "nines" axis: x=1 is p90, x=2 is p99, x=3 is p99.9.
fn quantile_at(nines: f64) -> f64 {
    1.0 - 10f64.powf(-nines)
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * quantile_at(*x);
    let s = format!("p{p:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn write_svg(path: &Path, o: &Outcome) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let r = &o.report;

    // Latency: value at each quantile up to the resolution the sample count supports.
    let h = &o.latency;
    let max_nines = if h.len() > 1 {
        (h.len() as f64).log10().clamp(1.0, 5.0)
    } else {
        1.0
    };
    let pts: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let x = max_nines * i as f64 / 200.0;
            (x, h.value_at_quantile(quantile_at(x).min(1.0)) as f64)
        })
        .collect();
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: latency distribution (us), n={}", r.scenario, h.len()),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_nines, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(max_nines.ceil() as usize + 1)
        .x_label_formatter(&nines_label)
        .draw()?;
    chart.draw_series(LineSeries::new(pts, &BLUE))?;

    // Throughput per second over the measurement window.
    let tl = &r.timeline_per_sec;
    let ymax = tl.iter().copied().fold(1.0, f64::max) * 1.1;
    let xmax = (tl.len().max(1)) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("throughput: {}", o.rate_label), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("second of window")
        .y_desc(o.rate_label)
        .draw()?;
    chart.draw_series(LineSeries::new(
        tl.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v)),
        &RED,
    ))?;
    root.present()?;
    Ok(())
}
