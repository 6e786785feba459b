//! Optimizers against f64 references of the same rules over several steps (views at nonzero
//! offsets, weight-decay masks, lr changes), stochastic rounding of BF16 parameters
//! (unbiased, deterministic for a seed), and gradient clipping.

mod common;
use common::{assert_close, f64s, rand_vec};
use irontensor::optim::{self, AdamW, AdamWConfig, Lion, LionConfig, Optimizer, Sophia, SophiaConfig};
use irontensor::{ops, Device, Precision, Result, Tensor};

/// Any optimizer, with the f64 reference of its rule.
enum Opt {
    Lion(Lion),
    AdamW(AdamW),
    /// Without Hessian updates here (h = 0: clipped sign steps); `sophia_update` covers those.
    Sophia(Sophia),
}

impl Opt {
    fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr: f32) -> Result<()> {
        let o = self.optimizer();
        o.set_lr(lr);
        o.step(params, grads)
    }

    fn optimizer(&mut self) -> &mut dyn Optimizer {
        match self {
            Opt::Lion(o) => o,
            Opt::AdamW(o) => o,
            Opt::Sophia(o) => o,
        }
    }

    fn set_decay_mask(&mut self, mask: Vec<bool>) {
        self.optimizer().set_decay_mask(mask)
    }

    fn state(&self) -> &[Tensor] {
        match self {
            Opt::Lion(o) => o.state(),
            Opt::AdamW(o) => o.state(),
            Opt::Sophia(o) => o.state(),
        }
    }

    /// One step of the rule in f64 on one element: w, g, state s (Lion: m; AdamW: m, v).
    fn reference(&self, w: f64, g: f64, s: &mut [f64], lr: f64, decays: bool, t: i32) -> f64 {
        match self {
            Opt::Lion(o) => {
                let c = o.config;
                let wd = if decays { c.weight_decay as f64 } else { 0.0 };
                let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
                // The spec: update = sign(β2·m + (1-β2)·g); m = β1·m + (1-β1)·g.
                let x = b2 * s[0] + (1.0 - b2) * g;
                let u = if x == 0.0 { 0.0 } else { x.signum() };
                s[0] = b1 * s[0] + (1.0 - b1) * g;
                w - lr * u - lr * wd * w
            }
            Opt::AdamW(o) => {
                let c = o.config;
                let wd = if decays { c.weight_decay as f64 } else { 0.0 };
                let (b1, b2, eps) = (c.beta1 as f64, c.beta2 as f64, c.eps as f64);
                let w = w - lr * wd * w;
                s[0] = b1 * s[0] + (1.0 - b1) * g;
                s[1] = b2 * s[1] + (1.0 - b2) * g * g;
                let (mh, vh) = (s[0] / (1.0 - b1.powi(t)), s[1] / (1.0 - b2.powi(t)));
                w - lr * mh / (vh.sqrt() + eps)
            }
            Opt::Sophia(o) => {
                let c = o.config;
                let wd = if decays { c.weight_decay as f64 } else { 0.0 };
                sophia_reference(&c, w, g, s, lr, wd)
            }
        }
    }

    fn width(&self) -> usize {
        match self {
            Opt::Lion(_) => 1,
            Opt::AdamW(_) | Opt::Sophia(_) => 2,
        }
    }
}

/// One Sophia step in f64 (the paper's Sophia-G): s = (m, h).
fn sophia_reference(c: &SophiaConfig, w: f64, g: f64, s: &mut [f64], lr: f64, wd: f64) -> f64 {
    let (b1, rho, eps) = (c.beta1 as f64, c.rho as f64, c.eps as f64);
    let w = w - lr * wd * w;
    s[0] = b1 * s[0] + (1.0 - b1) * g;
    let ratio = s[0] / (rho * s[1]).max(eps);
    w - lr * ratio.clamp(-1.0, 1.0)
}

/// Sophia's Hessian EMA in f64: h = β2·h + (1-β2)·B·ĝ².
fn sophia_hessian_reference(c: &SophiaConfig, g: f64, s: &mut [f64], tokens: f64) {
    let b2 = c.beta2 as f64;
    s[1] = b2 * s[1] + (1.0 - b2) * tokens * g * g;
}

fn optimizers(weight_decay: f32, seed: u64) -> [Opt; 3] {
    [
        Opt::Lion(Lion::new(LionConfig { lr: 0.01, beta1: 0.9, beta2: 0.99, weight_decay, seed })),
        Opt::AdamW(AdamW::new(AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, seed })),
        Opt::Sophia(Sophia::new(SophiaConfig { lr: 0.01, weight_decay, seed, ..Default::default() })),
    ]
}

/// Parameters of `dtype`: [7, 33]; a [7, 33] view at offset 99 of a [10, 33] tensor; [1];
/// a [65] view at offset 17 (odd) of a [100] tensor. Returns (params, their backing tensors).
fn params(device: Device, dtype: Precision, seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
    let make = |shape: &[usize], s: u64| {
        let n = shape.iter().product();
        let t = Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, seed + s), shape, device).unwrap();
        if dtype == Precision::BF16 {
            t.to_bf16().unwrap()
        } else {
            t
        }
    };
    let (a, big, c, big1) = (make(&[7, 33], 1), make(&[10, 33], 2), make(&[1], 3), make(&[100], 4));
    let b = ops::slice(&big, 0, 3, 7).unwrap();
    let d = ops::slice(&big1, 0, 17, 65).unwrap();
    assert!(b.shares_storage(&big) && d.shares_storage(&big1));
    (vec![a, b, c, d], vec![big, big1])
}

/// The shapes of `params`, all as views of one [600] tensor (the layout of a model's flat
/// parameters, but at offsets 3, 234, 465 and 467: odd ones, and no gaps). Returns (params,
/// the backing tensor).
fn shared_params(device: Device, dtype: Precision, seed: u64) -> (Vec<Tensor>, Tensor) {
    let big = Tensor::from_f32_on(&rand_vec(600, 0.5, 2.0, seed), &[600], device).unwrap();
    let big = if dtype == Precision::BF16 { big.to_bf16().unwrap() } else { big };
    let view = |off: usize, shape: &[usize]| {
        ops::slice(&big, 0, off, shape.iter().product()).unwrap().view(shape).unwrap().detach()
    };
    (vec![view(3, &[7, 33]), view(234, &[7, 33]), view(465, &[1]), view(467, &[65])], big)
}

/// Gradients shaped like `params`; the second is a view at a nonzero offset.
fn grads(params: &[Tensor], device: Device, seed: u64) -> Vec<Tensor> {
    params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let n = p.numel();
            let extra = if k == 1 { 5 } else { 0 };
            let v = rand_vec(n + extra, -1.0, 1.0, seed + k as u64);
            let t = Tensor::from_f32_on(&v, &[n + extra], device).unwrap();
            ops::slice(&t, 0, extra, n).unwrap().view(p.shape()).unwrap()
        })
        .collect()
}

/// `grads` as views of one tensor, at offsets 1 apart from one another's ends.
fn shared_grads(params: &[Tensor], device: Device, seed: u64) -> Vec<Tensor> {
    let total: usize = params.iter().map(|p| p.numel() + 1).sum();
    let flat = Tensor::from_f32_on(&rand_vec(total, -1.0, 1.0, seed), &[total], device).unwrap();
    let mut off = 1;
    params
        .iter()
        .map(|p| {
            let g = ops::slice(&flat, 0, off, p.numel()).unwrap().view(p.shape()).unwrap();
            off += p.numel() + 1;
            g
        })
        .collect()
}

fn f32_rules_match_reference(device: Device) {
    let masks = [(0.0, None), (0.1, None), (0.1, Some(vec![true, false, true, false]))];
    for ((wd, mask), shared) in masks.into_iter().flat_map(|m| [(m.clone(), false), (m, true)]) {
        for mut opt in optimizers(wd, 1) {
            let name = match opt {
                Opt::Lion(_) => "lion",
                Opt::AdamW(_) => "adamw",
                Opt::Sophia(_) => "sophia",
            };
            let what = format!("{name} wd={wd} mask={mask:?} shared buffers {shared} on {device:?}");
            if let Some(m) = &mask {
                opt.set_decay_mask(m.clone());
            }
            let decays = |k: usize| mask.as_ref().is_none_or(|m| m[k]);
            let (ps, backing) = match shared {
                false => params(device, Precision::FP32, 10),
                true => {
                    let (ps, big) = shared_params(device, Precision::FP32, 10);
                    (ps, vec![big])
                }
            };
            let before: Vec<Vec<f32>> = backing.iter().map(|t| t.to_vec()).collect();
            let mut w: Vec<Vec<f64>> = ps.iter().map(|p| f64s(&p.to_vec())).collect();
            let mut s: Vec<Vec<f64>> = ps.iter().map(|p| vec![0.0; p.numel() * opt.width()]).collect();
            for t in 1..=4 {
                let lr = 0.01 / t as f32; // a scheduler changing lr every step
                let gs = match shared {
                    false => grads(&ps, device, 100 * t as u64),
                    true => shared_grads(&ps, device, 100 * t as u64),
                };
                let counted = irontensor::device::gpu::counters();
                opt.step(&ps, &gs, lr).unwrap();
                if shared && device != Device::Cpu {
                    let n = (irontensor::device::gpu::counters() - counted).dispatches;
                    assert_eq!(n, 1, "{what}: parameters in one buffer update in one dispatch");
                }
                for k in 0..ps.len() {
                    let g = f64s(&gs[k].to_vec());
                    let width = opt.width();
                    for i in 0..w[k].len() {
                        let si = &mut s[k][i * width..(i + 1) * width];
                        w[k][i] = opt.reference(w[k][i], g[i], si, lr as f64, decays(k), t);
                    }
                    let what = format!("{what} param {k} step {t}");
                    assert_close(&ps[k].to_vec(), &w[k], 1e-6, 1e-5, &what);
                    assert_close(&opt.state()[k].to_vec(), &s[k], 1e-7, 1e-5, &format!("{what} state"));
                }
            }
            // Elements of the backing tensors outside the views are untouched.
            let after: Vec<Vec<f32>> = backing.iter().map(|t| t.to_vec()).collect();
            if shared {
                assert_eq!(after[0][..3], before[0][..3], "{what}: before the views");
                assert_eq!(after[0][532..], before[0][532..], "{what}: after the views");
                continue;
            }
            assert_eq!(after[0][..99], before[0][..99], "{what}: rows before the view");
            assert_eq!(after[1][..17], before[1][..17], "{what}: before the view");
            assert_eq!(after[1][82..], before[1][82..], "{what}: after the view");
        }
    }
}

/// bf16 spacing at x (x a normal number).
fn bf16_ulp(x: f64) -> f64 {
    2f64.powf(x.abs().log2().floor() - 7.0)
}

/// BF16 parameters: each new weight is one of the two bf16 neighbours of the exact update
/// (computed from the stored bf16 weights), and the rounding errors average out to ~0.
fn bf16_params_round_stochastically(device: Device) {
    // Shared: views of one buffer whose neighbours share u32 words (separate dispatches then).
    let separate = optimizers(0.1, 7).into_iter().map(|o| (o, false));
    for (mut opt, shared) in separate.chain(optimizers(0.1, 8).into_iter().map(|o| (o, true))) {
        let (ps, big, outside) = if shared {
            let (ps, big) = shared_params(device, Precision::BF16, 3);
            (ps, big, vec![0, 1, 2, 532, 533, 599])
        } else {
            let big = Tensor::from_f32_on(&rand_vec(4099, 0.5, 2.0, 3), &[4099], device).unwrap().to_bf16().unwrap();
            // Odd offset and end: the first and last u32 words are shared with neighbours.
            let ps = vec![
                ops::slice(&big, 0, 3, 4094).unwrap(),
                Tensor::from_f32_on(&rand_vec(7 * 33, -1.0, 1.0, 4), &[7, 33], device).unwrap().to_bf16().unwrap(),
            ];
            (ps, big, vec![0, 1, 2, 4097, 4098])
        };
        let edges = |t: &Tensor| {
            let v = t.to_vec();
            outside.iter().map(|&i| v[i]).collect::<Vec<f32>>()
        };
        let before_edges = edges(&big);
        let mut s: Vec<Vec<f64>> = ps.iter().map(|p| vec![0.0; p.numel() * opt.width()]).collect();
        let (mut err_sum, mut count) = (0.0, 0);
        for t in 1..=3 {
            let gs = grads(&ps, device, 7 * t as u64);
            let old: Vec<Vec<f32>> = ps.iter().map(|p| p.to_vec()).collect();
            opt.step(&ps, &gs, 0.01).unwrap();
            for k in 0..ps.len() {
                assert_eq!(ps[k].dtype(), Precision::BF16);
                let (g, got) = (gs[k].to_vec(), ps[k].to_vec());
                let width = opt.width();
                for i in 0..got.len() {
                    let si = &mut s[k][i * width..(i + 1) * width];
                    let want = opt.reference(old[k][i] as f64, g[i] as f64, si, 0.01, true, t);
                    let ulp = bf16_ulp(want);
                    let err = (got[i] as f64 - want) / ulp;
                    assert!(
                        err.abs() <= 1.0 + 1e-3,
                        "shared {shared} param {k} element {i} step {t}: {} is not a bf16 neighbour of {want}",
                        got[i]
                    );
                    err_sum += err;
                    count += 1;
                }
            }
        }
        let bias = err_sum / count as f64;
        // Over ~12k roundings (fewer, ~1.8k, in the shared layout) the mean error is ~0.
        let bound = if shared { 0.06 } else { 0.03 };
        assert!(bias.abs() < bound, "mean rounding error {bias} ulp over {count} roundings");
        assert_eq!(edges(&big), before_edges, "bf16 neighbours of the views are untouched");
    }
    // The same seed gives the same bits; another seed other bits.
    let run = |seed: u64| {
        let [mut opt, _, _] = optimizers(0.0, seed);
        let p = Tensor::from_f32_on(&rand_vec(999, -1.0, 1.0, 5), &[999], device).unwrap().to_bf16().unwrap();
        for t in 0..3 {
            opt.step(std::slice::from_ref(&p), &grads(std::slice::from_ref(&p), device, t), 0.003).unwrap();
        }
        p.to_vec()
    };
    assert_eq!(run(1), run(1), "deterministic for a seed");
    assert_ne!(run(1), run(2), "the seed matters");
}

/// Sophia at random (m, h) restored from a "checkpoint": a Hessian update (plain, under a
/// control that scales, under one that skips), then a step whose coordinates are partly clipped
/// (|m| > γ·h, and h = 0 where ε decides) and partly not; f32 and BF16 weights, views.
fn sophia_update(device: Device) {
    let c = SophiaConfig { lr: 0.05, rho: 0.05, weight_decay: 0.1, interval: 3, seed: 4, ..Default::default() };
    for dtype in [Precision::FP32, Precision::BF16] {
        let what = format!("sophia {} on {device:?}", dtype.name());
        let (ps, _backing) = params(device, dtype, 20);
        let mut s: Vec<Vec<f64>> = ps
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let (m, h) =
                    (rand_vec(p.numel(), -0.5, 0.5, 30 + k as u64), rand_vec(p.numel(), 0.0, 40.0, 40 + k as u64));
                // Every 13th h is 0: the ε floor (a parameter before its first estimate).
                (0..p.numel()).flat_map(|i| [m[i] as f64, if i % 13 == 0 { 0.0 } else { h[i] as f64 }]).collect()
            })
            .collect();
        let state: Vec<Tensor> = s
            .iter()
            .map(|v| Tensor::from_f32_on(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[v.len()], device).unwrap())
            .collect();
        let mut opt = Sophia::new(c);
        opt.restore(&ps, state, 5).unwrap();
        assert!(!opt.wants_hessian(), "{what}: step 6 of k = 3 takes no estimate");
        let before: Vec<Vec<f32>> = ps.iter().map(|p| p.to_vec()).collect();
        // Hessian updates: with no control, with one scaling ĝ by 0.5, with one skipping.
        let tokens = 96;
        let controls = [None, Some([0.5, 1.0, 0.0, 0.0]), Some([0.5, 0.0, 0.0, 0.0])];
        for (j, ctl) in controls.into_iter().enumerate() {
            let gh = grads(&ps, device, 500 + j as u64);
            let control = ctl.map(|v| Tensor::from_f32_on(&v, &[4], device).unwrap());
            opt.update_hessian(&ps, &gh, tokens, control.as_ref()).unwrap();
            let (scale, applies) = ctl.map_or((1.0, true), |v| (v[0] as f64, v[1] != 0.0));
            for k in 0..ps.len() {
                if applies {
                    for (i, g) in f64s(&gh[k].to_vec()).into_iter().enumerate() {
                        sophia_hessian_reference(&c, g * scale, &mut s[k][2 * i..2 * i + 2], tokens as f64);
                    }
                }
                let what = format!("{what} Hessian update {j} param {k}");
                assert_close(&opt.state()[k].to_vec(), &s[k], 1e-6, 1e-5, &what);
                assert_eq!(ps[k].to_vec(), before[k], "{what}: the weights must not change");
            }
        }
        assert_eq!(opt.steps(), 5, "{what}: Hessian updates are not steps");
        let gs = grads(&ps, device, 600);
        opt.set_lr(0.05);
        opt.step(&ps, &gs).unwrap();
        let (mut clipped, mut total) = (0, 0);
        for k in 0..ps.len() {
            let (g, got) = (f64s(&gs[k].to_vec()), ps[k].to_vec());
            let mut want = Vec::new();
            for i in 0..got.len() {
                let si = &mut s[k][2 * i..2 * i + 2];
                let w = sophia_reference(&c, before[k][i] as f64, g[i], si, 0.05, c.weight_decay as f64);
                let ratio = si[0] / (c.rho as f64 * si[1]).max(c.eps as f64);
                clipped += (ratio.abs() > 1.0) as usize;
                total += 1;
                want.push(w);
            }
            let what = format!("{what} step param {k}");
            assert_close(&opt.state()[k].to_vec(), &s[k], 1e-6, 1e-5, &format!("{what} state"));
            if dtype == Precision::FP32 {
                assert_close(&got, &want, 1e-6, 1e-5, &what);
            } else {
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let err = (g as f64 - w).abs() / bf16_ulp(w);
                    assert!(err <= 1.0 + 1e-3, "{what} element {i}: {g} is not a bf16 neighbour of {w}");
                }
            }
        }
        assert!(clipped > total / 10 && clipped < total * 9 / 10, "{what}: {clipped} of {total} clipped");
        assert_eq!(opt.steps(), 6);
        assert!(opt.wants_hessian(), "{what}: step 7 of k = 3 takes an estimate");
    }
    // A fresh Sophia estimates at steps 1, 4, 7 (k = 3); Lion and AdamW never.
    let p = vec![Tensor::from_f32_on(&rand_vec(9, -1.0, 1.0, 1), &[9], device).unwrap()];
    let mut opt = Sophia::new(c);
    let mut wants = Vec::new();
    for t in 0..7 {
        wants.push(opt.wants_hessian());
        opt.step(&p, &grads(&p, device, t)).unwrap();
    }
    assert_eq!(wants, [true, false, false, true, false, false, true]);
    assert!(!Lion::new(LionConfig::default()).wants_hessian() && !AdamW::new(AdamWConfig::default()).wants_hessian());
}

fn stochastic_rounding(device: Device) {
    let n = 100_000;
    // Between two bf16 neighbours: 30% of the way in [1, 2); 90% in [-4, -2); a small value.
    for (x, ulp) in [
        (1.0 + 0.3 * 2f64.powi(-7), 2f64.powi(-7)),
        (-2.0 - 0.9 * 2f64.powi(-6), 2f64.powi(-6)),
        (1.37e-3, bf16_ulp(1.37e-3)),
    ] {
        let xf = x as f32;
        let t = Tensor::full_on(&[n], xf, device);
        let r = optim::stochastic_round(&t, 42).unwrap();
        assert_eq!(r.dtype(), Precision::BF16);
        let v = r.to_vec();
        let lo = (xf as f64 / ulp).floor() * ulp;
        assert!(
            v.iter().all(|&y| y as f64 == lo || y as f64 == lo + ulp),
            "{x}: values other than the neighbours {lo}, {}",
            lo + ulp
        );
        let mean = v.iter().map(|&y| y as f64).sum::<f64>() / n as f64;
        // One rounding has std <= ulp/2, so the mean's is <= ulp/632.
        assert!((mean - xf as f64).abs() < 0.01 * ulp, "{x}: mean {mean} of stochastic roundings");
        assert_eq!(optim::stochastic_round(&t, 42).unwrap().to_vec(), v, "deterministic");
        assert_ne!(optim::stochastic_round(&t, 43).unwrap().to_vec(), v, "seeded");
        if device != Device::Cpu {
            let cpu = optim::stochastic_round(&t.to_device(Device::Cpu).unwrap(), 42).unwrap();
            assert_eq!(cpu.to_vec(), v, "the GPU draws the same noise as the CPU");
        }
    }
    // Values bf16 holds exactly, and inf / NaN, stay as they are.
    let special = [1.5f32, -0.0, 0.0, -3.0, f32::INFINITY, f32::NEG_INFINITY];
    let got = optim::stochastic_round(&Tensor::from_f32_on(&special, &[6], device).unwrap(), 1).unwrap().to_vec();
    assert_eq!(got, special);
    let nan = optim::stochastic_round(&Tensor::from_f32_on(&[f32::NAN], &[1], device).unwrap(), 1).unwrap();
    assert!(nan.to_vec()[0].is_nan());
}

fn clip_grad_norm(device: Device) {
    let sizes = [7 * 33, 65, 1, 70_001]; // the last spans many GPU workgroups
    let data: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(k, &n)| rand_vec(n, -1.0, 1.0, 30 + k as u64)).collect();
    // The second gradient is a view at offset 17 of a [100] tensor.
    let make = || -> (Vec<Tensor>, Tensor) {
        let backing = Tensor::from_f32_on(&rand_vec(100, -1.0, 1.0, 40), &[100], device).unwrap();
        let mut gs: Vec<Tensor> = data.iter().map(|v| Tensor::from_f32_on(v, &[v.len()], device).unwrap()).collect();
        gs[1] = ops::slice(&backing, 0, 17, 65).unwrap();
        (gs, backing)
    };
    let (gs, backing) = make();
    let values: Vec<Vec<f64>> = gs.iter().map(|g| f64s(&g.to_vec())).collect();
    let norm: f64 = values.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    let global = optim::global_norm(&gs).unwrap();
    assert_close(&[global], &[norm], 0.0, 1e-5, "global_norm");
    // Above max_norm: scaled by max / (norm + 1e-6); the norm from before is returned.
    let whole = backing.to_vec();
    let max = (norm / 3.0) as f32;
    let got = optim::clip_grad_norm(&gs, max).unwrap();
    assert_close(&[got], &[norm], 0.0, 1e-5, "clip_grad_norm returns the norm");
    let coef = max as f64 / (norm + 1e-6);
    for (k, g) in gs.iter().enumerate() {
        let want: Vec<f64> = values[k].iter().map(|v| v * coef).collect();
        assert_close(&g.to_vec(), &want, 1e-7, 1e-5, &format!("clipped grad {k}"));
    }
    let after = backing.to_vec();
    assert_eq!((&after[..17], &after[82..]), (&whole[..17], &whole[82..]), "outside the view");
    let clipped = optim::global_norm(&gs).unwrap();
    assert_close(&[clipped], &[max as f64], 0.0, 1e-5, "norm after clipping");
    // Below max_norm: untouched.
    let (gs, _) = make();
    let before: Vec<Vec<f32>> = gs.iter().map(|g| g.to_vec()).collect();
    optim::clip_grad_norm(&gs, (norm * 2.0) as f32).unwrap();
    assert_eq!(gs.iter().map(|g| g.to_vec()).collect::<Vec<_>>(), before);
    assert_eq!(optim::global_norm(&[]).unwrap(), 0.0);
    let bf = gs[0].to_bf16().unwrap();
    assert!(optim::clip_grad_norm(&[bf], 1.0).is_err());
}

/// The step control gives clip_grad_norm's factor, the norm and the loss; a controlled step
/// equals clipping then stepping, and a NaN/Inf control changes neither weights nor state.
fn step_control(device: Device) {
    let sizes = [7 * 33, 1, 70_001];
    let t = |v: &[f32]| Tensor::from_f32_on(v, &[v.len()], device).unwrap();
    let grads: Vec<Tensor> =
        sizes.iter().enumerate().map(|(k, &n)| t(&rand_vec(n, -1.0, 1.0, 60 + k as u64))).collect();
    let norm: f64 = grads.iter().flat_map(|g| f64s(&g.to_vec())).map(|v| v * v).sum::<f64>().sqrt();
    let loss = Tensor::from_f32_on(&[2.5], &[], device).unwrap();
    // The same gradients as views of one buffer (as a trainer gathers them): one sum-of-squares
    // dispatch covers them all (4096 elements a workgroup, so 70_001 spans several).
    // The gaps between them hold 9s, which the norm must not count.
    let (mut flat, mut offsets) = (vec![9.0f32], Vec::new());
    for g in &grads {
        offsets.push(flat.len());
        flat.extend(g.to_vec());
        flat.push(9.0);
    }
    let big = t(&flat);
    let shared: Vec<Tensor> =
        grads.iter().zip(offsets).map(|(g, o)| ops::slice(&big, 0, o, g.numel()).unwrap()).collect();
    for (max, scale) in [(norm / 4.0, 0.25), (norm * 2.0, 1.0), (0.0, 1.0)] {
        for (gs, what) in [(&grads, "separate"), (&shared, "shared")] {
            let c = optim::step_control(gs, &loss, max as f32).unwrap().to_vec();
            assert_close(&c, &[scale, 1.0, norm, 2.5], 1e-6, 1e-5, &format!("{what}: control for max_norm {max}"));
        }
    }
    // Gradients of a loss scaled by 1024 (loss scaling), told so: the same decision, the scale
    // including 1/1024; and an overflowed (infinite) scaled gradient skips the step.
    let scaled: Vec<Tensor> = grads.iter().map(|g| ops::scale(g, 1024.0).unwrap()).collect();
    for (max, scale) in [(norm / 4.0, 0.25), (norm * 2.0, 1.0), (0.0, 1.0)] {
        let c = optim::step_control_scaled(&scaled, &loss, max as f32, 1024.0).unwrap().to_vec();
        assert_close(&c, &[scale / 1024.0, 1.0, norm, 2.5], 1e-6, 1e-5, &format!("scaled control for max_norm {max}"));
    }
    let inf: Vec<Tensor> = scaled.iter().map(|g| ops::scale(g, f32::INFINITY).unwrap()).collect();
    assert_eq!(optim::step_control_scaled(&inf, &loss, 1.0, 1024.0).unwrap().to_vec()[1], 0.0, "overflow skips");
    // Controlled (scale, then step) against clip_grad_norm then step, for both rules.
    let params = |seed| sizes.iter().map(|&n| t(&rand_vec(n, -1.0, 1.0, seed))).collect::<Vec<_>>();
    let (lion, adamw) = (LionConfig { lr: 0.01, ..Default::default() }, AdamWConfig { lr: 0.01, ..Default::default() });
    let sophia = SophiaConfig { lr: 0.01, ..Default::default() };
    for mut pair in [
        [Opt::Lion(Lion::new(lion)), Opt::Lion(Lion::new(lion))],
        [Opt::AdamW(AdamW::new(adamw)), Opt::AdamW(AdamW::new(adamw))],
        [Opt::Sophia(Sophia::new(sophia)), Opt::Sophia(Sophia::new(sophia))],
    ] {
        let (pa, pb) = (params(70), params(70));
        let gb: Vec<Tensor> = grads.iter().map(|g| t(&g.to_vec())).collect();
        let control = optim::step_control(&grads, &loss, (norm / 3.0) as f32).unwrap();
        pair[0].optimizer().step_controlled(&pa, &grads, &control).unwrap();
        optim::clip_grad_norm(&gb, (norm / 3.0) as f32).unwrap();
        pair[1].step(&pb, &gb, 0.01).unwrap();
        for (a, b) in pa.iter().zip(&pb) {
            assert_close(&a.to_vec(), &f64s(&b.to_vec()), 1e-6, 1e-6, "controlled step vs clip + step");
        }
        // A non-finite loss or gradient: nothing moves, and the step can be handed back.
        let (w, s) = (pa.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), pair[0].state()[0].to_vec());
        let nan = Tensor::from_f32_on(&[f32::NAN], &[1], device).unwrap();
        let inf_grads: Vec<Tensor> = grads.iter().map(|g| ops::scale(g, f32::INFINITY).unwrap()).collect();
        for (g, l) in [(&grads, &nan), (&inf_grads, &loss)] {
            let c = optim::step_control(g, l, 1.0).unwrap();
            assert_eq!(c.to_vec()[1], 0.0, "a NaN/Inf step is marked as skipped");
            let o = pair[0].optimizer();
            o.step_controlled(&pa, g, &c).unwrap();
            o.uncount_step();
            assert_eq!(o.steps(), 1);
        }
        assert_eq!(pa.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), w, "a skipped step moved the weights");
        assert_eq!(pair[0].state()[0].to_vec(), s, "a skipped step moved the state");
    }
    let msg = optim::step_control(&grads, &t(&[1.0, 2.0]), 1.0).unwrap_err().to_string();
    assert!(msg.contains("step_control") && msg.contains("[2]"), "{msg}");
}

fn errors(device: Device) {
    let t = |v: f32, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f32_on(&vec![v; n], shape, device).unwrap()
    };
    let p = vec![t(1.0, &[2, 3])];
    let mut lion = Lion::new(LionConfig::default());
    let msg = lion.step(&p, &[t(1.0, &[3, 2])]).unwrap_err().to_string();
    assert!(msg.contains("lion") && msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");
    assert!(lion.step(&p, &[]).is_err());
    let ids = Tensor::from_u32_on(&[1; 6], &[2, 3], device).unwrap();
    let mut adamw = AdamW::new(AdamWConfig::default());
    let msg = adamw.step(&[ids], &p).unwrap_err().to_string();
    assert!(msg.contains("adamw") && msg.contains("u32"), "{msg}");
    let msg = adamw.step(&p, &[p[0].detach()]).unwrap_err().to_string();
    assert!(msg.contains("share storage"), "{msg}");
    adamw.set_decay_mask(vec![true, false]);
    let g = vec![t(0.5, &[2, 3])];
    let msg = adamw.step(&p, &g).unwrap_err().to_string();
    assert!(msg.contains("mask"), "{msg}");
    // Failed steps change nothing; a later list must match the first.
    assert_eq!((lion.steps(), adamw.steps()), (0, 0));
    assert_eq!(p[0].to_vec(), vec![1.0; 6]);
    lion.step(&p, &g).unwrap();
    assert_eq!(lion.steps(), 1);
    let (p2, g2) = ([p[0].clone(), t(1.0, &[4])], [g[0].clone(), t(1.0, &[4])]);
    assert!(lion.step(&p2, &g2).is_err());
}

device_tests!(
    f32_rules_match_reference,
    bf16_params_round_stochastically,
    sophia_update,
    stochastic_rounding,
    clip_grad_norm,
    step_control,
    errors,
);
