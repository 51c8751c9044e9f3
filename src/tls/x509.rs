//! The three certificate fields mirrorctl reads itself (subject common names, DNS and IP
//! subject alternative names, the key usage bits), by a bounded DER walker. rustls-webpki,
//! already in the tree, parses certificates but exposes only DNS names (no common names, no
//! addresses, no key usage), and x509-parser brought 30 crates for these few fields.
//!
//! Every read is checked against the bytes left; anything that is not DER as RFC 5280 lays
//! it out yields `None`, never a panic. Certificates reach this code after rustls has
//! parsed them (a peer's) or from the admin's own files.

/// One DER element: its tag and contents.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

/// The elements of a DER sequence's contents, in order, stopping at the first malformed one
/// (`Reader::failed` says whether that happened).
struct Reader<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            failed: false,
        }
    }

    /// The next element, `None` at the end or at malformed bytes (then `failed` is set).
    fn next_tlv(&mut self) -> Option<Tlv<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = split_tlv(self.rest);
        match parsed {
            Some((tlv, rest)) => {
                self.rest = rest;
                Some(tlv)
            }
            None => {
                self.failed = true;
                self.rest = &[];
                None
            }
        }
    }

    /// The next element if it has `tag`, else `None` (nothing consumed).
    fn take_if(&mut self, tag: u8) -> Option<Tlv<'a>> {
        match self.rest.first() {
            Some(&t) if t == tag => self.next_tlv(),
            _ => None,
        }
    }
}

/// Splits one tag-length-value off the front of `b`. Only single-byte tags (every tag of
/// the fields read here) and definite lengths of at most 4 length bytes are DER here.
fn split_tlv(b: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, b) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    let (value, rest) = b.split_at(len);
    Some((Tlv { tag, value }, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const BIT_STRING: u8 = 0x03;
/// `[0] EXPLICIT` version, `[3] EXPLICIT` extensions of a TBSCertificate.
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
/// `[2] IMPLICIT IA5String` dNSName and `[7] IMPLICIT OCTET STRING` iPAddress of a
/// GeneralName.
const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;

/// id-at-commonName 2.5.4.3, id-ce-subjectAltName 2.5.29.17, id-ce-keyUsage 2.5.29.15.
const CN: &[u8] = &[0x55, 0x04, 0x03];
const SAN: &[u8] = &[0x55, 0x1d, 0x11];
const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];

/// The parts of a certificate read here.
pub struct Fields<'a> {
    subject: &'a [u8],
    extensions: Option<&'a [u8]>,
}

/// The subject and extensions of a DER certificate, `None` if it does not parse that far.
pub fn fields(der: &[u8]) -> Option<Fields<'_>> {
    let (cert, rest) = split_tlv(der)?;
    if cert.tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let tbs = Reader::new(cert.value).take_if(SEQUENCE)?;
    let mut r = Reader::new(tbs.value);
    r.take_if(VERSION);
    for _ in 0..4 {
        // serialNumber, signature, issuer, validity
        r.next_tlv()?;
    }
    let subject = r.take_if(SEQUENCE)?.value;
    r.take_if(SEQUENCE)?; // subjectPublicKeyInfo
    let mut extensions = None;
    while let Some(t) = r.next_tlv() {
        if t.tag == EXTENSIONS {
            extensions = Some(Reader::new(t.value).take_if(SEQUENCE)?.value);
        }
    }
    if r.failed {
        return None;
    }
    Some(Fields {
        subject,
        extensions,
    })
}

impl<'a> Fields<'a> {
    /// The subject's common names that are text (UTF8String, PrintableString, IA5String,
    /// or a TeletexString that is valid UTF-8), in order.
    pub fn common_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rdns = Reader::new(self.subject);
        while let Some(rdn) = rdns.next_tlv() {
            if rdn.tag != SET {
                continue;
            }
            let mut atvs = Reader::new(rdn.value);
            while let Some(atv) = atvs.next_tlv() {
                let mut r = Reader::new(atv.value);
                let (Some(oid), Some(v)) = (r.take_if(OID), r.next_tlv()) else {
                    continue;
                };
                if oid.value == CN && matches!(v.tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    if let Ok(s) = std::str::from_utf8(v.value) {
                        out.push(s.to_string());
                    }
                }
            }
        }
        out
    }

    /// The value (the OCTET STRING's contents) of the extension `oid`, if present.
    fn extension(&self, oid: &[u8]) -> Option<&'a [u8]> {
        let mut exts = Reader::new(self.extensions?);
        while let Some(ext) = exts.next_tlv() {
            let mut r = Reader::new(ext.value);
            if r.take_if(OID).map(|o| o.value) != Some(oid) {
                continue;
            }
            r.take_if(BOOLEAN);
            return r.take_if(OCTET_STRING).map(|v| v.value);
        }
        None
    }

    /// The DNS names and IP addresses (as text) of the subject alternative names, in order.
    pub fn alt_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(v) = self.extension(SAN) else {
            return out;
        };
        let Some(seq) = Reader::new(v).take_if(SEQUENCE) else {
            return out;
        };
        let mut names = Reader::new(seq.value);
        while let Some(g) = names.next_tlv() {
            match g.tag {
                DNS_NAME => {
                    if let Ok(s) = std::str::from_utf8(g.value) {
                        out.push(s.to_string());
                    }
                }
                IP_ADDRESS => {
                    if let Ok(v4) = <[u8; 4]>::try_from(g.value) {
                        out.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(g.value) {
                        out.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the key usage extension allows digital signatures: `Ok(None)` without the
    /// extension, `Err` when it is there but not a well-formed BIT STRING.
    pub fn digital_signature(&self) -> Result<Option<bool>, &'static str> {
        let Some(v) = self.extension(KEY_USAGE) else {
            return Ok(None);
        };
        let bits = match split_tlv(v) {
            Some((t, rest)) if t.tag == BIT_STRING && rest.is_empty() => t.value,
            _ => return Err("not a DER BIT STRING"),
        };
        match bits {
            [unused, ..] if *unused > 7 => Err("more than 7 unused bits"),
            [_] => Ok(Some(false)),
            [_, first, ..] => Ok(Some(first & 0x80 != 0)),
            [] => Err("an empty BIT STRING"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_names_and_alternative_names_are_read_in_order() {
        let mut p =
            rcgen::CertificateParams::new(vec!["host.example".into(), "10.1.2.3".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "node one");
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("fe80::1".parse().unwrap()));
        let der = cert(p);
        let f = fields(&der).unwrap();
        assert_eq!(f.common_names(), ["node one"]);
        assert_eq!(f.alt_names(), ["host.example", "10.1.2.3", "fe80::1"]);
        assert_eq!(f.digital_signature(), Ok(None));
    }

    #[test]
    fn the_digital_signature_bit_is_read_from_the_key_usage_extension() {
        for (usages, want) in [
            (vec![rcgen::KeyUsagePurpose::DigitalSignature], true),
            (vec![rcgen::KeyUsagePurpose::KeyEncipherment], false),
            (
                vec![
                    rcgen::KeyUsagePurpose::KeyCertSign,
                    rcgen::KeyUsagePurpose::DigitalSignature,
                ],
                true,
            ),
        ] {
            let mut p = rcgen::CertificateParams::new(vec!["a".into()]).unwrap();
            p.key_usages = usages.clone();
            let der = cert(p);
            assert_eq!(
                fields(&der).unwrap().digital_signature(),
                Ok(Some(want)),
                "{usages:?}"
            );
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_certificate_is_refused_or_read_without_panicking() {
        let mut p = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let der = cert(p);
        for n in 0..der.len() {
            assert!(fields(&der[..n]).is_none(), "truncated at {n}");
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = der.clone();
                d[i] ^= flip;
                if let Some(f) = fields(&d) {
                    let _ = (f.common_names(), f.alt_names(), f.digital_signature());
                }
            }
        }
        assert!(fields(b"junk").is_none());
        assert!(fields(&[]).is_none());
    }

    #[test]
    fn long_form_lengths_are_read_and_oversized_ones_refused() {
        let (t, rest) = split_tlv(&[0x04, 0x81, 0x02, 7, 8, 9]).unwrap();
        assert_eq!((t.tag, t.value, rest), (0x04, &[7u8, 8][..], &[9u8][..]));
        assert!(split_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(split_tlv(&[0x04, 0x80]).is_none());
        assert!(split_tlv(&[0x04, 0x82, 0xff, 0xff, 0]).is_none());
        assert!(split_tlv(&[0x1f, 0x01, 0x00]).is_none());
    }
}
