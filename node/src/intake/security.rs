//! What a node can require of whoever sends to it: TLS on its listener
//! ([`TlsConfig`]) and shared-secret headers on every batch and ext_proc
//! stream ([`RequiredHeaders`]).
//!
//! Secrets never reach a log, an error or a `Debug` rendering: errors name the
//! header, never its value.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;
use tokio_rustls::TlsAcceptor;

/// ALPN offered, in order of preference: Envoy's gRPC client (ext_proc) needs
/// h2; its HTTP client for batches may ask for either.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The listener's certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
}

impl TlsConfig {
    /// From PEM text: the certificate chain (leaf first) and its private key
    /// (PKCS#8, PKCS#1 or SEC1). Fails when either is missing or they do not
    /// match; the message never quotes the key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, String> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: not valid PEM ({e})"))?;
        if certs.is_empty() {
            return Err("certificate: no PEM CERTIFICATE in it".into());
        }
        // The PEM parser's own errors may quote a line of the file: said
        // without them, since that file holds the key.
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
            "key: no PEM private key in it (PKCS#8, PKCS#1 or SEC1 expected)".to_owned()
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    "key: does not match the certificate".to_owned()
                }
                e => format!("certificate or key refused: {e}"),
            })?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// [`TlsConfig::from_pem`] from two files; errors name the file at fault.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsConfig, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        TlsConfig::from_pem(&cert_pem, &key_pem).map_err(|e| {
            let file = if e.starts_with("key:") { key } else { cert };
            format!("{}: {e}", file.display())
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig")
    }
}

/// A header value kept secret: compared in constant time, never shown.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Headers every batch and ext_proc stream must carry. A name given more than
/// once accepts any of its values, so a secret can be rotated without a gap.
#[derive(Clone, Debug, Default)]
pub struct RequiredHeaders {
    /// Names are lowercase (`HeaderName`), matched case-insensitively.
    required: Vec<(HeaderName, Vec<Secret>)>,
}

impl RequiredHeaders {
    /// Requires `name` with `value` (or, for a name already required, accepts
    /// `value` too). Errors name the header, never the value.
    pub fn add(&mut self, name: &str, value: &str) -> Result<(), String> {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("not a header name: {name:?}"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{name}: the value is empty"));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "{name}: the value has characters a header cannot carry"
            ));
        }
        let secret = Secret(value.as_bytes().to_vec());
        match self.required.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(secret),
            None => self.required.push((name, vec![secret])),
        }
        Ok(())
    }

    /// Adds `NAME:VALUE`.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once(':')
            .ok_or_else(|| "expected NAME:VALUE".to_owned())?;
        self.add(name, value)
    }

    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
    }

    /// The required names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.required.iter().map(|(n, _)| n.as_str())
    }

    /// Whether `headers` carry every required header with an accepted value.
    pub fn allow(&self, headers: &HeaderMap) -> bool {
        self.required.iter().all(|(name, accepted)| {
            headers.get_all(name).iter().any(|given| {
                // Every accepted value is compared, so the time taken does not
                // tell which one came closest.
                accepted.iter().fold(0u8, |hit, secret| {
                    hit | secret.0.as_slice().ct_eq(given.as_bytes()).unwrap_u8()
                }) == 1
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn names_match_in_any_case_values_exactly() {
        let mut req = RequiredHeaders::default();
        assert!(req.is_empty());
        assert!(req.allow(&headers(&[])));
        req.add_spec("X-Node-Token:s3cret:with:colons").unwrap();
        assert!(req.allow(&headers(&[("x-node-token", "s3cret:with:colons")])));
        assert!(req.allow(&headers(&[("X-NODE-TOKEN", "s3cret:with:colons")])));
        for wrong in [
            "S3CRET:WITH:COLONS",
            "s3cret:with:colon",
            "s3cret:with:colonsX",
            "",
        ] {
            assert!(!req.allow(&headers(&[("x-node-token", wrong)])), "{wrong}");
        }
        assert!(!req.allow(&headers(&[("x-other", "s3cret:with:colons")])));
        // One right value among repeated headers is enough.
        assert!(req.allow(&headers(&[
            ("x-node-token", "old"),
            ("x-node-token", "s3cret:with:colons")
        ])));
    }

    #[test]
    fn every_name_is_required_and_a_repeated_name_accepts_each_value() {
        let mut req = RequiredHeaders::default();
        req.add("x-a", "1").unwrap();
        req.add("x-b", "old").unwrap();
        req.add("X-B", "new").unwrap();
        assert_eq!(req.names().collect::<Vec<_>>(), ["x-a", "x-b"]);
        assert!(req.allow(&headers(&[("x-a", "1"), ("x-b", "old")])));
        assert!(req.allow(&headers(&[("x-a", "1"), ("x-b", "new")])));
        assert!(!req.allow(&headers(&[("x-a", "1")])));
        assert!(!req.allow(&headers(&[("x-b", "new")])));
    }

    #[test]
    fn errors_and_debug_never_show_the_value() {
        let mut req = RequiredHeaders::default();
        for (spec, says) in [
            ("no-colon-topsecret", "expected NAME:VALUE"),
            ("bad name:topsecret", "not a header name"),
            ("x-t:", "the value is empty"),
            ("x-t:top\u{7}secret", "characters a header cannot carry"),
        ] {
            let e = req.add_spec(spec).unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("topsecret") && !e.contains("top\u{7}"), "{e}");
        }
        req.add("x-t", "topsecret").unwrap();
        let shown = format!("{req:?}");
        assert!(
            shown.contains("x-t") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}
