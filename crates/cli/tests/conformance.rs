//! `sortition conformance --size small`, the CI size of the honest-mismatch measurement: every
//! answer of the corpus is bit-identical across this CPU's kernels, thread counts, batch
//! compositions and processes, and the scoring audit at the configured tolerance passes honest
//! answers while catching a smaller model's, and a re-encoded model is measured against both audits.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sortition");

#[test]
fn the_small_corpus_has_no_honest_mismatch_on_any_kernel() {
    let roc = tempfile::tempdir().expect("temp dir");
    let out = Command::new(BIN)
        .args(["conformance", "--size", "small", "--json", "--roc"])
        .arg(roc.path())
        .output()
        .expect("run sortition conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "conformance failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(r["mismatches"], 0, "{r:#}");
    let compared = r["compared"].as_u64().expect("compared");
    assert!(compared >= 100, "{compared} answers compared");
    // Every kernel this CPU has took part (the node class names the kernel of each layer).
    let configs = r["configs"].as_array().expect("configs");
    let kernels: std::collections::BTreeSet<&str> = configs
        .iter()
        .chain(std::iter::once(&r["reference"]))
        .filter_map(|c| c["kernels"].as_str())
        .collect();
    // (The small size leaves the scalar kernel out: see `sortition conformance --help`.)
    let vector: Vec<_> = sortition_engine::Kernel::supported()
        .into_iter()
        .filter(|k| *k != sortition_engine::Kernel::Scalar)
        .collect();
    assert_eq!(
        kernels.len(),
        vector.len().max(1),
        "{kernels:?} vs {vector:?}"
    );
    assert!(configs.iter().any(|c| {
        c["label"]
            .as_str()
            .is_some_and(|l| l.ends_with("restarted"))
    }));
    // The corpus through a real node under concurrent load, over HTTP, compared too.
    let through = configs
        .iter()
        .find(|c| {
            c["label"]
                .as_str()
                .is_some_and(|l| l.contains("node, HTTP"))
        })
        .expect("a configuration through a node");
    assert!(
        through["compared"].as_u64().expect("compared") >= 40,
        "{through}"
    );
    // The upper bound is the exact one for 0 in `compared`.
    let bound = r["mismatch_upper_95"].as_f64().expect("bound");
    assert!((bound - (1.0 - 0.05f64.powf(1.0 / compared as f64))).abs() < 1e-9);
    // Scoring: a smaller model's answers are caught, and no honest answer is rejected: greedy
    // tokens are the argmax and sampled ones the seeded draw's pick at every position (the
    // auditor's teacher-forced rows equal the decode rows bit for bit).
    let s = &r["scoring"]["configured"];
    assert!(s["cheats_caught"].as_u64().expect("caught") > 0, "{s}");
    assert!(s["honest_decided"].as_u64().expect("decided") > 0, "{s}");
    assert_eq!(s["honest_rejected"], 0, "{s}");
    assert!(
        s["draw_slack"].is_number(),
        "the default policy checks the draw: {s}"
    );
    assert_eq!(
        r["scoring"]["honest_worst_draw_miss"], 0.0,
        "{:#}",
        r["scoring"]
    );
    // Each decided answer's smallest passing tolerance is kept: the trade-off curves.
    let t = &r["scoring"]["thresholds"];
    assert!(!t["honest"].as_array().expect("honest").is_empty(), "{t}");
    assert!(
        !t["smaller_model"].as_array().expect("smaller").is_empty(),
        "{t}"
    );
    // ... and drawn: one row per tolerance at which an answer changes side, and the plot.
    let csv = std::fs::read_to_string(roc.path().join("roc.csv")).expect("roc.csv");
    assert!(csv.starts_with("rule,adversary,tolerance,"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("sampled by seeded draw,smaller model,")),
        "{csv}"
    );
    let svg = std::fs::read_to_string(roc.path().join("roc.svg")).expect("roc.svg");
    assert!(svg.contains("<svg"));
    // The re-encoding adversary (SmolLM2's file ships Q4_1; the honest class runs Q8_0): every
    // case answered, and re-execution tells some of its answers from the honest ones.
    let r8 = &r["scoring"]["reencoded"];
    assert_eq!(r8["quantization"], "q4_1", "{r8}");
    assert_eq!(r8["answers"].as_u64(), r["cases"].as_u64(), "{r8}");
    assert!(
        r8["reexecution_caught"].as_u64().expect("caught") > 0,
        "{r8}"
    );
    assert!(r8["scoring_decided"].as_u64().expect("decided") > 0, "{r8}");
}
