//! Every kernel's Rust params struct matches its WGSL `Params` (member names, order, offsets,
//! size), and every op-code enum matches the WGSL consts that mirror it, read from the shader with naga.

use naga::{AddressSpace, Expression, Literal, TypeInner};

/// Member names and byte offsets, in order.
type Fields = Vec<(String, u32)>;

/// The WGSL uniform at group 0, binding 0: (struct name, members, size).
fn uniform_params(module: &naga::Module) -> Option<(String, Fields, u32)> {
    let var = module.global_variables.iter().map(|(_, v)| v).find(|v| {
        v.space == AddressSpace::Uniform && v.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0)
    })?;
    let ty = &module.types[var.ty];
    let TypeInner::Struct { members, span } = &ty.inner else { return None };
    let fields = members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset)).collect();
    Some((ty.name.clone().unwrap_or_default(), fields, *span))
}

/// The u32 value of every module-scope `const` of the shader, by name.
fn u32_consts(module: &naga::Module) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (_, c) in module.constants.iter() {
        if let (Some(name), Expression::Literal(Literal::U32(v))) = (&c.name, &module.global_expressions[c.init]) {
            out.push((name.clone(), *v));
        }
    }
    out
}

fn parse(name: &str, source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)))
}

#[test]
fn params_structs_match_the_shaders() {
    for kernel in irontensor::kernels() {
        let module = parse(kernel.name, &kernel.wgsl());
        let (wgsl_name, wgsl_fields, wgsl_size) = uniform_params(&module)
            .unwrap_or_else(|| panic!("{}: no uniform struct at group 0 binding 0", kernel.name));
        let rust = kernel.params;
        let rust_fields: Vec<(String, u32)> = rust.fields.iter().map(|&(n, o)| (n.to_string(), o as u32)).collect();
        assert_eq!(
            rust_fields, wgsl_fields,
            "{}: Rust {} and WGSL {wgsl_name} differ in members or offsets",
            kernel.name, rust.name
        );
        assert_eq!(
            rust.size as u32, wgsl_size,
            "{}: Rust {} and WGSL {wgsl_name} differ in size",
            kernel.name, rust.name
        );
    }
}

#[test]
fn op_codes_match_the_shaders() {
    let mut tables = 0;
    for kernel in irontensor::kernels() {
        let consts = u32_consts(&parse(kernel.name, &kernel.wgsl()));
        for table in kernel.codes {
            tables += 1;
            for &(name, value) in *table {
                let found = consts.iter().find(|(n, _)| n == name);
                assert_eq!(found.map(|c| c.1), Some(value), "{}: WGSL const {name} should be {value}u", kernel.name);
            }
            // And no WGSL code of the family (same prefix, e.g. UNARY_) that Rust lacks.
            let prefix = &table[0].0[..=table[0].0.find('_').expect("op-code consts are PREFIX_NAME")];
            for (name, _) in consts.iter().filter(|(n, _)| n.starts_with(prefix)) {
                assert!(table.iter().any(|(n, _)| n == name), "{}: WGSL const {name} has no Rust op code", kernel.name);
            }
        }
    }
    assert!(tables >= 3, "expected the unary, binary and optimizer-rule op codes, found {tables} tables");
}

#[test]
fn prelude_workgroup_size_is_the_rust_constant() {
    // The prelude's WG comes from gpu::WG; no kernel hard-codes a 1-D workgroup of 256.
    for kernel in irontensor::kernels() {
        let module = parse(kernel.name, &kernel.wgsl());
        assert!(u32_consts(&module).iter().any(|(n, _)| n == "WG"), "{}: no WG const", kernel.name);
        assert!(!kernel.source.contains("@workgroup_size(256)"), "{}: use @workgroup_size(WG)", kernel.name);
    }
}
