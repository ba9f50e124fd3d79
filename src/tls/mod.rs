//! TLS for the one listener: loads `server.pem` + `server.key` from the certs
//! directory, or generates a development CA and a localhost server certificate when
//! they are missing; the swappable server configuration, device CA included
//! ([`server`]); device certificates: the id they carry and a development device
//! CA that issues them ([`device`]).
//!
//! Invariants: private keys are written with mode 0600 and never overwritten; an
//! existing CA (`ca.pem` + `ca.key`) is reused to issue a new server certificate so
//! clients that already trust it keep working; nothing here ever logs key material.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio_rustls::rustls;

pub mod device;
pub mod server;

pub use server::ServerTls;

/// File names inside the certs directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// The development CA's name.
const CA_NAME: &str = "telehub development CA";

/// The DNS names and addresses the development server certificate is valid for.
const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM {what}: {source}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no {what} in it")]
    Missing { path: PathBuf, what: &'static str },
    #[error("generating development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no trusted roots on this system: give the CA certificate")]
    NoRoots,
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What [`ensure_dev_certificates`] did, so the caller can log it clearly.
#[derive(Debug, PartialEq, Eq)]
pub enum CertSource {
    /// `server.pem`/`server.key` were already present.
    Existing,
    /// A server certificate was issued; `new_ca` tells whether the CA was new too.
    Generated { new_ca: bool },
}

/// Makes sure `dir` holds a server certificate and key, generating a development
/// CA and a server certificate for localhost/127.0.0.1/::1 when they are missing.
pub fn ensure_dev_certificates(dir: &Path) -> Result<CertSource, TlsError> {
    let server_cert = dir.join(SERVER_CERT);
    let server_key = dir.join(SERVER_KEY);
    if server_cert.exists() && server_key.exists() {
        return Ok(CertSource::Existing);
    }
    fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;

    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let (ca_key, new_ca) = if ca_cert_path.exists() && ca_key_path.exists() {
        let pem = read(&ca_key_path)?;
        (KeyPair::from_pem(&pem)?, false)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params(CA_NAME).self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_public(&ca_cert_path, cert.pem().as_bytes())?;
        (key, true)
    };
    // The issuer is rebuilt from the same parameters and key as the CA certificate,
    // so its name and key identifier match the `ca.pem` clients trust.
    let issuer = Issuer::new(ca_params(CA_NAME), &ca_key);

    let mut params = CertificateParams::new(DEV_NAMES.map(String::from).to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "telehub development server");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&server_key, key.serialize_pem().as_bytes())?;
    // The chain includes the CA so clients that only pin the CA can verify.
    let chain = format!("{}{}", cert.pem(), read(&ca_cert_path)?);
    write_public(&server_cert, chain.as_bytes())?;
    Ok(CertSource::Generated { new_ca })
}

/// The roots a client trusts: the certificate(s) in `ca` (PEM), or the system's.
pub fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|source| pem_err(path, "certificate", source))?
            {
                roots.add(cert.map_err(|source| pem_err(path, "certificate", source))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as every client does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration that trusts exactly the CA certificate(s) in `ca_pem`.
/// Used by device-sim, the demo fleet and the tests.
pub fn client_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_trusting(Some(ca_pem))
}

/// A client configuration that trusts the CA in `ca`, or the system's roots.
pub fn client_config_trusting(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A development CA's parameters, named `common_name`.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "telehub");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| io_err(path, source))
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    fs::write(path, data).map_err(|source| io_err(path, source))
}

/// Writes a private key readable by the owner only. The mode is set at creation,
/// so the key is never world-readable, not even briefly.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| io_err(path, source))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err(path, source))
}

fn io_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pem_err(path: &Path, what: &'static str, source: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_private_keys_0600_and_reuses_the_ca() {
        let dir = std::env::temp_dir().join(format!("telehub-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            ensure_dev_certificates(&dir).unwrap(),
            CertSource::Generated { new_ca: true }
        );
        assert_eq!(ensure_dev_certificates(&dir).unwrap(), CertSource::Existing);
        #[cfg(unix)]
        for key in [CA_KEY, SERVER_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let ca = fs::read(dir.join(CA_CERT)).unwrap();
        fs::remove_file(dir.join(SERVER_CERT)).unwrap();
        fs::remove_file(dir.join(SERVER_KEY)).unwrap();
        assert_eq!(
            ensure_dev_certificates(&dir).unwrap(),
            CertSource::Generated { new_ca: false }
        );
        assert_eq!(fs::read(dir.join(CA_CERT)).unwrap(), ca);
        let acceptor = ServerTls::load(&dir, &Default::default())
            .unwrap()
            .acceptor();
        let server = acceptor.config();
        assert!(
            server.ticketer.enabled(),
            "stateless tickets: resumption whatever the fleet size, nothing kept per session"
        );
        assert!(server.ignore_client_order);
        assert_eq!(
            server.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        client_config(&dir.join(CA_CERT)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
