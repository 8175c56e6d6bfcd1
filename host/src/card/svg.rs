//! The training-loss curve as a small standalone SVG.

use std::fmt::Write as _;

use crate::trainer_state::TrainerState;

/// The training loss per logged step as a small SVG line chart (no external assets).
pub fn loss_curve_svg(state: &TrainerState) -> Option<String> {
    let points: Vec<(f64, f64)> = state
        .log_history
        .iter()
        .filter_map(|e| e.loss.map(|l| (e.step as f64, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    if points.len() < 2 {
        return None;
    }
    let (width, height, margin) = (640.0, 320.0, 48.0);
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let y_max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let x_span = (x_max - x_min).max(1e-12);
    let y_span = (y_max - y_min).max(1e-12);
    let x = |v: f64| margin + (v - x_min) / x_span * (width - 2.0 * margin);
    let y = |v: f64| height - margin - (v - y_min) / y_span * (height - 2.0 * margin);
    let path: Vec<String> = points
        .iter()
        .map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{margin}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" "),
        b = height - margin,
        r = width - margin,
    );
    let label = |svg: &mut String, x: f64, y: f64, anchor: &str, text: String| {
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"{anchor}\">{text}</text>"
        );
    };
    label(
        &mut svg,
        margin - 6.0,
        margin + 4.0,
        "end",
        format!("{y_max:.3}"),
    );
    label(
        &mut svg,
        margin - 6.0,
        height - margin,
        "end",
        format!("{y_min:.3}"),
    );
    label(
        &mut svg,
        margin,
        height - margin + 16.0,
        "middle",
        format!("{x_min}"),
    );
    label(
        &mut svg,
        width - margin,
        height - margin + 16.0,
        "middle",
        format!("{x_max}"),
    );
    label(
        &mut svg,
        width / 2.0,
        height - 10.0,
        "middle",
        "step".into(),
    );
    label(
        &mut svg,
        width / 2.0,
        20.0,
        "middle",
        "training loss".into(),
    );
    svg.push_str("</svg>\n");
    Some(svg)
}
