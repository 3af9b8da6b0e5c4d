//! The subject of a client certificate, for `use_identity_as_username` (its Common
//! Name) and `use_subject_as_username` (the whole name, RFC 4514 / RFC 2253 form, as
//! Mosquitto prints it: `CN=device-1,O=Acme,C=DE`).
//!
//! A small DER walk over the certificate down to its subject, nothing more: rustls
//! has already verified the certificate when this runs, so this only reads it, and
//! answers `None` for anything it does not understand rather than guessing.

/// One DER element: tag, contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None; // high tag numbers do not occur in the parts read here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject's relative distinguished names, in certificate order, each a list of
/// (attribute type OID bytes, value tag, value bytes).
type Rdns<'a> = Vec<Vec<(&'a [u8], u8, &'a [u8])>>;

fn subject(der: &[u8]) -> Option<Rdns<'_>> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xA0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = element(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, next) = element(name)? else {
            return None;
        };
        name = next;
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, atv, next) = element(set)? else {
                return None;
            };
            set = next;
            let (OID, oid, value) = element(atv)? else {
                return None;
            };
            let (tag, value, _) = element(value)?;
            rdn.push((oid, tag, value));
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// 2.5.4.3, commonName.
const CN: &[u8] = &[0x55, 0x04, 0x03];

/// Short names of the attribute types RFC 4514 (and OpenSSL) print by name.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01] => "UID",
        [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// The dotted form of an OID's contents.
fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < oid.len() {
                let first = (value / 40).min(2);
                parts.push(first.to_string());
                parts.push((value - first * 40).to_string());
            } else {
                parts.push(value.to_string());
            }
            value = 0;
        }
    }
    parts.join(".")
}

/// A directory string's text: UTF8String, PrintableString, IA5String,
/// TeletexString (read as Latin-1, as OpenSSL does) and BMPString.
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0C | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        0x1E if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// The first Common Name of the certificate's subject (Mosquitto's
/// `use_identity_as_username`). `None` when there is none or the certificate
/// cannot be read.
pub fn common_name(der: &[u8]) -> Option<String> {
    subject(der)?
        .into_iter()
        .flatten()
        .find(|(oid, _, _)| *oid == CN)
        .and_then(|(_, tag, value)| text(tag, value))
}

/// The certificate's whole subject as an RFC 4514 string (Mosquitto's
/// `use_subject_as_username`, which prints it with OpenSSL's RFC 2253 flags): the
/// last RDN first, `,` between RDNs, `+` inside one, special characters escaped,
/// unknown attribute types as dotted OIDs and non-text values as `#` and hex.
pub fn subject_name(der: &[u8]) -> Option<String> {
    let rdns = subject(der)?;
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, (oid, tag, value)) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match short_name(oid) {
                Some(n) => out.push_str(n),
                None => out.push_str(&dotted(oid)),
            }
            out.push('=');
            match text(*tag, value) {
                Some(t) => escape_into(&t, &mut out),
                None => {
                    // The whole DER value, tag and length included (RFC 4514 2.4).
                    out.push('#');
                    out.push_str(&format!("{tag:02x}"));
                    let mut len = Vec::new();
                    if value.len() < 0x80 {
                        len.push(value.len() as u8);
                    } else {
                        let bytes = (value.len() as u32).to_be_bytes();
                        let skip = bytes.iter().take_while(|b| **b == 0).count();
                        len.push(0x80 | (4 - skip) as u8);
                        len.extend_from_slice(&bytes[skip..]);
                    }
                    for b in len.iter().chain(value.iter()) {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Some(out)
}

/// RFC 4514 section 2.4 escaping of an attribute value.
fn escape_into(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["device.example".into()]).unwrap();
        let mut name = DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read() {
        let der = cert(&[
            (DnType::CountryName, "DE"),
            (DnType::CommonName, "device-1"),
        ]);
        assert_eq!(common_name(&der).as_deref(), Some("device-1"));
    }

    #[test]
    fn subject_is_printed_last_rdn_first_as_openssl_does() {
        let der = cert(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::OrganizationalUnitName, "Sensors"),
            (DnType::CommonName, "device-1"),
        ]);
        assert_eq!(
            subject_name(&der).as_deref(),
            Some("CN=device-1,OU=Sensors,O=Acme\\, Inc.,C=DE")
        );
    }

    #[test]
    fn no_common_name_and_garbage_give_none() {
        let der = cert(&[(DnType::OrganizationName, "Acme")]);
        assert_eq!(common_name(&der), None);
        assert_eq!(subject_name(&der).as_deref(), Some("O=Acme"));
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(subject_name(&[0x30, 0x82, 0xFF]), None);
        assert_eq!(subject_name(&der[..der.len() / 3]), None);
    }

    #[test]
    fn oids_print_dotted() {
        assert_eq!(dotted(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(
            dotted(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
    }
}
