//! Signed causal context tokens: a client can hand back only a context some
//! router of this cluster gave out for this very key.
//!
//! A forged context could name a counter far above any a node issued: the
//! key's vector would take it, the node's next dot for the key would have to
//! go above it, and its counters could be pushed to their limit for good. A
//! context of another key would supersede siblings of this key the client
//! never saw. So every eventual context token carries an HMAC-SHA256 (first 16
//! bytes) over the keyspace, the key and the vector, keyed with the cluster's
//! secret, which metad sets once at bootstrap; a token whose tag does not match
//! is refused with 400 and changes nothing. The empty context (`c1.`, "I saw
//! nothing") needs no tag. Clusters bootstrapped before the secret existed
//! have none and keep unsigned tokens.

use hmac::{Hmac, Mac};
use kvorum_protocol::causal::{ContextTokenError, VersionVector};
use kvorum_protocol::{Key, KeyspaceName};
use sha2::Sha256;

/// The token of the empty context, which needs no tag.
const EMPTY_TOKEN: &str = "c1.";

/// Bytes of the tag a token carries.
const TAG_BYTES: usize = 16;

/// Signs and checks eventual context tokens with the cluster's secret.
#[derive(Clone)]
pub struct ContextSigner {
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for ContextSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextSigner")
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl ContextSigner {
    /// A signer with the cluster's secret as metad holds it (hex), or unsigned tokens without one.
    pub fn new(secret_hex: Option<&str>) -> Self {
        Self {
            secret: secret_hex.and_then(decode_hex),
        }
    }

    /// The token a client gets for `vector` of `key` in `keyspace`.
    pub fn sign(&self, keyspace: &KeyspaceName, key: &Key, vector: &VersionVector) -> String {
        let token = vector.to_token();
        match self.tag(keyspace, key, &token) {
            Some(tag) => format!("{token}.{tag}"),
            None => token,
        }
    }

    /// The vector a client's token for `key` carries, if some router signed it for that key.
    pub fn verify(
        &self,
        keyspace: &KeyspaceName,
        key: &Key,
        token: &str,
    ) -> Result<VersionVector, ContextTokenError> {
        let refused = || ContextTokenError(token.chars().take(64).collect());
        // The empty context ("I saw nothing") supersedes nothing and names no
        // counter: anyone may send it unsigned.
        if token == EMPTY_TOKEN {
            return Ok(VersionVector::new());
        }
        let body = match &self.secret {
            None => token,
            Some(_) => {
                let (body, tag) = token.rsplit_once('.').ok_or_else(refused)?;
                let expected = self.tag(keyspace, key, body).ok_or_else(refused)?;
                // Both are lowercase hex of the same length: compare without
                // stopping at the first difference.
                let same = tag.len() == expected.len()
                    && tag
                        .bytes()
                        .zip(expected.bytes())
                        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                        == 0;
                if !same {
                    return Err(refused());
                }
                body
            }
        };
        body.parse::<VersionVector>()
    }

    fn tag(&self, keyspace: &KeyspaceName, key: &Key, token: &str) -> Option<String> {
        let secret = self.secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        for part in [keyspace.as_str(), key.as_str(), token] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let digest = mac.finalize().into_bytes();
        Some(
            digest[..TAG_BYTES]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(entries: &[(u64, u64)]) -> VersionVector {
        let mut vector = VersionVector::new();
        for &(actor, counter) in entries {
            vector.add(kvorum_protocol::causal::Dot { actor, counter });
        }
        vector
    }

    fn names(key: &str) -> (KeyspaceName, Key) {
        (
            KeyspaceName::parse("carts").expect("keyspace"),
            Key::parse(key).expect("key"),
        )
    }

    #[test]
    fn a_signed_token_verifies_for_its_key_only_and_forgeries_are_refused() {
        let signer = ContextSigner::new(Some(&"ab".repeat(32)));
        let (keyspace, key) = names("cart-1");
        let issued = vector(&[(1, 3), (2, 7)]);
        let token = signer.sign(&keyspace, &key, &issued);
        assert_eq!(signer.verify(&keyspace, &key, &token), Ok(issued));
        // Another key's context is not this key's.
        let (_, other) = names("cart-2");
        assert!(signer.verify(&keyspace, &other, &token).is_err());
        // A counter pushed up, the tag kept: refused.
        let (body, tag) = token.rsplit_once('.').expect("tagged");
        let forged = format!("{}.{tag}", body.replace(":7", ":9999999999"));
        assert!(signer.verify(&keyspace, &key, &forged).is_err());
        // No tag, or another cluster's secret: refused; but the empty context
        // supersedes nothing and needs no tag.
        assert!(signer.verify(&keyspace, &key, body).is_err());
        assert_eq!(
            signer.verify(&keyspace, &key, "c1."),
            Ok(VersionVector::new())
        );
        let stranger = ContextSigner::new(Some(&"cd".repeat(32)));
        assert!(stranger.verify(&keyspace, &key, &token).is_err());
    }

    #[test]
    fn the_empty_context_token_is_what_an_empty_vector_gives() {
        assert_eq!(VersionVector::new().to_token(), EMPTY_TOKEN);
    }

    #[test]
    fn a_cluster_without_a_secret_keeps_unsigned_tokens() {
        let signer = ContextSigner::new(None);
        let (keyspace, key) = names("cart-1");
        let issued = vector(&[(1, 3)]);
        let token = signer.sign(&keyspace, &key, &issued);
        assert_eq!(token, issued.to_token());
        assert_eq!(signer.verify(&keyspace, &key, &token), Ok(issued));
    }
}
