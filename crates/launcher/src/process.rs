//! One child process: spawned in its own process group with its output in a log file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{LaunchError, io};

/// How long a process may take to exit after SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    log: PathBuf,
    child: Child,
}

impl ManagedProcess {
    /// Spawns `binary args...`, appending its stdout and stderr to `log`.
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
        log_filter: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, LaunchError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let stderr = file
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("RUST_LOG", log_filter)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            // Its own group: a Ctrl-C in the terminal reaches the launcher only,
            // which then stops the children in order.
            .process_group(0);
        // Each process is its own instance of its service in the traces.
        if !env.contains_key("OTEL_RESOURCE_ATTRIBUTES") {
            command.env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("service.instance.id={name}"),
            );
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
        })
    }

    /// The process's name, such as `storage-3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How it exited, if it has.
    pub fn exit_status(&mut self) -> Result<Option<String>, LaunchError> {
        let status = self
            .child
            .try_wait()
            .map_err(io(format!("checking {}", self.name)))?;
        Ok(status.map(|s| s.to_string()))
    }

    /// SIGKILL, then wait for the exit.
    pub async fn kill(&mut self) -> Result<(), LaunchError> {
        if self.exit_status()?.is_none() {
            self.child
                .kill()
                .await
                .map_err(io(format!("killing {}", self.name)))?;
        }
        Ok(())
    }

    /// Freezes the process with SIGSTOP, as a long GC pause or a stalled VM would.
    pub fn pause(&self) {
        if let Some(pid) = self.child.id() {
            send_signal(pid, libc::SIGSTOP);
        }
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&self) {
        if let Some(pid) = self.child.id() {
            send_signal(pid, libc::SIGCONT);
        }
    }

    /// SIGTERM, wait for a clean exit, and SIGKILL past the grace period.
    pub async fn terminate(&mut self) -> Result<(), LaunchError> {
        if self.exit_status()?.is_some() {
            return Ok(());
        }
        if let Some(pid) = self.child.id() {
            send_signal(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(TERMINATE_GRACE, self.child.wait()).await {
            Ok(status) => {
                status.map_err(io(format!("waiting for {}", self.name)))?;
                Ok(())
            }
            Err(_) => {
                tracing::warn!(name = self.name, "no exit after SIGTERM; killing");
                self.kill().await
            }
        }
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes any pid and signal number; on a stale pid it fails with ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Asks the kernel to SIGKILL the child when its parent dies, so that a test
/// that aborts (or a launcher killed with SIGKILL) leaves no orphans.
///
/// Strictly, the signal fires when the *thread* that forked the child exits;
/// the launcher spawns from its runtime's long-lived threads, so in practice
/// that is the process.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would signal us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other(
                    "the launcher exited while starting the child",
                ));
            }
            Ok(())
        });
    }
}
