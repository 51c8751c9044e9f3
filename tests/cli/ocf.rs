//! Issue 27, the Pacemaker resource agent (`mirrorctl ocf-agent`) without a running cluster:
//! its meta-data under `xmllint --valid`; every action and return code through
//! `crm_resource --force-*` (the agent installed in a private mount namespace, the
//! configuration in a CIB file); scores and the fencing constraint written into that CIB
//! file by crm_attribute and cibadmin (CIB_file works offline); `crm_simulate` scheduling a
//! two-node cluster whose primary node failed; `promote` on the same image path on both
//! machines, and the returning former primary attached by its export URI into its own slot.

use crate::nbd::Server;
use crate::serve::Serving;
use crate::support::*;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A port of this file's range (22000-22999), free when asked for.
/// From a serve log: the regions its re-attach of a former primary marked to copy, and the
/// log line that said so ("... attached again; N regions to copy").
pub(crate) fn reattached_regions(serve_log: &str) -> (u64, String) {
    let line = serve_log
        .lines()
        .find(|l| l.contains("attached again; "))
        .unwrap_or_else(|| panic!("no re-attach in the serve log:\n{serve_log}"));
    let regions = line
        .split("attached again; ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (regions, line.to_string())
}

pub(crate) fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 500) as u16;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = 22000 + (base + n) % 1000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 22000-22999");
}

fn tools() {
    require("crm_resource", "pacemaker-cli-utils");
    require("cibadmin", "pacemaker-cli-utils");
    require("crm_attribute", "pacemaker-cli-utils");
    require("crm_simulate", "pacemaker-cli-utils");
    require("xmllint", "libxml2-utils");
}

const CIB_HEAD: &str = r#"<cib have-quorum="1" dc-uuid="2" validate-with="pacemaker-3.8" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config><cluster_property_set id="cib-bootstrap-options">
      <nvpair id="opt-stonith" name="stonith-enabled" value="false"/></cluster_property_set></crm_config>
    <nodes><node id="1" uname="alpha"/><node id="2" uname="beta"/></nodes>
    <resources>
      <clone id="mirror-clone">
        <meta_attributes id="mirror-clone-meta">
          <nvpair id="mc-promotable" name="promotable" value="true"/>
          <nvpair id="mc-promoted-max" name="promoted-max" value="1"/>
          <nvpair id="mc-clone-max" name="clone-max" value="2"/>
          <nvpair id="mc-clone-node-max" name="clone-node-max" value="1"/>
        </meta_attributes>
"#;

/// A two-node CIB (alpha, beta) with the promotable clone `mirror-clone` of
/// ocf:mirrorctl:mirror `mirror` whose parameters are `params`; `status` is the status
/// section's content.
fn cib(params: &[(String, String)], constraints: &str, status: &str) -> String {
    let mut s = String::from(CIB_HEAD);
    if params.is_empty() {
        s.push_str(
            r#"        <primitive id="mirror" class="ocf" provider="mirrorctl" type="mirror"/>"#,
        );
    } else {
        s.push_str(r#"        <primitive id="mirror" class="ocf" provider="mirrorctl" type="mirror"><instance_attributes id="mirror-params">"#);
        for (k, v) in params {
            s.push_str(&format!(
                r#"<nvpair id="mirror-{k}" name="{k}" value="{}"/>"#,
                v.replace('&', "&amp;").replace('"', "&quot;")
            ));
        }
        s.push_str("</instance_attributes></primitive>");
    }
    s.push_str(&format!(
        "\n      </clone>\n    </resources>\n    <constraints>{constraints}</constraints>\n  </configuration>\n  <status>{status}</status>\n</cib>\n"
    ));
    s
}

const BOTH_ONLINE: &str = r#"<node_state id="1" uname="alpha" in_ccm="true" crmd="online" join="member" expected="member"/><node_state id="2" uname="beta" in_ccm="true" crmd="online" join="member" expected="member"/>"#;

/// The agent on node alpha: its image `a.img` (a primary), its wrapper installed under an
/// OCF root of its own, its parameters in a CIB file; stopped, and whatever it started
/// killed by pid, on drop.
struct Agent {
    fx: Fx,
    ra: tempfile::TempDir,
    cib: PathBuf,
    state: PathBuf,
    params: Vec<(String, String)>,
    /// The node it runs on (alpha, or beta for a second agent).
    node: &'static str,
}

impl Agent {
    fn new(extra: &[(&str, &str)]) -> Agent {
        tools();
        let fx = Fx::create("64M", "64K");
        let ra = tempfile::tempdir().unwrap();
        std::fs::set_permissions(ra.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(ra.path().join("mirrorctl")).unwrap();
        let w = ra.path().join("mirrorctl/mirror");
        std::fs::write(&w, format!("#!/bin/sh\nexec {} ocf-agent \"$@\"\n", bin())).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = fx.path("state");
        let mut params: Vec<(String, String)> = vec![
            ("image".into(), fx.path("a.img").display().to_string()),
            (
                "nodes".into(),
                format!("alpha=127.0.0.1:{} beta=127.0.0.1:{}", port(), port()),
            ),
            ("insecure".into(), "true".into()),
            ("socket".into(), fx.path("serve.sock").display().to_string()),
            ("state_dir".into(), state.display().to_string()),
        ];
        for (k, v) in extra {
            params.retain(|(kk, _)| kk != k);
            if !v.is_empty() {
                params.push((k.to_string(), v.to_string()));
            }
        }
        let cib_path = fx.path("cib.xml");
        std::fs::write(&cib_path, cib(&params, "", BOTH_ONLINE)).unwrap();
        Agent {
            fx,
            ra,
            cib: cib_path,
            state,
            params,
            node: "alpha",
        }
    }

    /// The agent of the same resource on `node`, with `image` and a state_dir of its own
    /// (in `of`'s folder), sharing `of`'s CIB file.
    fn other(of: &Agent, node: &'static str, image: &Path, state: &str) -> Agent {
        let fx = Fx::create("1M", "64K");
        let ra = tempfile::tempdir().unwrap();
        let state = of.fx.path(state);
        let mut params = of.params.clone();
        for (k, v) in params.iter_mut() {
            match k.as_str() {
                "image" => *v = image.display().to_string(),
                "state_dir" => *v = state.display().to_string(),
                "socket" => {
                    *v = of
                        .fx
                        .path(&format!("serve-{node}.sock"))
                        .display()
                        .to_string()
                }
                _ => {}
            }
        }
        Agent {
            fx,
            ra,
            cib: of.cib.clone(),
            state,
            params,
            node,
        }
    }

    fn param(&self, k: &str) -> String {
        self.params
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The environment Pacemaker gives the agent on alpha (and the CIB file).
    fn env(&self, cmd: &mut Command) {
        for (k, v) in &self.params {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
        cmd.env("OCF_RESOURCE_INSTANCE", "mirror")
            .env("OCF_RESKEY_CRM_meta_on_node", self.node)
            .env("CIB_file", &self.cib);
    }

    /// `mirrorctl ocf-agent ACTION`, run directly.
    fn run(&self, action: &str, more: &[(&str, &str)]) -> Out {
        let mut c = Command::new(bin());
        c.args(["ocf-agent", action]);
        self.env(&mut c);
        for (k, v) in more {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `crm_resource -r mirror --WHAT`, with the agent installed as
    /// /usr/lib/ocf/resource.d/mirrorctl/mirror in a mount namespace of its own.
    fn crm(&self, what: &str) -> Out {
        require_root("a private mount namespace holding the agent under /usr/lib/ocf");
        require("unshare", "util-linux");
        let script = format!(
            "mount --bind '{}' /usr/lib/ocf/resource.d && exec crm_resource -r mirror --{what}",
            self.ra.path().display()
        );
        let o = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("CIB_file", &self.cib)
            .env("OCF_RESKEY_CRM_meta_on_node", "alpha")
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// This node's promotion score in the CIB file, if any.
    fn score(&self) -> Option<String> {
        let o = Command::new("crm_attribute")
            .args(["--promotion", "-N", self.node, "-G", "-q"])
            .env("CIB_file", &self.cib)
            .env("OCF_RESOURCE_INSTANCE", "mirror")
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn constraint(&self) -> Option<String> {
        constraint_in(&self.cib)
    }

    fn pid(&self, what: &str) -> Option<i32> {
        std::fs::read_to_string(self.state.join(self.node).join(format!("{what}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.state.join(self.node).join(format!("{what}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.run("stop", &[]);
        for what in ["peers", "serve", "export"] {
            if let Some(pid) = self.pid(what) {
                let target = if what == "peers" { -pid } else { pid };
                // SAFETY: a pid this test's agent started (its pid file).
                unsafe { libc::kill(target, libc::SIGKILL) };
            }
        }
    }
}

/// The fencing constraint in a CIB file, if there.
fn constraint_in(cib: &Path) -> Option<String> {
    let o = Command::new("cibadmin")
        .args([
            "--query",
            "--xpath",
            "//rsc_location[@id='mirrorctl-fence-mirror']",
        ])
        .env("CIB_file", cib)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn wait_gone(pid: i32) {
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "pid {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_agents_meta_data_is_valid_under_the_ocf_1_0_dtd_and_names_every_parameter() {
    tools();
    let dtd_dir = Path::new("/usr/share/resource-agents");
    assert!(
        dtd_dir.join("ra-api-1.dtd").exists(),
        "install resource-agents (it ships ra-api-1.dtd, which ocf-tester validates with)"
    );
    let md = Command::new(bin())
        .args(["ocf-agent", "meta-data"])
        .env_clear()
        .output()
        .unwrap();
    assert!(md.status.success(), "{md:?}");
    let text = String::from_utf8_lossy(&md.stdout).into_owned();
    assert!(
        text.contains("<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">"),
        "{text}"
    );
    let mut lint = Command::new("xmllint")
        .args(["--noout", "--valid", "-"])
        .current_dir(dtd_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin.take().unwrap().write_all(&md.stdout).unwrap();
    let o = lint.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "xmllint --valid: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for p in [
        "image",
        "nodes",
        "export_port",
        "export_name",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "insecure",
        "socket",
        "listen",
        "serve_options",
        "min_in_sync",
        "fence",
        "state_dir",
    ] {
        assert!(text.contains(&format!("<parameter name=\"{p}\"")), "{p}");
    }
    // A broken copy (an element the DTD does not have) is caught by the same check.
    let broken = text.replace("<version>1.0</version>", "<version>1.0</version><bogus/>");
    let mut lint = Command::new("xmllint")
        .args(["--noout", "--valid", "-"])
        .current_dir(dtd_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(broken.as_bytes())
        .unwrap();
    assert!(!lint.wait().unwrap().success());
    // The generated wrapper is two lines that run the binary's agent.
    let w =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ocf/mirror")).unwrap();
    assert_eq!(
        w,
        "#!/bin/sh\nexec /usr/local/bin/mirrorctl ocf-agent \"$@\"\n"
    );
}

#[test]
fn missing_parameters_are_6_bad_ones_2_a_missing_image_5_and_an_unknown_action_3() {
    let a = Agent::new(&[]);
    assert_eq!(
        a.run("validate-all", &[]).code,
        0,
        "{:?}",
        a.run("validate-all", &[])
    );
    assert_eq!(a.run("notify", &[]).code, 0);
    let o = a.run("frobnicate", &[]);
    assert_eq!(o.code, 3, "{o:?}");
    type Case<'a> = (&'a [(&'a str, &'a str)], i32, &'a str);
    let cases: &[Case] = &[
        (&[("image", "")], 6, "the parameter image"),
        (&[("nodes", "")], 6, "the parameter nodes"),
        (&[("insecure", "")], 6, "tls_cert, tls_key, tls_ca not set"),
        (
            &[("fence", "perhaps")],
            2,
            "fence=\"perhaps\" is not a boolean",
        ),
        (&[("min_in_sync", "2")], 2, "min_in_sync=2 cannot be met"),
        (
            &[("nodes", "alpha=127.0.0.1 beta")],
            2,
            "is not NODE=ADDRESS",
        ),
        (
            &[("nodes", "gamma=127.0.0.1 beta=127.0.0.2")],
            2,
            "does not list this node (alpha)",
        ),
        (
            &[("image", "/nonexistent/vm.img")],
            5,
            "does not exist on this node",
        ),
    ];
    for (extra, code, says) in cases {
        let b = Agent::new(extra);
        let o = b.run("validate-all", &[]);
        assert_eq!(o.code, *code, "{extra:?}: {o:?}");
        assert!(o.stderr.contains(says), "{extra:?}: {o:?}");
        assert!(
            o.stderr.starts_with("mirrorctl ocf-agent: ") && o.stderr.lines().count() == 1,
            "{o:?}"
        );
        // The same through crm_resource (start: the parameters come from the CIB).
        let o = b.crm("force-start");
        assert_eq!(o.code, *code, "{extra:?}: {o:?}");
        // A probe of a misconfigured resource finds it stopped; a stop succeeds.
        assert_eq!(b.crm("force-check").code, 7, "{extra:?}");
        assert_eq!(b.crm("force-stop").code, 0, "{extra:?}");
    }
}

#[test]
fn promoted_8_failed_promoted_9_and_stopped_7_through_crm_resource_with_score_and_constraint() {
    let a = Agent::new(&[]);
    let o = a.crm("force-check");
    assert_eq!(o.code, 7, "{o:?}");
    assert!(o.stdout.contains("returned 7 (not running)"), "{o:?}");
    assert_eq!(a.score(), None);
    // a.img is a primary that is not running: promote serves it. Its peer (beta) is not in
    // sync (not even attached): the constraint goes in first.
    let o = a.crm("force-promote");
    assert_eq!(o.code, 0, "{o:?}\nserve log: {}", a.log("serve"));
    let c = a
        .constraint()
        .expect("the fencing constraint is placed at promote");
    assert!(c.contains("rsc=\"mirror-clone\""), "{c}");
    assert!(c.contains("role=\"Promoted\""), "{c}");
    assert!(c.contains("score=\"-INFINITY\""), "{c}");
    assert!(c.contains("operation=\"ne\" value=\"alpha\""), "{c}");
    let o = a.crm("force-check");
    assert_eq!(o.code, 8, "{o:?}");
    assert!(o.stdout.contains("returned 8 (promoted)"), "{o:?}");
    assert_eq!(a.score().as_deref(), Some("10000"));
    // serve runs with the agent's hooks and the socket asked for.
    let serve = a.pid("serve").expect("serve.pid");
    let cmdline = std::fs::read(format!("/proc/{serve}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!(
            "serve {} --socket {}",
            a.param("image"),
            a.param("socket")
        )),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("--min-in-sync 0 --fence-peer"),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("ocf-agent fence-peer --unfence"),
        "{cmdline}"
    );
    assert!(Path::new(&a.param("socket")).exists());
    // Promoting the promoted: 0, nothing new.
    assert_eq!(a.crm("force-promote").code, 0);
    assert_eq!(a.pid("serve"), Some(serve));
    // serve killed while promoted: 9.
    // SAFETY: the pid of the serve this test's agent started.
    unsafe { libc::kill(serve, libc::SIGKILL) };
    wait_gone(serve);
    let o = a.crm("force-check");
    assert_eq!(o.code, 9, "{o:?}");
    assert!(o.stdout.contains("returned 9"), "{o:?}");
    // Its score is the image's now: a primary, not the running one.
    assert_ne!(a.score().as_deref(), Some("10000"));
    // stop: 0, nothing runs, the score is gone; stopping again is 0 too.
    let o = a.crm("force-stop");
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(a.crm("force-check").code, 7);
    assert_eq!(a.score(), None);
    assert_eq!(a.crm("force-stop").code, 0);
    assert_eq!(a.crm("force-check").code, 7);
}

#[test]
fn fence_peer_and_unfence_peer_add_and_remove_the_constraint_only_once_every_leg_is_in_sync() {
    let a = Agent::new(&[]);
    a.fx.ok(&["attach", "a.img", "b.img"]);
    let leg = [("MIRRORCTL_LEG", "b.img"), ("MIRRORCTL_SLOT", "0")];
    let o = a.run("fence-peer", &leg);
    assert_eq!(o.code, 0, "{o:?}");
    let c = a.constraint().expect("placed");
    assert!(
        c.contains("id=\"mirrorctl-fence-mirror\" rsc=\"mirror-clone\""),
        "{c}"
    );
    // Placing it again is fine (serve may run the hook for each leg).
    assert_eq!(a.run("fence-peer", &leg).code, 0);
    // Every leg in sync: the constraint goes.
    let o = a.run("unfence-peer", &leg);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(a.constraint(), None);
    assert_eq!(a.run("unfence-peer", &leg).code, 0);
    // A leg out of sync: unfence leaves it, until the leg is back.
    a.fx.ok(&["fracture", "a.img", "b.img"]);
    assert_eq!(a.run("fence-peer", &leg).code, 0);
    assert_eq!(a.run("unfence-peer", &leg).code, 0);
    assert!(a.constraint().is_some(), "removed while b.img is fractured");
    a.fx.ok(&["resync", "a.img"]);
    assert_eq!(a.run("unfence-peer", &leg).code, 0);
    assert_eq!(a.constraint(), None);
    // A CIB that cannot be written: fence-peer fails (serve then refuses writes).
    let o = a.run("fence-peer", &[("CIB_file", "/nonexistent/cib.xml")]);
    assert_eq!(o.code, 1, "{o:?}");
}

/// `crm_simulate -S` on `cib`: the transition summary's action lines.
fn simulate(cib_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cib.xml");
    std::fs::write(&p, cib_text).unwrap();
    let o = Command::new("crm_simulate")
        .arg("-x")
        .arg(&p)
        .arg("-S")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "crm_simulate: {o:?}");
    let summary = out
        .split("Transition Summary:")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    summary
        .split("Executing Cluster Transition:")
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// alpha (the promoted node) failed and is offline; beta runs the unpromoted instance with
/// the promotion score `score` (None: the agent removed it, as for 0).
fn failed_primary_status(score: Option<&str>) -> String {
    let attrs = score
        .map(|s| {
            format!(
                r#"<transient_attributes id="2"><instance_attributes id="status-2"><nvpair id="status-2-master-mirror" name="master-mirror" value="{s}"/></instance_attributes></transient_attributes>"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"<node_state id="1" uname="alpha" in_ccm="false" crmd="offline" join="down" expected="down"/><node_state id="2" uname="beta" in_ccm="true" crmd="online" join="member" expected="member">{attrs}<lrm id="2"><lrm_resources><lrm_resource id="mirror" class="ocf" provider="mirrorctl" type="mirror"><lrm_rsc_op id="mirror_last_0" operation_key="mirror_start_0" operation="start" crm-debug-origin="test" crm_feature_set="3.16.2" transition-key="1:1:0:00000000-0000-0000-0000-000000000000" transition-magic="0:0;1:1:0:00000000-0000-0000-0000-000000000000" call-id="2" op-digest="f2317cad3d54cec5d7d7aa7d0bf35cf8" rc-code="0" op-status="0" interval="0" exec-time="10" queue-time="0"/></lrm_resource></lrm_resources></lrm></node_state>"#
    )
}

#[test]
fn crm_simulate_promotes_the_in_sync_secondary_when_the_primary_node_fails_and_never_a_fractured_one(
) {
    tools();
    // In sync (1000, as the agent publishes for an in-sync secondary): promoted.
    let s = simulate(&cib(&[], "", &failed_primary_status(Some("1000"))));
    assert!(
        s.contains("Promote") && s.contains("Unpromoted -> Promoted beta"),
        "{s}"
    );
    // Fractured, syncing or stale: the agent removes its score; never promoted.
    let s = simulate(&cib(&[], "", &failed_primary_status(None)));
    assert!(!s.contains("Promote"), "{s}");
    // In sync by its own header, but the failed primary fenced it (its leg fractured
    // before a write was acknowledged without it): the constraint, placed by the agent's
    // fence-peer on alpha, keeps it from promotion.
    let dir = tempfile::tempdir().unwrap();
    let cib_path = dir.path().join("cib.xml");
    std::fs::write(
        &cib_path,
        cib(&[], "", &failed_primary_status(Some("1000"))),
    )
    .unwrap();
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    let o = Command::new(bin())
        .args(["ocf-agent", "fence-peer"])
        .env("OCF_RESOURCE_INSTANCE", "mirror")
        .env("OCF_RESKEY_CRM_meta_on_node", "alpha")
        .env("OCF_RESKEY_image", fx.path("a.img"))
        .env("OCF_RESKEY_nodes", "alpha=127.0.0.1 beta=127.0.0.2")
        .env("OCF_RESKEY_insecure", "true")
        .env("OCF_RESKEY_state_dir", fx.path("state"))
        .env("CIB_file", &cib_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let fenced = std::fs::read_to_string(&cib_path).unwrap();
    assert!(fenced.contains("mirrorctl-fence-mirror"), "{fenced}");
    let s = simulate(&fenced);
    assert!(!s.contains("Promote"), "{s}");
    // The same constraint with alpha back: alpha (the fencing node) may be promoted.
    let both = fenced.replace(
        r#"<node_state id="1" uname="alpha" in_ccm="false" crmd="offline" join="down" expected="down"/>"#,
        r#"<node_state id="1" uname="alpha" in_ccm="true" crmd="online" join="member" expected="member"><transient_attributes id="1"><instance_attributes id="status-1"><nvpair id="status-1-master-mirror" name="master-mirror" value="1000"/></instance_attributes></transient_attributes></node_state>"#,
    );
    let s = simulate(&both);
    assert!(
        s.contains("Promoted alpha") && !s.contains("Promoted beta"),
        "{s}"
    );
}

#[test]
fn after_a_failover_between_machines_promote_ignores_its_own_path_and_the_old_primary_rejoins_its_slot_by_uri(
) {
    require("qemu-nbd", "qemu-utils");
    // Two machines, one image path: alpha's primary and beta's secondary are both
    // "a.img". Here: the primary moved away (alpha's disk, out of reach), the secondary put
    // at the path its header names as its primary's.
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.write_random(0, 4 * MIB, 1);
    std::fs::rename(fx.path("a.img"), fx.path("alpha.img")).unwrap();
    std::fs::rename(fx.path("b.img"), fx.path("a.img")).unwrap();
    let o = fx.run(&["promote", "a.img", "--json"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    assert!(
        o.stderr
            .contains("former primary not used: its recorded path")
            && o.stderr.contains("itself here (it is on another machine)"),
        "{o:?}"
    );
    let v = o.json();
    assert_eq!(v["old_primary_reachable"], false, "{v:#}");
    assert!(
        v["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("when the former primary returns, attach its export")),
        "{v:#}"
    );
    let slot = v["old_primary_slot"].as_u64().unwrap();
    // The new primary writes three regions while the old one is away.
    random_file(&fx.path("r.bin"), 3 * 64 * KIB, 7);
    let o = fx.run(&["write", "a.img", "--offset", "10M", "--input", "r.bin"]);
    assert_eq!(o.code, 3, "degraded: the former primary is away: {o:?}");
    // alpha comes back: its image (still a primary) exported raw, as `mirrorctl export
    // --rejoin` does; the promoted node, serving, attaches the export's URI.
    let p = port();
    let _nbd = Server::spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "--persistent", "--shared=8", "-x", "mirror"])
            .args(["-b", "127.0.0.1", "-p", &p.to_string()])
            .arg(fx.path("alpha.img"))
            .stderr(Stdio::null()),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _serve = Serving::start(&fx, &[]);
    let uri = format!("nbd://127.0.0.1:{p}/mirror");
    let o = fx.run(&["attach", "a.img", &uri, "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(v["reattached"], true, "{v:#}");
    assert_eq!(v["slot"], slot, "the former primary's own slot: {v:#}");
    assert_eq!(
        v["copied_bytes"],
        3 * 64 * KIB,
        "only what the new primary wrote since: {v:#}"
    );
    let s = fx.ok(&["status", "a.img", "--json"]).json();
    let legs = s["legs"].as_array().unwrap();
    assert_eq!(
        legs.len(),
        1,
        "one slot for the former primary, not two: {s:#}"
    );
    assert_eq!(legs[0]["state"], "in-sync", "{s:#}");
}

/// The peer node (beta) of an [`Agent`]: an image `b.img` of the mirror's size (blank
/// when new), exported with `mirrorctl export` on beta's address from the agent's `nodes`,
/// with TLS when the agent has its files.
fn peer_export(a: &Agent) -> Server {
    let g = a.fx.geometry();
    let b = a.fx.path("b.img");
    if !b.exists() {
        std::fs::File::create(&b)
            .unwrap()
            .set_len(g.data_offset + g.data_size)
            .unwrap();
    }
    let nodes = a.param("nodes");
    let beta = nodes
        .split_whitespace()
        .find_map(|n| n.strip_prefix("beta="))
        .unwrap()
        .to_string();
    let port: u16 = beta.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut c = Command::new(bin());
    c.args([
        "export",
        b.to_str().unwrap(),
        "--listen",
        &beta,
        "--export",
        "mirror",
    ]);
    for (k, flag) in [
        ("tls_cert", "--tls-cert"),
        ("tls_key", "--tls-key"),
        ("tls_ca", "--tls-ca"),
    ] {
        let v = a.param(k);
        if !v.is_empty() {
            c.args([flag, &v]);
        }
    }
    let log = a.fx.path("peer-export.log");
    let s = Server::spawn(
        c.stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        ),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the peer's export did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// Waits until `cond` holds for the status of a.img (at most 30 s).
fn wait_status(a: &Agent, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let o = a.fx.run(&["status", "a.img", "--json"]);
        if matches!(o.code, 0 | 3) && cond(&o.json()) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: {o:?}\npeers log: {}",
            a.log("peers")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ocf_tester_passes_against_the_agent_with_a_peer_export_on_loopback() {
    require("ocf-tester", "resource-agents");
    let a = Agent::new(&[]);
    let _peer = peer_export(&a);
    let mut c = Command::new("ocf-tester");
    c.args(["-n", "mirror"]);
    for (k, v) in &a.params {
        c.args(["-o", &format!("{k}={v}")]);
    }
    c.arg(a.ra.path().join("mirrorctl/mirror"))
        .env("OCF_RESKEY_CRM_meta_on_node", "alpha")
        .env("CIB_file", &a.cib);
    let o = c.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.contains("passed all tests"),
        "ocf-tester: {said}\nexport log: {}\nserve log: {}",
        a.log("export"),
        a.log("serve")
    );
    // It left nothing running.
    assert_eq!(a.run("monitor", &[]).code, 7);
}

#[test]
fn start_monitor_promote_demote_and_stop_through_crm_resource_bring_the_peer_in_and_the_constraint_out(
) {
    let a = Agent::new(&[("min_in_sync", "1")]);
    start_to_stop(a);
}

#[test]
fn with_mutual_tls_the_promoted_node_attaches_the_peers_export_over_nbds_with_its_own_certificate()
{
    let tmp = tempfile::tempdir().unwrap();
    // One certificate per node, for its export (server) and its legs (client), carrying
    // the node's address; the CA that signed the peers'.
    let pki = crate::tls::Pki::new(&tmp.path().join("pki"), "cluster");
    pki.sign_pub("node", "serverAuth,clientAuth", "IP:127.0.0.1");
    let (cert, key, ca) = (
        pki.dir() + "/node-cert.pem",
        pki.dir() + "/node-key.pem",
        pki.dir() + "/ca-cert.pem",
    );
    let a = Agent::new(&[
        ("insecure", ""),
        ("min_in_sync", "1"),
        ("tls_cert", &cert),
        ("tls_key", &key),
        ("tls_ca", &ca),
    ]);
    let leg = start_to_stop(a);
    assert!(leg.starts_with("nbds://127.0.0.1:"), "{leg}");
    assert!(
        leg.contains("tls-cert=") && leg.contains("tls-ca="),
        "{leg}"
    );
}

/// start, monitor, promote (the peer attached, the constraint gone), demote and stop
/// through crm_resource; returns the peer's leg location.
fn start_to_stop(a: Agent) -> String {
    let _peer = peer_export(&a);
    assert_eq!(a.crm("force-check").code, 7);
    // start: a.img is a primary that is not running: exported with --rejoin.
    let o = a.crm("force-start");
    assert_eq!(o.code, 0, "{o:?}\nexport log: {}", a.log("export"));
    let export = a.pid("export").expect("export.pid");
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{export}/cmdline")).unwrap())
            .replace('\0', " ");
    assert!(
        cmdline.contains(" export ") && cmdline.contains("--rejoin"),
        "{cmdline}"
    );
    assert_eq!(a.crm("force-check").code, 0);
    // A cleanly stopped primary: 1000.
    assert_eq!(a.score().as_deref(), Some("1000"));
    // Starting the started, demoting the unpromoted: 0, the same export.
    assert_eq!(a.crm("force-start").code, 0);
    assert_eq!(a.crm("force-demote").code, 0);
    assert_eq!(a.pid("export"), Some(export));
    // promote: serve, the constraint first (the peer is not attached yet), then the peer's
    // export attached in the background, in sync, and the constraint removed by a monitor.
    let o = a.crm("force-promote");
    assert_eq!(o.code, 0, "{o:?}\nserve log: {}", a.log("serve"));
    assert!(a.constraint().is_some());
    assert_eq!(a.crm("force-check").code, 8);
    wait_status(&a, "the peer attached and in sync", one_leg_in_sync);
    let leg = a.fx.ok(&["status", "a.img", "--json"]).json()["legs"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(a.crm("force-check").code, 8);
    assert_eq!(
        a.constraint(),
        None,
        "every leg in sync: the constraint goes"
    );
    assert_eq!(a.score().as_deref(), Some("10000"));
    // demote: serve stops cleanly (nothing pending), the export runs again.
    let o = a.crm("force-demote");
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(a.crm("force-check").code, 0);
    let s = a.fx.ok(&["status", "a.img", "--json"]).json();
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(a.score().as_deref(), Some("1000"));
    assert_eq!(a.crm("force-stop").code, 0);
    assert_eq!(a.crm("force-check").code, 7);
    assert_eq!(a.score(), None);
    leg
}

/// `qemu-io` on the agent's serve socket.
fn host_io(a: &Agent, cmds: &[&str]) -> String {
    let uri = format!("nbd+unix:///?socket={}", a.param("socket"));
    crate::serve::qemu_io(&uri, cmds)
}

/// Waits until `cond` holds for `image`'s status (at most 30 s).
fn wait_image(
    fx: &Fx,
    image: &Path,
    what: &str,
    log: &dyn Fn() -> String,
    cond: impl Fn(&serde_json::Value) -> bool,
) {
    let t = Instant::now();
    loop {
        let o = fx.run(&["status", image.to_str().unwrap(), "--json"]);
        if matches!(o.code, 0 | 3) && cond(&o.json()) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: {o:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_leg_in_sync(s: &serde_json::Value) -> bool {
    s["legs"]
        .as_array()
        .is_some_and(|l| l.len() == 1 && l[0]["state"] == "in-sync")
}

#[test]
fn the_primary_node_dies_the_in_sync_secondary_is_promoted_with_every_flushed_write_and_the_old_primary_rejoins_by_uri(
) {
    require("qemu-io", "qemu-utils");
    let alpha = Agent::new(&[]);
    let g = alpha.fx.geometry();
    let b_img = alpha.fx.path("b.img");
    std::fs::File::create(&b_img)
        .unwrap()
        .set_len(g.data_offset + g.data_size)
        .unwrap();
    let beta = Agent::other(&alpha, "beta", &b_img, "state-beta");
    // beta holds a blank image: exported, no score.
    assert_eq!(beta.run("start", &[]).code, 0, "{}", beta.log("export"));
    assert_eq!(beta.run("monitor", &[]).code, 0);
    assert_eq!(beta.score(), None);
    // alpha holds the primary: promoted, beta's export attached and in sync.
    assert_eq!(alpha.run("start", &[]).code, 0, "{}", alpha.log("export"));
    let o = alpha.run("promote", &[]);
    assert_eq!(o.code, 0, "{o:?}\n{}", alpha.log("serve"));
    let a_img = alpha.fx.path("a.img");
    let alog = || alpha.log("peers") + &alpha.log("serve");
    wait_image(&alpha.fx, &a_img, "beta attached", &alog, one_leg_in_sync);
    assert_eq!(alpha.run("monitor", &[]).code, 8);
    assert_eq!(alpha.constraint(), None);
    assert_eq!(beta.run("monitor", &[]).code, 0);
    assert_eq!(
        beta.score().as_deref(),
        Some("1000"),
        "an in-sync secondary"
    );
    // A host writes and flushes through alpha.
    host_io(&alpha, &["write -P 0x5a 1M 1M", "flush"]);
    // alpha dies: its serve killed, its disk out of beta's reach (on another machine).
    let serve = alpha.pid("serve").unwrap();
    // SAFETY: the serve alpha's agent started.
    unsafe { libc::kill(serve, libc::SIGKILL) };
    wait_gone(serve);
    assert_eq!(alpha.run("monitor", &[]).code, 9);
    let away = alpha.fx.path("alpha-disk");
    std::fs::create_dir(&away).unwrap();
    std::fs::rename(&a_img, away.join("a.img")).unwrap();
    // beta is promoted: every flushed write is there; the constraint keeps alpha (whose
    // slot is fractured) from promotion.
    let o = beta.run("promote", &[]);
    assert_eq!(o.code, 0, "{o:?}\n{}", beta.log("serve"));
    assert!(o.stderr.contains("promote: promoted"), "{o:?}");
    assert_eq!(beta.run("monitor", &[]).code, 8);
    let c = beta.constraint().expect("placed before serve took writes");
    assert!(c.contains("value=\"beta\""), "{c}");
    host_io(&beta, &["read -P 0x5a 1M 1M"]);
    // beta's hosts write on: three regions.
    host_io(&beta, &["write -P 0x77 32M 192k", "flush"]);
    // alpha comes back (its disk under another path here, as on its own machine): its
    // agent starts, exporting the former primary with --rejoin, and beta's monitor takes it
    // back into its old slot, copying only what changed.
    let back = Agent::other(&alpha, "alpha", &away.join("a.img"), "state");
    let o = back.run("start", &[]);
    assert_eq!(o.code, 0, "{o:?}\n{}", back.log("export"));
    let export = back.pid("export").unwrap();
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{export}/cmdline")).unwrap())
            .replace('\0', " ");
    assert!(cmdline.contains("--rejoin"), "{cmdline}");
    assert_eq!(beta.run("monitor", &[]).code, 8);
    let blog = || beta.log("peers") + &beta.log("serve");
    wait_image(
        &alpha.fx,
        &b_img,
        "alpha re-attached",
        &blog,
        one_leg_in_sync,
    );
    let (regions, line) = reattached_regions(&beta.log("serve"));
    assert!(
        regions >= 3 && regions < g.region_count / 4,
        "a partial resync, not a full copy: {line}"
    );
    assert_eq!(beta.run("monitor", &[]).code, 8);
    assert_eq!(beta.constraint(), None, "in sync: the constraint goes");
    assert_eq!(back.run("monitor", &[]).code, 0);
    assert_eq!(back.score().as_deref(), Some("1000"));
    assert_eq!(
        first_difference_between(&away.join("a.img"), &b_img, g.data_offset, g.data_size),
        None
    );
}

#[test]
fn the_secondary_node_dies_the_constraint_is_in_the_cib_before_the_write_that_lost_it_is_acknowledged(
) {
    require("qemu-io", "qemu-utils");
    let a = Agent::new(&[]);
    let mut peer = peer_export(&a);
    assert_eq!(a.run("start", &[]).code, 0, "{}", a.log("export"));
    let o = a.run("promote", &[]);
    assert_eq!(o.code, 0, "{o:?}\n{}", a.log("serve"));
    let alog = || a.log("peers") + &a.log("serve");
    wait_image(
        &a.fx,
        &a.fx.path("a.img"),
        "beta attached",
        &alog,
        one_leg_in_sync,
    );
    assert_eq!(a.run("monitor", &[]).code, 8);
    assert_eq!(a.constraint(), None);
    host_io(&a, &["write -P 0x11 0 64k", "flush"]);
    assert_eq!(a.constraint(), None);
    // beta dies: the next write fractures its leg, serve runs the agent's fence-peer, and
    // only then acknowledges the write.
    peer.kill();
    host_io(&a, &["write -P 0x22 1M 64k", "flush"]);
    let c = a.constraint().unwrap_or_else(|| {
        panic!(
            "no constraint after an acknowledged write: {}",
            a.log("serve")
        )
    });
    assert!(c.contains("value=\"alpha\""), "{c}");
    let serve_log = a.log("serve");
    assert!(
        serve_log.contains("mirrorctl ocf-agent: fencing: nbd://127.0.0.1:"),
        "{serve_log}"
    );
    assert_eq!(a.run("monitor", &[]).code, 8);
    assert!(a.constraint().is_some(), "kept while beta is out of sync");
    // beta returns: its export again; the promoted node re-attaches it, copies what it
    // missed, and the constraint goes.
    let _peer = peer_export(&a);
    assert_eq!(a.run("monitor", &[]).code, 8);
    wait_image(
        &a.fx,
        &a.fx.path("a.img"),
        "beta back in sync",
        &alog,
        one_leg_in_sync,
    );
    assert_eq!(a.run("monitor", &[]).code, 8);
    assert_eq!(a.constraint(), None, "{}", a.log("peers"));
    let g = a.fx.geometry();
    assert_eq!(
        first_difference_between(
            &a.fx.path("a.img"),
            &a.fx.path("b.img"),
            g.data_offset,
            g.data_size
        ),
        None
    );
}
