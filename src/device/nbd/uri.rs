//! NBD URIs, pure: `nbd://HOST[:PORT][/EXPORT]` and `nbd+unix:///EXPORT?socket=PATH`
//! (the forms libnbd and qemu use), parsed, and written in one canonical form.

/// Whether a secondary location is an NBD URI rather than a path.
pub fn is_uri(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+unix://")
}

/// Where an export is: `nbd://HOST[:PORT][/EXPORT]` or `nbd+unix:///EXPORT?socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

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

impl NbdUri {
    pub fn parse(s: &str) -> Result<NbdUri, String> {
        let bad = |why: &str| {
            format!(
                "'{s}': {why} (use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH)"
            )
        };
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| bad("no ?socket=PATH"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad("a host is not allowed with nbd+unix"));
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("no socket= in the query"))?;
            if socket.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(NbdUri {
                endpoint: Endpoint::Unix {
                    socket: percent_decode(socket)?,
                },
                export: percent_decode(path.strip_prefix('/').unwrap_or(path))?,
            });
        }
        let rest = s
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("not an NBD URI"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains('?') {
            return Err(bad("query parameters are not supported with nbd://"));
        }
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
        })
    }

    /// One spelling per export, used to tell whether two locations name the same export.
    pub fn canonical(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                format!("nbd://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => format!("nbd://{host}:{port}/{}", self.export),
            Endpoint::Unix { socket } => {
                let socket = std::fs::canonicalize(socket)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| socket.clone());
                format!("nbd+unix:///{}?socket={socket}", self.export)
            }
        }
    }
}

/// The canonical form of `s` if it is an NBD URI.
pub fn canonical(s: &str) -> Option<String> {
    if is_uri(s) {
        NbdUri::parse(s).ok().map(|u| u.canonical())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn malformed_uris_are_refused_with_the_accepted_forms() {
        for bad in [
            "nbd://",
            "nbd://host:port/x",
            "nbd+unix:///exp",
            "nbd+unix://host/exp?socket=/s",
            "nbd+unix:///exp?socket=",
            "nbd://h/x?tls=1",
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(e.contains("nbd://HOST"), "{bad}: {e}");
        }
        assert!(!is_uri("/dev/sdb"));
        assert!(is_uri("nbd://h"));
    }
}
