//! What a serving process does with a command sent through its control socket: the same
//! operation on the served mirror (through the server, which owns it while hosts write), and
//! the same output, JSON and exit status as the command prints on an idle mirror.

use super::*;
use crate::engine::serve::Server;
use crate::engine::Progress;
use crate::live::{ProgressCounters, Publisher};
use crate::nbd_server::control_socket::{Message, Reply, Request};
use clap::Parser;
use std::sync::Mutex;

/// Carries out one request and sends its output and exit status.
pub(super) fn handle(srv: &Server, live: Option<&Publisher>, req: Request, reply: &mut Reply) {
    let args = std::iter::once("mirrorctl".to_string()).chain(req.args.iter().cloned());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // The client parsed the same line: only a different mirrorctl gets here.
            reply.send(&Message::Error {
                message: format!(
                    "the serving mirrorctl does not understand this command line: {}",
                    e.to_string().lines().next().unwrap_or("")
                ),
                code: 2,
            });
            return;
        }
    };
    let reply = Mutex::new(reply);
    let r = run(srv, live, &req, cli.command, &reply);
    let reply = reply.into_inner().unwrap_or_else(|p| p.into_inner());
    match r {
        Ok(exit) => reply.send(&Message::Exit(exit.code())),
        // The client prints the failure as its own (with its JSON document under --json).
        Err(e) => reply.send(&Message::Error {
            message: e.to_string(),
            code: crate::cli::exit::of(&e).code(),
        }),
    }
}

/// A relative path the client gave, as seen from its working directory.
fn resolve(cwd: &Path, spec: &str) -> String {
    let p = Path::new(spec);
    if p.is_relative() && !crate::device::nbd::is_uri(spec) && cwd.join(p).exists() {
        cwd.join(p).to_string_lossy().into_owned()
    } else {
        spec.to_string()
    }
}

fn out(reply: &Mutex<&mut Reply>, text: String) {
    reply
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(&Message::Out(text));
}

/// A line on the client's standard error, as the command prints it.
fn err(reply: &Mutex<&mut Reply>, line: &str) {
    reply
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(&Message::Err(format!("mirrorctl: {line}\n")));
}

fn run(
    srv: &Server,
    live: Option<&Publisher>,
    req: &Request,
    cmd: Command,
    reply: &Mutex<&mut Reply>,
) -> Result<Exit> {
    let busy = |what: &str| {
        Err(Error::busy(format!(
            "`mirrorctl {what}` cannot run while the mirror is served (pid {}): status, fracture, resync, attach, detach, verify and set can; stop serve cleanly with `kill -TERM {}` first",
            std::process::id(),
            std::process::id()
        )))
    };
    // The mirror's warnings go to the client too, as the command prints them.
    let say = |w: &str| err(reply, w);
    let cwd = req.cwd.clone();
    let same = |s: &str| same_file(&resolve(&cwd, s));
    let names_a_file = |s: &str| Path::new(&resolve(&cwd, s)).exists();
    // Extents pinned by primary write errors count against health (read before the
    // mirror is borrowed: both take the server's state).
    let health = || -> Result<Exit> {
        let pinned = srv.pinned_extents() as u64;
        srv.with_mirror(|m| health_exit_pinned(m, pinned))
    };
    match cmd {
        Command::Fracture(a) => {
            let (slot, leg) = srv.with_mirror(|m| -> Result<_> {
                let s = m.find_slot(
                    &a.secondary,
                    names_a_file(&a.secondary),
                    &same(&a.secondary),
                )?;
                Ok((s, m.sb().legs[s as usize].clone()))
            })?;
            let done = srv.fracture_leg(slot, a.reason.as_deref(), &say)?;
            out(reply, super::legs::fractured_text(&a, slot, &leg, done));
            Ok(Exit::Success)
        }
        Command::Detach(a) => {
            let slot = srv.with_mirror(|m| {
                m.find_slot(
                    &a.secondary,
                    names_a_file(&a.secondary),
                    &same(&a.secondary),
                )
            })?;
            let leg = srv.detach_leg(slot, &say)?;
            out(reply, super::legs::detached_text(slot, &leg));
            Ok(Exit::Success)
        }
        Command::Resync(a) => {
            let slots = srv.with_mirror(|m| super::resync::choose_slots(m, &a, &same))?;
            let mut errs = Vec::new();
            let (o, exit) = if a.dry_run {
                let o = srv.with_mirror(|m| super::resync::dry_run(m, &a, &slots))?;
                (o, Exit::Success)
            } else if !slots.is_empty() {
                let p = Sent::new(reply, live, "resync");
                let opts = engine::ResyncOptions {
                    rate: a.rate,
                    compare: a.compare,
                };
                // Without --rate, the copy yields to the hosts (as a background resync does).
                let r = srv.resync_legs(&slots, &opts, a.rate.is_none(), &p, &say);
                drop(p);
                let r = r?;
                srv.with_mirror(|m| super::resync::finished(m, &a, r, &mut errs))?
            } else {
                (super::resync::empty(&a), Exit::Success)
            };
            for e in errs {
                err(reply, &e.to_string());
            }
            let mut text = Vec::new();
            super::resync::render(&a, slots.is_empty(), &o, &mut text)?;
            out(reply, String::from_utf8_lossy(&text).into_owned());
            Ok(exit)
        }
        Command::Attach(mut a) => {
            super::attach::tls_secondary(&mut a, &cwd)?;
            let at = PathBuf::from(resolve(&cwd, &a.secondary));
            // Opened (an NBD export connected, a file created) while hosts go on.
            let shape = srv.with_mirror(|m| super::attach::Shape::of(m));
            let super::attach::Opened {
                dev,
                location,
                canonical,
                created,
            } = super::attach::secondary(&shape, &a, &at)?;
            let outcome = srv.attach_leg(
                dev,
                &location,
                &canonical,
                super::attach::initial(&a),
                a.force,
                a.discard_secondary_changes,
                &say,
            )?;
            if let Some(mut c) = created {
                c.0 = None;
            }
            let mut done = super::attach::Attached::new(&a, &outcome, &location);
            let state = srv.with_mirror(|m| m.sb().legs[outcome.slot as usize].state());
            let mut exit = Exit::Success;
            if done.needs_sync(&a, state) {
                let p = Sent::new(reply, live, "initial sync");
                let opts = engine::ResyncOptions {
                    rate: a.rate,
                    compare: a.compare,
                };
                let r = srv.resync_legs(&[outcome.slot], &opts, a.rate.is_none(), &p, &say);
                drop(p);
                if let Some(e) = done.synced(&r?) {
                    err(reply, &e);
                    exit = Exit::Degraded;
                }
            }
            done.set_state(srv.with_mirror(|m| m.sb().legs[outcome.slot as usize].state()));
            let mut text = Vec::new();
            done.render(&a, &mut text)?;
            out(reply, String::from_utf8_lossy(&text).into_owned());
            Ok(exit.worst(health()?))
        }
        Command::Verify(a) => {
            let slots = srv.with_mirror(|m| super::verify::slots(m, &a, &same))?;
            let p = Sent::new(reply, live, "verify");
            let r = srv.verify(&slots, &super::verify::opts(&a), &p, &say);
            drop(p);
            let (report, verdict) = r?;
            let mut text = Vec::new();
            super::verify::render(&a, &report, &mut text)?;
            out(reply, String::from_utf8_lossy(&text).into_owned());
            Ok(super::verify::exit_of(verdict))
        }
        Command::Set(a) => {
            let n = a.min_in_sync.unwrap_or_default();
            let old = srv.set_min_in_sync(n)?;
            let (now, _) = srv.quorum();
            let refused = srv.writes_refused();
            out(reply, super::set::set_text(old, n, now, refused.as_deref()));
            Ok(Exit::Success)
        }
        Command::Write(_) => busy("write"),
        Command::Read(_) => busy("read"),
        Command::Promote(_) => busy("promote"),
        Command::Serve(_) => busy("serve"),
        Command::Export(_) => busy("export"),
        Command::Create(_) => busy("create"),
        Command::Status(_)
        | Command::Events(_)
        | Command::Generate(_)
        | Command::OcfAgent(_)
        | Command::Name(_)
        | Command::CompleteNames
        | Command::CompleteLegs(_) => Err(Error::invalid(
            "this command is not carried out through the control socket",
        )),
    }
}

/// What a `serve --read-only` answers every command sent to its control socket: a refusal
/// at once, exit 5 (busy), nothing changed.
///
/// Read-only serving promises that nothing on disk changes while it serves (not even a
/// recovery), and every admin command writes the primary's metadata: a fracture or detach
/// its leg table, a resync or attach the legs and logs, even a plain verify records its
/// result and puts differences in the fracture logs (V1). So none can be carried out here,
/// and none can run beside it (the server holds the lock); the admin stops the server, or
/// serves without `--read-only`.
pub(super) fn refuse_read_only(req: &Request, reply: &mut Reply) {
    use clap::CommandFactory;
    let args = std::iter::once("mirrorctl".to_string()).chain(req.args.iter().cloned());
    // "fracture a.img", as the client gave it.
    let what = Cli::command()
        .try_get_matches_from(args)
        .ok()
        .and_then(|m| {
            let (name, sub) = m.subcommand()?;
            let primary = sub.try_get_one::<PathBuf>("primary").ok().flatten();
            Some(match primary {
                Some(p) => format!("{name} {}", display(p)),
                None => name.to_string(),
            })
        })
        .unwrap_or_else(|| "the command".to_string());
    let pid = std::process::id();
    reply.send(&Message::Error {
        message: format!(
            "{what}: the mirror is served read-only (`mirrorctl serve --read-only`, pid {pid}), which takes no admin commands (they all write the mirror's metadata); nothing was changed. Stop it with `kill -TERM {pid}` and run the command again, or serve without --read-only"
        ),
        code: Exit::Busy.code(),
    });
}

/// Progress published in the server's live record only (a background resync).
pub(super) struct Published<'a> {
    live: Option<&'a Publisher>,
    counters: Arc<ProgressCounters>,
}

impl<'a> Published<'a> {
    pub(super) fn new(live: Option<&'a Publisher>) -> Self {
        let counters = Arc::new(ProgressCounters::new());
        counters.set_phase("resync");
        if let Some(l) = live {
            l.follow(counters.clone());
        }
        Published { live, counters }
    }
}

impl Progress for Published<'_> {
    fn set_total(&self, total: u64) {
        self.counters.set_total(total);
    }
    fn advance(&self, bytes: u64) {
        self.counters.advance(bytes);
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.live {
            l.follow(Arc::new(ProgressCounters::new()));
        }
    }
}

/// Progress sent to the client (at most ten times a second) and published in the server's
/// live record while the operation runs.
struct Sent<'a, 'r> {
    reply: &'a Mutex<&'r mut Reply>,
    live: Option<&'a Publisher>,
    counters: Arc<ProgressCounters>,
    state: Mutex<(u64, u64, std::time::Instant)>,
}

impl<'a, 'r> Sent<'a, 'r> {
    fn new(reply: &'a Mutex<&'r mut Reply>, live: Option<&'a Publisher>, phase: &str) -> Self {
        let counters = Arc::new(ProgressCounters::new());
        counters.set_phase(phase);
        if let Some(l) = live {
            l.follow(counters.clone());
        }
        Sent {
            reply,
            live,
            counters,
            state: Mutex::new((0, 0, std::time::Instant::now())),
        }
    }

    fn send(&self, done: u64, total: u64) {
        self.reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(&Message::Progress { done, total });
    }
}

impl Progress for Sent<'_, '_> {
    fn set_total(&self, total: u64) {
        self.counters.set_total(total);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = (0, total, std::time::Instant::now());
        self.send(0, total);
    }
    fn advance(&self, bytes: u64) {
        self.counters.advance(bytes);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = (st.0 + bytes).min(st.1);
        if st.2.elapsed() >= std::time::Duration::from_millis(100) {
            st.2 = std::time::Instant::now();
            let (d, t) = (st.0, st.1);
            drop(st);
            self.send(d, t);
        }
    }
}

impl Drop for Sent<'_, '_> {
    fn drop(&mut self) {
        let (d, t, _) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.send(d, t);
        // The server's record shows no operation any more.
        if let Some(l) = self.live {
            l.follow(Arc::new(ProgressCounters::new()));
        }
    }
}
