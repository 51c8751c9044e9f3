//! A real Pacemaker cluster on one machine (issue 27): `corosync -f` and `pacemakerd -f` for
//! node1, a Pacemaker Remote node2, each node in its own network namespace (joined by a veth
//! pair) and its own mount namespace (the same image path holds each node's own files), a
//! null STONITH device, and a promotable clone whose failovers the tests watch.

use crate::support::require;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where tests/setup.sh unpacks pacemaker-remote (it conflicts with pacemaker).
const REMOTED: &str = "/opt/pacemaker-remote/usr/sbin/pacemaker-remoted";
/// cluster-glue's null STONITH plugin: "fences" by doing nothing, successfully.
const NULL_STONITH: &str = "/usr/lib/stonith/plugins/stonith2/null.so";
/// Pacemaker Remote's port on node2 (the test's own range).
const REMOTE_PORT: u16 = 23121;
/// Corosync's knet port on node1's loopback (in its own namespace, still the test's range).
const KNET_PORT: u16 = 23405;

/// One cluster at a time: each is several daemons on a 2-core machine.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn run(cmd: &str, args: &[&str]) -> Out {
    let o = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (run tests/setup.sh)"));
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert_eq!(
        o.code, 0,
        "{cmd} {args:?} failed (exit {}): {}{}",
        o.code, o.stdout, o.stderr
    );
    o.stdout
}

/// Fails (never skips) unless everything the cluster needs is installed.
pub fn require_cluster_tools() {
    crate::support::require_root("network and mount namespaces, corosync and pacemakerd");
    require("corosync", "corosync");
    require("pacemakerd", "pacemaker");
    for t in [
        "crm_mon",
        "crm_resource",
        "cibadmin",
        "stonith_admin",
        "crm_attribute",
    ] {
        require(t, "pacemaker-cli-utils");
    }
    require("ip", "iproute2");
    require("nsenter", "util-linux");
    require("unshare", "util-linux");
    assert!(
        Path::new(NULL_STONITH).is_file(),
        "this test needs cluster-glue's null STONITH plugin ({NULL_STONITH}): install it with \
         `apt-get install -y cluster-glue` (or run tests/setup.sh)"
    );
    assert!(
        Path::new(REMOTED).is_file(),
        "this test needs pacemaker-remoted at {REMOTED}: pacemaker-remote conflicts with \
         pacemaker, so unpack it beside it (tests/setup.sh does: `apt-get download \
         pacemaker-remote && dpkg-deb -x pacemaker-remote_*.deb /opt/pacemaker-remote`)"
    );
}

/// A resource agent to install for the cluster as `ocf:PROVIDER:TYPE` (in the nodes' mount
/// namespaces only: the machine's /usr/lib/ocf is left as it is).
pub struct Agent {
    pub provider: String,
    pub kind: String,
    pub script: String,
}

/// What the cluster runs besides the STONITH device and node2's connection: `<primitive>`s
/// and `<clone>`s for `<resources>`, constraints for `<constraints>`.
pub struct Config {
    pub resources: String,
    pub constraints: String,
    pub agent: Option<Agent>,
}

/// node1 (the corosync member, DC) and node2 (Pacemaker Remote), their namespaces and daemons.
/// Everything is killed by pid and the namespaces removed on drop, also when a test fails.
pub struct Cluster {
    _one: std::sync::MutexGuard<'static, ()>,
    pub base: tempfile::TempDir,
    pub ns: [String; 2],
    pub addr: [String; 2],
    holder: [Option<Child>; 2],
    daemons: Vec<Child>,
    remoted: Option<Child>,
    agent_dir: Option<PathBuf>,
}

pub const NODES: [&str; 2] = ["node1", "node2"];

impl Cluster {
    /// Starts both nodes and waits until node1 is the DC and node2 is online.
    pub fn start(config: Config) -> Cluster {
        require_cluster_tools();
        let one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let tag = format!("mctl-ha-{pid}");
        let net = 1 + pid % 250;
        let base = tempfile::Builder::new()
            .prefix("mctl-ha-")
            .tempdir()
            .unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Cluster {
            _one: one,
            base,
            ns: [format!("{tag}-1"), format!("{tag}-2")],
            addr: [format!("10.231.{net}.1"), format!("10.231.{net}.2")],
            holder: [None, None],
            daemons: Vec::new(),
            remoted: None,
            agent_dir: None,
        };
        c.lay_out(&config);
        // The two namespaces and the veth pair between them.
        for ns in &c.ns {
            must("ip", &["netns", "add", ns]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let (v1, v2) = (c.veth(0), c.veth(1));
        must(
            "ip",
            &[
                "link", "add", &v1, "netns", &c.ns[0], "type", "veth", "peer", "name", &v2,
                "netns", &c.ns[1],
            ],
        );
        for (i, v) in [&v1, &v2].into_iter().enumerate() {
            let a = format!("{}/24", c.addr[i]);
            must("ip", &["-n", &c.ns[i], "addr", "add", &a, "dev", v]);
            must("ip", &["-n", &c.ns[i], "link", "set", v, "up"]);
        }
        c.start_holder(0);
        let log = c.log_dir();
        let corosync = c
            .in_node_cmd(0, "corosync")
            .args(["-f", "-c"])
            .arg(c.base.path().join("corosync.conf"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(log.join("corosync.out")).unwrap())
            .spawn()
            .unwrap();
        c.daemons.push(corosync);
        c.wait_for("corosync to accept clients", 20, |c| {
            c.node_run(0, "corosync-cfgtool", &["-s"]).code == 0
        });
        let pacemakerd = c
            .in_node_cmd(0, "env")
            .args(c.pcmk_env("pacemaker.log"))
            .args(["pacemakerd", "-f"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(log.join("pacemakerd.out")).unwrap())
            .spawn()
            .unwrap();
        c.daemons.push(pacemakerd);
        c.start_node2();
        c.wait_for("node1 to become the DC", 60, |c| {
            let o = c.crm("crm_mon", &["-1"]);
            o.stdout.contains("Current DC: node1")
        });
        c.wait_for("node2 (Pacemaker Remote) to come online", 60, |c| {
            c.online("node2")
        });
        c
    }

    /// node `i`'s end of the veth pair.
    fn veth(&self, i: usize) -> String {
        format!("mha{}{}", std::process::id(), ["a", "b"][i])
    }

    fn log_dir(&self) -> PathBuf {
        self.base.path().join("log")
    }

    /// node `i`'s own directory as seen from the host (the test's side).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.base.path().join(NODES[i])
    }

    /// The directory each node sees its own files in (the same path on both nodes).
    pub fn disk(&self) -> PathBuf {
        self.base.path().join("disk")
    }

    /// A tmpfs per node under `disk()`, gone when the node "reboots" (like /run).
    pub fn run_dir(&self) -> PathBuf {
        self.disk().join("run")
    }

    fn pcmk_env(&self, logfile: &str) -> Vec<String> {
        vec![
            format!("PCMK_logfile={}", self.log_dir().join(logfile).display()),
            format!(
                "PCMK_authkey_location={}",
                self.base.path().join("authkey").display()
            ),
            "PCMK_logfacility=none".into(),
        ]
    }

    /// The files both nodes start from: per-node state, corosync.conf, the first CIB (with
    /// a short dc-deadtime), the Pacemaker Remote key, the agent's provider directory.
    fn lay_out(&mut self, config: &Config) {
        let b = self.base.path().to_path_buf();
        let log = b.join("log");
        fs::create_dir_all(&log).unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir_all(b.join("disk")).unwrap();
        for n in NODES {
            let d = b.join(n);
            fs::create_dir_all(d.join("run")).unwrap();
            for sub in ["cib", "pengine", "blackbox", "cores"] {
                fs::create_dir_all(d.join("pcmk").join(sub)).unwrap();
            }
        }
        let key: Vec<u8> = {
            let mut rng = crate::support::Rng::new(u64::from(std::process::id()));
            let mut k = vec![0u8; 256];
            rng.fill(&mut k);
            k
        };
        fs::write(b.join("authkey"), key).unwrap();
        let cib = format!(
            r#"<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="true"/>
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="5s"/>
        <nvpair id="opt-recheck" name="cluster-recheck-interval" value="10s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
      <primitive id="fence" class="stonith" type="null">
        <instance_attributes id="fence-ia">
          <nvpair id="fence-hostlist" name="hostlist" value="node1 node2"/>
        </instance_attributes>
        <operations>
          <op id="fence-monitor" name="monitor" interval="60s"/>
        </operations>
      </primitive>
      <primitive id="node2" class="ocf" provider="pacemaker" type="remote">
        <instance_attributes id="node2-ia">
          <nvpair id="node2-server" name="server" value="{addr2}"/>
          <nvpair id="node2-port" name="port" value="{REMOTE_PORT}"/>
        </instance_attributes>
        <meta_attributes id="node2-meta">
          <nvpair id="node2-reconnect" name="reconnect_interval" value="5s"/>
        </meta_attributes>
        <operations>
          <op id="node2-start" name="start" interval="0" timeout="5s"/>
          <op id="node2-monitor" name="monitor" interval="2s" timeout="5s"/>
        </operations>
      </primitive>
      {resources}
    </resources>
    <constraints>
      {constraints}
    </constraints>
  </configuration>
  <status/>
</cib>
"#,
            addr2 = self.addr[1],
            resources = config.resources,
            constraints = config.constraints,
        );
        fs::write(b.join("node1/pcmk/cib/cib.xml"), cib).unwrap();
        must(
            "chown",
            &[
                "-R",
                "hacluster:haclient",
                b.join("node1/pcmk").to_str().unwrap(),
                b.join("node2/pcmk").to_str().unwrap(),
                b.join("authkey").to_str().unwrap(),
                log.to_str().unwrap(),
            ],
        );
        fs::set_permissions(b.join("authkey"), fs::Permissions::from_mode(0o640)).unwrap();
        let corosync = format!(
            "totem {{\n  version: 2\n  cluster_name: mctlha\n  transport: knet\n  \
             crypto_cipher: none\n  crypto_hash: none\n  interface {{\n    linknumber: 0\n    \
             mcastport: {KNET_PORT}\n  }}\n}}\nnodelist {{\n  node {{\n    ring0_addr: \
             127.0.0.1\n    name: node1\n    nodeid: 1\n  }}\n}}\nquorum {{\n  provider: \
             corosync_votequorum\n}}\nlogging {{\n  to_stderr: no\n  to_logfile: yes\n  \
             logfile: {log}\n  to_syslog: no\n  timestamp: on\n}}\nsystem {{\n  state_dir: \
             {state}\n}}\n",
            log = log.join("corosync.log").display(),
            state = b.join("node1").display(),
        );
        fs::write(b.join("corosync.conf"), corosync).unwrap();
        if let Some(a) = &config.agent {
            // The cluster's OCF tree: every provider the machine has, plus this one.
            let root = b.join("ocf");
            for e in fs::read_dir("/usr/lib/ocf/resource.d").unwrap() {
                let e = e.unwrap();
                if e.file_name().to_str() != Some(a.provider.as_str()) {
                    fs::create_dir_all(root.join(e.file_name())).unwrap();
                }
            }
            let p = root.join(&a.provider);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join(&a.kind), &a.script).unwrap();
            fs::set_permissions(p.join(&a.kind), fs::Permissions::from_mode(0o755)).unwrap();
            self.agent_dir = Some(root);
        }
    }

    /// The process holding node `i`'s mount namespace: its own /var/lib/pacemaker, /dev/shm,
    /// its files at `disk()`, a tmpfs at `run_dir()`, the cluster's OCF agents.
    fn start_holder(&mut self, i: usize) {
        let node = self.node_dir(i);
        let mut script = format!(
            "set -e\nmount --bind {node} {disk}\nmount -t tmpfs -o size=16m tmpfs {run}\n\
             mount -t tmpfs -o size=64m tmpfs /dev/shm\nmount --bind {pcmk} /var/lib/pacemaker\n",
            node = node.display(),
            disk = self.disk().display(),
            run = self.run_dir().display(),
            pcmk = node.join("pcmk").display(),
        );
        if let Some(root) = &self.agent_dir {
            for e in fs::read_dir(root).unwrap() {
                let e = e.unwrap();
                let from = Path::new("/usr/lib/ocf/resource.d").join(e.file_name());
                if from.is_dir() && fs::read_dir(e.path()).unwrap().next().is_none() {
                    script += &format!("mount --bind {} {}\n", from.display(), e.path().display());
                }
            }
            script += &format!("mount --rbind {} /usr/lib/ocf/resource.d\n", root.display());
        }
        script += "echo ready\nexec sleep infinity\n";
        let mut h = Command::new("ip")
            .args(["netns", "exec", &self.ns[i], "unshare", "-m"])
            .args(["--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(h.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let _ = h.kill();
            let o = h.wait_with_output().unwrap();
            panic!(
                "setting up {}'s mount namespace failed: {}",
                NODES[i],
                String::from_utf8_lossy(&o.stderr)
            );
        }
        self.holder[i] = Some(h);
    }

    fn holder_pid(&self, i: usize) -> u32 {
        self.holder[i].as_ref().expect("node is up").id()
    }

    /// A command run inside node `i`'s network and mount namespaces.
    pub fn in_node_cmd(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.holder_pid(i).to_string(),
            "-n",
            "-m",
            "--",
            program,
        ]);
        c.stdin(Stdio::null());
        c
    }

    pub fn node_run(&self, i: usize, program: &str, args: &[&str]) -> Out {
        let o = self
            .in_node_cmd(i, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} on {}: {e}", NODES[i]));
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// A cluster tool run on node1 (the DC).
    pub fn crm(&self, tool: &str, args: &[&str]) -> Out {
        self.node_run(0, tool, args)
    }

    pub fn crm_ok(&self, tool: &str, args: &[&str]) -> String {
        let o = self.crm(tool, args);
        assert_eq!(
            o.code,
            0,
            "{tool} {args:?} failed (exit {}): {}{}\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.diagnostics()
        );
        o.stdout
    }

    /// (Re)starts node2: a fresh mount namespace (its tmpfs empty, as after a reboot) and
    /// pacemaker-remoted listening on its veth address.
    pub fn start_node2(&mut self) {
        self.start_holder(1);
        let log = self.log_dir();
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log.join("remoted.out"))
            .unwrap();
        let r = self
            .in_node_cmd(1, "env")
            .args(self.pcmk_env("remote.log"))
            .arg(format!("PCMK_remote_address={}", self.addr[1]))
            .arg(format!("PCMK_remote_port={REMOTE_PORT}"))
            .arg(REMOTED)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.remoted = Some(r);
    }

    /// Every pid in node `i`'s namespaces (its network namespace or its mount namespace).
    fn node_pids(&self, i: usize) -> Vec<u32> {
        let mut pids: Vec<u32> = run("ip", &["netns", "pids", &self.ns[i]])
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let Some(h) = &self.holder[i] {
            if let Ok(mnt) = fs::read_link(format!("/proc/{}/ns/mnt", h.id())) {
                for e in fs::read_dir("/proc").unwrap().flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if fs::read_link(e.path().join("ns/mnt")).ok().as_ref() == Some(&mnt)
                        && !pids.contains(&pid)
                    {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// SIGKILLs every process of node `i` (by pid, until none is left) and reaps the ones
    /// the test started.
    fn kill_node_processes(&mut self, i: usize) {
        for _ in 0..100 {
            let pids = self.node_pids(i);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(p as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut mine: Vec<Child> = Vec::new();
        if let Some(h) = self.holder[i].take() {
            mine.push(h);
        }
        if i == 1 {
            mine.extend(self.remoted.take());
        } else {
            mine.append(&mut self.daemons);
        }
        for mut c in mine {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills node2 the hard way: every one of its processes, at once.
    pub fn kill_node2(&mut self) {
        self.kill_node_processes(1);
    }

    /// Takes the link between the nodes down (`up` = false) or up again.
    pub fn link(&self, up: bool) {
        let dev = self.veth(0);
        must(
            "ip",
            &[
                "-n",
                &self.ns[0],
                "link",
                "set",
                &dev,
                if up { "up" } else { "down" },
            ],
        );
    }

    /// Clears node2's connection failures so the DC reconnects now (as an admin does once a
    /// node is back), then waits until it is online.
    pub fn rejoin_node2(&self) {
        let mut last = Instant::now() - Duration::from_secs(60);
        self.wait_for("node2 to come back online", 90, |c| {
            if c.online("node2") {
                return true;
            }
            // A connection attempt that fails (node2's daemon still starting, the old TCP
            // connection not yet timed out) marks the connection failed again: clean again.
            if last.elapsed() > Duration::from_secs(10) {
                c.crm_ok("crm_resource", &["--cleanup", "--resource", "node2"]);
                last = Instant::now();
            }
            false
        });
    }

    /// Whether `node` is online according to the DC.
    pub fn online(&self, node: &str) -> bool {
        let o = self.crm("crm_mon", &["-1", "--output-as=xml"]);
        o.stdout.lines().any(|l| {
            let l = l.trim();
            l.starts_with(&format!("<node name=\"{node}\"")) && l.contains("online=\"true\"")
        })
    }

    /// Where `rsc` runs: (node, promoted) pairs, from `crm_resource --locate`.
    pub fn locate(&self, rsc: &str) -> Vec<(String, bool)> {
        let o = self.crm("crm_resource", &["--locate", "--resource", rsc]);
        o.stdout
            .lines()
            .filter_map(|l| l.split_once("is running on: "))
            .map(|(_, rest)| {
                let mut w = rest.split_whitespace();
                let node = w.next().unwrap_or_default().to_string();
                (node, w.next() == Some("Promoted"))
            })
            .collect()
    }

    /// Waits until `rsc` is promoted on `promoted` and unpromoted on `unpromoted` (if any).
    pub fn wait_roles(&self, rsc: &str, promoted: &str, unpromoted: Option<&str>, secs: u64) {
        let want: Vec<(String, bool)> = std::iter::once((promoted.to_string(), true))
            .chain(unpromoted.map(|u| (u.to_string(), false)))
            .collect();
        self.wait_for(
            &format!("{rsc} promoted on {promoted}, unpromoted on {unpromoted:?}"),
            secs,
            |c| {
                let roles = || {
                    let mut got = c.locate(rsc);
                    got.sort();
                    let mut w = want.clone();
                    w.sort();
                    got == w
                };
                // Roles as wanted, then no action in flight, and still as wanted.
                roles() && c.settled() && roles()
            },
        );
    }

    /// Waits (up to 30 s) until the cluster has no action in flight; whether it has.
    pub fn settled(&self) -> bool {
        self.crm("crm_resource", &["--wait", "--timeout=30s"]).code == 0
    }

    /// The number of successful fencing operations against `node` (STONITH history).
    pub fn fenced(&self, node: &str) -> usize {
        let o = self.crm("stonith_admin", &["--history", node, "--verbose"]);
        o.stdout
            .lines()
            .filter(|l| l.contains("successful"))
            .count()
    }

    /// Polls `ok` every 500 ms for up to `secs` seconds; fails with the cluster's state.
    pub fn wait_for(&self, what: &str, secs: u64, mut ok: impl FnMut(&Cluster) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "timed out after {secs} s waiting for {what}\n{}",
            self.diagnostics()
        );
    }

    /// crm_mon's view and the last important log lines of every daemon.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if self.holder[0].is_some() {
            let o = self.crm("crm_mon", &["-1", "--show-detail", "--fence-history=2"]);
            s += &format!("--- crm_mon\n{}{}", o.stdout, o.stderr);
        }
        for f in [
            "corosync.out",
            "pacemakerd.out",
            "remoted.out",
            "pacemaker.log",
            "remote.log",
        ] {
            let text = fs::read_to_string(self.log_dir().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !f.ends_with(".log")
                        || l.contains("error")
                        || l.contains("warning")
                        || l.contains("notice")
                })
                .collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            s += &format!("--- {f} (last {} lines)\n{}\n", tail.len(), tail.join("\n"));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_node_processes(1);
        self.kill_node_processes(0);
        for ns in &self.ns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Pacemaker's own promotable test agent in a promotable clone `ms` (the harness test).
fn stateful_config(run_dir: &Path) -> Config {
    Config {
        resources: format!(
            r#"<clone id="ms">
        <meta_attributes id="ms-meta">
          <nvpair id="ms-promotable" name="promotable" value="true"/>
          <nvpair id="ms-promoted-max" name="promoted-max" value="1"/>
          <nvpair id="ms-clone-max" name="clone-max" value="2"/>
        </meta_attributes>
        <primitive id="st" class="ocf" provider="pacemaker" type="Stateful">
          <instance_attributes id="st-ia">
            <nvpair id="st-state" name="state" value="{state}"/>
          </instance_attributes>
          <operations>
            <op id="st-monitor-promoted" name="monitor" interval="2s" role="Promoted"/>
            <op id="st-monitor-unpromoted" name="monitor" interval="3s" role="Unpromoted"/>
          </operations>
        </primitive>
      </clone>"#,
            state = run_dir.join("Stateful.state").display()
        ),
        constraints: r##"<rsc_location id="ms-first-on-node2" rsc="ms">
        <rule id="ms-first-on-node2-rule" role="Promoted" score="50">
          <expression id="ms-first-on-node2-expr" attribute="#uname" operation="eq" value="node2"/>
        </rule>
      </rsc_location>"##
            .to_string(),
        agent: None,
    }
}

/// The harness itself, with Pacemaker's Stateful agent: node2 (Pacemaker Remote) promoted
/// first; its processes killed -> fenced (null device) and node1 promoted; node2 back as
/// unpromoted; the link cut -> node2 fenced, node1 stays the one promoted, node2 never is.
#[test]
fn a_pacemaker_cluster_promotes_the_surviving_node_when_the_promoted_remote_node_dies_and_keeps_one_promoted_across_a_cut_link(
) {
    let t0 = Instant::now();
    // The paths are fixed before the cluster exists: the tempdir is made by start().
    let mut c = Cluster::start(Config {
        resources: String::new(),
        constraints: String::new(),
        agent: None,
    });
    // Adding the clone after start keeps start() generic; the Stateful state lives on
    // each node's tmpfs (its "/run").
    let cfg = stateful_config(&c.run_dir());
    c.crm_ok(
        "cibadmin",
        &["--create", "-o", "resources", "-X", &cfg.resources],
    );
    c.crm_ok(
        "cibadmin",
        &["--create", "-o", "constraints", "-X", &cfg.constraints],
    );
    c.wait_roles("ms", "node2", Some("node1"), 60);
    c.crm_ok(
        "cibadmin",
        &[
            "--delete",
            "-o",
            "constraints",
            "-X",
            r#"<rsc_location id="ms-first-on-node2"/>"#,
        ],
    );
    assert_eq!(c.fenced("node2"), 0);

    // The promoted node dies: fenced, and the other one promoted.
    c.kill_node2();
    c.wait_roles("ms", "node1", None, 60);
    assert!(!c.online("node2"));
    let fenced = c.fenced("node2");
    assert!(fenced >= 1, "node2 was not fenced\n{}", c.diagnostics());

    // It comes back (a fresh /run): unpromoted, node1 stays promoted.
    c.start_node2();
    c.rejoin_node2();
    c.wait_roles("ms", "node1", Some("node2"), 60);

    // The link is cut: node2 is unreachable, fenced; node1 stays the only one promoted.
    c.link(false);
    c.wait_for("node2 to be fenced after the link cut", 60, |c| {
        c.fenced("node2") > fenced
    });
    c.wait_roles("ms", "node1", None, 30);
    // The isolated node was never promoted (its agent's own state says so).
    let state = c.run_dir().join("Stateful.state");
    let o = c.node_run(1, "cat", &[state.to_str().unwrap()]);
    assert_eq!(o.stdout.trim(), "Unpromoted", "{}", c.diagnostics());
    c.link(true);
    c.rejoin_node2();
    c.wait_roles("ms", "node1", Some("node2"), 60);
    eprintln!("cluster harness test took {:?}", t0.elapsed());
}
