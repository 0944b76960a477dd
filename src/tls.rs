//! Client-side TLS shared by the sinks whose drivers take a rustls configuration or a PEM
//! trust store (Cassandra, DynamoDB): loading a CA file with errors that name the key and
//! the fix, and a `rustls::ClientConfig` trusting that CA or else the system's roots.
//!
//! Everything uses the aws-lc-rs provider explicitly, so no process-wide default provider
//! has to be installed and `ring` is never picked by accident.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The crypto provider of every TLS client built here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM file of CA certificates; the error is a reason for `key`, naming the path
/// and the fix. Returns the raw PEM (for drivers that take PEM) and the parsed certificates.
pub fn read_ca_file(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = std::fs::read(path).map_err(|error| {
        format!(
            "cannot read CA file {}: {error} (give the path of a PEM file holding the CA certificate(s) that signed the server's certificate)",
            path.display()
        )
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "CA file {} is not valid PEM: {error} (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)",
            path.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for certificate in &certificates {
        roots.add(certificate.clone()).map_err(|error| {
            format!(
                "CA file {} holds a certificate that cannot be a trust anchor: {error}",
                path.display()
            )
        })?;
    }
    Ok((pem, certificates))
}

/// The roots to trust: the CA file when given, else the operating system's store (which
/// honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        let (_, certificates) = read_ca_file(path)?;
        roots.add_parsable_certificates(certificates);
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        return Err(format!(
            "no usable CA certificate in the system store ({} error(s): {:?}): set tls_ca_file to the PEM file of your CA",
            native.errors.len(),
            native.errors
        ));
    }
    Ok(roots)
}

/// A rustls client configuration trusting `ca_file` (or the system roots). With
/// `verify_hostname = false` the chain is still verified, only the match between the
/// certificate's names and the address dialled is skipped.
pub fn client_config(
    ca_file: Option<&Path>,
    verify_hostname: bool,
) -> Result<Arc<ClientConfig>, String> {
    let roots = Arc::new(root_store(ca_file)?);
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| format!("cannot build the certificate verifier: {error}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot configure TLS versions: {error}"))?;
    let config = if verify_hostname {
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(verifier)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Verifies the chain to a trusted root and the handshake signatures, but accepts a
/// certificate whose names do not match the address dialled: Cassandra drivers dial node
/// IPs learnt from the cluster, which certificates often do not list.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPkiServerVerifier checks the chain first and the name last, so a name error
        // means the chain was already accepted.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
