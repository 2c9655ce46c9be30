//! SVG plots (plotters' SVG backend: no fonts or system libraries) and the markdown report.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::report::Summary;

type Res = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn run_plots(s: &Summary, dir: &Path) -> Res {
    detection(s, &dir.join("detection.svg"))?;
    profit(s, &dir.join("profit_vs_stake.svg"))?;
    catch_times(s, &dir.join("catch_times.svg"))
}

/// Measured detection per cheating strategy (95 % interval) against the theory.
fn detection(s: &Summary, path: &Path) -> Res {
    let rows: Vec<_> = s
        .strategies
        .iter()
        .filter(|x| x.detection_measured.is_some())
        .collect();
    let top = rows
        .iter()
        .map(|x| {
            x.ci95
                .map_or(0.0, |c| c[1])
                .max(x.detection_theory.unwrap_or(0.0))
        })
        .fold(s.q, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Detection per cheat receipt (q = {}, k = {}): measured ● with 95% CI, theory ✕",
                s.q, s.k
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
        .map_err(err)?;
    let names: Vec<&str> = rows.iter().map(|x| x.strategy).collect();
    chart
        .configure_mesh()
        .x_labels(rows.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).copied().unwrap_or("").to_string()
            } else {
                String::new()
            }
        })
        .y_desc("detection rate")
        .draw()
        .map_err(err)?;
    for (i, x) in rows.iter().enumerate() {
        let xi = i as f64;
        if let Some([lo, hi]) = x.ci95 {
            chart
                .draw_series(LineSeries::new(
                    vec![(xi, lo), (xi, hi)],
                    BLACK.stroke_width(2),
                ))
                .map_err(err)?;
        }
        if let Some(m) = x.detection_measured {
            chart
                .draw_series(std::iter::once(Circle::new((xi, m), 5, BLUE.filled())))
                .map_err(err)?;
        }
        if let Some(t) = x.detection_theory {
            chart
                .draw_series(std::iter::once(Cross::new(
                    (xi + 0.15, t),
                    6,
                    RED.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Profit per request against stake, per strategy, with the ledger's `S_min`.
fn profit(s: &Summary, path: &Path) -> Res {
    let curve = s.profit_curve();
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, rows) in &curve {
        for (_, p) in rows {
            lo = lo.min(*p);
            hi = hi.max(*p);
        }
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = (hi - lo).abs().max(1.0) * 0.05;
    let max_stake = curve.last().map_or(1.0, |c| c.0).max(1.0);
    let root = SVGBackend::new(path, (900, 550)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Profit per request vs stake (dashed: ledger S_min)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_stake, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("stake")
        .y_desc("profit per request")
        .draw()
        .map_err(err)?;
    for (i, x) in s.strategies.iter().enumerate() {
        let pts: Vec<(f64, f64)> = curve
            .iter()
            .filter_map(|(stake, rows)| {
                rows.iter()
                    .find(|(n, _)| *n == x.strategy)
                    .map(|(_, p)| (*stake, *p))
            })
            .collect();
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(x.strategy)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    let smin = s.s_min_ledger as f64;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(smin, lo - pad), (smin, hi + pad)],
            6,
            4,
            BLACK.into(),
        ))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Distribution (ECDF) of undetected cheats before each caught node's first catch.
fn catch_times(s: &Summary, path: &Path) -> Res {
    let max = s.catch_times.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Caught nodes: undetected cheats before the first catch (ECDF)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("cheats before first catch")
        .y_desc("share of caught nodes")
        .draw()
        .map_err(err)?;
    for (i, x) in s.strategies.iter().enumerate() {
        let mut v: Vec<u64> = s
            .catch_times
            .iter()
            .filter(|c| c.0 == x.strategy)
            .map(|c| c.1)
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let n = v.len() as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(j, c)| (*c as f64, (j + 1) as f64 / n))
            .collect();
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(x.strategy)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Lines of (x, y) per label, for the sweep's plots: points for measurements, dashed lines
/// for labels containing "theory".
pub fn lines(path: &Path, title: &str, x_desc: &str, series: &[(String, Vec<(f64, f64)>)]) -> Res {
    lines_signed(path, title, x_desc, "detection per cheat", series)
}

/// [`lines`] with any y range (negative values included) and a y label.
pub fn lines_signed(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Res {
    let (mut x_hi, mut y_lo, mut y_hi) = (0.0f64, 0.0f64, 0.0f64);
    for (_, pts) in series {
        for (x, y) in pts.iter().filter(|p| p.1.is_finite()) {
            x_hi = x_hi.max(*x);
            y_lo = y_lo.min(*y);
            y_hi = y_hi.max(*y);
        }
    }
    let pad = (y_hi - y_lo).max(1e-9) * 0.1;
    let y_lo = if y_lo < 0.0 { y_lo - pad } else { 0.0 };
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_hi.max(1e-9) * 1.05, y_lo..y_hi.max(1e-9) + pad)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, (label, pts)) in series.iter().enumerate() {
        // A measurement and its theory come in pairs and share a color.
        let c = COLORS[(i / 2) % COLORS.len()];
        let dashed = label.contains("theory");
        if dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, c.into()))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        } else {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The short markdown report of one run.
pub fn markdown(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# sortition sim report\n");
    let _ = writeln!(
        o,
        "{} nodes in {} classes, {} requests ({} served) in claims of {}, seed {}, q = {}, k = {}, beacon `{:?}`, stake {} (ledger S_min {}), C = {}, R = {}, policy r = {}.{}\n",
        s.nodes,
        s.classes,
        s.requests,
        s.requests_served,
        s.receipts_per_claim,
        s.seed,
        s.q,
        s.k,
        s.beacon,
        s.stake,
        s.s_min_ledger,
        s.cost,
        s.reward,
        s.policy_r,
        if s.interrupted {
            " **Interrupted: partial results.**"
        } else {
            ""
        }
    );
    if s.interrupted {
        let _ = writeln!(o, "_{}_\n", crate::report::INTERRUPTED_NOTE);
    }
    let _ = writeln!(
        o,
        "| strategy | nodes | cheats | caught | measured d | 95% CI | theory (ledger) | FACTS q(1-f^k) | cheats before 1st catch (theory / measured) | profit/request | break-even stake |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3e}"));
    for x in &s.strategies {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            x.strategy,
            x.nodes,
            x.cheats,
            x.cheats_caught,
            f(x.detection_measured),
            x.ci95
                .map_or("–".into(), |[a, b]| format!("[{a:.3e}, {b:.3e}]")),
            f(x.detection_theory),
            f(x.detection_facts),
            f(x.cheats_before_first_catch_theory),
            f(x.cheats_before_first_catch_measured),
            x.profit_per_request
                .map_or("–".into(), |v| format!("{v:.1}")),
            f(x.break_even_stake_measured),
        );
    }
    let _ = writeln!(
        o,
        "\nHonest slashes: **{}**. Wrongful slashes (a true verdict or an honest receipt): {} {:?}. Committee capture probability (colluders outvote a true mismatch): {:.2e}.\n",
        s.honest_slashes,
        s.wrongful_slashes,
        s.wrongful_slashes_by_reason,
        s.committee_capture_theory
    );
    for x in &s.strategies {
        if let Some(n) = &x.note {
            let _ = writeln!(o, "- {}: {}", x.strategy, n);
        }
    }
    let t = &s.timings_s;
    let _ = writeln!(
        o,
        "\nLedger: {} blocks, {} transactions ({} refused), {} audits, {} disputes, {} epochs, {} settled claims; {:.0} tx/s of ledger time; {:.0} requests/s overall; {:.2} s total (sign+verify {:.2}, ledger txs {:.2}, end-block {:.2}, beacon {:.2}, serve+merkle {:.2}, agents {:.2}, keys {:.2}).\n",
        s.blocks,
        s.txs,
        s.refused_txs,
        s.audits,
        s.disputes,
        s.epochs,
        s.settled_claims,
        s.ledger_tx_per_s,
        s.requests_per_s,
        t.total,
        t.sign_and_verify,
        t.ledger_txs,
        t.ledger_end_block,
        t.beacon,
        t.serve_and_merkle,
        t.agents,
        t.keys
    );
    let _ = writeln!(
        o,
        "Plots: `detection.svg`, `profit_vs_stake.svg`, `catch_times.svg`. Data: `strategies.csv`, `catch_times.csv`, `profit_vs_stake.csv`, `summary.json`."
    );
    o
}
/// Everything a run writes under `dir`: the summary's JSON and CSV files, the SVG plots and
/// `report.md`.
pub fn write(s: &Summary, dir: &std::path::Path) -> std::io::Result<()> {
    s.write(dir)?;
    run_plots(s, dir).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.md"), markdown(s))
}
