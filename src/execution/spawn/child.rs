//! The cloned child itself: what it reads from the parent's memory, and the raw system
//! calls it makes between `clone(CLONE_VM | CLONE_VFORK)` and `execve`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

use super::{NSIG, Prepared};

/// What the child reads (all prepared) and writes (its error) in the shared memory.
struct ChildArgs {
    candidates: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    /// Placed at 0, 1, 2, ... in order.
    fds: Vec<RawFd>,
    bind: Option<(*const libc::c_char, *const libc::c_char)>,
    ids: Option<(u32, u32)>,
    rlimits: Vec<(libc::c_int, u64)>,
    /// Set by the child if it fails before exec: which step, and errno.
    error: (i32, i32),
}

/// Steps the child reports failing at.
const STEPS: [&str; 9] = [
    "",
    "resetting signals",
    "setting the process group",
    "attaching stdio",
    "entering the working directory",
    "entering the exec root",
    "dropping privileges",
    "setting resource limits",
    "executing the program",
];

pub(super) fn clone_child(
    prepared: &Prepared,
    stack: &mut [u8],
) -> io::Result<(libc::pid_t, OwnedFd)> {
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let mut args = ChildArgs {
        candidates: prepared.candidates.iter().map(|c| c.as_ptr()).collect(),
        argv: ptrs(&prepared.argv),
        envp: ptrs(&prepared.envp),
        cwd: prepared.cwd.as_ptr(),
        fds: prepared.fds.iter().map(|fd| fd.as_raw_fd()).collect(),
        bind: prepared
            .credentials
            .as_ref()
            .and_then(|c| c.bind.as_ref())
            .map(|(s, t)| (s.as_ptr(), t.as_ptr())),
        ids: prepared.credentials.as_ref().map(|c| (c.uid, c.gid)),
        rlimits: prepared.rlimits.clone(),
        error: (0, 0),
    };
    let mut pidfd: libc::c_int = -1;
    // The stack grows down: hand clone the top, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: CLONE_VFORK suspends this thread until the child has exec'd or exited, so
    // `args`, `prepared` and `stack` outlive every access the child makes. The child runs
    // only raw system calls (see `child_main`).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &mut args as *mut ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the child has exec'd or exited; nothing writes `args.error` any more.
    let (step, errno) = unsafe { std::ptr::read_volatile(&args.error) };
    if step != 0 {
        // SAFETY: reaping our own child, which has already exited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let err = io::Error::from_raw_os_error(errno);
        let step = STEPS.get(step as usize).copied().unwrap_or("starting");
        return Err(io::Error::new(err.kind(), format!("{step}: {err}")));
    }
    Ok((pid, pidfd))
}

/// The cloned child. It shares the parent's memory, so it only makes raw system calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the parent's ChildArgs, alive while the parent is suspended.
    let args = unsafe { &mut *(arg as *mut ChildArgs) };
    // SAFETY: raw system calls on prepared, NUL-terminated data.
    unsafe {
        let fail = |args: &mut ChildArgs, step: i32| -> libc::c_int {
            let errno = *libc::__errno_location();
            std::ptr::write_volatile(&mut args.error, (step, errno));
            libc::_exit(127)
        };
        // Caught signals must not run the parent's handlers here, and ignored ones (Rust
        // ignores SIGPIPE) must not stay ignored in the action.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..NSIG {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(args, 2);
        }
        for (target, &fd) in args.fds.iter().enumerate() {
            let target = target as RawFd;
            let rc = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if rc < 0 {
                return fail(args, 3);
            }
        }
        if libc::chdir(args.cwd) != 0 {
            return fail(args, 4);
        }
        if let Some((source, target)) = args.bind {
            let private = c"/".as_ptr();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    private,
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    source,
                    target,
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return fail(args, 5);
            }
        }
        if let Some((uid, gid)) = args.ids {
            // Raw system calls: these change this process alone.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return fail(args, 6);
            }
        }
        for &(resource, value) in &args.rlimits {
            let limit = libc::rlimit64 {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                resource,
                &limit,
                std::ptr::null::<libc::rlimit64>(),
            ) != 0
            {
                return fail(args, 7);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        );
        // As execvp: a permission error is remembered while later candidates are tried.
        let mut denied = false;
        for &candidate in &args.candidates {
            libc::execve(candidate, args.argv.as_ptr(), args.envp.as_ptr());
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => return fail(args, 8),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(args, 8)
    }
}
