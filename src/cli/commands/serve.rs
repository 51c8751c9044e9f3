//! `serve`: the mirror as an NBD export until SIGTERM/SIGINT; a clean stop syncs every leg
//! and clears the write intents.

use super::*;
use crate::nbd_server::handshake::TlsPolicy;
use crate::nbd_server::{self as server, Listen, Tls};

/// TLS as the flags ask: the certificate, key and CA read now, before anything changes.
pub(super) fn tls(a: &cli::ServerArgs) -> Result<Tls> {
    let policy = match (a.tls, &a.tls_cert) {
        (Some(TlsPolicy::Off), Some(_)) => {
            return Err(Error::invalid(
                "--tls off with --tls-cert: drop --tls-cert, or say --tls on or --tls require",
            ))
        }
        (Some(TlsPolicy::Off) | None, None) => return Ok(Tls::off()),
        (Some(p), None) => {
            return Err(Error::invalid(format!(
                "--tls {}: give the server's certificate and key (--tls-cert FILE --tls-key FILE)",
                if p == TlsPolicy::On { "on" } else { "require" }
            )))
        }
        (Some(p), Some(_)) => p,
        (None, Some(_)) => TlsPolicy::Require,
    };
    if policy == TlsPolicy::On && (a.tls_ca.is_some() || !a.tls_allow.is_empty()) {
        // --tls on lets a client skip TLS, and so the certificate check: the two together
        // would claim certificates are required while clear-text clients get in.
        return Err(Error::invalid(format!(
            "--tls on with {}: --tls on lets clients skip TLS and so the certificate check; say --tls require to admit only clients with a certificate, or drop {}",
            if a.tls_ca.is_some() { "--tls-ca" } else { "--tls-allow" },
            if a.tls_ca.is_some() { "--tls-ca" } else { "--tls-allow" }
        )));
    }
    let files = crate::tls::ServerFiles {
        cert: a.tls_cert.clone().expect("checked above"),
        key: a
            .tls_key
            .clone()
            .ok_or_else(|| Error::invalid("--tls-cert needs --tls-key"))?,
        ca: a.tls_ca.clone(),
    };
    let config = crate::tls::server_config(&files).map_err(|e| Error::invalid(e.to_string()))?;
    Ok(Tls {
        policy,
        config: Some(config),
        mutual: files.ca.is_some(),
        allow: a.tls_allow.to_vec(),
    })
}

/// `--listen HOST:PORT` checked: HOST:PORT form, and a non-loopback address only with TLS
/// required or `insecure` (then a warning is logged).
pub(super) fn tcp_listen(hp: &str, tls: &Tls, insecure: bool) -> Result<Listen> {
    if !hp.contains(':') {
        return Err(Error::invalid(format!(
            "--listen {hp}: give HOST:PORT (e.g. 127.0.0.1:10809, or [::1]:10809)"
        )));
    }
    let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback && tls.policy != TlsPolicy::Require {
        if !insecure {
            return Err(Error::invalid(format!(
                "--listen {hp} is not a loopback address and TLS is not required: anyone who can reach it could read and overwrite the disk; give --tls-cert FILE --tls-key FILE (and --tls-ca FILE to admit only clients with a certificate), or --insecure to serve in clear text anyway"
            )));
        }
        server::log_line(&format!(
            "warning: --listen {hp} is not a loopback address and TLS is not required (--insecure): anyone who can reach it can read and overwrite the disk"
        ));
    }
    Ok(Listen::Tcp(hp.to_string()))
}

/// A Unix socket path that fits in sun_path.
pub(super) fn check_socket_path(listen: &Listen) -> Result<()> {
    if let Listen::Unix(p) = listen {
        // sun_path holds 107 bytes and a NUL.
        if p.as_os_str().len() > 107 {
            return Err(Error::invalid(format!(
                "--socket {}: a Unix socket path has at most 107 bytes; give a shorter one",
                p.display()
            )));
        }
    }
    Ok(())
}

pub(super) fn serve(ctx: &Ctx, a: cli::ServeArgs) -> Result<Exit> {
    // The steps, in this order:
    // 1. stop signals blocked and $NOTIFY_SOCKET taken, before any thread starts;
    // 2. TLS files read and the listening address bound, before anything on disk changes
    //    (a serve that cannot listen exits 2 having changed nothing);
    // 3. P6 and recovery (R1..R3), then the ServeStarted event;
    // 4. the engine's server made, an interrupted resync continued in the background, the
    //    control socket opened;
    // 5. hosts served until SIGTERM/SIGINT;
    // 6. admin work and control requests ended, the server's last reference taken back;
    // 7. the clean stop: every leg synced and the write intents cleared, the ServeStopped
    //    event, the summary line.
    // 1.
    server::block_stop_signals();
    crate::systemd::take_notify_socket();
    // 2.
    let tls = tls(&a.server)?;
    let listen = match (&a.socket, &a.listen) {
        (_, Some(hp)) => tcp_listen(hp, &tls, a.server.insecure)?,
        (Some(p), None) => Listen::Unix(p.clone()),
        (None, None) => Listen::Unix(server::default_socket(&a.primary)),
    };
    check_socket_path(&listen)?;
    let what = match &listen {
        Listen::Unix(p) => format!("listening on {}", p.display()),
        Listen::Tcp(hp) => format!("listening on {hp}"),
    };
    let listening = |e: io::Error| {
        Error::invalid(format!(
            "{what}: {}; nothing was changed",
            crate::error::describe_io(&e)
        ))
    };
    let mut m = open_mirror(ctx, &a.primary, Mode::Exclusive)?;
    super::write::check_min_in_sync(a.min_in_sync, &m)
        .map_err(|e| Error::invalid(e.msg.replace("nothing was written", "nothing was changed")))?;
    let bound = server::bind(&listen).map_err(listening)?;
    // 3.
    if !a.read_only {
        // P6 and recovery (R1..R3) as for every changing command.
        m.prepare_for_change()?;
    }
    for w in m.take_warnings() {
        server::log_line(&w);
    }
    let description = display(&a.primary);
    if !a.read_only {
        let at = format!(
            "{}{}",
            match &listen {
                Listen::Unix(p) => format!("unix socket {}", p.display()),
                Listen::Tcp(hp) => format!("tcp {hp}"),
            },
            tls.summary().map(|t| format!(" ({t})")).unwrap_or_default()
        );
        m.record(engine::EventKind::ServeStarted, None, &at)?;
    }
    // 4.
    let live = m.publish("serve", !a.read_only).map(Arc::new);
    let ctl_path = m
        .lock_handle()
        .map(crate::nbd_server::control_socket::socket_path)
        .transpose()
        .map_err(|e| Error::invalid(format!("naming the control socket: {e}")))?;
    let srv = Arc::new(m.serve(&config(&a), Box::new(server::log_line))?);
    if let Some(why) = srv.writes_refused() {
        server::log_line(&format!(
            "warning: writes will be refused: {why}, fewer than --min-in-sync {} (a write waits up to --timeout for a leg to come back in sync; `mirrorctl resync {}` brings legs back)",
            a.min_in_sync,
            display(&a.primary)
        ));
    }
    if let Some(l) = &live {
        let s = Arc::downgrade(&srv);
        l.set_serve(Box::new(move || {
            s.upgrade().map(|s| s.live_record()).unwrap_or_default()
        }));
    }
    let background = match a.read_only {
        true => None,
        false => background_resync(&srv, live.clone(), &a.primary),
    };
    let control = match &ctl_path {
        Some(p) => Some(control(p, &srv, live.clone(), a.read_only)?),
        None => None,
    };
    // 5.
    let summary = server::run(
        srv.clone(),
        bound,
        &listen,
        &a.export,
        &description,
        &tls,
        &a.server.limits(),
    )
    .map_err(|e| Error::invalid(format!("{what}: {}", crate::error::describe_io(&e))));
    crate::systemd::notify(
        "STATUS=stopping: syncing every leg and clearing the write intents",
        &server::log_line,
    );
    // 6. A live resync ends at its next run; the control requests are waited for.
    srv.stop_admin();
    if let Some(c) = control {
        c.stop();
    }
    if let Some(b) = background {
        let _ = b.join();
    }
    let srv = last_reference(srv)?;
    // 7.
    let (hot_now, hot_cap) = srv.hot();
    // Kept marked after primary write errors, whatever the stop clears (W6): said in the
    // stop's event, so that `status` can tell them from an unclean stop's.
    let pinned = srv.pinned_extents() as u64;
    let stopped = srv.stop();
    let summary = summary?;
    let (mut m, counters) = stopped?;
    drop(live);
    if !a.read_only {
        let what = format!(
            "{}: {}{} served, {} written",
            summary.signal.unwrap_or("stopped"),
            if pinned > 0 {
                format!(
                    "{}; ",
                    crate::format::journal::pinned_at_stop_detail(pinned)
                )
            } else {
                String::new()
            },
            plural(summary.connections, "connection"),
            format_size(counters.bytes_written)
        );
        m.record(engine::EventKind::ServeStopped, None, &what)?;
    }
    let healthy = m.is_healthy()?;
    let stop = Stop {
        summary: &summary,
        counters: &counters,
        hot: (hot_now, hot_cap),
        pinned,
        healthy,
    };
    server::log_line(&stop.line(&a));
    Ok(Exit::Success)
}

/// The engine's server configuration from serve's flags.
fn config(a: &cli::ServeArgs) -> engine::serve::ServeConfig {
    engine::serve::ServeConfig {
        hot_extents: a.hot_extents,
        read_only: a.read_only,
        min_in_sync: a.min_in_sync,
        quorum_wait: crate::device::nbd::timeout(),
        fence: engine::fence::FenceHooks {
            fence_peer: a.fence_peer.clone(),
            unfence: a.unfence.clone(),
            timeout: a.fence_timeout,
            primary: display(&a.primary),
        },
        ..Default::default()
    }
}

/// A resync that was interrupted goes on in the background, its progress in the record;
/// its thread, if there was one to start.
fn background_resync(
    srv: &Arc<engine::serve::Server>,
    live: Option<Arc<crate::live::Publisher>>,
    primary: &Path,
) -> Option<std::thread::JoinHandle<()>> {
    let slots = srv.syncing_legs();
    if slots.is_empty() {
        return None;
    }
    let s = srv.clone();
    let started = std::thread::Builder::new()
        .name("resync".into())
        .spawn(move || {
            crate::live::block_signals();
            server::log_line(&format!(
                "slot(s) {slots:?} were left syncing: their resync continues in the background"
            ));
            let p = super::through_serve::Published::new(live.as_deref());
            let opts = engine::ResyncOptions::default();
            // Its warnings are in serve's log already.
            if let Err(e) = s.resync_legs(&slots, &opts, true, &p, &|_| {}) {
                server::log_line(&format!("error: background resync: {e}"));
            }
        });
    started
        .map_err(|e| {
            server::log_line(&format!(
                "error: background resync: starting its thread: {e}; `mirrorctl resync {}` starts it",
                display(primary)
            ))
        })
        .ok()
}

/// The control socket at `path`: other commands on this mirror (fracture, detach, resync)
/// are carried out here; a read-only server answers each with a refusal at once (see
/// `refuse_read_only`).
fn control(
    path: &Path,
    srv: &Arc<engine::serve::Server>,
    live: Option<Arc<crate::live::Publisher>>,
    read_only: bool,
) -> Result<crate::nbd_server::control_socket::Control> {
    let s = srv.clone();
    let h: crate::nbd_server::control_socket::Handler = if read_only {
        Arc::new(|req, reply| super::through_serve::refuse_read_only(&req, reply))
    } else {
        Arc::new(move |req, reply| super::through_serve::handle(&s, live.as_deref(), req, reply))
    };
    crate::nbd_server::control_socket::Control::start(path, h).map_err(|e| {
        Error::invalid(format!(
            "listening on the control socket {}: {e}",
            path.display()
        ))
    })
}

/// Every connection and control thread has ended: `srv` is the only reference left. (The
/// live record's publisher holds it for the moment of a snapshot: that is waited out.)
fn last_reference(mut srv: Arc<engine::serve::Server>) -> Result<engine::serve::Server> {
    let t = std::time::Instant::now();
    loop {
        match Arc::try_unwrap(srv) {
            Ok(s) => return Ok(s),
            Err(s) if t.elapsed() < std::time::Duration::from_secs(2) => {
                srv = s;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return Err(Error::invalid("the server is still in use")),
        }
    }
}

/// What a stopped serve says in its last log line.
struct Stop<'a> {
    summary: &'a server::Summary,
    counters: &'a engine::serve::Counters,
    /// The hot set at the end, and its capacity.
    hot: (usize, usize),
    /// Extents kept marked after primary write errors (W6).
    pinned: u64,
    healthy: bool,
}

impl Stop<'_> {
    fn line(&self, a: &cli::ServeArgs) -> String {
        let (summary, counters) = (self.summary, self.counters);
        format!(
            "stopped{}: {} served, {} and {} written, {} read, {}, hot set at most {} of {} extents ({} at the end); {}",
            summary
                .signal
                .map(|s| format!(" on {s}"))
                .unwrap_or_default(),
            plural(summary.connections, "connection"),
            plural(counters.writes, "request"),
            format_size(counters.bytes_written),
            format_size(counters.bytes_read),
            match (counters.flushes, counters.flushes_skipped) {
                (1, 0) => "1 flush".to_string(),
                (n, 0) => format!("{n} flushes"),
                (1, _) => "1 flush (with nothing to sync)".to_string(),
                (n, k) => format!("{n} flushes ({k} with nothing to sync)"),
            },
            counters.peak_hot,
            self.hot.1,
            self.hot.0,
            if a.read_only {
                "nothing on disk was changed".to_string()
            } else if self.pinned > 0 {
                // W6: what the primary failed to write stays marked; saying "cleared" would
                // contradict the next status.
                format!(
                    "every leg synced and the write intents cleared but {} kept marked after primary write errors (the next command recovers them); the mirror is degraded (see `mirrorctl status {}`)",
                    plural(self.pinned, "extent"),
                    display(&a.primary)
                )
            } else if self.healthy {
                "every leg synced and the write intents cleared; the mirror is healthy".to_string()
            } else {
                format!(
                    "every leg synced and the write intents cleared; the mirror is degraded (see `mirrorctl status {}`)",
                    display(&a.primary)
                )
            }
        )
    }
}
