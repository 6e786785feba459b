//! The crate's error type: every message names the op and what to fix.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit the op.
    Shape(String),
    /// A dtype the op does not take.
    Dtype(String),
    /// No device, a lost device, or tensors on different devices.
    Device(String),
    /// Autograd misuse: an op without a backward rule, backward of a non-scalar, ...
    Grad(String),
    /// Any other invalid argument.
    Invalid(String),
    Io(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) | Error::Dtype(m) | Error::Device(m) | Error::Grad(m) | Error::Invalid(m) => f.write_str(m),
            Error::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// `bail!(Shape, "matmul: ...")` returns `Err(Error::Shape(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::Error::$kind(format!($($arg)*)))
    };
}
