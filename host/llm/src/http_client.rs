//! Where the host's HTTP clients come from.
//!
//! reqwest's default TLS backend brings rustls with aws-lc, a large C
//! library that took ~90 s of CPU in every clean build; rustls with *ring*
//! speaks the same TLS with a fraction of the build. reqwest is built
//! without a crypto provider, so every client must be made after one is
//! installed: [`builder`] installs ring as the process default (once; a
//! provider installed earlier by the embedding program is kept).

/// A reqwest client builder whose TLS uses rustls with ring.
///
/// Use this instead of `reqwest::Client::builder()`, which panics at
/// `build()` when no crypto provider is installed.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Installs ring as rustls' process-wide crypto provider unless one is set.
fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer leaves theirs: fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_builds_with_the_ring_provider_installed() {
        let client = builder().build();
        assert!(client.is_ok(), "{client:?}");
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "ring's TLS 1.3 suites are offered"
        );
    }
}
