//! Kernels: a WGSL source with its typed parameters, the checked u32 conversion they need, and
//! the WGSL prelude every kernel shares.

/// Threads per workgroup of the 1-D kernels; the prelude's `WG` is written from it.
pub const WG: u32 = 256;

/// A WGSL source; its pipelines are compiled once per entry point and cached.
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// The Rust twin of the source's uniform `Params` (group 0, binding 0).
    pub params: &'static ParamsLayout,
    /// Op-code tables (WGSL const name, value) the source must define, from `op_codes!` enums.
    pub codes: &'static [&'static [(&'static str, u32)]],
}

impl Kernel {
    /// The full WGSL the GPU compiles: the shared prelude, then the built-in source.
    pub fn wgsl(&self) -> String {
        with_prelude(self.source)
    }
}

/// Field names and byte offsets of a kernel's params struct, for the test that compares them
/// with the WGSL `Params` struct.
#[derive(Debug)]
pub struct ParamsLayout {
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

/// A kernel's uniform parameters: a `#[repr(C)]` Pod struct mirroring its WGSL `Params`
/// (declared with `kernel_params!`).
pub trait KernelParams: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

/// Declares a kernel's params struct: `#[repr(C)]`, Pod, fields in the WGSL `Params` order, and
/// a `KernelParams` layout (names and offsets) that tests/kernel_params.rs checks against the shader.
macro_rules! kernel_params {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $(pub $field: $ty),*
        }
        impl $crate::device::gpu::KernelParams for $name {
            const LAYOUT: $crate::device::gpu::ParamsLayout = $crate::device::gpu::ParamsLayout {
                name: stringify!($name),
                size: ::core::mem::size_of::<$name>(),
                fields: &[$((stringify!($field), ::core::mem::offset_of!($name, $field))),*],
            };
        }
    };
}
pub(crate) use kernel_params;

/// Declares an op-code enum with explicit values and, as `WGSL`, the names and values of the
/// WGSL consts that mirror it (tests/kernel_params.rs checks that the shader has them).
macro_rules! op_codes {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($variant:ident = $value:literal => $wgsl:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($variant = $value),*
        }
        impl $name {
            pub(crate) const WGSL: &'static [(&'static str, u32)] = &[$((stringify!($wgsl), $value)),*];
        }
    };
}
pub(crate) use op_codes;

/// `v` as the u32 a kernel takes, or an error naming `op` and what overflowed.
pub(crate) fn to_u32(op: &str, what: &str, v: usize) -> crate::Result<u32> {
    match u32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => crate::bail!(Invalid, "{op}: {what} {v} exceeds u32, the GPU kernels' index range; split the tensor"),
    }
}

/// `source` with the WGSL every kernel shares put in when its module is created: the workgroup
/// size made from `WG` (so Rust and WGSL agree), then prelude.wgsl. It goes after the
/// source's leading `enable` directives, which WGSL wants before any declaration. Then `unroll`.
pub fn with_prelude(source: &str) -> String {
    let source = &unroll(source);
    // The head: up to the last `enable` line before any declaration (comments may precede it).
    let (mut head, mut at) = (0, 0);
    for line in source.split_inclusive('\n') {
        at += line.len();
        let t = line.trim_start();
        if t.starts_with("enable ") {
            head = at;
        } else if !(t.is_empty() || t.starts_with("//")) {
            break;
        }
    }
    let (directives, rest) = source.split_at(head);
    format!("{directives}const WG: u32 = {}u;\n{}{rest}", WG, include_str!("prelude.wgsl"))
}

/// Spells out a kernel whose count of register-held matrices depends on its `const NB: u32 = Nu;`
/// (WGSL has no arrays of cooperative matrices): `$list(x)` becomes `x0, x1, …, x{NB-1}`,
/// `$params(x, T)` becomes `x0: T, x1: T, …`, and a line that still holds a `$` is repeated for
/// j = 0 .. NB - 1 with `$16j` read as 16·j and `$j` as j. Sources without `$` pass unchanged.
fn unroll(source: &str) -> String {
    if !source.contains('$') {
        return source.to_string();
    }
    let nb = source
        .lines()
        .find_map(|l| l.trim().strip_prefix("const NB: u32 = ")?.strip_suffix("u;")?.parse::<usize>().ok())
        .unwrap_or(0);
    let names = |x: &str, ty: &str| (0..nb).map(|j| format!("{x}{j}{ty}")).collect::<Vec<_>>().join(", ");
    let mut out = String::with_capacity(source.len() * 2);
    for line in source.split_inclusive('\n') {
        let mut line = line.to_string();
        while let Some((at, open)) =
            line.find("$list(").map(|a| (a, a + 6)).or(line.find("$params(").map(|a| (a, a + 8)))
        {
            let end = line[open..].find(')').map_or(line.len(), |e| e + open);
            let inner: Vec<&str> = line[open..end].split(',').map(str::trim).collect();
            let list = match inner.as_slice() {
                [x] => names(x, ""),
                [x, ty] => names(x, &format!(": {ty}")),
                _ => String::new(),
            };
            line.replace_range(at..(end + 1).min(line.len()), &list);
        }
        if line.contains('$') {
            for j in 0..nb {
                out.push_str(&line.replace("$16j", &(16 * j).to_string()).replace("$j", &j.to_string()));
            }
        } else {
            out.push_str(&line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unroll_spells_out_nb_matrices() {
        let src = "const NB: u32 = 3u;\nfn f($params(x, A16), r: u32) -> u32 {\n    s = g($j, x$j, $16ju);\n    return h($list(x));\n}\n";
        let want = "const NB: u32 = 3u;\nfn f(x0: A16, x1: A16, x2: A16, r: u32) -> u32 {\n    s = g(0, x0, 0u);\n    s = g(1, x1, 16u);\n    s = g(2, x2, 32u);\n    return h(x0, x1, x2);\n}\n";
        assert_eq!(super::unroll(src), want);
        assert_eq!(super::unroll("fn f() {}\n"), "fn f() {}\n");
    }
}
