//! The listener's TLS configuration, swappable without a restart.
//!
//! [`ServerTls`] builds one rustls configuration from the server certificate and
//! key in the certs dir and, when `[tls] device_ca` is set, a client-certificate
//! verifier for devices (their CA and its CRLs; a client certificate is asked
//! for but never required, since dashboards and REST have none). [`reload`]
//! builds a new one from the files as they are now and swaps it in: handshakes
//! that start afterwards use it, connections already open keep theirs. A file
//! that does not load leaves the configuration in force untouched.
//!
//! Invariants: the session-ticket keys survive a reload (devices keep resuming)
//! unless the device CA or its CRLs changed: then they are new, so a certificate
//! revoked by the new CRL cannot come back through an older session's ticket.
//!
//! [`reload`]: ServerTls::reload

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use rustls_pki_types::{
    pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use sha2::{Digest, Sha256};
use tokio_rustls::{rustls, TlsAcceptor};

use super::{pem_err, roots, TlsError, SERVER_CERT, SERVER_KEY};
use crate::config;

/// The TLS configuration in force, and what it takes to build the next one.
pub struct ServerTls {
    certs_dir: PathBuf,
    current: RwLock<TlsAcceptor>,
    /// Ticket keys, and the digest of the device CA and CRLs they were made under.
    tickets: Mutex<(Arc<dyn rustls::server::ProducesTickets>, [u8; 32])>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs_dir", &self.certs_dir)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the configuration (the certificates must exist: see
    /// `ensure_dev_certificates`).
    pub fn load(certs_dir: &Path, settings: &config::Tls) -> Result<Self, TlsError> {
        let devices = DeviceTrust::load(settings)?;
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let config = build(certs_dir, devices.as_ref(), ticketer.clone())?;
        let digest = devices.as_ref().map_or([0; 32], |d| d.digest);
        Ok(ServerTls {
            certs_dir: certs_dir.to_path_buf(),
            current: RwLock::new(TlsAcceptor::from(config)),
            tickets: Mutex::new((ticketer, digest)),
        })
    }

    /// The configuration new handshakes use.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the configuration again from the files and swaps it in; on an error
    /// the one in force stays.
    pub fn reload(&self, settings: &config::Tls) -> Result<(), TlsError> {
        let devices = DeviceTrust::load(settings)?;
        let digest = devices.as_ref().map_or([0; 32], |d| d.digest);
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let ticketer = if tickets.1 == digest {
            tickets.0.clone()
        } else {
            rustls::crypto::ring::Ticketer::new()?
        };
        let config = build(&self.certs_dir, devices.as_ref(), ticketer.clone())?;
        *tickets = (ticketer, digest);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(config);
        Ok(())
    }
}

/// The device CA and its CRLs, loaded.
struct DeviceTrust {
    roots: rustls::RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Of the files' bytes: whether they changed since the last load.
    digest: [u8; 32],
}

impl DeviceTrust {
    fn load(settings: &config::Tls) -> Result<Option<Self>, TlsError> {
        let Some(ca) = &settings.device_ca else {
            return Ok(None);
        };
        let mut digest = Sha256::new();
        digest.update(read(ca)?);
        let mut crls = Vec::new();
        for path in &settings.device_crl {
            let bytes = read(path)?;
            digest.update(&bytes);
            if bytes.starts_with(b"-----") {
                for crl in CertificateRevocationListDer::pem_slice_iter(&bytes) {
                    crls.push(crl.map_err(|source| pem_err(path, "CRL", source))?);
                }
            } else {
                crls.push(CertificateRevocationListDer::from(bytes));
            }
        }
        Ok(Some(DeviceTrust {
            roots: roots(Some(ca))?,
            crls,
            digest: digest.finalize().into(),
        }))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| super::io_err(path, source))
}

fn build(
    dir: &Path,
    devices: Option<&DeviceTrust>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_err(&cert_path, "certificate", source))?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: cert_path,
            what: "PEM certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|source| pem_err(&key_path, "private key", source))?;
    let mut provider = rustls::crypto::ring::default_provider();
    // TLS 1.3 with AES-128-GCM first, in the server's order: its key schedule hashes
    // with SHA-256, several times cheaper here than the SHA-384 of AES-256-GCM, the
    // usual first choice of clients (6 % of the hub's CPU in a reconnect storm).
    // Every suite of the default provider is still offered.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match devices {
        None => builder.with_no_client_auth(),
        Some(d) => {
            // Asked of every client, required of none: a device without one
            // authenticates with a token, dashboards never have one. With CRLs,
            // the device certificate's own status must be known (its issuer has
            // a CRL listed); the CA's is not checked.
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(d.roots.clone()),
                provider,
            )
            .allow_unauthenticated();
            if !d.crls.is_empty() {
                verifier = verifier
                    .with_crls(d.crls.clone())
                    .only_check_end_entity_revocation();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.ignore_client_order = true;
    // WebSockets upgrade over HTTP/1.1 only (RFC 8441 is not supported).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session resumption with stateless tickets (RFC 8446 §2.2): a device that
    // reconnects skips the certificate and its signature, so a fleet reconnecting
    // at once (after a network blip or a hub restart behind a balancer) costs the
    // hub far less. The ticket keys live only in this process and rotate; the hub
    // keeps nothing per session, and after a restart the next handshake of each
    // device is simply a full one. One ticket per handshake: a device resumes once
    // per connection. A resumed session keeps the client certificate of the
    // handshake that made it.
    config.ticketer = ticketer;
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
