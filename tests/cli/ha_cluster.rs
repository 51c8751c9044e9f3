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
    require("ss", "iproute2");
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
        let port = format!(":{REMOTE_PORT}");
        self.wait_for("node2's pacemaker-remoted to listen", 30, |c| {
            c.node_run(1, "ss", &["-ltnH"]).stdout.contains(&port)
        });
        let mut last = Instant::now() - Duration::from_secs(60);
        self.wait_for("node2 to come back online", 90, |c| {
            // Online once nothing is in flight (a connection being started looks online).
            if c.online("node2") && c.settled() && c.online("node2") {
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
        // The mirror agent's logs on each node that is up (its /run is its own).
        for i in [0, 1] {
            if self.holder[i].is_none() {
                continue;
            }
            for what in ["export", "serve", "peers"] {
                let f = self.agent_log_path(i, what);
                let o = self.node_run(i, "tail", &["-n", "15", f.to_str().unwrap()]);
                if o.code == 0 {
                    s += &format!("--- {} {what}.log\n{}", NODES[i], o.stdout);
                }
            }
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

/// The export port of both nodes (on their veth addresses).
const EXPORT_PORT: u16 = 23810;

/// The shipped wrapper (`ocf/mirror`, written by `mirrorctl generate`), calling the binary
/// under test instead of the installed one.
fn mirror_agent() -> Agent {
    let shipped = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ocf/mirror")).unwrap();
    let installed = shipped
        .lines()
        .find_map(|l| l.strip_prefix("exec "))
        .and_then(|l| l.split_whitespace().next())
        .expect("ocf/mirror execs mirrorctl")
        .to_string();
    Agent {
        provider: "mirrorctl".into(),
        kind: "mirror".into(),
        script: shipped.replace(&installed, crate::support::bin()),
    }
}

/// The promotable clone of `ocf:mirrorctl:mirror` with min_in_sync=1.
fn mirror_clone(c: &Cluster) -> String {
    let run = c.run_dir();
    let p = |k: &str, v: &str| format!(r#"<nvpair id="mirror-{k}" name="{k}" value="{v}"/>"#);
    let params = [
        p("image", c.disk().join("a.img").to_str().unwrap()),
        p(
            "nodes",
            &format!(
                "node1={}:{EXPORT_PORT} node2={}:{EXPORT_PORT}",
                c.addr[0], c.addr[1]
            ),
        ),
        p("insecure", "true"),
        p("socket", run.join("serve.sock").to_str().unwrap()),
        p("state_dir", run.join("state").to_str().unwrap()),
        p("min_in_sync", "1"),
    ]
    .join("\n            ");
    format!(
        r#"<clone id="mirror-clone">
        <meta_attributes id="mirror-clone-meta">
          <nvpair id="mirror-promotable" name="promotable" value="true"/>
          <nvpair id="mirror-promoted-max" name="promoted-max" value="1"/>
          <nvpair id="mirror-clone-max" name="clone-max" value="2"/>
        </meta_attributes>
        <primitive id="mirror" class="ocf" provider="mirrorctl" type="mirror">
          <instance_attributes id="mirror-ia">
            {params}
          </instance_attributes>
          <operations>
            <op id="mirror-start" name="start" interval="0" timeout="60s"/>
            <op id="mirror-stop" name="stop" interval="0" timeout="60s"/>
            <op id="mirror-promote" name="promote" interval="0" timeout="60s"/>
            <op id="mirror-demote" name="demote" interval="0" timeout="60s"/>
            <op id="mirror-monitor-promoted" name="monitor" interval="3s" timeout="30s" role="Promoted"/>
            <op id="mirror-monitor-unpromoted" name="monitor" interval="4s" timeout="30s" role="Unpromoted"/>
          </operations>
        </primitive>
      </clone>"#
    )
}

impl Cluster {
    /// After a cut link: node2 is fenced and node1 promoted; once the link is back node2
    /// rejoins as the secondary, in sync, the data areas of `imgs` identical, node1
    /// healthy, and no agent log on either node says split brain.
    fn node2_rejoins_after_a_cut(&self, fenced: usize, imgs: (&Path, &Path), area: (u64, u64)) {
        self.wait_for("node2 fenced after the link cut", 60, |c| {
            c.fenced("node2") > fenced
        });
        self.wait_roles("mirror-clone", "node1", None, 90);
        self.link(true);
        self.rejoin_node2();
        self.wait_roles("mirror-clone", "node1", Some("node2"), 120);
        self.wait_in_sync(0, 90);
        assert_eq!(
            crate::support::first_difference_between(imgs.0, imgs.1, area.0, area.1),
            None
        );
        let s = self.status(0);
        assert_eq!(s["healthy"], true, "{s:#}");
        for i in [0, 1] {
            for log in ["serve", "peers", "export"] {
                let text = self.agent_log(i, log);
                assert!(
                    !text.contains("split brain"),
                    "{} {log}.log:\n{text}",
                    NODES[i]
                );
            }
        }
    }

    /// mirrorctl run on node `i` (its namespaces, so its paths and its /run).
    pub fn mirrorctl(&self, i: usize, args: &[&str]) -> Out {
        self.node_run(i, crate::support::bin(), args)
    }

    /// `status --json` of node `i`'s image (exit 0 or 3, degraded).
    pub fn status(&self, i: usize) -> serde_json::Value {
        let img = self.disk().join("a.img");
        let o = self.mirrorctl(i, &["status", img.to_str().unwrap(), "--json"]);
        assert!(
            matches!(o.code, 0 | 3),
            "status on {}: exit {}: {}{}",
            NODES[i],
            o.code,
            o.stdout,
            o.stderr
        );
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
    }

    /// Where the agent on node `i` keeps the log of `what` (its state_dir/NODE).
    pub fn agent_log_path(&self, i: usize, what: &str) -> PathBuf {
        self.run_dir()
            .join("state")
            .join(NODES[i])
            .join(format!("{what}.log"))
    }

    /// The agent's log `what` (serve, export, peers) on node `i`.
    pub fn agent_log(&self, i: usize, what: &str) -> String {
        let f = self.agent_log_path(i, what);
        self.node_run(i, "cat", &[f.to_str().unwrap()]).stdout
    }

    /// qemu-io against node `i`'s serve socket, run on node `i`: (exit code, output).
    pub fn host_io(&self, i: usize, cmds: &[&str]) -> (i32, String) {
        let uri = format!(
            "nbd+unix:///?socket={}",
            self.run_dir().join("serve.sock").display()
        );
        let mut a = vec!["-f", "raw"];
        for c in cmds {
            a.push("-c");
            a.push(c);
        }
        a.push(&uri);
        let o = self.node_run(i, "qemu-io", &a);
        (o.code, o.stdout + &o.stderr)
    }

    /// Like host_io, and every command must succeed.
    pub fn host_io_ok(&self, i: usize, cmds: &[&str]) {
        let (code, out) = self.host_io(i, cmds);
        assert!(
            code == 0 && !out.contains("failed") && !out.contains("error"),
            "qemu-io {cmds:?} on {}: exit {code}\n{out}\n{}\nserve log:\n{}",
            NODES[i],
            self.diagnostics(),
            self.agent_log(i, "serve")
        );
    }

    /// The fencing constraint the agent places, if in the CIB.
    pub fn fence_constraint(&self) -> Option<String> {
        let o = self.crm(
            "cibadmin",
            &[
                "--query",
                "--xpath",
                "//rsc_location[@id='mirrorctl-fence-mirror']",
            ],
        );
        let s = o.stdout.trim().to_string();
        (o.code == 0 && !s.is_empty()).then_some(s)
    }

    /// Waits until node `i`'s image is a primary with its one leg in sync and no constraint.
    pub fn wait_in_sync(&self, i: usize, secs: u64) {
        self.wait_for(
            &format!("{}'s mirror to have its leg in sync", NODES[i]),
            secs,
            |c| {
                let s = c.status(i);
                s["legs"]
                    .as_array()
                    .is_some_and(|l| l.len() == 1 && l[0]["state"] == "in-sync")
                    && c.fence_constraint().is_none()
            },
        );
    }
}

/// Bytes `[off, off+len)` of node `i`'s image data area, all equal to `byte`.
fn data_is(c: &Cluster, i: usize, data_offset: u64, off: u64, len: u64, byte: u8) -> bool {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(c.node_dir(i).join("a.img")).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, data_offset + off).unwrap();
    b.iter().all(|x| *x == byte)
}

/// Issue 27's scenarios on a real cluster with the real agent and export. node2 (Pacemaker
/// Remote) holds the primary, node1 a blank image that the promoted node2 attaches.
/// (1) A host writes and flushes through node2; node2's processes are all killed; node2 is
/// fenced and node1 promoted with every flushed write; writes refused with no secondary in
/// sync (min_in_sync=1) until the admin lowers it; node2 back (a fresh /run) rejoins as the
/// secondary, copying only the regions that changed. (2) The link is cut: the isolated
/// primary acknowledges no write; node2 is never promoted; once the link is back node2 is
/// in sync again, the images identical, no split brain.
#[test]
fn under_pacemaker_a_killed_primary_node_fails_over_with_every_flushed_write_and_rejoins_partially_and_a_cut_link_acknowledges_nothing_without_split_brain(
) {
    require("qemu-io", "qemu-utils");
    let mut c = Cluster::start(Config {
        resources: String::new(),
        constraints: String::new(),
        agent: Some(mirror_agent()),
    });
    let img = c.disk().join("a.img");
    let img_s = img.to_str().unwrap().to_string();
    // node2 creates the mirror's primary (at the path both nodes use); node1's disk is blank.
    let o = c.mirrorctl(
        1,
        &["create", &img_s, "--size", "64M", "--region-size", "64K"],
    );
    assert_eq!(o.code, 0, "create: {}{}", o.stdout, o.stderr);
    let s = c.status(1);
    let (data_offset, data_size) = (
        crate::support::u(&s["data_offset"]),
        crate::support::u(&s["data_size"]),
    );
    let region_count = crate::support::u(&s["region_count"]);
    fs::File::create(c.node_dir(0).join("a.img"))
        .unwrap()
        .set_len(data_offset + data_size)
        .unwrap();
    c.crm_ok(
        "cibadmin",
        &["--create", "-o", "resources", "-X", &mirror_clone(&c)],
    );
    c.wait_roles("mirror-clone", "node2", Some("node1"), 90);
    c.wait_in_sync(1, 90);

    // (1) A host writes and flushes through the promoted node2.
    c.host_io_ok(
        1,
        &["write -P 0x5a 1M 1M", "write -P 0xa5 40M 256k", "flush"],
    );
    let fenced = c.fenced("node2");
    c.kill_node2();
    c.wait_roles("mirror-clone", "node1", None, 90);
    assert!(c.fenced("node2") > fenced, "{}", c.diagnostics());
    // Every flushed write is on node1's disk and read back through its serve.
    assert!(data_is(&c, 0, data_offset, 1 << 20, 1 << 20, 0x5a));
    assert!(data_is(&c, 0, data_offset, 40 << 20, 256 << 10, 0xa5));
    c.host_io_ok(0, &["read -P 0x5a 1M 1M", "read -P 0xa5 40M 256k"]);
    // node2's slot is fractured: no node but node1 may be promoted.
    let fence = c.fence_constraint().expect("the fencing constraint");
    assert!(
        fence.contains(r#"operation="ne" value="node1""#) && fence.contains("-INFINITY"),
        "{fence}"
    );
    // No secondary in sync: a write is refused (min_in_sync=1) ...
    let (code, out) = c.host_io(0, &["write -P 0x66 8M 64k"]);
    assert!(
        code != 0 || out.contains("failed"),
        "a write was acknowledged: {out}"
    );
    // ... until the admin lowers it.
    let o = c.mirrorctl(0, &["set", &img_s, "--min-in-sync", "0"]);
    assert_eq!(o.code, 0, "set: {}{}", o.stdout, o.stderr);
    c.host_io_ok(0, &["write -P 0x77 32M 192k", "flush"]);

    // node2 comes back (fresh /run): it rejoins as the secondary with a partial resync.
    c.start_node2();
    c.rejoin_node2();
    c.wait_roles("mirror-clone", "node1", Some("node2"), 90);
    c.wait_in_sync(0, 90);
    let (regions, line) = crate::ocf::reattached_regions(&c.agent_log(0, "serve"));
    assert!(
        (3..region_count / 4).contains(&regions),
        "a partial resync, not a full copy: {line}"
    );
    let a = c.node_dir(0).join("a.img");
    let b = c.node_dir(1).join("a.img");
    assert_eq!(
        crate::support::first_difference_between(&a, &b, data_offset, data_size),
        None
    );
    let o = c.mirrorctl(0, &["set", &img_s, "--min-in-sync", "1"]);
    assert_eq!(o.code, 0, "set: {}{}", o.stdout, o.stderr);

    // (2) The link is cut: the isolated primary acknowledges nothing.
    let fenced = c.fenced("node2");
    c.link(false);
    let (code, out) = c.host_io(0, &["write -P 0x99 16M 64k", "flush"]);
    assert!(
        code != 0 || out.contains("failed"),
        "a write was acknowledged: {out}"
    );
    // The link is back: node2 rejoins, in sync, the images identical, no split brain.
    c.node2_rejoins_after_a_cut(fenced, (&a, &b), (data_offset, data_size));
    assert_eq!(c.status(1)["role"], "secondary", "{:#}", c.status(1));

    // (3) The same cut with the primary on the remote node: the isolated node2 fails its
    // host's write within the quorum wait (its fence hook cannot reach the cluster and is
    // not waited for), node1 is promoted, and when the link is back node2, whose only
    // change since the split is the fracture that refused writes (Q2), is taken back with
    // a partial resync instead of being called a split brain.
    c.crm_ok(
        "crm_resource",
        &[
            "--move",
            "--resource",
            "mirror-clone",
            "--node",
            "node2",
            "--promoted",
        ],
    );
    c.wait_roles("mirror-clone", "node2", Some("node1"), 90);
    c.crm_ok("crm_resource", &["--clear", "--resource", "mirror-clone"]);
    c.wait_in_sync(1, 90);
    c.host_io_ok(1, &["write -P 0x31 20M 128k", "flush"]);
    let fenced = c.fenced("node2");
    c.link(false);
    let started = std::time::Instant::now();
    let (code, out) = c.host_io(1, &["write -P 0x32 24M 64k", "flush"]);
    assert!(
        code != 0 || out.contains("failed"),
        "the isolated primary acknowledged a write: {out}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the isolated primary held its host's write for {:?}",
        started.elapsed()
    );
    c.node2_rejoins_after_a_cut(fenced, (&a, &b), (data_offset, data_size));
    // What node2 acknowledged before the cut is there; its refused write is not.
    let mut block = vec![0u8; 128 * 1024];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&a).unwrap(),
        &mut block,
        data_offset + 20 * 1024 * 1024,
    )
    .unwrap();
    assert!(
        block.iter().all(|&x| x == 0x31),
        "an acknowledged write is missing"
    );
}
