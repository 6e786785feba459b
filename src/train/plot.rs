//! A dependency-free SVG picture of the training and validation loss curves.

/// Writes an SVG line chart of `train` and `val` losses, each a list of (step, loss).
pub fn loss_svg(train: &[(usize, f32)], val: &[(usize, f32)], title: &str) -> String {
    let (w, h, pad) = (800.0, 480.0, 60.0);
    let all = train.iter().chain(val).filter(|(_, l)| l.is_finite());
    let (mut x1, mut y0, mut y1) = (1usize, f32::MAX, f32::MIN);
    for &(s, l) in all {
        x1 = x1.max(s);
        y0 = y0.min(l);
        y1 = y1.max(l);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-6 {
        y1 = y0 + 1.0;
    }
    let px = |s: usize| pad + (w - 2.0 * pad) * s as f32 / x1 as f32;
    let py = |l: f32| h - pad - (h - 2.0 * pad) * (l - y0) / (y1 - y0);
    let path = |pts: &[(usize, f32)]| {
        pts.iter()
            .filter(|(_, l)| l.is_finite())
            .enumerate()
            .map(|(i, &(s, l))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, px(s), py(l)))
            .collect::<String>()
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        w / 2.0,
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    // Axes with five ticks each.
    svg += &format!(
        "<path d=\"M{pad},{pad} L{pad},{} L{},{}\" stroke=\"black\" fill=\"none\"/>\n",
        h - pad,
        w - pad,
        h - pad
    );
    for i in 0..=4 {
        let l = y0 + (y1 - y0) * i as f32 / 4.0;
        let s = x1 * i / 4;
        svg += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{l:.2}</text>\n", pad - 6.0, py(l) + 4.0);
        svg += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{s}</text>\n", px(s), h - pad + 20.0);
    }
    svg += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n", w / 2.0, h - 12.0);
    svg += &format!(
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">loss (nats/token)</text>\n",
        h / 2.0,
        h / 2.0
    );
    svg += &format!("<path d=\"{}\" stroke=\"#1f77b4\" stroke-width=\"1.5\" fill=\"none\"/>\n", path(train));
    svg += &format!("<path d=\"{}\" stroke=\"#d62728\" stroke-width=\"2\" fill=\"none\"/>\n", path(val));
    svg += &format!(
        "<text x=\"{}\" y=\"{pad}\" fill=\"#1f77b4\">train</text><text x=\"{}\" y=\"{}\" fill=\"#d62728\">validation</text>\n</svg>\n",
        w - pad - 90.0,
        w - pad - 90.0,
        pad + 18.0
    );
    svg
}
