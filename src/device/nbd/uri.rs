//! NBD URIs, pure: `nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///EXPORT?socket=PATH` and
//! their TLS forms `nbds://` and `nbds+unix://` (the forms libnbd and qemu use), with the
//! client's TLS files as query parameters; parsed, and written in one canonical form.

use crate::tls::ClientFiles;

/// Whether a secondary location is an NBD URI rather than a path.
pub fn is_uri(s: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Where an export is, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
    /// `nbds`: TLS, the server's certificate checked; `None` for clear text.
    pub tls: Option<ClientTls>,
}

/// The client's side of TLS for one export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub files: ClientFiles,
    /// The name the server's certificate must carry (default: the URI's host; for a Unix
    /// socket, `localhost`).
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

/// The query parameters for the client's TLS files (`tls-certificates` is libnbd's: a
/// directory holding ca-cert.pem, client-cert.pem and client-key.pem).
pub const TLS_CA: &str = "tls-ca";
pub const TLS_CERT: &str = "tls-cert";
pub const TLS_KEY: &str = "tls-key";
pub const TLS_HOSTNAME: &str = "tls-hostname";
pub const TLS_CERTIFICATES: &str = "tls-certificates";

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 after decoding"))
}

/// Escapes what would end or confuse a query value (`%`, `&`, `#`, spaces and controls).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c == '&' || c == '#' || c == '+' || c.is_whitespace() || c.is_control() {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as an absolute one (against the working directory), `.` and `..` taken out by
/// name, for recording. Links are kept: a certificate renewed by pointing a link at the new
/// file is still found.
pub fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let a = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = std::path::PathBuf::new();
    for c in a.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl NbdUri {
    pub fn parse(s: &str) -> Result<NbdUri, String> {
        let bad = |why: &str| {
            format!(
                "'{s}': {why} (use nbd[s]://HOST[:PORT][/EXPORT] or nbd[s]+unix:///EXPORT?socket=PATH)"
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("not an NBD URI"))?;
        let (unix, tls) = match scheme {
            "nbd" => (false, false),
            "nbds" => (false, true),
            "nbd+unix" => (true, false),
            "nbds+unix" => (true, true),
            _ => return Err(bad("not an NBD URI")),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut params = Vec::new();
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if params.iter().any(|(k2, _): &(&str, String)| *k2 == k) {
                return Err(bad(&format!("{k}= given twice")));
            }
            params.push((k, percent_decode(v)?));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(k2, _)| *k2 == k)
                .map(|(_, v)| v.clone())
        };
        for (k, v) in &params {
            let known = match *k {
                "socket" => unix,
                TLS_CA | TLS_CERT | TLS_KEY | TLS_HOSTNAME | TLS_CERTIFICATES => {
                    if !tls {
                        return Err(bad(&format!(
                            "{k}= is for TLS: write nbds{}:// to use it",
                            if unix { "+unix" } else { "" }
                        )));
                    }
                    true
                }
                _ => false,
            };
            if !known {
                return Err(bad(&format!("unknown query parameter '{k}'")));
            }
            if v.is_empty() {
                return Err(bad(&format!("empty {k}=")));
            }
        }
        let tls = if tls {
            let dir = get(TLS_CERTIFICATES);
            // libnbd's directory: its CA, and the client's pair when both files are there.
            let in_dir = |f: &str| dir.as_ref().map(|d| format!("{d}/{f}"));
            let pair_in_dir = in_dir("client-cert.pem")
                .zip(in_dir("client-key.pem"))
                .filter(|(c, k)| {
                    std::path::Path::new(c).exists() && std::path::Path::new(k).exists()
                });
            let (cert, key) = match (get(TLS_CERT), get(TLS_KEY)) {
                (None, None) => pair_in_dir.unzip(),
                (c, k) => (c, k),
            };
            if cert.is_some() != key.is_some() {
                return Err(bad(
                    "a client certificate needs its key: give both tls-cert= and tls-key=",
                ));
            }
            Some(ClientTls {
                files: ClientFiles {
                    ca: get(TLS_CA)
                        .or_else(|| in_dir("ca-cert.pem"))
                        .map(Into::into),
                    cert: cert.map(Into::into),
                    key: key.map(Into::into),
                },
                hostname: get(TLS_HOSTNAME),
            })
        } else {
            None
        };
        if unix {
            if !rest.is_empty() && !rest.starts_with('/') {
                return Err(bad("a host is not allowed with nbd+unix"));
            }
            let socket = get("socket").ok_or_else(|| bad("no socket= in the query"))?;
            return Ok(NbdUri {
                endpoint: Endpoint::Unix { socket },
                export: percent_decode(rest.strip_prefix('/').unwrap_or(rest))?,
                tls,
            });
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 10809,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(NbdUri {
            endpoint: Endpoint::Tcp { host, port },
            export: percent_decode(path)?,
            tls,
        })
    }

    /// The host name the server's certificate must carry.
    pub fn tls_hostname(&self) -> String {
        match (&self.tls, &self.endpoint) {
            (
                Some(ClientTls {
                    hostname: Some(h), ..
                }),
                _,
            ) => h.clone(),
            (_, Endpoint::Tcp { host, .. }) => host.clone(),
            (_, Endpoint::Unix { .. }) => "localhost".into(),
        }
    }

    /// One spelling per export, to tell whether two locations name the same export: the
    /// scheme without `s` and no TLS settings (the same export, reached with or without TLS).
    pub fn identity(&self) -> String {
        let plain = NbdUri {
            tls: None,
            ..self.clone()
        };
        plain.canonical()
    }

    /// The form recorded and opened later, from any working directory: the socket and the
    /// TLS files as absolute paths.
    pub fn canonical(&self) -> String {
        let s = if self.tls.is_some() { "s" } else { "" };
        let mut out = match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                format!("nbd{s}://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => format!("nbd{s}://{host}:{port}/{}", self.export),
            Endpoint::Unix { socket } => {
                let socket = std::fs::canonicalize(socket)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| socket.clone());
                format!(
                    "nbd{s}+unix:///{}?socket={}",
                    self.export,
                    percent_encode(&socket)
                )
            }
        };
        if let Some(t) = &self.tls {
            let mut q = Vec::new();
            let path = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map(|p| percent_encode(&absolute(p).display().to_string()))
            };
            if let Some(v) = path(&t.files.ca) {
                q.push(format!("{TLS_CA}={v}"));
            }
            if let Some(v) = path(&t.files.cert) {
                q.push(format!("{TLS_CERT}={v}"));
            }
            if let Some(v) = path(&t.files.key) {
                q.push(format!("{TLS_KEY}={v}"));
            }
            if let Some(h) = &t.hostname {
                q.push(format!("{TLS_HOSTNAME}={}", percent_encode(h)));
            }
            if !q.is_empty() {
                out.push(if out.contains('?') { '&' } else { '?' });
                out.push_str(&q.join("&"));
            }
        }
        out
    }
}

/// The identity of `s` (see [`NbdUri::identity`]) if it is an NBD URI.
pub fn identity(s: &str) -> Option<String> {
    if is_uri(s) {
        NbdUri::parse(s).ok().map(|u| u.identity())
    } else {
        None
    }
}

/// The short form of a location for people (status text, logs, event details, the
/// Prometheus `leg` label): an NBD URI without its query, followed by ` (TLS)` for `nbds`;
/// for `nbd[s]+unix` the `socket=` parameter is kept (it is where the export is) and the
/// rest (the TLS files) dropped. Files, block devices and text that is not an NBD URI are
/// returned as they are. JSON output keeps the full location.
///
/// `nbds://10.0.0.2:10809/vm?tls-ca=/etc/pki/ca.pem&...` → `nbds://10.0.0.2:10809/vm (TLS)`.
pub fn display(location: &str) -> String {
    if !is_uri(location) {
        return location.to_string();
    }
    let (scheme, rest) = location.split_once("://").unwrap_or(("", location));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = format!("{scheme}://{path}");
    if scheme.ends_with("+unix") {
        if let Some(socket) = query.split('&').find(|kv| kv.starts_with("socket=")) {
            out.push('?');
            out.push_str(socket);
        }
    }
    if scheme.starts_with("nbds") {
        out.push_str(" (TLS)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_form_drops_the_query_and_says_tls() {
        assert_eq!(
            display("nbds://10.0.0.2:10809/vm?tls-ca=/etc/pki/mirror/ca.pem&tls-cert=/etc/pki/mirror/client.pem&tls-key=/etc/pki/mirror/client.key&tls-hostname=nbd.example"),
            "nbds://10.0.0.2:10809/vm (TLS)"
        );
        assert_eq!(
            display("nbd://10.0.0.2:10809/vm"),
            "nbd://10.0.0.2:10809/vm"
        );
        assert_eq!(
            display("nbds://[::1]:11000/x"),
            "nbds://[::1]:11000/x (TLS)"
        );
        // A Unix socket is the location: kept; the TLS files go.
        assert_eq!(
            display(
                "nbds+unix:///vm?socket=/run/nbd/vm.sock&tls-ca=/etc/pki/ca.pem&tls-hostname=h"
            ),
            "nbds+unix:///vm?socket=/run/nbd/vm.sock (TLS)"
        );
        assert_eq!(
            display("nbds+unix:///vm?tls-ca=/etc/pki/ca.pem&socket=/run/nbd/vm%20a.sock"),
            "nbds+unix:///vm?socket=/run/nbd/vm%20a.sock (TLS)"
        );
        assert_eq!(
            display("nbd+unix:///vm?socket=/run/nbd/vm.sock"),
            "nbd+unix:///vm?socket=/run/nbd/vm.sock"
        );
        // Paths and block devices as they are.
        for p in ["/srv/b.img", "b.img", "/dev/sdb", "weird?name"] {
            assert_eq!(display(p), p);
        }
    }

    #[test]
    fn tcp_uris_parse_with_default_port_and_export() {
        let u = NbdUri::parse("nbd://host.example").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "host.example".into(),
                port: 10809
            }
        );
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd://127.0.0.1:10900/disk%201").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(u.export, "disk 1");
        assert_eq!(u.canonical(), "nbd://127.0.0.1:10900/disk 1");
        let u = NbdUri::parse("nbd://[::1]:11000/x").unwrap();
        assert_eq!(u.canonical(), "nbd://[::1]:11000/x");
    }

    #[test]
    fn unix_uris_parse_the_socket_from_the_query() {
        let u = NbdUri::parse("nbd+unix:///exp?socket=/run/nbd.sock").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Unix {
                socket: "/run/nbd.sock".into()
            }
        );
        assert_eq!(u.export, "exp");
        let u = NbdUri::parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.export, "");
    }

    #[test]
    fn nbds_uris_carry_the_tls_files_recorded_as_absolute_paths_and_name_the_same_export() {
        let u = NbdUri::parse("nbds://backup.example:10900/vm?tls-ca=/etc/ca.pem").unwrap();
        let t = u.tls.as_ref().unwrap();
        assert_eq!(
            t.files.ca.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(t.files.cert, None);
        assert_eq!(u.tls_hostname(), "backup.example");
        assert_eq!(
            u.canonical(),
            "nbds://backup.example:10900/vm?tls-ca=/etc/ca.pem"
        );
        assert_eq!(u.identity(), "nbd://backup.example:10900/vm");
        assert_eq!(
            identity("nbd://backup.example:10900/vm"),
            Some(u.identity())
        );
        // A relative file is recorded absolute; odd characters survive the round trip.
        let u = NbdUri::parse(
            "nbds+unix:///e?socket=/run/s%20s.sock&tls-cert=c%26d.pem&tls-key=/k.pem&tls-hostname=nbd.example",
        )
        .unwrap();
        assert_eq!(u.tls_hostname(), "nbd.example");
        let c = u.canonical();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            c.contains(&format!("tls-cert={}/c%26d.pem", cwd.display())),
            "{c}"
        );
        let again = NbdUri::parse(&c).unwrap();
        assert_eq!(
            again.tls.as_ref().unwrap().files.cert,
            Some(cwd.join("c&d.pem"))
        );
        assert_eq!(again.endpoint, u.endpoint);
        assert_eq!(again.canonical(), c);
        // A Unix socket's certificate is checked for localhost unless told otherwise.
        let u = NbdUri::parse("nbds+unix:///?socket=/s").unwrap();
        assert_eq!(u.tls_hostname(), "localhost");
        assert!(is_uri("nbds://h") && is_uri("nbds+unix:///?socket=/s"));
        assert_eq!(
            absolute(std::path::Path::new("/etc/x/../pki/./ca.pem")),
            std::path::Path::new("/etc/pki/ca.pem")
        );
    }

    #[test]
    fn libnbds_tls_certificates_directory_gives_the_ca_and_the_client_pair_when_both_are_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let u = NbdUri::parse(&format!("nbds://h/?tls-certificates={d}")).unwrap();
        let f = &u.tls.as_ref().unwrap().files;
        assert_eq!(f.ca, Some(dir.path().join("ca-cert.pem")));
        assert_eq!((f.cert.as_ref(), f.key.as_ref()), (None, None));
        std::fs::write(dir.path().join("client-cert.pem"), "").unwrap();
        std::fs::write(dir.path().join("client-key.pem"), "").unwrap();
        let u = NbdUri::parse(&format!("nbds://h/?tls-certificates={d}")).unwrap();
        let f = &u.tls.as_ref().unwrap().files;
        assert_eq!(f.cert, Some(dir.path().join("client-cert.pem")));
        assert_eq!(f.key, Some(dir.path().join("client-key.pem")));
    }

    #[test]
    fn malformed_uris_are_refused_with_the_accepted_forms() {
        for bad in [
            "nbd://",
            "nbd://host:port/x",
            "nbd+unix:///exp",
            "nbd+unix://host/exp?socket=/s",
            "nbd+unix:///exp?socket=",
            "nbd://h/x?tls=1",
            "nbd://h/x?tls-ca=/ca.pem",
            "nbds://h/x?tls-cert=/c.pem",
            "nbds://h/x?tls-ca=",
            "nbds+unix:///x?socket=/s&socket=/t",
            "http://h/x",
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(e.contains("nbd[s]://HOST"), "{bad}: {e}");
        }
        assert!(!is_uri("/dev/sdb"));
        assert!(is_uri("nbd://h"));
    }
}
