//! Client keys and keyspace names, validated once at the edge so that nothing inside sees a bad one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest key a client may use, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest keyspace name, in bytes.
pub const MAX_KEYSPACE_NAME_BYTES: usize = 64;

/// Why a key or keyspace name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key has no bytes.
    #[error("the key is empty; keys are 1..=1024 bytes of UTF-8")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {0} bytes long; keys are at most 1024 bytes of UTF-8")]
    TooLong(usize),
    /// The key's bytes are not UTF-8.
    #[error("the key is not valid UTF-8")]
    NotUtf8,
    /// The key holds a control character (U+0000..U+001F, U+007F..U+009F).
    #[error("the key holds a control character at byte {0}")]
    ControlCharacter(usize),
    /// The keyspace name is empty, too long or holds a character outside `[A-Za-z0-9_-]`.
    #[error("invalid keyspace name {0:?}: use 1..=64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidKeyspaceName(String),
}

/// A client key: 1..=1024 bytes of UTF-8 without control characters; may contain `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    /// Validates raw bytes (a percent-decoded URL path, say) as a key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)?;
        Self::parse(text)
    }

    /// Validates a string as a key.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(text.len()));
        }
        if let Some((at, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(KeyError::ControlCharacter(at));
        }
        Ok(Self(text.to_owned()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A keyspace name: 1..=64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyspaceName(String);

impl KeyspaceName {
    /// The keyspace used when a request names none.
    pub const DEFAULT: &'static str = "default";

    /// Validates a keyspace name.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_KEYSPACE_NAME_BYTES
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(KeyError::InvalidKeyspaceName(text.to_owned()))
        }
    }

    /// The `default` keyspace.
    pub fn default_keyspace() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyspaceName {
    type Error = KeyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<KeyspaceName> for String {
    fn from(name: KeyspaceName) -> Self {
        name.0
    }
}

impl fmt::Display for KeyspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_for_length_encoding_and_control_characters() {
        let cases: &[(&[u8], Result<(), KeyError>)] = &[
            (b"hello", Ok(())),
            (b"a/b/c", Ok(())),
            ("ключ".as_bytes(), Ok(())),
            (b"", Err(KeyError::Empty)),
            (&[0xff, 0xfe], Err(KeyError::NotUtf8)),
            (b"a\nb", Err(KeyError::ControlCharacter(1))),
            (b"\0", Err(KeyError::ControlCharacter(0))),
            (b"tab\there", Err(KeyError::ControlCharacter(3))),
        ];
        for (bytes, expected) in cases {
            let got = Key::from_bytes(bytes).map(|_| ());
            assert_eq!(&got, expected, "key {bytes:?}");
        }
    }

    #[test]
    fn keys_of_exactly_the_limit_pass_and_one_more_byte_fails() {
        assert!(Key::parse(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            Key::parse(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
    }

    #[test]
    fn keys_deserialize_through_validation() {
        assert!(serde_json::from_str::<Key>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<Key>("\"a/b\"").ok(),
            Key::parse("a/b").ok()
        );
    }

    #[test]
    fn keyspace_names_allow_only_a_plain_alphabet() {
        for good in ["default", "user_profiles", "KS-2", &"x".repeat(64)] {
            assert!(KeyspaceName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(KeyspaceName::parse(bad).is_err(), "{bad}");
        }
    }
}
