//! TLS to an MQTT broker, for a gateway's uplink and for the hub's connection to an external
//! broker: rustls with the `ring` provider (no C toolchain beyond what `ring` needs, so it
//! cross-compiles to the Raspberry Pi), server verification against the configured CA file or the
//! system's roots, and an optional client certificate. Errors name the setting (`label`) and file.

use std::sync::Arc;

use crate::gateway::TlsSpec;
use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls client configuration from TLS settings (all defaults when `None`); `label` names where
/// they come from in errors, such as `[uplink.tls]` or `--broker-ca-file`.
pub fn client_config(
    spec: Option<&TlsSpec>,
    label: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let default = TlsSpec::default();
    let spec = spec.unwrap_or(&default);
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        Some(f) => {
            let mut n = 0;
            for cert in CertificateDer::pem_file_iter(f)
                .with_context(|| format!("{label} ca_file {}", f.display()))?
            {
                let cert =
                    cert.with_context(|| format!("{label} ca_file {}: bad PEM", f.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("{label} ca_file {}", f.display()))?;
                n += 1;
            }
            anyhow::ensure!(
                n > 0,
                "{label} ca_file {} holds no certificate",
                f.display()
            );
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "no system CA certificates found (install ca-certificates, or set {label} ca_file)"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&spec.client_cert_file, &spec.client_key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("{label} client_cert_file {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{label} client_cert_file {}: bad PEM", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{label} client_key_file {}", key.display()))?;
            builder.with_client_auth_cert(certs, key).with_context(|| {
                format!("{label} client certificate and key do not fit together")
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
