//! TLS for `STARTTLS`: rustls with the pure-Rust RustCrypto provider (no C code, so it builds
//! for wasm32-wasip2), checking the server's certificate against the Mozilla roots of
//! `webpki-roots` plus the CA certificates of `tls-ca-cert`, for the configured host name.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::smtp::{Stream, Upgrade};

/// Upgrades connections with rustls.
pub struct Rustls {
    config: Arc<ClientConfig>,
}

impl Rustls {
    /// A TLS client trusting the public roots and the PEM certificates in `extra_ca_pem`.
    /// Fails when `extra_ca_pem` holds no certificate or one that does not parse.
    pub fn new(extra_ca_pem: Option<&str>) -> Result<Rustls, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("not PEM certificates: {e}"))?;
            if certificates.is_empty() {
                return Err("no `-----BEGIN CERTIFICATE-----` block found".into());
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|e| format!("not a usable CA certificate: {e}"))?;
            }
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Rustls { config: Arc::new(config) })
    }
}

impl Upgrade for Rustls {
    fn available(&self) -> bool {
        true
    }

    fn upgrade<'a>(&self, mut stream: Box<dyn Stream + 'a>, host: &str) -> Result<Box<dyn Stream + 'a>, String> {
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
        let mut connection =
            ClientConnection::new(self.config.clone(), name).map_err(|e| format!("cannot start TLS: {e}"))?;
        // Finish the handshake here, so that certificate errors read as TLS errors.
        while connection.is_handshaking() {
            connection.complete_io(&mut stream).map_err(|e| e.to_string())?;
        }
        Ok(Box::new(StreamOwned::new(connection, stream)))
    }
}
