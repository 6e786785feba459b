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
/// source's leading `enable` directives, which WGSL wants before any declaration.
pub fn with_prelude(source: &str) -> String {
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
