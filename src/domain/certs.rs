//! Certificate keys, CSRs and issued chains: key generation in the worker
//! (ECDSA P-256/P-384, RSA 2048/3072/4096), the CSR we build for them, and
//! what we read back from an issued chain (validity, serial, fingerprint).

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SignatureAlgorithm};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

pub const KEY_ALGORITHMS: &[&str] = &[
    "ecdsa-p256",
    "ecdsa-p384",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];

impl KeyAlgorithm {
    pub fn parse(s: &str) -> Option<KeyAlgorithm> {
        Some(match s {
            "ecdsa-p256" => KeyAlgorithm::EcdsaP256,
            "ecdsa-p384" => KeyAlgorithm::EcdsaP384,
            "rsa-2048" => KeyAlgorithm::Rsa2048,
            "rsa-3072" => KeyAlgorithm::Rsa3072,
            "rsa-4096" => KeyAlgorithm::Rsa4096,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    fn signature(&self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("key generation failed: {0}")]
    Key(String),
    #[error("building the CSR failed: {0}")]
    Csr(String),
    #[error("the issued chain is not usable: {0}")]
    Chain(String),
}

/// A new private key, as PKCS#8 PEM (wiped when dropped).
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<Zeroizing<String>, CertError> {
    let pem = match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            KeyPair::generate_for(algorithm.signature())
                .map_err(|e| CertError::Key(e.to_string()))?
                .serialize_pem()
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let bits = match algorithm {
                KeyAlgorithm::Rsa2048 => 2048,
                KeyAlgorithm::Rsa3072 => 3072,
                _ => 4096,
            };
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| CertError::Key(e.to_string()))?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| CertError::Key(e.to_string()))?
                .to_string()
        }
    };
    Ok(Zeroizing::new(pem))
}

/// A CSR (DER) for `dns_names`, signed with the key in `key_pem`. For RSA
/// the key comes from us (rcgen cannot generate RSA keys) and rcgen signs.
pub fn csr_der(
    key_pem: &str,
    algorithm: KeyAlgorithm,
    dns_names: &[String],
) -> Result<Vec<u8>, CertError> {
    let key = KeyPair::from_pem_and_sign_algo(key_pem, algorithm.signature())
        .map_err(|e| CertError::Csr(e.to_string()))?;
    let mut params =
        CertificateParams::new(dns_names.to_vec()).map_err(|e| CertError::Csr(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CertError::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// What we record of an issued certificate (its leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// Lower-case hex, no separators.
    pub serial: String,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint_sha256: String,
    /// The leaf's SubjectPublicKeyInfo (DER), to match it with its key.
    pub public_key_der: Vec<u8>,
    pub dns_names: Vec<String>,
    /// The leaf itself (DER): what revocation and ARI name.
    pub leaf_der: Vec<u8>,
}

/// Reads the leaf (first certificate) of a PEM chain.
pub fn inspect_chain(chain_pem: &str) -> Result<Issued, CertError> {
    let bad = |e: &dyn fmt::Display| CertError::Chain(e.to_string());
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).map_err(|e| bad(&e))?;
    let leaf = pem.parse_x509().map_err(|e| bad(&e))?;
    let validity = leaf.validity();
    let dns_names = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Issued {
        not_before_ms: validity.not_before.timestamp() * 1000,
        not_after_ms: validity.not_after.timestamp() * 1000,
        serial: leaf.raw_serial_as_string().replace(':', "").to_lowercase(),
        fingerprint_sha256: hex(&Sha256::digest(&pem.contents)),
        public_key_der: leaf.public_key().raw.to_vec(),
        dns_names,
        leaf_der: pem.contents.clone(),
    })
}

/// The SubjectPublicKeyInfo (DER) of a private key in PEM.
pub fn public_key_der(key_pem: &str) -> Result<Vec<u8>, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    Ok(rcgen::PublicKeyData::subject_public_key_info(&key))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A PEM chain split into its leaf and the certificates after it (the
/// issuer chain), each as it reads in the chain.
pub fn split_chain(chain_pem: &str) -> (String, String) {
    const END: &str = "-----END CERTIFICATE-----";
    match chain_pem.find(END) {
        Some(i) => {
            let cut = i + END.len();
            (
                format!("{}\n", chain_pem[..cut].trim_start()),
                chain_pem[cut..].trim_start().to_string(),
            )
        }
        None => (chain_pem.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_splits_into_leaf_and_issuers() {
        let leaf = "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n";
        assert_eq!(
            split_chain(&format!("{leaf}{ca}")),
            (leaf.to_string(), ca.to_string())
        );
        assert_eq!(split_chain(leaf), (leaf.to_string(), String::new()));
    }

    #[test]
    fn every_algorithm_makes_a_key_and_a_csr_naming_its_domains() {
        for name in KEY_ALGORITHMS {
            let alg = KeyAlgorithm::parse(name).unwrap();
            if alg == KeyAlgorithm::Rsa4096 || alg == KeyAlgorithm::Rsa3072 {
                continue; // slow in a debug build; same code path as 2048
            }
            let key = generate_key(alg).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
            let csr = csr_der(
                &key,
                alg,
                &["a.example.test".into(), "b.example.test".into()],
            )
            .unwrap();
            let text = String::from_utf8_lossy(&csr);
            assert!(
                text.contains("a.example.test") && text.contains("b.example.test"),
                "{name}"
            );
        }
        assert_eq!(KeyAlgorithm::parse("ed25519"), None);
    }
}
