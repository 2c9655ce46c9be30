//! How often the platform's C math library and the engine's compiled routines (the `libm`
//! crate, see `sortition_engine`'s `math` module) disagree on the bits of `exp`, `pow`,
//! `sin` and `cos` over the argument ranges the engine uses, and what each costs per call.
//!
//! `cargo run --release -p sortition-engine --example math_bench -- [MILLIONS]` (default 20).

use std::hint::black_box;
use std::time::Instant;

/// xorshift64: reproducible arguments without a dependency.
struct Xs(u64);

impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn differs<T: PartialEq>(n: u64, mut pair: impl FnMut(&mut Xs) -> (T, T)) -> f64 {
    let mut rng = Xs(0x9E37_79B9_7F4A_7C15);
    let d = (0..n).filter(|_| {
        let (a, b) = pair(&mut rng);
        a != b
    });
    d.count() as f64 / n as f64
}

fn ns_per_call(f: impl Fn(f64) -> f64) -> f64 {
    let xs: Vec<f64> = (0..1_000_000).map(|i| -(i as f64) * 3e-5).collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let mut acc = 0.0;
        for &x in &xs {
            acc += f(black_box(x));
        }
        black_box(acc);
        best = best.min(t.elapsed().as_nanos() as f64 / xs.len() as f64);
    }
    best
}

fn main() {
    let millions: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let n = millions * 1_000_000;
    println!(
        "math_bench: {n} random arguments per function; share whose bits differ, platform vs compiled"
    );
    let rows: [(&str, f64); 5] = [
        // SwiGLU and softmax arguments: exp of values up to 0, f32.
        (
            "expf  x in [-50, 10)",
            differs(n, |r| {
                let x = (r.unit() * 60.0 - 50.0) as f32;
                (x.exp().to_bits(), libm::expf(x).to_bits())
            }),
        ),
        // Sampling weights: exp of (logit - max) / t, f64.
        (
            "exp   x in [-60, 0)",
            differs(n, |r| {
                let x = -r.unit() * 60.0;
                (x.exp().to_bits(), libm::exp(x).to_bits())
            }),
        ),
        // RoPE: theta^(2i/d) and the angles pos * freq.
        (
            "pow   10000^y, y in [0, 1)",
            differs(n, |r| {
                let y = r.unit();
                (
                    10_000f64.powf(y).to_bits(),
                    libm::pow(10_000.0, y).to_bits(),
                )
            }),
        ),
        (
            "sin   x in [0, 8192)",
            differs(n, |r| {
                let x = r.unit() * 8192.0;
                (x.sin().to_bits(), libm::sin(x).to_bits())
            }),
        ),
        (
            "cos   x in [0, 8192)",
            differs(n, |r| {
                let x = r.unit() * 8192.0;
                (x.cos().to_bits(), libm::cos(x).to_bits())
            }),
        ),
    ];
    for (name, share) in rows {
        println!("  {name:<28} {:>6.2} % differ", share * 100.0);
    }
    let f32_exp = |x: f64| f64::from((x as f32).exp());
    let f32_libm = |x: f64| f64::from(libm::expf(x as f32));
    println!(
        "cost per call: expf platform {:.1} ns, compiled {:.1} ns | exp platform {:.1} ns, compiled {:.1} ns",
        ns_per_call(f32_exp),
        ns_per_call(f32_libm),
        ns_per_call(f64::exp),
        ns_per_call(libm::exp),
    );
}
