//! The few MPI calls data-parallel training needs, from the system's MPI library loaded at
//! run time (no C build step): Open MPI, whose handles are addresses of exported globals, and
//! MPICH and its ABI relatives (Intel MPI, MVAPICH), whose handles are fixed integers.

use crate::settings::Launcher;
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// Libraries tried in order when `IRONTENSOR_MPI_LIB` is unset.
const CANDIDATES: &[&str] = if cfg!(target_os = "macos") {
    &[
        "libmpi.dylib",
        "libmpi.40.dylib",
        "libmpich.12.dylib",
        "/opt/homebrew/lib/libmpi.dylib",
        "/usr/local/lib/libmpi.dylib",
        "/opt/homebrew/lib/libmpich.dylib",
        "/usr/local/lib/libmpich.dylib",
    ]
} else {
    &["libmpi.so.40", "libmpich.so.12", "libmpi.so.12", "libmpi.so"]
};

const MPI_SUCCESS: c_int = 0;
const MPI_THREAD_FUNNELED: c_int = 1;
/// Counts are C ints: larger buffers go in pieces of this many elements.
const MAX_COUNT: usize = 1 << 30;

type InitThreadFn = unsafe extern "C" fn(*mut c_int, *mut *mut *mut c_char, c_int, *mut c_int) -> c_int;
type FlagFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type VoidFn = unsafe extern "C" fn() -> c_int;
type StringFn = unsafe extern "C" fn(*mut c_char, *mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int, *mut c_char, *mut c_int) -> c_int;

/// Entry points whose handle arguments are `H`: a pointer (Open MPI) or an int (MPICH).
struct Api<H> {
    comm_world: H,
    float: H,
    byte: H,
    sum: H,
    errors_return: H,
    in_place: *mut c_void,
    comm_rank: unsafe extern "C" fn(H, *mut c_int) -> c_int,
    comm_size: unsafe extern "C" fn(H, *mut c_int) -> c_int,
    set_errhandler: unsafe extern "C" fn(H, H) -> c_int,
    allreduce: unsafe extern "C" fn(*const c_void, *mut c_void, c_int, H, H, H) -> c_int,
    bcast: unsafe extern "C" fn(*mut c_void, c_int, H, c_int, H) -> c_int,
    barrier: unsafe extern "C" fn(H) -> c_int,
    abort: unsafe extern "C" fn(H, c_int) -> c_int,
}

enum Handles {
    OpenMpi(Api<*mut c_void>),
    Mpich(Api<c_int>),
}

/// An initialised MPI. Every call must come from the thread that made it (MPI_THREAD_FUNNELED).
pub struct Mpi {
    handles: Handles,
    finalize: VoidFn,
    error_string: ErrorStringFn,
    /// Which library was loaded and its version line, for messages.
    pub name: String,
    pub rank: usize,
    pub size: usize,
}

/// `$api` bound to the handle set in use, with `$body` run on it.
macro_rules! with_api {
    ($self:expr, $api:ident => $body:expr) => {
        match &$self.handles {
            Handles::OpenMpi($api) => $body,
            Handles::Mpich($api) => $body,
        }
    };
}

fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    let cname = format!("{name}\0");
    // SAFETY: callers name C functions of the MPI standard and give their C signature as T.
    unsafe { lib.get::<T>(cname.as_bytes()).map(|s| *s).map_err(|e| format!("{name}: {e}")) }
}

/// The address of an exported global (an Open MPI predefined handle): libloading gives a
/// symbol's address itself as a `*mut c_void` symbol's value.
fn global(lib: &Library, name: &str) -> Result<*mut c_void, String> {
    symbol::<*mut c_void>(lib, name)
}

fn api<H: Copy>(lib: &Library, consts: [H; 5], in_place: *mut c_void) -> Result<Api<H>, String> {
    let [comm_world, float, byte, sum, errors_return] = consts;
    Ok(Api {
        comm_world,
        float,
        byte,
        sum,
        errors_return,
        in_place,
        comm_rank: symbol(lib, "MPI_Comm_rank")?,
        comm_size: symbol(lib, "MPI_Comm_size")?,
        set_errhandler: symbol(lib, "MPI_Comm_set_errhandler")?,
        allreduce: symbol(lib, "MPI_Allreduce")?,
        bcast: symbol(lib, "MPI_Bcast")?,
        barrier: symbol(lib, "MPI_Barrier")?,
        abort: symbol(lib, "MPI_Abort")?,
    })
}

/// Opens the first MPI library that loads: `library` (`IRONTENSOR_MPI_LIB`), else the usual names.
fn open_library(library: Option<&str>, launcher: &Launcher) -> Result<(&'static Library, String), String> {
    let mut names: Vec<String> = match library {
        Some(p) => vec![p.to_string()],
        None => CANDIDATES.iter().map(|s| s.to_string()).collect(),
    };
    // Where both are installed, the library of the launcher that started us goes first
    // (`PMI_SIZE` without Open MPI's variables: MPICH's Hydra).
    if !launcher.open_mpi && launcher.size.is_some() {
        names.sort_by_key(|n| !n.contains("mpich") && !n.contains(".12"));
    }
    let mut errors = Vec::new();
    for name in &names {
        // SAFETY: loading MPI runs its initialisers, which are safe to run once in any process.
        // RTLD_GLOBAL: Open MPI's plugins resolve symbols of libmpi when they are loaded.
        match unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) } {
            // Never unloaded: MPI keeps threads and handlers that point into it.
            Ok(lib) => return Ok((Box::leak(Box::new(lib)), name.clone())),
            Err(e) => errors.push(format!("  {name}: {e}")),
        }
    }
    Err(format!(
        "cannot load an MPI library; tried:\n{}\ninstall Open MPI (Debian/Ubuntu: apt install openmpi-bin libopenmpi-dev; \
         macOS: brew install open-mpi) or MPICH, or set IRONTENSOR_MPI_LIB to the path of libmpi",
        errors.join("\n")
    ))
}

impl Mpi {
    /// Loads MPI (`library`, else the usual names) and initialises it on the calling thread; that
    /// thread makes every later call. `launcher` is what mpirun set.
    pub fn init(library: Option<&str>, launcher: &Launcher) -> Result<Mpi, String> {
        let (lib, file) = open_library(library, launcher)?;
        let version: StringFn = symbol(lib, "MPI_Get_library_version")?;
        let mut buf = vec![0 as c_char; 8192];
        let mut len: c_int = 0;
        // SAFETY: the buffer is larger than MPI_MAX_LIBRARY_VERSION_STRING of every implementation.
        unsafe { version(buf.as_mut_ptr(), &mut len) };
        // SAFETY: MPI writes a NUL-terminated string into the zeroed buffer.
        let version = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        let first_line = version.lines().next().unwrap_or("").trim().to_string();
        let handles = if version.contains("Open MPI") {
            let g = |n: &str| global(lib, n);
            let consts = [
                g("ompi_mpi_comm_world")?,
                g("ompi_mpi_float")?,
                g("ompi_mpi_byte")?,
                g("ompi_mpi_op_sum")?,
                g("ompi_mpi_errors_return")?,
            ];
            Handles::OpenMpi(api(lib, consts, std::ptr::without_provenance_mut(1))?)
        } else if ["MPICH", "Intel(R) MPI", "MVAPICH"].iter().any(|s| version.contains(s)) {
            // mpi.h of MPICH: MPI_COMM_WORLD, MPI_FLOAT, MPI_BYTE, MPI_SUM, MPI_ERRORS_RETURN.
            let consts = [0x4400_0000, 0x4c00_040a, 0x4c00_010d, 0x5800_0003, 0x5400_0001];
            Handles::Mpich(api(lib, consts, std::ptr::without_provenance_mut(usize::MAX))?)
        } else {
            return Err(format!(
                "{file} is an MPI this build does not know ({first_line:?}): Open MPI and MPICH are supported"
            ));
        };
        let mut mpi = Mpi {
            handles,
            finalize: symbol(lib, "MPI_Finalize")?,
            error_string: symbol(lib, "MPI_Error_string")?,
            name: format!("{file}: {first_line}"),
            rank: 0,
            size: 1,
        };
        let initialized: FlagFn = symbol(lib, "MPI_Initialized")?;
        let init_thread: InitThreadFn = symbol(lib, "MPI_Init_thread")?;
        let mut flag: c_int = 0;
        // SAFETY: MPI_Initialized may be called at any time.
        unsafe { initialized(&mut flag) };
        if flag == 0 {
            let mut provided: c_int = 0;
            // SAFETY: null argc/argv are allowed since MPI-2.
            let rc =
                unsafe { init_thread(std::ptr::null_mut(), std::ptr::null_mut(), MPI_THREAD_FUNNELED, &mut provided) };
            mpi.check(rc, "MPI_Init_thread")?;
        }
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        with_api!(mpi, a => {
            // SAFETY: MPI is initialised; the handles are this library's predefined ones.
            let rc = unsafe { (a.set_errhandler)(a.comm_world, a.errors_return) };
            mpi.check(rc, "MPI_Comm_set_errhandler")?;
            // SAFETY: as above; the out-pointers are valid.
            mpi.check(unsafe { (a.comm_rank)(a.comm_world, &mut rank) }, "MPI_Comm_rank")?;
            mpi.check(unsafe { (a.comm_size)(a.comm_world, &mut size) }, "MPI_Comm_size")?;
        });
        (mpi.rank, mpi.size) = (rank as usize, size as usize);
        // A library that is not the launcher's starts each process alone, as rank 0 of 1.
        if let Some(n) = launcher.size.filter(|&n| n != mpi.size) {
            mpi.finalize()?;
            return Err(format!(
                "mpirun started {n} ranks, but {} sees {}: it is not the MPI of this mpirun; \
                 set IRONTENSOR_MPI_LIB to the libmpi of the MPI whose mpirun you use",
                mpi.name, mpi.size
            ));
        }
        report_termination(mpi.rank, mpi.size);
        Ok(mpi)
    }

    /// An MPI return code as a message that names the call.
    fn check(&self, rc: c_int, call: &str) -> Result<(), String> {
        if rc == MPI_SUCCESS {
            return Ok(());
        }
        let mut buf = vec![0 as c_char; 4096];
        let mut len: c_int = 0;
        // SAFETY: the buffer exceeds MPI_MAX_ERROR_STRING (Open MPI 256, MPICH 1024).
        unsafe { (self.error_string)(rc, buf.as_mut_ptr(), &mut len) };
        // SAFETY: NUL-terminated by MPI, or all zeros.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        Err(format!("{call} failed on rank {} (MPI error {rc}: {msg})", self.rank))
    }

    /// Sums `data` over all ranks, in place, on every rank.
    pub fn allreduce_sum(&self, data: &mut [f32]) -> Result<(), String> {
        for chunk in data.chunks_mut(MAX_COUNT) {
            let rc = with_api!(self, a => {
                // SAFETY: MPI_IN_PLACE with a valid buffer of `chunk.len()` floats.
                unsafe { (a.allreduce)(a.in_place, chunk.as_mut_ptr().cast(), chunk.len() as c_int, a.float, a.sum, a.comm_world) }
            });
            self.check(rc, "MPI_Allreduce")?;
        }
        Ok(())
    }

    /// Rank `root`'s bytes into `data` on every rank (all ranks pass buffers of one length).
    pub fn broadcast(&self, data: &mut [u8], root: usize) -> Result<(), String> {
        for chunk in data.chunks_mut(MAX_COUNT) {
            let rc = with_api!(self, a => {
                // SAFETY: a valid buffer of `chunk.len()` bytes.
                unsafe { (a.bcast)(chunk.as_mut_ptr().cast(), chunk.len() as c_int, a.byte, root as c_int, a.comm_world) }
            });
            self.check(rc, "MPI_Bcast")?;
        }
        Ok(())
    }

    pub fn barrier(&self) -> Result<(), String> {
        // SAFETY: a collective on the world communicator.
        let rc = with_api!(self, a => unsafe { (a.barrier)(a.comm_world) });
        self.check(rc, "MPI_Barrier")
    }

    /// Ends every rank of the job (mpirun reports the code).
    pub fn abort(&self, code: i32) {
        // SAFETY: MPI_Abort may be called at any time after initialisation.
        with_api!(self, a => unsafe { (a.abort)(a.comm_world, code) });
    }

    pub fn finalize(&self) -> Result<(), String> {
        // SAFETY: called once, after the last collective.
        let rc = unsafe { (self.finalize)() };
        self.check(rc, "MPI_Finalize")
    }
}

/// What a rank prints when mpirun ends it.
static TERM_MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_sigterm(_: c_int) {
    // Only async-signal-safe calls here: write(2) and _exit(2).
    if let Some(m) = TERM_MESSAGE.get() {
        // SAFETY: a valid buffer for its length.
        unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
    }
    // SAFETY: ends the process at once, without running destructors that may wait on MPI.
    unsafe { libc::_exit(128 + libc::SIGTERM) };
}

/// When another rank fails, mpirun sends the survivors SIGTERM: each says so before it exits.
fn report_termination(rank: usize, size: usize) {
    let msg = format!(
        "rank {rank} of {size}: stopped by SIGTERM, which mpirun sends when another rank has failed (see its \
         message) or the job is cancelled; the newest complete checkpoint stays usable\n"
    );
    let _ = TERM_MESSAGE.set(msg.into_bytes());
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
}
