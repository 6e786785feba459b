//! Every WGSL shader in src/ parses, validates and translates to Metal (MSL) and to SPIR-V with
//! naga: the Metal path as far as Linux can check it, and the Vulkan path short of a driver. And
//! each entry point keeps within the workgroup storage the kernels are written for.

use std::path::{Path, PathBuf};

fn wgsl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            wgsl_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "wgsl") {
            out.push(path);
        }
    }
}

#[test]
fn every_shader_translates() {
    let mut files = Vec::new();
    wgsl_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() >= 5, "expected the ops' shaders under src/, found {files:?}");
    // Every shader file is part of a registered kernel (some are prepended constants or shared
    // code), so none ships unused or untested; every registered source is then translated.
    let kernels = irontensor::kernels();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        // (The prelude file is in every kernel's full source.)
        let used = kernels.iter().any(|k| k.source.contains(&source) || k.wgsl().contains(&source));
        assert!(used, "{} is not in irontensor::kernels()", file.display());
    }
    for kernel in kernels {
        // The source the GPU compiles: the prelude, then the kernel's own.
        let (name, source) = (kernel.name, &kernel.wgsl());
        let module =
            naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        // Shaders without `enable` directives are the portable path: they must need no optional capability.
        let caps = if source.contains("enable ") {
            naga::valid::Capabilities::all()
        } else {
            naga::valid::Capabilities::empty()
        };
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        let options = naga::back::msl::Options { lang_version: (2, 4), ..Default::default() };
        let (msl, _) = naga::back::msl::write_string(&module, &info, &options, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: MSL translation failed: {e}"));
        for ep in &module.entry_points {
            assert!(msl.contains(&ep.name), "{name}: entry point {} missing from the MSL", ep.name);
        }
        // SPIR-V as wgpu writes it for Vulkan on a driver without robust buffer access (indices
        // clamped): naga's writer can fail here on valid WGSL, which would otherwise show only
        // on a GPU (the cooperative-matrix kernels never run on lavapipe).
        let restrict = naga::proc::BoundsCheckPolicy::Restrict;
        let options = naga::back::spv::Options {
            lang_version: (1, 5),
            bounds_check_policies: naga::proc::BoundsCheckPolicies {
                index: restrict,
                buffer: restrict,
                image_load: restrict,
                binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
            },
            ..Default::default()
        };
        // And as it is written without wgpu's checks (the default; IRONTENSOR_SHADER_CHECKS=1 is the above).
        let unchecked = naga::back::spv::Options {
            bounds_check_policies: naga::proc::BoundsCheckPolicies::default(),
            ..options.clone()
        };
        for options in [options, unchecked] {
            let spv = std::panic::catch_unwind(|| naga::back::spv::write_vec(&module, &info, &options, None))
                .unwrap_or_else(|_| panic!("{name}: naga's SPIR-V writer panicked"));
            spv.unwrap_or_else(|e| panic!("{name}: SPIR-V translation failed: {e}"));
        }
    }
}

/// Kernels allowed more than `BUDGET` bytes of workgroup storage, and why.
const OVER_BUDGET: &[(&str, &str)] = &[
    ("flash_attention_64", "FP32 FlashAttention: 32 KiB of staged chunks and a 64×64 tile"),
    ("flash_attention_128", "the same at head dim 128"),
    ("flash_attention_coop_128", "head dim 128: 64 staged rows of 136 f16s (31 KiB)"),
    ("matmul_wide", "256 threads of 8×16 outputs: one workgroup a multiprocessor whatever its storage"),
];

/// On the H200 a workgroup of 128 threads ran at half speed (the f16 matmul) or 40% slower
/// (cooperative FlashAttention) once it took more than 24 KiB (docs/PERFORMANCE.md).
const BUDGET: u32 = 24 * 1024;

#[test]
fn workgroup_storage_within_budget() {
    for kernel in irontensor::kernels() {
        let (name, source) = (kernel.name, &kernel.wgsl());
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap();
        let allowed = OVER_BUDGET.iter().any(|&(n, _)| n == name);
        for (i, ep) in module.entry_points.iter().enumerate() {
            let uses = info.get_entry_point(i);
            let bytes: u32 = module
                .global_variables
                .iter()
                .filter(|&(h, v)| v.space == naga::AddressSpace::WorkGroup && !uses[h].is_empty())
                .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
                .sum();
            assert!(
                allowed || bytes <= BUDGET,
                "{name}::{}: {bytes} bytes of workgroup storage, over the {BUDGET}-byte budget",
                ep.name
            );
            if allowed {
                assert!(bytes <= 32 * 1024, "{name}::{}: {bytes} bytes, over Apple's 32 KiB", ep.name);
            }
        }
    }
    // The exceptions are still kernels (a renamed one would otherwise stay excused).
    let names: Vec<&str> = irontensor::kernels().iter().map(|k| k.name).collect();
    for (name, _) in OVER_BUDGET {
        assert!(names.contains(name), "{name} is excused from the budget but is not a kernel");
    }
}
