//! Shared test helpers: devices present, random data, f64 comparisons, finite differences.
#![allow(dead_code)]

use irontensor::{Device, Result, Tensor};

/// The GPU if one is usable. With IRONTENSOR_REQUIRE_GPU=1 a missing GPU fails the test.
pub fn gpu() -> Option<Device> {
    match irontensor::device::gpu::context() {
        Ok(_) => Some(Device::Gpu),
        Err(e) if std::env::var("IRONTENSOR_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("IRONTENSOR_REQUIRE_GPU=1 but {e}")
        }
        Err(_) => {
            eprintln!("no GPU adapter: GPU test skipped");
            None
        }
    }
}

/// `device_tests!(a, b)` makes `cpu::a`, `gpu::a`, ... calling `a(Device)`.
#[macro_export]
macro_rules! device_tests {
    ($($name:ident),* $(,)?) => {
        mod cpu {
            $( #[test] fn $name() { super::$name(irontensor::Device::Cpu) } )*
        }
        mod gpu {
            $( #[test] fn $name() { if let Some(d) = $crate::common::gpu() { super::$name(d) } } )*
        }
    };
}

/// Uniform values in [lo, hi) from `seed`.
pub fn rand_vec(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = irontensor::rng::Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.uniform() as f32).collect()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// |got - want| <= atol + rtol·|want| everywhere, else a message with the worst element.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w).abs() - (atol + rtol * w.abs());
        if excess.is_nan() || excess > worst.0 {
            worst = (if excess.is_nan() { f64::INFINITY } else { excess }, i);
        }
    }
    let i = worst.1;
    assert!(worst.0 <= 0.0, "{what}: element {i} is {} but should be {} (atol {atol}, rtol {rtol})", got[i], want[i]);
}

/// Checks an op against an f64 reference: forward values, and gradients of
/// L = Σ w·f(x) (random w) against central differences of the reference.
/// On the GPU the outputs and gradients are also compared with the CPU's.
pub struct GradCheck<'a> {
    pub inputs: Vec<(Vec<f32>, Vec<usize>)>,
    pub op: &'a dyn Fn(&[Tensor]) -> Result<Tensor>,
    pub reference: &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>,
    pub atol: f64,
    pub rtol: f64,
    /// Elements per input whose gradient is checked by finite differences (the first ones).
    pub fd_elems: usize,
}

impl GradCheck<'_> {
    pub fn run(&self, device: Device, what: &str) {
        let (out, grads) = self.eval(device);
        let xs: Vec<Vec<f64>> = self.inputs.iter().map(|(v, _)| f64s(v)).collect();
        let want = (self.reference)(&xs);
        assert_close(&out, &want, self.atol, self.rtol, &format!("{what} forward on {device:?}"));
        let w = rand_vec(want.len(), -1.0, 1.0, 999);
        let loss = |xs: &[Vec<f64>]| -> f64 { (self.reference)(xs).iter().zip(&w).map(|(y, &w)| y * w as f64).sum() };
        for (k, g) in grads.iter().enumerate() {
            let n = xs[k].len().min(self.fd_elems);
            let mut num = Vec::with_capacity(n);
            for j in 0..n {
                let eps = 1e-6 * xs[k][j].abs().max(1.0);
                let mut p = xs.clone();
                p[k][j] += eps;
                let mut m = xs.clone();
                m[k][j] -= eps;
                num.push((loss(&p) - loss(&m)) / (2.0 * eps));
            }
            assert_close(
                &g[..n],
                &num,
                self.atol * 10.0,
                self.rtol * 10.0,
                &format!("{what} d/dinput{k} on {device:?}"),
            );
        }
        if device != Device::Cpu {
            let (cpu_out, cpu_grads) = self.eval(Device::Cpu);
            assert_close(&out, &f64s(&cpu_out), self.atol, self.rtol, &format!("{what} gpu vs cpu"));
            for (g, c) in grads.iter().zip(&cpu_grads) {
                assert_close(g, &f64s(c), self.atol * 10.0, self.rtol * 10.0, &format!("{what} gpu vs cpu gradient"));
            }
        }
    }

    fn eval(&self, device: Device) -> (Vec<f32>, Vec<Vec<f32>>) {
        let ts: Vec<Tensor> =
            self.inputs.iter().map(|(v, s)| Tensor::from_f32_on(v, s, device).unwrap().requires_grad_()).collect();
        let out = (self.op)(&ts).unwrap();
        let w = Tensor::from_f32_on(&rand_vec(out.numel(), -1.0, 1.0, 999), out.shape(), device).unwrap();
        let loss = irontensor::sum_all(&irontensor::mul(&out, &w).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let g = ts.iter().map(|t| grads.get(t).expect("gradient present").to_vec()).collect();
        (out.to_vec(), g)
    }
}

/// The TinyShakespeare corpus kept in the repository (tests/data/README.md says where it is from).
pub const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tinyshakespeare.txt");
