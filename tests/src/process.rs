//! Child processes that never outlive the test binary, and the per-binary work directory.
//!
//! Linux delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child exits, not the
//! process. Test threads come and go, so every child is forked by one spawner thread that
//! lives as long as the process. An `atexit` hook kills whatever is still running and removes
//! the temporary work directory; a binary killed outright leaves its directory behind, and the
//! next binary to start sweeps it.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const TEMP_PREFIX: &str = "taskrun-tests-";

/// How long [`ChildGuard::terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(15);

/// A long-running child process, killed when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    log_path: PathBuf,
    reaped: bool,
    /// How it exited, once reaped (when the wait told).
    status: Option<ExitStatus>,
}

/// How a child told to stop ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Its exit status; None when waiting for it failed.
    pub status: Option<ExitStatus>,
    /// From SIGTERM to its exit; None when it had exited before it was told.
    pub after: Option<Duration>,
    /// It outlived the grace and was sent SIGKILL.
    pub killed: bool,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            self.reap();
        }
    }

    /// SIGTERM, wait up to [`TERMINATE_GRACE`] for the process to exit, then SIGKILL; says
    /// how it ended.
    pub fn terminate(&mut self) -> Ended {
        if self.reaped {
            return Ended {
                status: self.status,
                after: None,
                killed: false,
            };
        }
        let sent = Instant::now();
        signal(self.pid(), libc::SIGTERM);
        let mut killed = false;
        while self.is_running() {
            if sent.elapsed() >= TERMINATE_GRACE {
                self.kill();
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ended {
            status: self.status,
            after: Some(sent.elapsed()),
            killed,
        }
    }

    /// The file the child's stdout and stderr are appended to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn is_running(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            exited => {
                self.status = exited.ok().flatten();
                self.reaped = true;
                registry().remove(&self.child.id());
                false
            }
        }
    }

    fn reap(&mut self) {
        // Deregister before waiting: until it is reaped the pid cannot be reused.
        registry().remove(&self.child.id());
        self.status = self.child.wait().ok();
        self.reaped = true;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with stdout and stderr appended to `<work_dir>/logs/<name>.log`; the child is
/// killed when the returned guard drops, when the process exits, or when it dies.
pub fn spawn_logged(mut cmd: Command, name: &str) -> io::Result<ChildGuard> {
    // Failures are reported with the log's last lines. Under RUST_BACKTRACE=1 the backtrace
    // of a Rust binary's returned error would fill them and push out the error itself; panics
    // keep their backtraces (RUST_LIB_BACKTRACE only governs captured ones).
    if !cmd.get_envs().any(|(k, _)| k == "RUST_LIB_BACKTRACE") {
        cmd.env("RUST_LIB_BACKTRACE", "0");
    }
    let logs = work_dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
    let child = spawn_on_spawner_thread(cmd)?;
    registry().insert(child.id());
    Ok(ChildGuard {
        child,
        log_path,
        reaped: false,
        status: None,
    })
}

/// The per-binary work directory: a fresh temporary directory removed at exit, unless
/// [`use_work_dir`] chose a persistent one first.
pub fn work_dir() -> &'static Path {
    &work_dir_cell()
        .get_or_init(|| {
            let dir = fresh_temp_dir().unwrap_or_else(|e| panic!("cannot create a work dir: {e}"));
            WorkDir {
                path: dir,
                remove_at_exit: true,
            }
        })
        .path
}

/// Makes `dir` the work directory (kept at exit); for the dev cluster. Returns false when a
/// work directory was already in use.
pub fn use_work_dir(dir: PathBuf) -> bool {
    install_exit_hook();
    work_dir_cell()
        .set(WorkDir {
            path: dir,
            remove_at_exit: false,
        })
        .is_ok()
}

/// The last `lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

struct WorkDir {
    path: PathBuf,
    remove_at_exit: bool,
}

fn work_dir_cell() -> &'static OnceLock<WorkDir> {
    static DIR: OnceLock<WorkDir> = OnceLock::new();
    &DIR
}

fn fresh_temp_dir() -> io::Result<PathBuf> {
    sweep_stale_temp_dirs();
    install_exit_hook();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .tempdir()?;
    Ok(dir.keep())
}

/// Removes work directories of test binaries that no longer run (killed with SIGKILL).
fn sweep_stale_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Pids of live children, killed at exit.
static PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn registry() -> MutexGuard<'static, BTreeSet<u32>> {
    PIDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn install_exit_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };
    });
}

extern "C" fn at_exit() {
    // try_lock: never hang the exit on a lock some other thread died holding.
    let pids: Vec<u32> = match PIDS.try_lock() {
        Ok(mut pids) => std::mem::take(&mut *pids).into_iter().collect(),
        Err(std::sync::TryLockError::Poisoned(p)) => {
            std::mem::take(&mut *p.into_inner()).into_iter().collect()
        }
        Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
    };
    for &pid in &pids {
        signal(pid, libc::SIGKILL);
    }
    for &pid in &pids {
        // SAFETY: reaping our own children; a null status pointer is allowed.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    }
    if let Some(dir) = work_dir_cell().get()
        && dir.remove_at_exit
    {
        let _ = std::fs::remove_dir_all(&dir.path);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawn_on_spawner_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("taskrun-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the spawner thread: {e}"));
        tx
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// A memory figure of a process from `/proc/PID/status` in KiB: `VmRSS` (resident now) or
/// `VmHWM` (the most it has had resident). `None` once the process is gone.
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The memory limit of the container of the Deployment in `manifests/base/{manifest}`, in KiB.
pub fn memory_limit_kib(manifest: &str) -> u64 {
    let path = crate::repo_root().join("manifests/base").join(manifest);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let docs = crate::identity::parse_documents(&text).expect("YAML");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let limit =
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            .as_str()
            .expect("a memory limit");
    let (number, unit) = limit.split_at(limit.len() - 2);
    let number: u64 = number.parse().unwrap_or_else(|e| panic!("{limit}: {e}"));
    match unit {
        "Mi" => number * 1024,
        "Gi" => number * 1024 * 1024,
        _ => panic!("memory limit {limit}: expected Mi or Gi"),
    }
}
