//! Kernel benchmarks: matmul GFLOP/s, FlashAttention and fused linear cross-entropy, forward
//! and forward+backward, each as ms per call and a throughput.

use super::{adapter, emit, round, time_best};
use crate::rng::Rng;
use crate::{bail, no_grad, ops, Device, Error, MatmulPrecision, Result, Tensor};
use serde_json::json;

/// Parses "AxBxC,DxExF" into lists of `n` sizes each.
pub fn parse_shapes(what: &str, shapes: &str, n: usize, form: &str) -> Result<Vec<Vec<usize>>> {
    shapes
        .split(',')
        .map(|s| {
            let d: Option<Vec<usize>> = s.split('x').map(|v| v.trim().parse().ok()).collect();
            match d {
                Some(d) if d.len() == n && d.iter().all(|&v| v > 0) => Ok(d),
                _ => Err(Error::Invalid(format!("bench {what}: bad shape {s:?}: expected {form}"))),
            }
        })
        .collect()
}

/// One result line: the common keys, then the benchmark's own.
fn result(bench: &str, device: Device, fields: serde_json::Value) -> serde_json::Value {
    let mut v = json!({ "bench": bench, "impl": "irontensor", "device": device.name(), "adapter": adapter(device) });
    let m = v.as_object_mut().expect("an object");
    m.extend(fields.as_object().expect("an object").clone());
    v
}

/// Matmul C = A·B with A [M, K], B [K, N]: shapes "MxNxK".
pub fn matmul(device: Device, shapes: &str) -> Result<()> {
    let precision = match (device, crate::matmul_precision()) {
        (Device::Gpu, MatmulPrecision::F16) => "f16",
        _ => "f32",
    };
    for d in parse_shapes("matmul", shapes, 3, "MxNxK")? {
        let [m, n, k] = d[..] else { unreachable!("three sizes") };
        let a = Tensor::randn_on(&[m, k], 1.0, 1, device);
        let b = Tensor::randn_on(&[k, n], 1.0, 2, device);
        // Checked first, so a wrong kernel reports no speed (this also compiles and uploads).
        check_product(&a, &b, &ops::matmul(&a, &b)?.to_vec(), [m, n, k], precision == "f16")?;
        let s = time_best(device, || ops::matmul(&a, &b).map(drop))?;
        let gflops = 2.0 * (m * n * k) as f64 / s / 1e9;
        let fields = json!({ "precision": precision, "m": m, "n": n, "k": k, "ms": round(s * 1e3, 4), "gflops": round(gflops, 1) });
        let v = result("matmul", device, fields);
        emit(&v);
        eprintln!("matmul {m}x{n}x{k} on {} ({precision}): {:.3} ms, {gflops:.1} GFLOP/s", v["adapter"], s * 1e3);
    }
    Ok(())
}

/// 16 elements of `c` = a·b against f64 dot products.
fn check_product(a: &Tensor, b: &Tensor, c: &[f32], [m, n, k]: [usize; 3], f16: bool) -> Result<()> {
    let (a, b) = (a.to_vec(), b.to_vec());
    let mut rng = Rng::new(7);
    // f32 rounding over K terms of size ~1 (f16 inputs: ~1e-3 relative each).
    let tol = if f16 { 1e-2 } else { 1e-5 } * (k as f64).sqrt() * 4.0;
    for _ in 0..16 {
        let (i, j) = (rng.below(m as u64) as usize, rng.below(n as u64) as usize);
        let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
        if (c[i * n + j] as f64 - want).abs() > tol {
            bail!(Invalid, "bench matmul {m}x{n}x{k}: C[{i}, {j}] is {} but should be {want}", c[i * n + j]);
        }
    }
    Ok(())
}

/// FlashAttention on q, k, v [B, H, T, D]: shapes "BxHxTxD".
/// FLOPs counted as 4·B·H·T²·D forward (half of it with the causal mask) and 2.5× that
/// backward, the FlashAttention papers' convention.
pub fn attention(device: Device, shapes: &str, causal: bool) -> Result<()> {
    for d in parse_shapes("attention", shapes, 4, "BxHxTxD")? {
        let [b, h, t, hd] = d[..] else { unreachable!("four sizes") };
        let shape = [b, h, t, hd];
        let q = Tensor::randn_on(&shape, 1.0, 11, device);
        let k = Tensor::randn_on(&shape, 1.0, 12, device);
        let v = Tensor::randn_on(&shape, 1.0, 13, device);
        let dout = Tensor::randn_on(&shape, 1.0, 14, device);
        let fwd_flops = 4.0 * (b * h * t * t * hd) as f64 * if causal { 0.5 } else { 1.0 };
        let forward = time_best(device, || no_grad(|| ops::flash_attention(&q, &k, &v, causal).map(drop)))?;
        let (qg, kg, vg) = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_());
        let both = time_best(device, || {
            let o = ops::flash_attention(&qg, &kg, &vg, causal)?;
            o.backward_with(&dout).map(drop)
        })?;
        for (mode, s, flops) in [("forward", forward, fwd_flops), ("forward_backward", both, 3.5 * fwd_flops)] {
            let fields = json!({
                "mode": mode, "b": b, "h": h, "t": t, "d": hd, "causal": causal,
                "ms": round(s * 1e3, 4), "gflops": round(flops / s / 1e9, 1),
            });
            emit(&result("attention", device, fields));
            eprintln!(
                "flash_attention {mode} B={b} H={h} T={t} D={hd}{}: {:.3} ms, {:.1} GFLOP/s",
                if causal { " causal" } else { "" },
                s * 1e3,
                flops / s / 1e9
            );
        }
    }
    Ok(())
}

/// Fused linear cross-entropy of hidden [N, C] and weight [V, C]: shapes "NxCxV".
/// FLOPs counted as the unfused computation's: 2·N·C·V forward, 6·N·C·V with the backward.
pub fn cross_entropy(device: Device, shapes: &str) -> Result<()> {
    for d in parse_shapes("cross-entropy", shapes, 3, "NxCxV")? {
        let [n, c, v] = d[..] else { unreachable!("three sizes") };
        let hidden = Tensor::randn_on(&[n, c], 1.0, 21, device);
        let weight = Tensor::randn_on(&[v, c], 0.02, 22, device);
        let mut rng = Rng::new(23);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
        let targets = Tensor::from_u32_on(&ids, &[n], device)?;
        let forward = time_best(device, || {
            no_grad(|| ops::fused_linear_cross_entropy(&hidden, &weight, &targets, None).map(drop))
        })?;
        let (hg, wg) = (hidden.requires_grad_(), weight.requires_grad_());
        let both = time_best(device, || {
            let loss = ops::fused_linear_cross_entropy(&hg, &wg, &targets, None)?;
            loss.backward().map(drop)
        })?;
        let ncv = (n * c * v) as f64;
        for (mode, s, flops) in [("forward", forward, 2.0 * ncv), ("forward_backward", both, 6.0 * ncv)] {
            let fields = json!({
                "mode": mode, "n": n, "c": c, "v": v, "ms": round(s * 1e3, 4),
                "gflops": round(flops / s / 1e9, 1), "tokens_per_s": round(n as f64 / s, 0),
            });
            emit(&result("cross_entropy", device, fields));
            eprintln!(
                "fused_linear_cross_entropy {mode} N={n} C={c} V={v}: {:.3} ms, {:.1} GFLOP/s, {:.0} tokens/s",
                s * 1e3,
                flops / s / 1e9,
                n as f64 / s
            );
        }
    }
    Ok(())
}
