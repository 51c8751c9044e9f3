//! Helpers shared by the integration tests: running the real binary, a mirror in a
//! temporary directory, deterministic data, and guards for loop devices and tmpfs mounts
//! that clean up by exact name and fail (never skip) with what to install.

use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mirrorctl")
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn run_in(dir: &Path, args: &[&str]) -> Out {
    let o = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running mirrorctl");
    Out {
        code: o.status.code().expect("mirrorctl was killed by a signal"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A mirror in a temporary directory: primary `a.img`, secondaries by name.
pub struct Fx {
    pub dir: tempfile::TempDir,
}

impl Fx {
    pub fn create(size: &str, region: &str) -> Fx {
        let fx = Fx {
            dir: tempfile::tempdir().unwrap(),
        };
        fx.ok(&["create", "a.img", "--size", size, "--region-size", region]);
        fx
    }

    /// A mirror with the given secondaries attached (in slots 0, 1, ...).
    pub fn with_legs(size: &str, region: &str, legs: &[&str]) -> Fx {
        let fx = Fx::create(size, region);
        for l in legs {
            fx.ok(&["attach", "a.img", l]);
        }
        fx
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run_in(self.dir.path(), args)
    }

    pub fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, 0, "mirrorctl {args:?}: {o:?}");
        o
    }

    /// Runs `verify` with `args` and `--json`; returns the exit status and the document.
    pub fn verify(&self, args: &[&str]) -> (i32, Value) {
        let mut a = vec!["verify", "a.img"];
        a.extend_from_slice(args);
        a.push("--json");
        let o = self.run(&a);
        assert!(matches!(o.code, 0 | 1 | 3), "verify {args:?} failed: {o:?}");
        (o.code, o.json())
    }

    pub fn status(&self) -> Value {
        self.ok(&["status", "a.img", "--json"]).json()
    }

    pub fn geometry(&self) -> Geom {
        let s = self.status();
        Geom {
            data_offset: u(&s["data_offset"]),
            data_size: u(&s["data_size"]),
            region_size: u(&s["region_size"]),
            region_count: u(&s["region_count"]),
        }
    }

    /// `len` bytes of image `name`'s data area from data offset `off`, read from the file.
    pub fn data_at(&self, name: &str, off: u64, len: u64) -> Vec<u8> {
        read_at(&self.path(name), self.geometry().data_offset + off, len)
    }

    /// Image `name`'s whole data area, read from the file.
    pub fn data_area(&self, name: &str) -> Vec<u8> {
        let g = self.geometry();
        read_at(&self.path(name), g.data_offset, g.data_size)
    }

    /// Runs `f` while image `name` is away (renamed to NAME.away, as a machine that cannot
    /// be reached), and brings it back after.
    pub fn while_away<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let away = self.path(&format!("{name}.away"));
        std::fs::rename(self.path(name), &away).unwrap();
        let r = f();
        std::fs::rename(&away, self.path(name)).unwrap();
        r
    }

    /// Writes `len` pseudo-random bytes (from `seed`) at data offset `off` through mirrorctl.
    pub fn write_random(&self, off: u64, len: u64, seed: u64) {
        let input = self.path(&format!("input-{seed}.bin"));
        random_file(&input, len, seed);
        self.ok(&[
            "write",
            "a.img",
            "--offset",
            &off.to_string(),
            "--input",
            input.to_str().unwrap(),
        ]);
        std::fs::remove_file(&input).unwrap();
    }

    /// Inverts the byte at data offset `off` of image `name` (behind mirrorctl's back).
    pub fn flip(&self, name: &str, off: u64) {
        let g = self.geometry();
        assert!(off < g.data_size);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, g.data_offset + off).unwrap();
        b[0] = !b[0];
        f.write_all_at(&b, g.data_offset + off).unwrap();
        f.sync_all().unwrap();
    }

    /// The first data-area offset where image `name` differs from the primary.
    pub fn first_difference(&self, name: &str) -> Option<u64> {
        let g = self.geometry();
        first_difference_between(
            &self.path("a.img"),
            &self.path(name),
            g.data_offset,
            g.data_size,
        )
    }
}

pub struct Geom {
    pub data_offset: u64,
    pub data_size: u64,
    pub region_size: u64,
    pub region_count: u64,
}

/// One turn of a loop waiting for a started `child` (`what`, its log from `log`) to get
/// ready, waited for since `t`: fails if it exited or `limit` has passed; else sleeps 10 ms.
pub fn still_starting(
    what: &str,
    child: &mut Child,
    t: Instant,
    limit: Duration,
    log: &dyn Fn() -> String,
) {
    if let Some(st) = child.try_wait().unwrap() {
        panic!("{what} exited with {st} before it was ready:\n{}", log());
    }
    assert!(
        t.elapsed() < limit,
        "{what} was not ready within {limit:?}:\n{}",
        log()
    );
    std::thread::sleep(Duration::from_millis(10));
}

/// Waits up to `limit` for `child` (`what`, its log from `log`) to exit by itself: its status
/// and how long that took.
pub fn wait_exit(
    what: &str,
    child: &mut Child,
    limit: Duration,
    log: &dyn Fn() -> String,
) -> (std::process::ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, t.elapsed());
        }
        assert!(
            t.elapsed() < limit,
            "{what} did not exit within {limit:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the file at `path` (a log) whenever called; empty while it does not exist.
pub fn text_of(path: &Path) -> impl Fn() -> String {
    let path = path.to_path_buf();
    move || std::fs::read_to_string(&path).unwrap_or_default()
}

/// `len` bytes of the file at `path` from byte `off`.
pub fn read_at(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    File::open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
        .read_exact_at(&mut v, off)
        .unwrap_or_else(|e| panic!("reading {len} bytes at {off} of {}: {e}", path.display()));
    v
}

/// The last `n` lines of `text`, each indented, under a line saying how many came before:
/// a log short enough that a CI page keeps the whole failure message.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = if skip > 0 {
        format!("  ({skip} earlier lines left out)\n")
    } else {
        String::new()
    };
    for l in &lines[skip..] {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer, got {v}"))
}

/// The one PRNG of the tests: the storage model's (deterministic, seedable).
pub use mirrorctl::device::sim::Rng;

pub fn random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut w = BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    w.into_inner().unwrap().sync_all().unwrap();
}

/// An RFC 3339 UTC time as mirrorctl prints it: `2024-05-01T12:34:56Z`.
pub fn is_time(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Fails (never skips) when a tool the test needs is missing, naming what to install.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`: install it with `apt-get install -y {package}` (or run tests/setup.sh)"
    );
}

/// Fails unless running as root (loop devices, tmpfs mounts).
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root for {what}: run the test suite as root (sudo -E cargo test --release)"
    );
}

/// Runs a program that must succeed; returns its stdout, trimmed.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (run tests/setup.sh)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A loop device over a backing file; detached (by its exact name) on drop.
pub struct LoopDev {
    pub path: PathBuf,
    detached: bool,
}

impl LoopDev {
    /// Attaches `backing` (which must exist with the wanted size) to a free loop device.
    pub fn attach(backing: &Path) -> LoopDev {
        require_root("loop devices");
        require("losetup", "mount");
        let dev = sh("losetup", &["--find", "--show", backing.to_str().unwrap()]);
        LoopDev {
            path: PathBuf::from(dev),
            detached: false,
        }
    }

    /// Creates a backing file of `size` bytes at `backing` and attaches it.
    pub fn with_size(backing: &Path, size: u64) -> LoopDev {
        let f = File::create(backing).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        LoopDev::attach(backing)
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Detaches now (the device disappears under whatever has it open).
    pub fn detach(&mut self) {
        if !self.detached {
            sh("losetup", &["-d", self.as_str()]);
            self.detached = true;
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if !self.detached {
            let _ = Command::new("losetup").args(["-d", self.as_str()]).status();
        }
    }
}

/// A size-limited tmpfs mounted on a fresh temporary directory; unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        require_root("tmpfs mounts");
        require("mount", "mount");
        let dir = tempfile::tempdir().unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
        );
        Tmpfs { dir, mounted: true }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Grows (or shrinks) the mount in place: `mount -o remount,size=N`.
    pub fn resize(&self, size: &str) {
        sh(
            "mount",
            &[
                "-o",
                &format!("remount,size={size}"),
                self.dir.path().to_str().unwrap(),
            ],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// Every byte of the data area of `name` equals the primary's (`a`), or the first offset
/// where they differ.
pub fn first_difference_between(
    a: &Path,
    b: &Path,
    data_offset: u64,
    data_size: u64,
) -> Option<u64> {
    let a = File::open(a).unwrap();
    let b = File::open(b).unwrap();
    let chunk = 8 * MIB;
    let (mut ba, mut bb) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut off = 0;
    while off < data_size {
        let n = chunk.min(data_size - off) as usize;
        a.read_exact_at(&mut ba[..n], data_offset + off).unwrap();
        b.read_exact_at(&mut bb[..n], data_offset + off).unwrap();
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

/// The entry of `legs[]` for `slot` in a `status` or `verify` JSON document.
pub fn leg(v: &Value, slot: u64) -> &Value {
    v["legs"]
        .as_array()
        .expect("legs[]")
        .iter()
        .find(|l| u(&l["slot"]) == slot)
        .unwrap_or_else(|| panic!("no leg in slot {slot}: {v:#}"))
}

/// Starts mirrorctl in `dir` with a pipe on stdin (the caller feeds it or holds it open)
/// and stdout/stderr captured (`capture`) or discarded.
pub fn spawn_piped(dir: &Path, args: &[&str], capture: bool) -> Child {
    let out = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("starting mirrorctl")
}
