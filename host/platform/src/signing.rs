//! Signed plugins (off until trusted keys are configured): a component is
//! accepted only with a detached ed25519 signature over its SHA-256 digest
//! by one of the `[plugins] trusted-keys`. Keys and signatures are hex.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Why a component's signature was not accepted, with a stable code
/// (`SIGNATURE_REQUIRED`, `SIGNATURE_INVALID`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SignatureError {
    pub code: &'static str,
    pub message: String,
}

impl SignatureError {
    fn new(code: &'static str, message: &str) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The keys whose signatures are trusted; empty means signatures are not
/// required.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Parses hex public keys; a malformed one is an error naming it.
    pub fn parse(hex_keys: &[String]) -> anyhow::Result<Self> {
        let keys = hex_keys
            .iter()
            .map(|k| {
                let bytes: [u8; 32] = decode_hex(k.trim())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "trusted key {k:?} is not 64 hex digits (an ed25519 public key)"
                        )
                    })?;
                VerifyingKey::from_bytes(&bytes).map_err(|e| {
                    anyhow::anyhow!("trusted key {k:?} is not an ed25519 public key: {e}")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { keys })
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Accepts a component of `digest` (hex SHA-256) if signatures are not
    /// required, or if `signature` (hex) is a trusted key's over the digest.
    pub fn verify(&self, digest: &str, signature: Option<&str>) -> Result<(), SignatureError> {
        if !self.required() {
            return Ok(());
        }
        let Some(signature) = signature.map(str::trim).filter(|s| !s.is_empty()) else {
            return Err(SignatureError::new(
                "SIGNATURE_REQUIRED",
                "this host only accepts signed components: send a `signature` part (or put <id>.wasm.sig beside the file), made with `bsm plugins sign`",
            ));
        };
        let signature = decode_hex(signature)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| {
                SignatureError::new("SIGNATURE_INVALID", "the signature is not 128 hex digits")
            })?;
        let message = decode_hex(digest).unwrap_or_default();
        if self
            .keys
            .iter()
            .any(|k| k.verify(&message, &signature).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::new(
                "SIGNATURE_INVALID",
                "the signature does not match this component under any trusted key",
            ))
        }
    }
}

/// A new signing key: (private key hex, public key hex).
pub fn generate_key() -> (String, String) {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    (
        encode_hex(&key.to_bytes()),
        encode_hex(key.verifying_key().as_bytes()),
    )
}

/// Signs a component's digest (hex SHA-256) with a private key (hex).
pub fn sign_digest(private_key_hex: &str, digest: &str) -> anyhow::Result<String> {
    let bytes: [u8; 32] = decode_hex(private_key_hex.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            anyhow::anyhow!("the key file does not hold a private key (64 hex digits)")
        })?;
    let key = SigningKey::from_bytes(&bytes);
    let message = decode_hex(digest).ok_or_else(|| anyhow::anyhow!("bad digest"))?;
    Ok(encode_hex(&key.sign(&message).to_bytes()))
}

fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let (private, public) = generate_key();
        let signature = sign_digest(&private, DIGEST).unwrap();
        let trusted = TrustedKeys::parse(&[public]).unwrap();
        assert!(trusted.verify(DIGEST, Some(&signature)).is_ok());
        let other = DIGEST.replace('9', "8");
        assert_eq!(
            trusted.verify(&other, Some(&signature)).unwrap_err().code,
            "SIGNATURE_INVALID"
        );
        assert_eq!(
            trusted.verify(DIGEST, None).unwrap_err().code,
            "SIGNATURE_REQUIRED"
        );
        let (_, stranger) = generate_key();
        let untrusting = TrustedKeys::parse(&[stranger]).unwrap();
        assert_eq!(
            untrusting
                .verify(DIGEST, Some(&signature))
                .unwrap_err()
                .code,
            "SIGNATURE_INVALID"
        );
        assert!(
            TrustedKeys::default().verify(DIGEST, None).is_ok(),
            "off by default"
        );
        assert!(TrustedKeys::parse(&["zz".into()]).is_err());
    }
}
