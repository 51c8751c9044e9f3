//! `serve` against hostile, stalled and heavy clients (issue 25): replies a client never
//! reads stay within the documented memory bound and get it dropped after the write
//! timeout; stalled and half-written requests, idle control connections and floods past
//! `--max-connections` or a thread limit; stops that finish within the documented bound
//! with a clean status; and a second SIGTERM that ends serve at once, the next command
//! recovering only the hot set.

use crate::serve::{clean_status, Raw, Serving, MAGIC};
use crate::support::*;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;

/// A field of /proc/PID/status in KiB (or a plain count).
fn proc_status(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .parse()
        .unwrap()
}

/// The control socket of the serve of `fx`'s primary (root's runtime directory).
fn control_socket(fx: &Fx) -> PathBuf {
    let m = std::fs::metadata(fx.path("a.img")).unwrap();
    PathBuf::from(format!("/run/mirrorctl/ctl-{:x}-{}.sock", m.dev(), m.ino()))
}

/// A client that pipelines `n` reads of `len` bytes and never reads a reply.
fn pipeline_reads(sock: &std::path::Path, n: u64, len: u32) -> Raw {
    let mut r = Raw::connect(sock, false);
    for i in 0..n {
        r.request(MAGIC, CMD_READ, 1000 + i, 0, len, &[]);
    }
    r
}

/// A write and a read back on a client that reads its replies.
fn write_and_read_back(r: &mut Raw, handle: u64, off: u64, byte: u8) {
    r.request(MAGIC, CMD_WRITE, handle, off, 4096, &[byte; 4096]);
    assert_eq!(r.simple(), (0, handle));
    r.request(MAGIC, CMD_READ, handle + 1, off, 4096, &[]);
    assert_eq!(r.simple(), (0, handle + 1));
    let mut d = vec![0u8; 4096];
    r.stream().read_exact(&mut d).unwrap();
    assert!(d.iter().all(|&b| b == byte));
}

/// Whether the server closed `s` without a word (a refused connection).
fn refused(mut s: UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 18];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn stopped_cleanly(fx: &Fx, s: Serving, bound: Duration) -> String {
    let t = Instant::now();
    let (code, log) = s.stop();
    let took = t.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(
        took < bound,
        "the stop took {took:?}, over {bound:?}:\n{log}"
    );
    assert!(
        log.contains("every leg synced and the write intents cleared"),
        "{log}"
    );
    let st = clean_status(fx);
    assert_eq!(st["healthy"], true, "{st:#}");
    log
}

#[test]
fn a_client_that_pipelines_big_reads_and_never_reads_stays_under_the_memory_bound_and_is_dropped_after_the_write_timeout(
) {
    let fx = Fx::with_legs("256M", "64K", &["b.img"]);
    let s = Serving::start(&fx, &["--write-timeout", "2s"]);
    let before = proc_status(s.pid(), "VmRSS:");
    // 160 reads of 32 MiB: 5 GiB of replies, none of them read.
    let t = Instant::now();
    let stalled = pipeline_reads(&s.sock, 160, 32 << 20);
    // Another client is served meanwhile.
    let mut good = Raw::connect(&s.sock, false);
    std::thread::sleep(Duration::from_millis(500));
    write_and_read_back(&mut good, 1, 1 << 20, 0x5a);
    let mut peak = 0;
    while !s.log().contains("took none of its replies") {
        peak = peak.max(proc_status(s.pid(), "VmRSS:"));
        assert!(t.elapsed() < Duration::from_secs(6), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let hwm = proc_status(s.pid(), "VmHWM:");
    // The documented bound per connection: 128 MiB of payload, 16 MiB of replies plus one
    // (32 MiB), 64 MiB of free buffers: 240 MiB, over what serve held before.
    let bound = before + 240 * 1024;
    assert!(
        hwm < bound && peak < bound,
        "peak {hwm} KiB resident (sampled {peak}), bound {bound} KiB"
    );
    let dropped = t.elapsed();
    assert!(
        dropped >= Duration::from_secs(2) && dropped < Duration::from_secs(5),
        "dropped after {dropped:?}"
    );
    drop(stalled);
    write_and_read_back(&mut good, 3, 2 << 20, 0x6b);
    let log = stopped_cleanly(&fx, s, Duration::from_secs(3));
    assert!(
        log.contains(
            ": disconnected: it took none of its replies for 2s (--write-timeout); dropped"
        ),
        "{log}"
    );
}

#[test]
fn a_stop_finishes_within_the_write_timeout_whatever_stalled_half_written_silent_and_control_clients_do(
) {
    let fx = Fx::with_legs("256M", "64K", &["b.img"]);
    let s = Serving::start(&fx, &["--write-timeout", "2s"]);
    // Replies never read; a write cut off in its payload; a header cut off; a client that
    // says nothing in its handshake; a control connection that sends no request.
    let _stalled = pipeline_reads(&s.sock, 40, 32 << 20);
    let mut half = Raw::connect(&s.sock, false);
    half.request(MAGIC, CMD_WRITE, 7, 8192, 1 << 20, &[7; 1000]);
    let mut header = Raw::connect(&s.sock, false);
    use std::io::Write;
    let mut h = MAGIC.to_be_bytes().to_vec();
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    header.stream().write_all(&h).unwrap();
    let _silent = UnixStream::connect(&s.sock).unwrap();
    let _idle_control = UnixStream::connect(control_socket(&fx)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The write timeout (2 s) and a margin for the final sync.
    let log = stopped_cleanly(&fx, s, Duration::from_secs(5));
    assert!(
        log.contains("in the middle of a 1048576-byte write at offset 8192"),
        "{log}"
    );
    // The half-sent write never happened.
    let o = fx.ok(&["read", "a.img", "--offset", "8192", "--length", "4096"]);
    assert!(o.stdout.bytes().all(|b| b == 0));
}

#[test]
fn connections_past_max_connections_are_refused_with_a_log_line_and_those_served_still_work() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let s = Serving::start(&fx, &["--max-connections", "4"]);
    // The readiness probe of Serving::start has gone.
    std::thread::sleep(Duration::from_millis(200));
    let mut served: Vec<Raw> = (0..4).map(|_| Raw::connect(&s.sock, false)).collect();
    // A flood: every one past the cap is closed at once.
    let flood: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&s.sock).unwrap())
        .collect();
    for c in flood {
        assert!(refused(c), "{}", s.log());
    }
    for (i, r) in served.iter_mut().enumerate() {
        write_and_read_back(r, 10 * i as u64, (i as u64) << 20, 0x10 + i as u8);
    }
    // A place freed is taken again.
    drop(served.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(&s.sock, false);
    write_and_read_back(&mut again, 100, 5 << 20, 0x77);
    let log = stopped_cleanly(&fx, s, Duration::from_secs(3));
    assert!(
        log.contains(
            "refused a client (unix socket): 4 connections already, the most --max-connections allows"
        ),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn under_a_thread_limit_clients_that_get_no_thread_are_refused_and_the_others_are_served() {
    require_root("running serve as nobody under a thread limit");
    require("setpriv", "util-linux");
    require("prlimit", "util-linux");
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    // nobody runs serve (root ignores RLIMIT_NPROC): its files and runtime directory are
    // nobody's.
    let run = fx.path("run");
    std::fs::create_dir(&run).unwrap();
    sh(
        "chown",
        &["-R", "65534:65534", fx.dir.path().to_str().unwrap()],
    );
    sh("chmod", &["755", fx.dir.path().to_str().unwrap()]);
    let sock = fx.path("nobody.sock");
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let env = [("XDG_RUNTIME_DIR", run.as_path())];
    // The threads of an idle serve, counted on a first run without a limit.
    let s = Serving::start_wrapped(&fx, &as_nobody, &env, &sock, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let idle = proc_status(s.pid(), "Threads:");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    // Every thread of nobody counts against the limit: room for two connections (a thread
    // each and one worker each).
    let mut nobody = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(st) = std::fs::read_to_string(e.path().join("status")) {
            let uid = st.lines().find(|l| l.starts_with("Uid:"));
            if uid.and_then(|l| l.split_whitespace().nth(1)) == Some("65534") {
                nobody += st
                    .lines()
                    .find(|l| l.starts_with("Threads:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1);
            }
        }
    }
    let nproc = format!("--nproc={}", nobody + idle + 4);
    let mut wrapper = vec!["prlimit", nproc.as_str(), "--"];
    wrapper.extend(as_nobody);
    let s = Serving::start_wrapped(&fx, &wrapper, &env, &sock, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // Clients until the limit: served ones answer a flush; the others are closed before or
    // after their handshake, when their thread or their first worker cannot be started.
    let mut served = Vec::new();
    let mut turned_away = 0;
    for h in 0..8u64 {
        let ok = Raw::try_connect(&sock).ok().and_then(|mut r| {
            r.send(MAGIC, CMD_FLUSH, h, 0, 0, &[]).ok()?;
            r.reply().ok().map(|rep| (r, rep))
        });
        match ok {
            Some((r, rep)) => {
                assert_eq!(rep, (0, h));
                assert_eq!(turned_away, 0, "served after a refusal:\n{}", s.log());
                served.push(r);
            }
            None => turned_away += 1,
        }
    }
    assert!(
        !served.is_empty() && turned_away >= 2,
        "{} served, {turned_away} refused:\n{}",
        served.len(),
        s.log()
    );
    // The served ones work, pipelining too (no more workers: they go on with one).
    let mut a = served.remove(0);
    write_and_read_back(&mut a, 1, 0, 0x21);
    for h in 0..8u64 {
        a.request(MAGIC, CMD_WRITE, 50 + h, (h + 1) << 20, 4096, &[0x31; 4096]);
    }
    a.request(MAGIC, CMD_FLUSH, 60, 0, 0, &[]);
    let mut got: Vec<(u32, u64)> = (0..9).map(|_| a.simple()).collect();
    got.sort();
    let want: Vec<(u32, u64)> = (50..58).chain([60]).map(|h| (0, h)).collect();
    assert_eq!(got, want);
    // A connection ended frees its threads for the next.
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Raw::connect(&sock, false);
    write_and_read_back(&mut c, 70, 9 << 20, 0x41);
    let log = stopped_cleanly(&fx, s, Duration::from_secs(3));
    assert!(
        log.contains(": refused: no thread could be started for it"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_second_sigterm_stops_at_once_and_the_next_command_recovers_only_the_hot_set() {
    let fx = Fx::with_legs("256M", "64K", &["b.img"]);
    let mut s = Serving::start(&fx, &["--hot-extents", "16"]);
    // Writes over 40 extents of 4 MiB (more than the 16 hot ones), the first one flushed.
    let mut w = Raw::connect(&s.sock, false);
    w.request(MAGIC, CMD_WRITE, 1, 10 << 20, 4096, &[0x71; 4096]);
    assert_eq!(w.simple(), (0, 1));
    w.request(MAGIC, CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(w.simple(), (0, 2));
    for e in 0..40u64 {
        w.request(
            MAGIC,
            CMD_WRITE,
            100 + e,
            (e * 4 + 32) << 20,
            4096,
            &[0x72; 4096],
        );
        assert_eq!(w.simple(), (0, 100 + e));
    }
    // A client that takes no replies holds the first stop up (for the 30 s write timeout).
    let _stalled = pipeline_reads(&s.sock, 40, 32 << 20);
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    s.signal(libc::SIGTERM);
    let (st, took) = s.wait_for_exit(Duration::from_secs(3));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st}:\n{}", s.log());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let log = s.log();
    assert!(
        log.contains("second SIGTERM: stopping at once, without the clean stop"),
        "{log}"
    );
    // The intents stay: at most the hot set (16 extents of 64 regions of 64 KiB) and the
    // extents evicted since the last transaction, not cleared yet (H2, H12; as many again
    // at most).
    let st = fx.status();
    let pending = u(&st["write_intent_regions"]);
    assert!(pending > 0 && pending <= 2 * 16 * 64, "{pending}: {st:#}");
    // The flushed write is on both legs.
    let g = fx.geometry();
    let b = std::fs::read(fx.path("b.img")).unwrap();
    let at = (g.data_offset + (10 << 20)) as usize;
    assert!(b[at..at + 4096].iter().all(|&x| x == 0x71));
    // The next command recovers the hot set, no more; then resync and verify are clean.
    let r = fx.ok(&["resync", "a.img", "--json"]);
    assert!(r.stderr.contains("not closed cleanly"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{pending} write-intent regions")),
        "{}",
        r.stderr
    );
    assert_eq!(u(&r.json()["regions"]), pending);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
}
