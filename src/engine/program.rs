//! Reply programs: started with the message JSON on stdin, their stdout read (capped)
//! as the reply, killed with their whole process group on timeout, always reaped.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::core::reply::Reply;
use crate::core::rules::{parse_program_output, Program};

/// Largest program output read; more is a failure.
pub const MAX_PROGRAM_OUTPUT: usize = 64 * 1024;

/// The only variables a program gets from the server's environment. Everything else
/// (in CGI mode: client-controlled `HTTP_*` headers, the signed `QUERY_STRING`; under
/// systemd: `LISTEN_FDS`) stays out. `WECHAT_RULE` (the rule's name) and the rule's
/// `run.env` are added.
pub const PASSED_ENV: &[&str] = &["PATH", "LANG", "HOME", "TZ"];

/// `PATH` for a program when the server has none (CGI programs often get none).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Run a reply program: the message JSON on stdin, the reply on stdout. Waits for one of
/// `permits` first (within the program's timeout). Killed (with its process group) on
/// timeout and always reaped. `Err` says why there is no reply.
pub async fn run(
    program: &Program,
    rule: &str,
    input: &[u8],
    permits: &Semaphore,
) -> Result<Option<Reply>, String> {
    let (_permit, deadline) = slot(program, permits).await?;
    let (name, args) = program.command.split_first().ok_or("empty command")?;
    let mut command = tokio::process::Command::new(name);
    command.env_clear();
    for key in PASSED_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    command.env("WECHAT_RULE", rule);
    command.envs(program.env.iter().map(|(k, v)| (k, v)));
    command
        .args(args)
        .current_dir(&program.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Listed as running while [`RUNNING`] is held, so a sweep of inherited processes
    // never takes it for one.
    let (mut child, pid) = {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        running.extend(pid);
        (child, pid)
    };
    let _listed = Listed(pid);
    // However this function ends (also when its task is dropped at shutdown), the
    // program's whole process group goes: children it left behind included.
    let mut group = KillGroupOnDrop(child.id());
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let feed = async {
            if let Some(mut s) = stdin.take() {
                // A program that does not read its input is fine: ignore EPIPE.
                let _ = s.write_all(input).await;
            }
        };
        let (_, out, err, status) =
            tokio::join!(feed, read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    };
    let outcome = match tokio::time::timeout_at(deadline, work).await {
        Ok((out, err, status)) => {
            let status = status.map_err(|e| format!("wait: {e}"))?;
            if !status.success() {
                let err = String::from_utf8_lossy(&err.unwrap_or_default())
                    .trim()
                    .chars()
                    .take(300)
                    .collect::<String>();
                Err(format!("exited with {status}; stderr: {err:?}"))
            } else {
                match out {
                    Some(out) => parse_program_output(&out),
                    None => Err(format!("output larger than {MAX_PROGRAM_OUTPUT} bytes")),
                }
            }
        }
        Err(_) => Err(format!("timed out after {} ms", program.timeout_ms)),
    };
    // Kill what is left of the program's process group (a timed-out program, or
    // children it left behind), then reap the program itself (the group is killed
    // before the leader is reaped, while its id cannot have been reused); then what
    // escaped the group (`setsid`) and was handed to this process.
    group.kill();
    let _ = child.wait().await;
    drop(_listed);
    let _ = tokio::task::spawn_blocking(kill_inherited).await;
    outcome
}

/// A program listed in [`RUNNING`] until dropped.
struct Listed(Option<u32>);

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            RUNNING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p| *p != pid);
        }
    }
}

/// One of `permits` (`max_programs`) for a program or hook, waited for within its
/// timeout; and when that timeout ends, counted from now.
pub async fn slot<'a>(
    program: &Program,
    permits: &'a Semaphore,
) -> Result<(tokio::sync::SemaphorePermit<'a>, tokio::time::Instant), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(program.timeout_ms);
    let permit = tokio::time::timeout_at(deadline, permits.acquire())
        .await
        .map_err(|_| {
            format!(
                "no program slot free within {} ms (max_programs)",
                program.timeout_ms
            )
        })?
        .map_err(|_| "program slots closed".to_owned())?;
    Ok((permit, deadline))
}

/// Kills the process group led by the program when dropped, unless already killed.
struct KillGroupOnDrop(Option<u32>);

impl KillGroupOnDrop {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL the process group led by `pid` (programs run as group leaders).
fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Read a pipe to its end, up to [`MAX_PROGRAM_OUTPUT`] bytes; `None` when larger.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let Some(pipe) = pipe else {
        return Some(out);
    };
    let mut limited = pipe.take(MAX_PROGRAM_OUTPUT as u64 + 1);
    let _ = limited.read_to_end(&mut out).await;
    (out.len() <= MAX_PROGRAM_OUTPUT).then_some(out)
}

/// Programs running now (their process ids), so that what the server inherits can be
/// told from them.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Make this process a child subreaper: a program's descendants that leave its process
/// group (`setsid`) and outlive it are handed to the server instead of to init, and
/// [`kill_inherited`] ends them. Call once at start-up (serve and CGI).
pub fn adopt_orphans() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper: a reply program's daemonized children may outlive it");
    }
}

/// Kill and reap every child of this process that is not a running program: the
/// descendants of finished programs that escaped their process group. Repeated while
/// killing one hands over its own children.
pub fn kill_inherited() {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let me = std::process::id();
    for _ in 0..16 {
        // Found and killed while no program can start (a new one is not yet listed).
        let inherited: Vec<u32> = {
            let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
            let inherited: Vec<u32> = children_of(me)
                .into_iter()
                .filter(|pid| !running.contains(pid))
                .collect();
            for pid in &inherited {
                if let Ok(raw) = i32::try_from(*pid) {
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(raw),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            inherited
        };
        if inherited.is_empty() {
            return;
        }
        for pid in &inherited {
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            // Reap it (tokio reaps only the children it started).
            for _ in 0..100 {
                match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    _ => break,
                }
            }
            tracing::info!(pid, "killed a process a reply program left behind");
        }
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the command name in parentheses: state, then the parent.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
