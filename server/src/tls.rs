//! TLS: the API served over HTTPS from a certificate and key, and the
//! HTTP clients that reach it (the CLI's and the tests').
//!
//! Sandmill uses rustls with the `ring` provider (the one async-nats
//! already brings); [`client`] installs it as the process's provider so
//! any client built after it can speak HTTPS.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Makes `ring` this process's rustls provider (once; later calls and a
/// provider installed before are left as they are).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A builder of HTTP clients that speak HTTP and HTTPS, trusting the
/// system's roots (add others with `add_root_certificate`).
pub fn client() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

/// An HTTP client like `reqwest::Client::new()` (and which panics like it
/// when the system cannot give it what it needs), able to speak HTTPS.
pub fn default_client() -> reqwest::Client {
    client().build().expect("cannot build an HTTP client")
}

/// The acceptor of TLS connections for a server whose certificate chain
/// (leaf first) is the PEM file `cert` and whose private key is the PEM
/// file `key`; HTTP/1.1 only, like the plain server.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    install_provider();
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate (a PEM file with BEGIN CERTIFICATE is expected)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the private key {}: {e} (a PEM file with BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY is expected)",
            key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("no TLS version to offer")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .with_context(|| {
        format!(
            "the key does not fit the certificate {} (or either is not usable)",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
