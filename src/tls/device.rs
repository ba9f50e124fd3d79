//! Device certificates: which device a verified client certificate names, and a
//! development device CA (`device-ca.pem` + `device-ca.key` in the certs dir,
//! created on first use) that issues them (`telehub certs issue-device`).
//!
//! Invariant: [`identify`] reads certificates rustls has already verified against
//! the device CA (and its CRLs); it never decides trust, only the name.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{io_err, read, write_private, write_public, TlsError};
use crate::config::DeviceIdField;

/// The development device CA's files in the certs dir.
pub const DEVICE_CA_CERT: &str = "device-ca.pem";
pub const DEVICE_CA_KEY: &str = "device-ca.key";
/// The prefix taken off a SAN URI naming a device (`urn:telehub:device:ID`).
pub const URI_PREFIX: &str = "urn:telehub:device:";
/// Longest device id a certificate may carry.
const MAX_ID: usize = 256;

/// The device a verified certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCert {
    pub id: String,
    /// The certificate's `notBefore`, seconds since the epoch: its issue time, as
    /// a token's `iat` (a subject revocation covers certificates issued before it).
    pub not_before: u64,
}

/// Reads the device id from the `field` of a (verified) certificate.
pub fn identify(cert: &CertificateDer<'_>, field: DeviceIdField) -> Result<DeviceCert, String> {
    let (_, x509) =
        X509Certificate::from_der(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    let sans = || {
        x509.subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default()
    };
    let id = match field {
        DeviceIdField::Cn => x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        DeviceIdField::SanDns => sans().into_iter().find_map(|n| match n {
            GeneralName::DNSName(s) => Some(s.to_owned()),
            _ => None,
        }),
        DeviceIdField::SanUri => sans().into_iter().find_map(|n| match n {
            GeneralName::URI(s) => Some(s.strip_prefix(URI_PREFIX).unwrap_or(s).to_owned()),
            _ => None,
        }),
    };
    let id = id.ok_or_else(|| format!("the certificate has no {}", field_name(field)))?;
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(format!(
            "the certificate's {} is not a device id",
            field_name(field)
        ));
    }
    Ok(DeviceCert {
        id,
        not_before: x509.validity().not_before.timestamp().max(0) as u64,
    })
}

fn field_name(field: DeviceIdField) -> &'static str {
    match field {
        DeviceIdField::Cn => "common name (CN)",
        DeviceIdField::SanDns => "DNS subject alternative name",
        DeviceIdField::SanUri => "URI subject alternative name",
    }
}

/// A device certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number, hex (what a CRL lists).
    pub serial: String,
}

/// Issues a certificate for device `id` (in the CN, a SAN URI `urn:telehub:device:ID`
/// and, when it is a valid DNS name, a SAN DNS name) from the development device CA
/// in `certs_dir` (created when missing), valid from `not_before` to `not_after`.
pub fn issue(
    certs_dir: &Path,
    id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Issued, TlsError> {
    let ca_key = ensure_ca(certs_dir)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, id);
    let uri = format!("{URI_PREFIX}{id}");
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
    if let Ok(dns) = id.try_into() {
        if id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
    }
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let serial: [u8; 16] = rand::random();
    // Positive, as DER integers must be for a serial.
    let serial = [&[0x01u8][..], &serial[1..]].concat();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Issues for `validity` from now, into `out/ID.pem` and `out/ID.key` (0600).
pub fn issue_files(
    certs_dir: &Path,
    id: &str,
    validity: Duration,
    out: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    // Valid from a minute ago: a device whose clock lags a little still connects.
    let now = SystemTime::now();
    let issued = issue(certs_dir, id, now - Duration::from_secs(60), now + validity)?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (cert, key) = (
        out.join(format!("{safe}.pem")),
        out.join(format!("{safe}.key")),
    );
    let _ = std::fs::remove_file(&key);
    write_private(&key, issued.key_pem.as_bytes())?;
    write_public(&cert, issued.cert_pem.as_bytes())?;
    Ok((cert, key))
}

/// A CRL of the development device CA revoking these serials (hex), valid for
/// `validity` from now, PEM.
pub fn revocation_list(
    certs_dir: &Path,
    serials: &[String],
    validity: Duration,
) -> Result<String, TlsError> {
    let ca_key = ensure_ca(certs_dir)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let now = SystemTime::now();
    let revoked = serials
        .iter()
        .map(|hex| {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now.into(),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now.into(),
        next_update: (now + validity).into(),
        crl_number: SerialNumber::from_slice(
            &now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_be_bytes(),
        ),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

/// The device CA's key, creating the CA when missing.
fn ensure_ca(dir: &Path) -> Result<KeyPair, TlsError> {
    let (cert, key) = (dir.join(DEVICE_CA_CERT), dir.join(DEVICE_CA_KEY));
    if cert.exists() && key.exists() {
        return Ok(KeyPair::from_pem(&read(&key)?)?);
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let pair = KeyPair::generate()?;
    let ca = ca_params().self_signed(&pair)?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    write_public(&cert, ca.pem().as_bytes())?;
    Ok(pair)
}

fn ca_params() -> CertificateParams {
    super::ca_params("telehub development device CA")
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn issued_certificates_name_their_device_in_every_field() {
        let dir = std::env::temp_dir().join(format!("telehub-device-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = SystemTime::now();
        let issued = issue(&dir, "sensor-7", now, now + Duration::from_secs(3600)).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        for field in [
            DeviceIdField::Cn,
            DeviceIdField::SanDns,
            DeviceIdField::SanUri,
        ] {
            assert_eq!(identify(&der, field).unwrap().id, "sensor-7", "{field:?}");
        }
        // Not a DNS name: no SAN DNS, the others still name it.
        let odd = issue(&dir, "dev_1", now, now + Duration::from_secs(3600)).unwrap();
        let der = CertificateDer::from_pem_slice(odd.cert_pem.as_bytes()).unwrap();
        assert_eq!(identify(&der, DeviceIdField::SanUri).unwrap().id, "dev_1");
        assert!(identify(&der, DeviceIdField::SanDns).is_err());
        assert!(
            revocation_list(&dir, &[issued.serial], Duration::from_secs(60))
                .unwrap()
                .contains("BEGIN X509 CRL")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
