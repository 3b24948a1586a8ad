//! The report's plot: one horizontal bar per compared pair, how many times faster
//! multiproc's workload ran than the other's (log scale), drawn as SVG with plotters.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::compare::{Impl, Ratio};

const CPYTHON: RGBColor = RGBColor(0x30, 0x69, 0x98);
const PEER: RGBColor = RGBColor(0x3a, 0x9a, 0x5b);
const FLOOR: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);

/// Draws `ratios` into the SVG file `path`.
pub fn ratios(ratios: &[Ratio], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let n = ratios.len().max(1);
    let height = 110 + 24 * n as u32;
    let root = SVGBackend::new(path, (1280, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let lo = ratios.iter().map(|r| r.speedup).fold(1.0, f64::min) / 2.0;
    let hi = ratios.iter().map(|r| r.speedup).fold(1.0, f64::max) * 2.0;
    // Segment 0 is at the bottom: the first pair goes on top.
    let ratios: Vec<&Ratio> = ratios.iter().rev().collect();
    let labels: Vec<&str> = ratios.iter().map(|r| r.label.as_str()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "multiproc vs CPython (blue), other libraries (green) and the kernel floor (grey): \
             times faster",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(600)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_style(("sans-serif", 13))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).map_or_else(String::new, |l| l.to_string()),
            _ => String::new(),
        })
        .x_label_formatter(&|x| format!("{x}×"))
        .x_desc("times faster (log scale); left of 1× multiproc is slower")
        .draw()?;
    chart.draw_series(ratios.iter().enumerate().map(|(i, r)| {
        let color = match r.other {
            Impl::Floor => FLOOR,
            _ if r.label.contains("CPython") => CPYTHON,
            _ => PEER,
        };
        let mut bar = Rectangle::new(
            [
                (1.0, SegmentValue::Exact(i)),
                (r.speedup, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(ratios.iter().enumerate().map(|(i, r)| {
        let at = if r.speedup >= 1.0 {
            r.speedup * 1.08
        } else {
            r.speedup / 1.9
        };
        Text::new(
            show(r.speedup),
            (at, SegmentValue::CenterOf(i)),
            ("sans-serif", 12).into_font(),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK,
    )))?;
    root.present()?;
    Ok(())
}

/// A ratio with two significant digits at least (`0.038×`, `1.3×`, `61×`).
fn show(r: f64) -> String {
    let digits = match r {
        r if r >= 10.0 => 0,
        r if r >= 1.0 => 1,
        r if r >= 0.1 => 2,
        _ => 3,
    };
    format!("{r:.digits$}×")
}
