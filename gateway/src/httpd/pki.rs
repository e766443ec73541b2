//! A throwaway PKI made with rcgen: a CA, a server certificate for `localhost` / `127.0.0.1`
//! and a client certificate, for the in-process servers of tests and benchmarks. Nothing
//! outside the process trusts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text of a test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca: String,
    /// Server certificate for localhost / 127.0.0.1, signed by the CA.
    pub server_cert: String,
    /// Its private key.
    pub server_key: String,
    /// A client certificate signed by the CA (CN `fieldgate-test-client`).
    pub client_cert: String,
    /// Its private key.
    pub client_key: String,
}

/// The files [`Pki::write`] made.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a fresh CA (named after `name`) and its two leaf certificates.
    pub fn generate(name: &str) -> Result<Pki, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |sans: Vec<String>, cn: &str| -> Result<(String, String), rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost")?;
        let (client_cert, client_key) = leaf(vec![], "fieldgate-test-client")?;
        Ok(Pki {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes the PEM files as `dir/<name>-{ca,server,server-key,client,client-key}.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PkiFiles> {
        let write = |suffix: &str, text: &str| -> std::io::Result<PathBuf> {
            let p = dir.join(format!("{name}-{suffix}.pem"));
            std::fs::write(&p, text)?;
            Ok(p)
        };
        Ok(PkiFiles {
            ca: write("ca", &self.ca)?,
            server_cert: write("server", &self.server_cert)?,
            server_key: write("server-key", &self.server_key)?,
            client_cert: write("client", &self.client_cert)?,
            client_key: write("client-key", &self.client_key)?,
        })
    }

    /// A rustls server configuration with the server certificate; with `client_auth`, clients
    /// must present a certificate signed by the CA.
    pub fn server_config(&self, client_auth: bool) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key =
            PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).map_err(|e| e.to_string())?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
                roots
                    .add(c.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(chain, key)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}
