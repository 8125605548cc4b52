//! The processes of the installation: each started inside its host's
//! namespace (`ip netns exec`, which execs, so the pid is the program's own)
//! with its output appended to a log file of its own, so a process restarted
//! after a kill keeps one log.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::topology::Host;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Db,
    Api,
    Worker,
    Scheduler,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Db => "db",
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
        }
    }
}

/// One process of the installation, started and restarted in its host.
pub struct Proc {
    pub id: String,
    pub role: Role,
    pub host: Host,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(
        id: &str,
        role: Role,
        host: &Host,
        program: &Path,
        args: &[&str],
        log_dir: &Path,
    ) -> Proc {
        Proc {
            id: id.to_string(),
            role,
            host: host.clone(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            log: log_dir.join(format!("{id}.log")),
            child: None,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Proc {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts it (again); its earlier run must have ended.
    pub fn start(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.ns])
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // If the harness itself is killed, so is everything it started. The
        // harness spawns from its one runtime thread, whose end is the
        // process's end.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().map_err(|e| format!("start {}: {e}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// Whether it is still running (a stopped process is running).
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for it to exit (SIGKILL after).
    /// Returns its exit code when it exited by itself.
    pub async fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
        None
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
