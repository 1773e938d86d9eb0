//! TLS for both connections (ours and tokio-postgres'), with one rustls configuration built from
//! libpq's options: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`.
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | disable | never | — |
//! | prefer | when the server offers it | no |
//! | require | always | against sslrootcert when one is given (as libpq does), else no |
//! | verify-ca | always | signed by sslrootcert |
//! | verify-full | always | signed by sslrootcert and naming the host |
//!
//! As in libpq, Unix-socket connections never use TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::params::{SslMode, TlsOptions};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "sslmode={0} needs the CA certificate to check the server against: set sslrootcert (or put it in ~/.postgresql/root.crt)"
    )]
    NoRootCert(&'static str),
    #[error("sslcert and sslkey go together: give both, or neither")]
    HalfClientCert,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `options`, or None when TLS is off.
pub fn client_config(options: &TlsOptions) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let roots = match (&options.root_cert, options.mode) {
        (_, SslMode::Disable) => return Ok(None),
        (Some(path), SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
            Some(load_roots(path)?)
        }
        (None, SslMode::VerifyCa) => return Err(TlsError::NoRootCert("verify-ca")),
        (None, SslMode::VerifyFull) => return Err(TlsError::NoRootCert("verify-full")),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate),
        Some(roots) => {
            let full = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            if options.mode == SslMode::VerifyFull {
                full
            } else {
                Arc::new(AnyHostName(full))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert, "sslcert")?, load_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfClientCert),
    };
    Ok(Some(Arc::new(config)))
}

/// The `tls-server-end-point` channel binding data of RFC 5929 for the server's certificate: its
/// hash with the hash function of the certificate's signature algorithm, SHA-256 for MD5 and
/// SHA-1. None for algorithms without one here (Ed25519, RSA-PSS, SHA-224 and others: the
/// connection then goes on without binding, or fails under channel_binding=require), or a
/// certificate that does not parse.
pub fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, MD_5_WITH_RSA_ENCRYPTION,
        SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION,
        SHA_512_WITH_RSA_ENCRYPTION,
    };
    let algorithm = x509_cert::Certificate::from_der(certificate)
        .ok()?
        .signature_algorithm
        .oid;
    let hash = match algorithm {
        MD_5_WITH_RSA_ENCRYPTION
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => &digest::SHA256,
        SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => &digest::SHA384,
        SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(hash, certificate).as_ref().to_vec())
}

/// The name the server's certificate must carry (or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!(
            "host {host:?} is not a valid TLS server name: {e}"
        )))
    })
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "sslrootcert")? {
        roots
            .add(cert)
            .map_err(|e| file_error("sslrootcert", path, e))?;
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("sslkey", path, e))
}

/// sslmode=prefer and require without a root certificate: encrypt, but trust any certificate,
/// as libpq does. The handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// sslmode=verify-ca: the chain must lead to sslrootcert; the host name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
