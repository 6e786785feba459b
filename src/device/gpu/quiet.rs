//! Keeps GPU drivers' chatter off the user's terminal while wgpu loads them.

/// Runs `f` with file descriptor 2 pointing at /dev/null (Unix), so that what drivers print
/// while they load (Mesa: "XDG_RUNTIME_DIR is invalid or not set") never shows. Our own
/// messages are not printed inside `f`; other threads' stderr is lost for that moment, which
/// is why this wraps only adapter enumeration and device creation.
#[cfg(unix)]
pub(super) fn stderr<R>(f: impl FnOnce() -> R) -> R {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else { return f() };
    let _ = std::io::stderr().flush();
    // SAFETY: plain descriptor calls; `saved` is a fresh descriptor we own and close, and fd 2
    // is restored from it before returning (also when `f` panics: `Restore` runs on unwind).
    let saved = unsafe { libc::dup(2) };
    if saved < 0 || unsafe { libc::dup2(null.as_raw_fd(), 2) } < 0 {
        if saved >= 0 {
            unsafe { libc::close(saved) };
        }
        return f();
    }
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: self.0 is the descriptor dup'd above, still open.
            unsafe {
                libc::dup2(self.0, 2);
                libc::close(self.0);
            }
        }
    }
    let _restore = Restore(saved);
    f()
}

#[cfg(not(unix))]
pub(super) fn stderr<R>(f: impl FnOnce() -> R) -> R {
    f()
}
