//! The fence hooks (`--fence-peer COMMAND`, `--unfence COMMAND`): running an admin's command
//! when a leg stops receiving writes (so that, like DRBD's `fence-peer` handler and
//! Pacemaker's `crm-fence-peer`, the peer holding it is kept from being promoted) and when
//! it is back in sync; the command's environment and its time limit.
//!
//! - E1 The leg's fracture (its state and log) is durable before its fence hook runs, so
//!   the fence states a truth; no write the leg did not receive is acknowledged until the
//!   hook has exited 0 (writes wait for it); a hook that fails or outlives its time limit
//!   leaves writes refused (the fracture stays) until the leg is back in sync or detached.
//!   Otherwise a write acknowledged without the peer could be lost by promoting the peer
//!   before the constraint was in place.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hooks as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct FenceHooks {
    /// Run (`/bin/sh -c`) when a leg stops receiving writes; writes wait for it.
    pub fence_peer: Option<String>,
    /// Run when a fenced leg is back in sync (the constraint can go).
    pub unfence: Option<String>,
    /// The longest a hook may run; then it is killed (its process group) and fails.
    pub timeout: Duration,
    /// `MIRRORCTL_PRIMARY`: the primary as the admin gave it.
    pub primary: String,
}

/// What a hook is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceCall {
    pub slot: u32,
    /// The leg's location (`MIRRORCTL_LEG`).
    pub leg: String,
    /// The mirror's UUID (`MIRRORCTL_MIRROR`).
    pub mirror: String,
    /// Why (`MIRRORCTL_REASON`): the fracture's cause, or "in sync again".
    pub reason: String,
}

/// Runs `command` under `/bin/sh -c` with the call's environment, waiting at most
/// `hooks.timeout`; `Err` says why it failed ("exited with status 1", "killed after 60s
/// (--fence-timeout)", "could not be started: ...").
pub fn run(command: &str, hooks: &FenceHooks, call: &FenceCall) -> Result<(), String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("MIRRORCTL_SLOT", call.slot.to_string())
        .env("MIRRORCTL_LEG", &call.leg)
        .env("MIRRORCTL_MIRROR", &call.mirror)
        .env("MIRRORCTL_PRIMARY", &hooks.primary)
        .env("MIRRORCTL_REASON", &call.reason)
        .stdin(Stdio::null())
        // Its output goes to serve's log (stderr), as its own lines.
        .stdout(Stdio::from(
            io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("could not be started: {e}"))?,
        ))
        // A process group of its own: the time limit kills what it started too.
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec: the hook gets the
    // signals serve's threads block (a SIGTERM to it must end it).
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not be started: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("{st}")),
            Ok(None) if started.elapsed() >= hooks.timeout => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: a plain kill(2) of the process group this child leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "killed after {} (--fence-timeout)",
                    crate::units::format_duration(hooks.timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(timeout: Duration) -> FenceHooks {
        FenceHooks {
            fence_peer: None,
            unfence: None,
            timeout,
            primary: "/srv/a.img".into(),
        }
    }

    fn call() -> FenceCall {
        FenceCall {
            slot: 1,
            leg: "nbd://peer/vm".into(),
            mirror: "m-uuid".into(),
            reason: "by error: write: Broken pipe".into(),
        }
    }

    #[test]
    fn a_hook_gets_its_environment_and_its_exit_status_counts() {
        let h = hooks(Duration::from_secs(30));
        let check = r#"[ "$MIRRORCTL_SLOT" = 1 ] && [ "$MIRRORCTL_LEG" = nbd://peer/vm ] && [ "$MIRRORCTL_MIRROR" = m-uuid ] && [ "$MIRRORCTL_PRIMARY" = /srv/a.img ] && [ "$MIRRORCTL_REASON" = "by error: write: Broken pipe" ]"#;
        assert_eq!(run(check, &h, &call()), Ok(()));
        let e = run("exit 3", &h, &call()).unwrap_err();
        assert!(e.contains("3"), "{e}");
    }

    #[test]
    fn a_hook_over_its_time_limit_is_killed_with_what_it_started() {
        let h = hooks(Duration::from_millis(100));
        let e = run("sleep 30; true", &h, &call()).unwrap_err();
        assert!(e.contains("--fence-timeout"), "{e}");
    }
}
