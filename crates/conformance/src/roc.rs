//! The scoring audit's trade-off curves (ROC): for each rule, every tolerance at which some
//! answer changes side, with the share of honest answers it rejects (each costs a
//! re-execution) and the share of an adversary's answers it catches. Computed from each
//! decided answer's smallest passing tolerance ([`crate::worker::Thresholds`]), so a report's
//! JSON is enough to draw them again.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::report::AnswerThresholds;
use crate::worker::Thresholds;

/// The rules a sampled or greedy answer is scored by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Greedy answers: the logit slack below the argmax.
    LogitSlack,
    /// Sampled answers: the rank below the argmax.
    MaxRank,
    /// Sampled answers: the distance of the seeded draw's uniform from the token's interval.
    DrawSlack,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::LogitSlack, Rule::MaxRank, Rule::DrawSlack];

    pub fn name(self) -> &'static str {
        match self {
            Rule::LogitSlack => "greedy by logit slack",
            Rule::MaxRank => "sampled by max rank",
            Rule::DrawSlack => "sampled by seeded draw",
        }
    }

    /// The answers this rule scores, and the smallest tolerance passing each (`None`: none).
    fn of(self, t: &Thresholds) -> Option<Option<f64>> {
        match self {
            Rule::LogitSlack => t.greedy.then_some(t.logit_slack),
            Rule::MaxRank => (!t.greedy).then_some(t.max_rank),
            Rule::DrawSlack => (!t.greedy).then_some(t.draw_slack),
        }
    }
}

/// One point of a curve: at this tolerance, rejected honest answers and caught ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RocPoint {
    pub tolerance: f64,
    pub honest_rejected: usize,
    pub honest: usize,
    pub caught: usize,
    pub cheats: usize,
}

impl RocPoint {
    pub fn false_rejection(&self) -> f64 {
        self.honest_rejected as f64 / self.honest.max(1) as f64
    }
    pub fn detection(&self) -> f64 {
        self.caught as f64 / self.cheats.max(1) as f64
    }
}

/// One rule against one adversary.
#[derive(Clone, Debug)]
pub struct Curve {
    pub rule: Rule,
    pub adversary: &'static str,
    pub points: Vec<RocPoint>,
}

/// The curve of `rule` for honest answers against `cheats`: one point at each tolerance where
/// an answer passes (ascending), from the strictest (tolerance 0) to the loosest. Empty when
/// either side has no answer the rule scores.
pub fn curve(rule: Rule, honest: &[Thresholds], cheats: &[Thresholds]) -> Vec<RocPoint> {
    let pick =
        |v: &[Thresholds]| -> Vec<Option<f64>> { v.iter().filter_map(|t| rule.of(t)).collect() };
    let (h, c) = (pick(honest), pick(cheats));
    if h.is_empty() || c.is_empty() {
        return Vec::new();
    }
    let mut stops: Vec<f64> = h.iter().chain(&c).flatten().copied().collect();
    stops.push(0.0);
    stops.sort_by(f64::total_cmp);
    stops.dedup();
    let rejected =
        |v: &[Option<f64>], tol: f64| v.iter().filter(|x| x.is_none_or(|x| x > tol)).count();
    stops
        .into_iter()
        .map(|tolerance| RocPoint {
            tolerance,
            honest_rejected: rejected(&h, tolerance),
            honest: h.len(),
            caught: rejected(&c, tolerance),
            cheats: c.len(),
        })
        .collect()
}

/// Every rule against every adversary that has answers.
pub fn curves(t: &AnswerThresholds) -> Vec<Curve> {
    let mut out = Vec::new();
    for rule in Rule::ALL {
        for (adversary, cheats) in [
            ("smaller model", &t.smaller_model),
            ("re-encoded model", &t.reencoded),
        ] {
            let points = curve(rule, &t.honest, cheats);
            if !points.is_empty() {
                out.push(Curve {
                    rule,
                    adversary,
                    points,
                });
            }
        }
    }
    out
}

/// The curves as CSV: `rule,adversary,tolerance,honest_rejected,honest,caught,cheats`.
pub fn csv(curves: &[Curve]) -> String {
    let mut o = String::from("rule,adversary,tolerance,honest_rejected,honest,caught,cheats\n");
    for c in curves {
        for p in &c.points {
            let _ = writeln!(
                o,
                "{},{},{},{},{},{},{}",
                c.rule.name(),
                c.adversary,
                p.tolerance,
                p.honest_rejected,
                p.honest,
                p.caught,
                p.cheats
            );
        }
    }
    o
}

/// A color per rule: dark against the smaller model, light against the re-encoded one.
const COLORS: [[RGBColor; 2]; 3] = [
    [RGBColor(31, 119, 180), RGBColor(140, 190, 230)],
    [RGBColor(214, 39, 40), RGBColor(245, 150, 150)],
    [RGBColor(30, 130, 30), RGBColor(140, 215, 120)],
];

/// The curves as an SVG plot: honest answers rejected (x) against an adversary's answers caught
/// (y), a line per rule and adversary (solid dots: smaller model, triangles: re-encoded
/// model).
pub fn svg(curves: &[Curve], title: &str, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.02f64..1.02, -0.02f64..1.02)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("honest answers rejected (each costs a re-execution)")
        .y_desc("adversary's answers caught")
        .draw()
        .map_err(|e| err(&e))?;
    for c in curves {
        let rule = Rule::ALL.iter().position(|r| *r == c.rule).unwrap_or(0);
        let smaller = c.adversary == "smaller model";
        let color = COLORS[rule][usize::from(!smaller)];
        // Loosening the tolerance moves down and to the left.
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|p| (p.false_rejection(), p.detection()))
            .collect();
        let label = format!(
            "{}: {} ({} honest, {} adversary's)",
            c.rule.name(),
            c.adversary,
            c.points[0].honest,
            c.points[0].cheats
        );
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        if smaller {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        } else {
            chart
                .draw_series(
                    pts.iter()
                        .map(|p| TriangleMarker::new(*p, 5, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sampled(rank: f64, draw: Option<f64>) -> Thresholds {
        Thresholds {
            greedy: false,
            logit_slack: None,
            max_rank: Some(rank),
            draw_slack: draw,
        }
    }

    #[test]
    fn curves_step_through_every_answers_tolerance() {
        let honest = [
            sampled(0.0, Some(0.0)),
            sampled(30.0, Some(0.0)),
            sampled(300.0, Some(1e-7)),
        ];
        let cheats = [
            sampled(5.0, None),
            sampled(3000.0, Some(0.2)),
            sampled(0.0, Some(0.0)),
        ];
        let ranks = curve(Rule::MaxRank, &honest, &cheats);
        let at = |t: f64| *ranks.iter().find(|p| p.tolerance == t).unwrap();
        assert_eq!(ranks.first().unwrap().tolerance, 0.0);
        assert_eq!((at(0.0).honest_rejected, at(0.0).caught), (2, 2));
        assert_eq!((at(30.0).honest_rejected, at(30.0).caught), (1, 1));
        assert_eq!((at(3000.0).honest_rejected, at(3000.0).caught), (0, 0));
        let draws = curve(Rule::DrawSlack, &honest, &cheats);
        // An answer the draw check could not score (None) is rejected at every tolerance.
        let last = draws.last().unwrap();
        assert_eq!(
            (last.tolerance, last.honest_rejected, last.caught),
            (0.2, 0, 1)
        );
        assert_eq!((draws[0].honest_rejected, draws[0].caught), (1, 2));
        // Greedy rules see no sampled answer.
        assert!(curve(Rule::LogitSlack, &honest, &cheats).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let t = AnswerThresholds {
            honest: honest.to_vec(),
            smaller_model: cheats.to_vec(),
            reencoded: Vec::new(),
        };
        let all = curves(&t);
        assert_eq!(all.len(), 2);
        assert!(csv(&all).lines().count() > ranks.len());
        let path = dir.path().join("roc.svg");
        svg(&all, "test", &path).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
    }
}
