//! An SVG chart of each figure's ratio to its limit, with its target.

use crate::Row;

/// Render `rows` as a horizontal bar chart (ratio to the limit; a tick marks
/// the target ratio where there is one).
pub fn svg(rows: &[Row], title: &str) -> String {
    let bar_h = 22.0;
    let left = 300.0;
    let width = 900.0;
    let plot_w = width - left - 80.0;
    let max_ratio =
        rows.iter().map(|r| r.ratio).chain(rows.iter().filter_map(|r| r.target)).fold(1.0f64, f64::max);
    let scale = plot_w / (max_ratio * 1.05);
    let height = 60.0 + bar_h * rows.len() as f64 + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">bar: ratio to the limit measured in the same run (higher is better); red tick: target</text>\n",
        escape(title)
    );
    let x1 = left + scale;
    s.push_str(&format!(
        "<line x1=\"{x1:.1}\" y1=\"48\" x2=\"{x1:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{x1:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">1.0 = limit</text>\n",
        height - 22.0,
        height - 8.0
    ));
    for (i, r) in rows.iter().enumerate() {
        let y = 50.0 + bar_h * i as f64;
        let w = (r.ratio.max(0.0) * scale).min(plot_w * 1.2);
        let color = match r.meets_target {
            Some(true) => "#3a7d44",
            Some(false) => "#c0392b",
            None => "#4a6fa5",
        };
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{:.2}</text>\n",
            left - 6.0,
            y + bar_h * 0.7,
            escape(&r.name),
            bar_h - 6.0,
            left + w + 4.0,
            y + bar_h * 0.7,
            r.ratio
        ));
        if let Some(t) = r.target {
            let tx = left + t * scale;
            s.push_str(&format!(
                "<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"red\" stroke-width=\"2\"/>\n",
                y - 1.0,
                y + bar_h - 4.0
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
