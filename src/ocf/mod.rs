//! The promotable OCF resource agent (`mirrorctl ocf-agent ACTION`): its decisions, pure
//! (no files, no processes, no Pacemaker): the parameters and their validation, the OCF
//! return codes, the meta-data, the promotion score of an image's state, what monitor
//! reports, the command lines of the export and serve it runs, what it does about each peer,
//! and the crm-fence-peer style constraint. `run.rs` carries them out (processes, pid files,
//! crm_attribute, cibadmin).
//!
//! Rules (tagged where they are kept):
//! - E2 The agent places the fencing constraint (no promotion anywhere but here) before
//!   `serve` starts, whenever a peer's leg is not in sync after the promotion; serve's
//!   `--fence-peer` hook (the agent's `fence-peer` action) places it for a leg that fails
//!   later before any write is acknowledged without it (E1). It is removed only by a check
//!   that reads the header under the agent's fence lock, which the hooks hold too, so a
//!   fracture recorded during the check is never undone.

pub mod run;

use crate::format::{LegState, Role};
use std::collections::BTreeMap;

/// The OCF return codes (ClusterLabs OCF-spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Success = 0,
    Generic = 1,
    Args = 2,
    Unimplemented = 3,
    NotInstalled = 5,
    NotConfigured = 6,
    NotRunning = 7,
    RunningPromoted = 8,
    FailedPromoted = 9,
}

impl Code {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// The actions (OCF's and the two hooks serve runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Monitor,
    Promote,
    Demote,
    Notify,
    MetaData,
    ValidateAll,
    FencePeer,
    UnfencePeer,
    /// Internal: the promoted node bringing its peers back (run in the background).
    Peers,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "monitor" | "status" => Action::Monitor,
            "promote" => Action::Promote,
            "demote" => Action::Demote,
            "notify" => Action::Notify,
            "meta-data" | "meta_data" => Action::MetaData,
            "validate-all" => Action::ValidateAll,
            "fence-peer" => Action::FencePeer,
            "unfence-peer" => Action::UnfencePeer,
            "peers" => Action::Peers,
            _ => return None,
        })
    }
}

pub const DEFAULT_EXPORT_PORT: u16 = 10810;
pub const DEFAULT_EXPORT_NAME: &str = "mirror";

/// Promotion scores (`crm_attribute --promotion`), as ocf:linbit:drbd's.
pub const SCORE_PROMOTED: u32 = 10000;
pub const SCORE_IN_SYNC: u32 = 1000;
/// A primary that was not stopped cleanly (its write intents are pending): it holds every
/// write it acknowledged, but an in-sync secondary is preferred (it needs no recovery).
pub const SCORE_UNCLEAN_PRIMARY: u32 = 100;

/// One node of the cluster: its Pacemaker name and where its export listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// Where serve takes hosts when this node is promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeAt {
    Socket(String),
    Listen(String),
}

/// The agent's parameters (OCF_RESKEY_*), parsed and checked without touching files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub image: String,
    pub nodes: Vec<Node>,
    pub export_name: String,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ca: Option<String>,
    pub insecure: bool,
    pub serve_at: Option<ServeAt>,
    pub serve_options: Vec<String>,
    pub min_in_sync: u32,
    pub fence: bool,
    pub state_dir: String,
    /// The resource's name (OCF_RESOURCE_INSTANCE without a clone instance number).
    pub resource: String,
    /// This node's name.
    pub me: String,
}

/// A parameter problem: missing (OCF_ERR_CONFIGURED, 6) or bad (OCF_ERR_ARGS, 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    Missing(String),
    Bad(String),
}

impl ParamError {
    pub fn code(&self) -> Code {
        match self {
            ParamError::Missing(_) => Code::NotConfigured,
            ParamError::Bad(_) => Code::Args,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            ParamError::Missing(s) | ParamError::Bad(s) => s,
        }
    }
}

/// The resource name of an instance (`mirror:1` -> `mirror`).
pub fn resource_name(instance: &str) -> String {
    match instance.rsplit_once(':') {
        Some((r, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => r.to_string(),
        _ => instance.to_string(),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ParamError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ParamError::Bad(format!(
            "{key}={v:?} is not a boolean (true or false)"
        ))),
    }
}

fn parse_port(what: &str, v: &str) -> Result<u16, ParamError> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ParamError::Bad(format!(
            "{what}={v:?} is not a TCP port (1 to 65535)"
        ))),
    }
}

/// `nodes`: `NODE=ADDRESS ...`, an ADDRESS being a host name, an IPv4 address, `[IPv6]`, or
/// any of these with `:PORT` (that node's export port instead of `export_port`).
pub fn parse_nodes(v: &str, default_port: u16) -> Result<Vec<Node>, ParamError> {
    let mut out: Vec<Node> = Vec::new();
    for item in v.split_whitespace() {
        let Some((name, addr)) = item.split_once('=') else {
            return Err(ParamError::Bad(format!(
                "nodes: {item:?} is not NODE=ADDRESS (e.g. nodes=\"alpha=10.0.0.1 beta=10.0.0.2\")"
            )));
        };
        if name.is_empty() || addr.is_empty() {
            return Err(ParamError::Bad(format!(
                "nodes: {item:?} is not NODE=ADDRESS (both parts are needed)"
            )));
        }
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let Some((h, tail)) = rest.split_once(']') else {
                return Err(ParamError::Bad(format!(
                    "nodes: {item:?}: an IPv6 address is written [ADDRESS] or [ADDRESS]:PORT"
                )));
            };
            match tail {
                "" => (h.to_string(), default_port),
                t => match t.strip_prefix(':') {
                    Some(p) => (h.to_string(), parse_port(&format!("nodes: {name}"), p)?),
                    None => {
                        return Err(ParamError::Bad(format!(
                            "nodes: {item:?}: only :PORT may follow [ADDRESS]"
                        )))
                    }
                },
            }
        } else {
            match addr.split_once(':') {
                Some((h, p)) if !p.contains(':') => {
                    (h.to_string(), parse_port(&format!("nodes: {name}"), p)?)
                }
                Some(_) => {
                    return Err(ParamError::Bad(format!(
                        "nodes: {item:?}: write an IPv6 address as [ADDRESS]"
                    )))
                }
                None => (addr.to_string(), default_port),
            }
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
        {
            return Err(ParamError::Bad(format!(
                "nodes: {item:?}: {host:?} is not a host name or address"
            )));
        }
        if out.iter().any(|n| n.name == name) {
            return Err(ParamError::Bad(format!("nodes: {name} is given twice")));
        }
        out.push(Node {
            name: name.to_string(),
            host,
            port,
        });
    }
    if out.is_empty() {
        return Err(ParamError::Missing(
            "nodes is empty: give every node as NODE=ADDRESS".into(),
        ));
    }
    Ok(out)
}

/// The parameters from the environment (`env("OCF_RESKEY_image")` ...). `me` is this node's
/// name when the environment does not give it (`crm_node -n`, asked only if needed).
pub fn params(
    env: &dyn Fn(&str) -> Option<String>,
    me: &dyn Fn() -> Option<String>,
) -> Result<Params, ParamError> {
    let get = |k: &str| env(&format!("OCF_RESKEY_{k}")).filter(|v| !v.trim().is_empty());
    let image = get("image").ok_or_else(|| {
        ParamError::Missing("the parameter image (this node's image) is not set".into())
    })?;
    if !image.starts_with('/') {
        return Err(ParamError::Bad(format!(
            "image={image:?} is not an absolute path"
        )));
    }
    let port = match get("export_port") {
        Some(p) => parse_port("export_port", p.trim())?,
        None => DEFAULT_EXPORT_PORT,
    };
    let nodes_v = get("nodes").ok_or_else(|| {
        ParamError::Missing("the parameter nodes (NODE=ADDRESS for every node) is not set".into())
    })?;
    let nodes = parse_nodes(&nodes_v, port)?;
    let export_name = get("export_name").unwrap_or_else(|| DEFAULT_EXPORT_NAME.into());
    if export_name.len() > 4096 || export_name.chars().any(|c| c.is_control()) {
        return Err(ParamError::Bad(format!(
            "export_name={export_name:?} is not a usable export name"
        )));
    }
    let insecure = match get("insecure") {
        Some(v) => parse_bool("insecure", v.trim())?,
        None => false,
    };
    let (tls_cert, tls_key, tls_ca) = (get("tls_cert"), get("tls_key"), get("tls_ca"));
    for (k, v) in [
        ("tls_cert", &tls_cert),
        ("tls_key", &tls_key),
        ("tls_ca", &tls_ca),
    ] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                return Err(ParamError::Bad(format!(
                    "{k}={v:?} is not an absolute path"
                )));
            }
        }
    }
    if !insecure {
        let missing: Vec<&str> = [
            ("tls_cert", &tls_cert),
            ("tls_key", &tls_key),
            ("tls_ca", &tls_ca),
        ]
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
        if !missing.is_empty() {
            return Err(ParamError::Missing(format!(
                "{} not set: the export and the promoted node's NBD leg use mutual TLS (or set insecure=true on a private link)",
                missing.join(", ")
            )));
        }
    } else if tls_cert.is_some() != tls_key.is_some() {
        return Err(ParamError::Bad("tls_cert and tls_key go together".into()));
    }
    let serve_at = match (get("socket"), get("listen")) {
        (Some(_), Some(_)) => {
            return Err(ParamError::Bad(
                "socket and listen are both set: give one".into(),
            ))
        }
        (Some(s), None) if !s.starts_with('/') => {
            return Err(ParamError::Bad(format!(
                "socket={s:?} is not an absolute path"
            )))
        }
        (Some(s), None) => Some(ServeAt::Socket(s)),
        (None, Some(l)) if !l.contains(':') => {
            return Err(ParamError::Bad(format!("listen={l:?} is not HOST:PORT")))
        }
        (None, Some(l)) => Some(ServeAt::Listen(l)),
        (None, None) => None,
    };
    let serve_options: Vec<String> = get("serve_options")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    for o in &serve_options {
        let flag = o.split('=').next().unwrap_or("");
        if matches!(
            flag,
            "--socket"
                | "--listen"
                | "--min-in-sync"
                | "--fence-peer"
                | "--unfence"
                | "--read-only"
        ) {
            return Err(ParamError::Bad(format!(
                "serve_options: {flag} is set by the agent (use the parameter of its name)"
            )));
        }
    }
    let min_in_sync = match get("min_in_sync") {
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| ParamError::Bad(format!("min_in_sync={v:?} is not a whole number")))?,
        None => 0,
    };
    if min_in_sync as usize >= nodes.len().max(1) && min_in_sync > 0 {
        return Err(ParamError::Bad(format!(
            "min_in_sync={min_in_sync} cannot be met: there are {} peer(s)",
            nodes.len().saturating_sub(1)
        )));
    }
    let fence = match get("fence") {
        Some(v) => parse_bool("fence", v.trim())?,
        None => true,
    };
    let instance = env("OCF_RESOURCE_INSTANCE").unwrap_or_default();
    let resource = resource_name(&instance);
    if resource.is_empty()
        || !resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ParamError::Missing(format!(
            "OCF_RESOURCE_INSTANCE={instance:?} is not a resource name (Pacemaker sets it)"
        )));
    }
    let state_dir = get("state_dir").unwrap_or_else(|| format!("/run/mirrorctl/ocf-{resource}"));
    if !state_dir.starts_with('/') {
        return Err(ParamError::Bad(format!(
            "state_dir={state_dir:?} is not an absolute path"
        )));
    }
    let me = match env("OCF_RESKEY_CRM_meta_on_node").filter(|s| !s.is_empty()) {
        Some(n) => n,
        None => me().ok_or_else(|| {
            ParamError::Missing(
                "this node's name is unknown (no OCF_RESKEY_CRM_meta_on_node, and `crm_node -n` failed)".into(),
            )
        })?,
    };
    if !nodes.iter().any(|n| n.name == me) {
        return Err(ParamError::Bad(format!(
            "nodes does not list this node ({me}): give NODE=ADDRESS for every node"
        )));
    }
    Ok(Params {
        image,
        nodes,
        export_name,
        tls_cert,
        tls_key,
        tls_ca,
        insecure,
        serve_at,
        serve_options,
        min_in_sync,
        fence,
        state_dir,
        resource,
        me,
    })
}

impl Params {
    pub fn own(&self) -> &Node {
        // params() checked that `me` is listed.
        self.nodes
            .iter()
            .find(|n| n.name == self.me)
            .unwrap_or(&self.nodes[0])
    }

    /// Where this node keeps its pid files, logs and locks: `state_dir/NODE`, so that nodes
    /// sharing a /run (test clusters on one machine) keep theirs apart.
    pub fn node_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.state_dir).join(self.me.replace(['/', '\0'], "_"))
    }

    pub fn peers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.name != self.me)
    }

    fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The NBD URI the promoted node opens a peer's export with.
    pub fn peer_uri(&self, n: &Node) -> String {
        let host = if n.host.contains(':') {
            format!("[{}]", n.host)
        } else {
            n.host.clone()
        };
        if self.tls() {
            let mut q = Vec::new();
            if let Some(ca) = &self.tls_ca {
                q.push(format!(
                    "tls-ca={}",
                    crate::device::nbd::uri::percent_encode(ca)
                ));
            }
            if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
                q.push(format!(
                    "tls-cert={}",
                    crate::device::nbd::uri::percent_encode(c)
                ));
                q.push(format!(
                    "tls-key={}",
                    crate::device::nbd::uri::percent_encode(k)
                ));
            }
            format!(
                "nbds://{host}:{}/{}?{}",
                n.port,
                self.export_name,
                q.join("&")
            )
        } else {
            format!("nbd://{host}:{}/{}", n.port, self.export_name)
        }
    }

    /// `mirrorctl export` arguments (after the program): this node's image on its address.
    pub fn export_args(&self, rejoin: bool) -> Vec<String> {
        let own = self.own();
        let host = if own.host.contains(':') {
            format!("[{}]", own.host)
        } else {
            own.host.clone()
        };
        let mut a = vec![
            "export".to_string(),
            self.image.clone(),
            "--listen".into(),
            format!("{host}:{}", own.port),
            "--export".into(),
            self.export_name.clone(),
        ];
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            a.extend([
                "--tls-cert".into(),
                c.clone(),
                "--tls-key".into(),
                k.clone(),
            ]);
            if let Some(ca) = &self.tls_ca {
                a.extend(["--tls-ca".into(), ca.clone()]);
            }
        }
        if self.insecure {
            a.push("--insecure".into());
        }
        if rejoin {
            a.push("--rejoin".into());
        }
        a
    }

    /// `mirrorctl serve` arguments (after the program); `exe` is the agent's binary, for
    /// the fencing hooks.
    pub fn serve_args(&self, exe: &str) -> Vec<String> {
        let mut a = vec!["serve".to_string(), self.image.clone()];
        match &self.serve_at {
            Some(ServeAt::Socket(s)) => a.extend(["--socket".into(), s.clone()]),
            Some(ServeAt::Listen(l)) => a.extend(["--listen".into(), l.clone()]),
            None => {}
        }
        a.extend(self.serve_options.iter().cloned());
        a.extend(["--min-in-sync".into(), self.min_in_sync.to_string()]);
        if self.fence {
            let q = shell_quote(exe);
            a.extend([
                "--fence-peer".into(),
                format!("{q} ocf-agent fence-peer"),
                "--unfence".into(),
                format!("{q} ocf-agent unfence-peer"),
            ]);
        }
        a
    }
}

/// `s` quoted for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':'))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What the agent knows of its image, read from its header (and, for a primary, whether
/// its write-intent log is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageState {
    /// No header, an unreadable or damaged one, another kind of data.
    Unusable,
    Primary {
        /// No pending write intents: it was stopped cleanly.
        clean: bool,
    },
    Secondary {
        /// Its own leg's state, as its header records it.
        leg: Option<LegState>,
        generation: u64,
        in_sync_generation: u64,
    },
    Detached,
}

impl ImageState {
    pub fn of(
        role: Role,
        leg: Option<LegState>,
        generation: u64,
        in_sync: u64,
        clean: bool,
    ) -> Self {
        match role {
            Role::Primary => ImageState::Primary { clean },
            Role::Secondary => ImageState::Secondary {
                leg,
                generation,
                in_sync_generation: in_sync,
            },
            Role::Detached => ImageState::Detached,
        }
    }
}

/// The promotion score: 10000 while serve runs it (promoted), 1000 for an in-sync secondary
/// at the current generation (by its header) or a cleanly stopped primary, 100 for a
/// primary that was not stopped cleanly, 0 for anything else (syncing, fractured, stale,
/// detached, damaged): Pacemaker never promotes an image that lacks acknowledged writes (a
/// score of 0 is published as no score at all: Pacemaker 2.1 would promote an instance
/// scored 0 if no other could be).
pub fn score(state: &ImageState, promoted: bool) -> u32 {
    match state {
        ImageState::Primary { .. } if promoted => SCORE_PROMOTED,
        ImageState::Primary { clean: true } => SCORE_IN_SYNC,
        ImageState::Primary { clean: false } => SCORE_UNCLEAN_PRIMARY,
        ImageState::Secondary {
            leg: Some(LegState::InSync),
            generation,
            in_sync_generation,
        } if *in_sync_generation != 0 && in_sync_generation == generation => SCORE_IN_SYNC,
        _ => 0,
    }
}

/// What runs, as monitor finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub serve: bool,
    pub export: bool,
    /// The agent promoted this node and has not demoted or stopped it since.
    pub promoted_marker: bool,
}

/// monitor's answer: 8 while serve runs, 9 when it was promoted and serve is gone, 0 while
/// the export runs, 7 otherwise.
pub fn monitor_code(r: Running) -> Code {
    if r.serve {
        Code::RunningPromoted
    } else if r.promoted_marker {
        Code::FailedPromoted
    } else if r.export {
        Code::Success
    } else {
        Code::NotRunning
    }
}

/// What start does with the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartStep {
    /// Export it (a secondary, or no header yet).
    Export,
    /// Export it with --rejoin (a primary that is not running: a former primary).
    ExportRejoin,
    /// Refuse: it cannot be exported (detached, damaged).
    Refuse,
}

pub fn start_step(state: &ImageState, blank: bool) -> StartStep {
    match state {
        ImageState::Secondary { .. } => StartStep::Export,
        ImageState::Primary { .. } => StartStep::ExportRejoin,
        ImageState::Unusable if blank => StartStep::Export,
        ImageState::Unusable | ImageState::Detached => StartStep::Refuse,
    }
}

/// What promote does with the image before serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromoteStep {
    /// `mirrorctl promote IMAGE` first (a secondary: the take-over).
    Promote,
    /// Already the primary: serve it.
    Serve,
    Refuse,
}

pub fn promote_step(state: &ImageState) -> PromoteStep {
    match state {
        ImageState::Secondary { .. } => PromoteStep::Promote,
        ImageState::Primary { .. } => PromoteStep::Serve,
        _ => PromoteStep::Refuse,
    }
}

/// What the promoted node does about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStep {
    /// Its leg receives writes (in sync, or syncing in the background): nothing.
    Nothing,
    /// `attach` its export URI: a fractured leg of that URI (re-attached, its log kept), a
    /// former primary's slot found by its image UUID (the returning-primary path, P3), or a
    /// new secondary.
    Attach,
}

/// `legs`: the mirror's (state, location) pairs; `uri`: the peer's export URI.
pub fn peer_step(legs: &[(LegState, String)], uri: &str) -> PeerStep {
    let id = crate::device::nbd::uri::identity(uri);
    let leg = legs
        .iter()
        .find(|(s, l)| *s != LegState::Empty && crate::device::nbd::uri::identity(l) == id);
    match leg {
        Some((s, _)) if s.receives_writes() => PeerStep::Nothing,
        _ => PeerStep::Attach,
    }
}

/// Whether a failed `attach` of a peer's export was refused for something only an admin
/// can settle (split brain, data it would overwrite): the agent then retries it only after
/// [`REFUSED_BACKOFF_SECS`] rather than at every monitor (each split-brain refusal is an
/// event in the journal).
pub fn attach_needs_admin(stderr: &str) -> bool {
    stderr.contains("split brain")
        || stderr.contains("--discard-secondary-changes")
        || stderr.contains("--force")
}

pub const REFUSED_BACKOFF_SECS: u64 = 300;

/// Whether every listed leg is in sync (the fencing constraint may go), and at least one is.
pub fn all_in_sync(legs: &[LegState]) -> bool {
    let listed: Vec<&LegState> = legs.iter().filter(|s| **s != LegState::Empty).collect();
    !listed.is_empty() && listed.iter().all(|s| **s == LegState::InSync)
}

/// The id of the fencing constraint of `resource`.
pub fn constraint_id(resource: &str) -> String {
    format!("mirrorctl-fence-{resource}")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The crm-fence-peer style constraint: `rsc` (the promotable clone) may be promoted on no
/// node but `me`.
pub fn constraint_xml(resource: &str, rsc: &str, me: &str) -> String {
    let id = constraint_id(resource);
    format!(
        "<rsc_location id=\"{id}\" rsc=\"{}\"><rule id=\"{id}-rule\" role=\"Promoted\" score=\"-INFINITY\"><expression id=\"{id}-expr\" attribute=\"#uname\" operation=\"ne\" value=\"{}\"/></rule></rsc_location>",
        xml_escape(rsc),
        xml_escape(me)
    )
}

/// The XPath of the constraint (for its removal).
pub fn constraint_xpath(resource: &str) -> String {
    format!("//rsc_location[@id='{}']", constraint_id(resource))
}

/// The XPath of the clone (or old-style master) that holds the primitive `resource`.
pub fn clone_xpath(resource: &str) -> String {
    format!("//*[self::clone or self::master][primitive[@id='{resource}']]")
}

/// The id of the first element in `xml` (cibadmin's answer to [`clone_xpath`]).
pub fn first_id(xml: &str) -> Option<String> {
    let start = xml.find('<')?;
    let tag_end = xml[start..].find('>')? + start;
    let tag = &xml[start..tag_end];
    let i = tag.find(" id=\"")? + 5;
    let rest = &tag[i..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// The parameters as the meta-data lists them: (name, required, type, default, short, long).
pub const PARAMETERS: &[(&str, bool, &str, &str, &str, &str)] = &[
    ("image", true, "string", "", "This node's image",
     "This node's image file or block device (an absolute path; the same path on every node). On the promoted node it is the mirror's primary, served by `mirrorctl serve`; on the others a secondary exported with `mirrorctl export`."),
    ("nodes", true, "string", "", "Every node and its export address",
     "Every node as NODE=ADDRESS, separated by spaces: its name as Pacemaker knows it (crm_node -n) and the address its export listens on, optionally ADDRESS:PORT ([IPv6]:PORT) to override export_port for that node. The peers are the nodes that are not this one: the promoted node attaches their exports as NBD legs."),
    ("export_port", false, "integer", "10810", "Export TCP port",
     "The TCP port of every node's export (unless nodes gives one)."),
    ("export_name", false, "string", "mirror", "Export name",
     "The NBD export name of the secondaries."),
    ("tls_cert", false, "string", "", "This node's certificate",
     "This node's certificate (PEM): presented by its export, and by its NBD legs to the peers' exports when promoted. Required unless insecure=true."),
    ("tls_key", false, "string", "", "This node's key",
     "The key of tls_cert (PEM, unencrypted, mode 600). Required unless insecure=true."),
    ("tls_ca", false, "string", "", "The peers' CA",
     "The CA (PEM) that signed the peers' certificates: the export admits only clients with a certificate from it, and the legs check the exports' certificates against it (they must carry the address given in nodes). Required unless insecure=true."),
    ("insecure", false, "boolean", "false", "No TLS between the nodes",
     "Export and attach without TLS (a private replication link only: anyone who reaches the port can read and overwrite the secondary)."),
    ("socket", false, "string", "", "serve's Unix socket",
     "Where serve takes hosts when this node is promoted: a Unix socket (serve --socket). Default: serve's default socket."),
    ("listen", false, "string", "", "serve's TCP address",
     "Where serve takes hosts when this node is promoted: HOST:PORT (serve --listen), instead of socket."),
    ("serve_options", false, "string", "", "More serve options",
     "Extra arguments of `mirrorctl serve`, separated by spaces (e.g. --tls-cert /etc/mirrorctl/host.pem --tls-key /etc/mirrorctl/host.key for the hosts)."),
    ("min_in_sync", false, "integer", "0", "Minimum of in-sync secondaries",
     "serve --min-in-sync: writes are acknowledged only while at least this many secondaries are in sync. 1 on a two-node cluster: an isolated primary acknowledges nothing."),
    ("fence", false, "boolean", "true", "Fence peers that miss writes",
     "Place a location constraint (mirrorctl-fence-RESOURCE: the clone promoted on no node but this one) when a peer's leg stops receiving writes, before any write is acknowledged without it, and remove it once every leg is back in sync (as DRBD's crm-fence-peer)."),
    ("state_dir", false, "string", "/run/mirrorctl/ocf-RESOURCE", "Pid files and logs",
     "Directory of the pid files and logs of the export and serve processes the agent starts, in a subdirectory named after the node."),
];

/// The meta-data document (OCF 1.0 DTD, with its DOCTYPE line).
pub fn meta_data() -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">\n<resource-agent name=\"mirror\" version=\"",
    );
    s.push_str(env!("CARGO_PKG_VERSION"));
    s.push_str("\">\n<version>1.0</version>\n");
    s.push_str("<longdesc lang=\"en\">A mirrorctl mirror across machines, as a promotable clone: the promoted node serves the mirror's primary to hosts (mirrorctl serve), the others export their secondaries over NBD (mirrorctl export) and the promoted node writes to them synchronously. Promotion scores come from each image's state (an in-sync secondary 1000, the running primary 10000, anything that may lack acknowledged writes 0); a peer that misses writes is kept from promotion by a location constraint placed before the write is acknowledged.</longdesc>\n");
    s.push_str("<shortdesc lang=\"en\">Synchronous mirror with mirrorctl (promotable)</shortdesc>\n<parameters>\n");
    for (name, required, ty, default, short, long) in PARAMETERS {
        s.push_str(&format!(
            "<parameter name=\"{name}\" unique=\"0\" required=\"{}\">\n<longdesc lang=\"en\">{}</longdesc>\n<shortdesc lang=\"en\">{}</shortdesc>\n<content type=\"{ty}\"{}/>\n</parameter>\n",
            u8::from(*required),
            xml_escape(long),
            xml_escape(short),
            if default.is_empty() {
                String::new()
            } else {
                format!(" default=\"{}\"", xml_escape(default))
            }
        ));
    }
    s.push_str("</parameters>\n<actions>\n");
    for (name, timeout, extra) in [
        ("start", "60s", ""),
        ("stop", "120s", ""),
        ("promote", "120s", ""),
        ("demote", "120s", ""),
        ("notify", "20s", ""),
        ("monitor", "30s", " interval=\"9s\" role=\"Promoted\""),
        ("monitor", "30s", " interval=\"10s\" role=\"Unpromoted\""),
        ("meta-data", "5s", ""),
        ("validate-all", "20s", ""),
    ] {
        s.push_str(&format!(
            "<action name=\"{name}\" timeout=\"{timeout}\"{extra}/>\n"
        ));
    }
    s.push_str("</actions>\n</resource-agent>\n");
    s
}

/// The wrapper `mirrorctl generate` writes as ocf/mirror (installed as
/// PREFIX/lib/ocf/resource.d/mirrorctl/mirror, its /usr/local/ made PREFIX/).
pub fn wrapper() -> String {
    "#!/bin/sh\nexec /usr/local/bin/mirrorctl ocf-agent \"$@\"\n".to_string()
}

/// An environment as a map (for the tests and for `params`).
pub fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Result<Params, ParamError> {
        let env = env_of(pairs);
        params(&|k| env.get(k).cloned(), &|| Some("alpha".into()))
    }

    const BASE: &[(&str, &str)] = &[
        ("OCF_RESKEY_image", "/srv/vm.img"),
        ("OCF_RESKEY_nodes", "alpha=10.0.0.1 beta=10.0.0.2:10900"),
        ("OCF_RESKEY_insecure", "true"),
        ("OCF_RESOURCE_INSTANCE", "vm:1"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<(&str, &str)> = BASE.to_vec();
        for (k, val) in extra {
            v.retain(|(kk, _)| kk != k);
            v.push((k, val));
        }
        v
    }

    #[test]
    fn parameters_parse_with_their_defaults_and_this_nodes_peers() {
        let p = p(BASE).unwrap();
        assert_eq!(p.resource, "vm");
        assert_eq!(p.state_dir, "/run/mirrorctl/ocf-vm");
        assert_eq!(
            p.node_dir(),
            std::path::Path::new("/run/mirrorctl/ocf-vm/alpha")
        );
        assert_eq!(p.me, "alpha");
        assert_eq!(p.own().port, 10810);
        let peers: Vec<_> = p.peers().collect();
        assert_eq!(peers.len(), 1);
        assert_eq!((peers[0].host.as_str(), peers[0].port), ("10.0.0.2", 10900));
        assert_eq!(p.peer_uri(peers[0]), "nbd://10.0.0.2:10900/mirror");
        assert!(p.fence);
        assert_eq!(p.min_in_sync, 0);
    }

    #[test]
    fn missing_parameters_are_not_configured_and_bad_ones_are_argument_errors() {
        let e = p(&[("OCF_RESOURCE_INSTANCE", "vm")]).unwrap_err();
        assert_eq!(e.code(), Code::NotConfigured, "{e:?}");
        let mut no_nodes = BASE.to_vec();
        no_nodes.retain(|(k, _)| *k != "OCF_RESKEY_nodes");
        assert_eq!(p(&no_nodes).unwrap_err().code(), Code::NotConfigured);
        let mut no_tls = BASE.to_vec();
        no_tls.retain(|(k, _)| *k != "OCF_RESKEY_insecure");
        let e = p(&no_tls).unwrap_err();
        assert_eq!(e.code(), Code::NotConfigured);
        assert!(e.text().contains("tls_cert, tls_key, tls_ca"), "{e:?}");
        for bad in [
            ("OCF_RESKEY_image", "relative.img"),
            ("OCF_RESKEY_nodes", "alpha beta=1"),
            ("OCF_RESKEY_nodes", "alpha=10.0.0.1 alpha=10.0.0.2"),
            ("OCF_RESKEY_nodes", "alpha=10.0.0.1:99999"),
            ("OCF_RESKEY_nodes", "gamma=10.0.0.1 beta=10.0.0.2"),
            ("OCF_RESKEY_nodes", "alpha=fe80::1"),
            ("OCF_RESKEY_export_port", "0"),
            ("OCF_RESKEY_min_in_sync", "-1"),
            ("OCF_RESKEY_min_in_sync", "2"),
            ("OCF_RESKEY_fence", "perhaps"),
            ("OCF_RESKEY_socket", "run/x.sock"),
            ("OCF_RESKEY_listen", "nowhere"),
            ("OCF_RESKEY_serve_options", "--read-only"),
            ("OCF_RESKEY_state_dir", "tmp"),
        ] {
            let e = p(&with(&[bad])).unwrap_err();
            assert_eq!(e.code(), Code::Args, "{bad:?}: {e:?}");
        }
        let e = p(&with(&[
            ("OCF_RESKEY_socket", "/run/a.sock"),
            ("OCF_RESKEY_listen", "127.0.0.1:1"),
        ]))
        .unwrap_err();
        assert_eq!(e.code(), Code::Args);
    }

    #[test]
    fn ipv6_nodes_and_tls_uris_are_spelt_as_nbd_wants_them() {
        let p = p(&with(&[
            ("OCF_RESKEY_nodes", "alpha=[fd00::1] beta=[fd00::2]:10999"),
            ("OCF_RESKEY_insecure", "false"),
            ("OCF_RESKEY_tls_cert", "/etc/m/a.pem"),
            ("OCF_RESKEY_tls_key", "/etc/m/a.key"),
            ("OCF_RESKEY_tls_ca", "/etc/m/ca.pem"),
        ]))
        .unwrap();
        let beta = p.peers().next().unwrap().clone();
        assert_eq!(
            p.peer_uri(&beta),
            "nbds://[fd00::2]:10999/mirror?tls-ca=/etc/m/ca.pem&tls-cert=/etc/m/a.pem&tls-key=/etc/m/a.key"
        );
        let a = p.export_args(false);
        assert_eq!(
            a,
            [
                "export",
                "/srv/vm.img",
                "--listen",
                "[fd00::1]:10810",
                "--export",
                "mirror",
                "--tls-cert",
                "/etc/m/a.pem",
                "--tls-key",
                "/etc/m/a.key",
                "--tls-ca",
                "/etc/m/ca.pem"
            ]
        );
    }

    #[test]
    fn serve_gets_the_fencing_hooks_and_the_minimum_unless_fencing_is_off() {
        let p1 = p(&with(&[
            ("OCF_RESKEY_socket", "/run/vm.sock"),
            ("OCF_RESKEY_min_in_sync", "1"),
            ("OCF_RESKEY_serve_options", "--hot-extents 64  --export vm"),
        ]))
        .unwrap();
        let a = p1.serve_args("/usr/bin/mirrorctl");
        assert_eq!(
            a,
            [
                "serve",
                "/srv/vm.img",
                "--socket",
                "/run/vm.sock",
                "--hot-extents",
                "64",
                "--export",
                "vm",
                "--min-in-sync",
                "1",
                "--fence-peer",
                "/usr/bin/mirrorctl ocf-agent fence-peer",
                "--unfence",
                "/usr/bin/mirrorctl ocf-agent unfence-peer"
            ]
        );
        let p2 = p(&with(&[("OCF_RESKEY_fence", "false")])).unwrap();
        let a = p2.serve_args("/opt/my dir/mirrorctl");
        assert_eq!(a, ["serve", "/srv/vm.img", "--min-in-sync", "0"]);
        assert_eq!(shell_quote("/opt/my dir/it's"), "'/opt/my dir/it'\\''s'");
        assert!(p1
            .export_args(true)
            .ends_with(&["--insecure".into(), "--rejoin".into()]));
    }

    #[test]
    fn scores_promote_only_images_that_hold_every_acknowledged_write() {
        let sec = |leg, g, i| ImageState::Secondary {
            leg: Some(leg),
            generation: g,
            in_sync_generation: i,
        };
        assert_eq!(score(&ImageState::Primary { clean: true }, true), 10000);
        assert_eq!(score(&ImageState::Primary { clean: false }, true), 10000);
        assert_eq!(score(&ImageState::Primary { clean: true }, false), 1000);
        assert_eq!(score(&ImageState::Primary { clean: false }, false), 100);
        assert_eq!(score(&sec(LegState::InSync, 7, 7), false), 1000);
        // Stale (the primary moved on), syncing, fractured, never in sync: 0.
        assert_eq!(score(&sec(LegState::InSync, 7, 6), false), 0);
        assert_eq!(score(&sec(LegState::InSync, 0, 0), false), 0);
        assert_eq!(score(&sec(LegState::Syncing, 7, 7), false), 0);
        assert_eq!(score(&sec(LegState::FracturedByError, 7, 7), false), 0);
        assert_eq!(score(&sec(LegState::FracturedByAdmin, 7, 7), false), 0);
        assert_eq!(
            score(
                &ImageState::Secondary {
                    leg: None,
                    generation: 7,
                    in_sync_generation: 7
                },
                false
            ),
            0
        );
        assert_eq!(score(&ImageState::Unusable, false), 0);
        assert_eq!(score(&ImageState::Detached, true), 0);
    }

    #[test]
    fn monitor_start_and_promote_decide_from_what_runs_and_the_image() {
        let r = |serve, export, promoted_marker| Running {
            serve,
            export,
            promoted_marker,
        };
        assert_eq!(monitor_code(r(true, false, true)), Code::RunningPromoted);
        assert_eq!(monitor_code(r(false, false, true)), Code::FailedPromoted);
        assert_eq!(monitor_code(r(false, true, true)), Code::FailedPromoted);
        assert_eq!(monitor_code(r(false, true, false)), Code::Success);
        assert_eq!(monitor_code(r(false, false, false)), Code::NotRunning);
        let sec = ImageState::Secondary {
            leg: Some(LegState::InSync),
            generation: 1,
            in_sync_generation: 1,
        };
        assert_eq!(start_step(&sec, false), StartStep::Export);
        assert_eq!(
            start_step(&ImageState::Primary { clean: true }, false),
            StartStep::ExportRejoin
        );
        assert_eq!(start_step(&ImageState::Unusable, true), StartStep::Export);
        assert_eq!(start_step(&ImageState::Unusable, false), StartStep::Refuse);
        assert_eq!(start_step(&ImageState::Detached, false), StartStep::Refuse);
        assert_eq!(promote_step(&sec), PromoteStep::Promote);
        assert_eq!(
            promote_step(&ImageState::Primary { clean: false }),
            PromoteStep::Serve
        );
        assert_eq!(promote_step(&ImageState::Unusable), PromoteStep::Refuse);
    }

    #[test]
    fn a_peer_is_attached_unless_its_leg_receives_writes() {
        let uri = "nbds://10.0.0.2:10810/mirror?tls-ca=/ca.pem";
        let legs = vec![
            (LegState::Empty, String::new()),
            (LegState::InSync, "nbd://10.0.0.2:10810/mirror".to_string()),
        ];
        assert_eq!(peer_step(&legs, uri), PeerStep::Nothing);
        let legs = vec![(
            LegState::FracturedByError,
            "nbds://10.0.0.2:10810/mirror?tls-ca=/x".to_string(),
        )];
        assert_eq!(peer_step(&legs, uri), PeerStep::Attach);
        // The former primary's slot records its path on the other machine: attach finds it
        // by its image UUID.
        let legs = vec![(LegState::FracturedByError, "/srv/vm.img".to_string())];
        assert_eq!(peer_step(&legs, uri), PeerStep::Attach);
        assert!(attach_needs_admin(
            "mirrorctl: split brain: generation 4 is the last they share: ..."
        ));
        assert!(attach_needs_admin(
            "mirrorctl: nbd://x/mirror holds an ext4 filesystem; use --force to overwrite it"
        ));
        assert!(!attach_needs_admin(
            "mirrorctl: opening secondary nbd://x/mirror: connection refused"
        ));
        assert!(all_in_sync(&[LegState::InSync, LegState::Empty]));
        assert!(!all_in_sync(&[LegState::InSync, LegState::Syncing]));
        assert!(!all_in_sync(&[LegState::Empty]));
    }

    #[test]
    fn the_constraint_forbids_promotion_everywhere_but_here() {
        let x = constraint_xml("vm", "vm-clone", "alpha");
        assert_eq!(
            x,
            "<rsc_location id=\"mirrorctl-fence-vm\" rsc=\"vm-clone\"><rule id=\"mirrorctl-fence-vm-rule\" role=\"Promoted\" score=\"-INFINITY\"><expression id=\"mirrorctl-fence-vm-expr\" attribute=\"#uname\" operation=\"ne\" value=\"alpha\"/></rule></rsc_location>"
        );
        assert_eq!(
            constraint_xpath("vm"),
            "//rsc_location[@id='mirrorctl-fence-vm']"
        );
        assert_eq!(
            first_id("<clone id=\"vm-clone\">\n  <primitive id=\"vm\"/></clone>"),
            Some("vm-clone".into())
        );
        assert_eq!(first_id(""), None);
        assert_eq!(resource_name("vm:12"), "vm");
        assert_eq!(resource_name("vm"), "vm");
    }

    #[test]
    fn the_meta_data_lists_every_parameter_and_action() {
        let m = meta_data();
        assert!(m.starts_with(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">\n"
        ));
        for (name, ..) in PARAMETERS {
            assert!(m.contains(&format!("<parameter name=\"{name}\"")), "{name}");
        }
        for a in [
            "start",
            "stop",
            "promote",
            "demote",
            "notify",
            "monitor",
            "meta-data",
            "validate-all",
        ] {
            assert!(m.contains(&format!("<action name=\"{a}\"")), "{a}");
        }
        assert!(wrapper().starts_with("#!/bin/sh\nexec "));
        assert_eq!(wrapper().lines().count(), 2);
    }
}
