//! rustls client configuration for the TLS uplinks (`mqtts://`, `https://`): system or given
//! roots, optional client certificate, optional (loudly logged) no-verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldgate_adapter::ConfigProblem;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS files of an uplink section, resolved against the config directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Resolves `ca_file`, `client_cert` and `client_key` against `base`, checks that each
    /// can be read and that certificate and key come together; problems go to `p`.
    pub fn resolve(
        base: &Path,
        ca_file: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
        p: &mut Vec<ConfigProblem>,
    ) -> TlsFiles {
        let ca_file = ca_file.map(|f| base.join(f));
        let cert = client_cert.map(|f| base.join(f));
        let key = client_key.map(|f| base.join(f));
        for (k, f) in [
            ("ca_file", &ca_file),
            ("client_cert", &cert),
            ("client_key", &key),
        ] {
            if let Some(f) = f {
                if let Err(e) = std::fs::metadata(f) {
                    p.push(ConfigProblem::new(
                        k,
                        format!("cannot read {}: {e}", f.display()),
                    ));
                }
            }
        }
        let client_auth = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                p.push(ConfigProblem::new(
                    "client_key",
                    "client_cert needs client_key (mutual TLS takes both)",
                ));
                None
            }
            (None, Some(_)) => {
                p.push(ConfigProblem::new(
                    "client_cert",
                    "client_key needs client_cert (mutual TLS takes both)",
                ));
                None
            }
        };
        TlsFiles {
            ca_file,
            client_auth,
        }
    }

    /// True if any file is set.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_auth.is_some()
    }

    /// Loads the files into a TLS configuration once, so `fieldgate check` catches a CA file
    /// that is not PEM or a key that does not fit its certificate; problems go to `p`.
    pub fn check(&self, insecure: bool, p: &mut Vec<ConfigProblem>) {
        if let Err(e) = client_config(self.ca_file.as_deref(), self.client_auth.as_ref(), insecure)
        {
            let key = if e.contains("client") {
                "client_cert"
            } else {
                "ca_file"
            };
            p.push(ConfigProblem::new(key, e));
        }
    }
}

/// Builds the TLS configuration. Errors are sentences naming the file at fault.
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<&(PathBuf, PathBuf)>,
    insecure: bool,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("CA file {} holds no certificates", path.display()));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(
                        "no system CA certificates found (install ca-certificates, or set ca_file)"
                            .into(),
                    );
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read client certificate {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!(
                        "client certificate {} is not valid PEM: {e}",
                        cert.display()
                    )
                })?;
            if chain.is_empty() {
                return Err(format!(
                    "client certificate file {} holds no certificate",
                    cert.display()
                ));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not fit together: {e}"))
        }
    }
}

/// Accepts any server certificate (`insecure_skip_verify = true`), still checking that the
/// handshake signatures are valid.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
