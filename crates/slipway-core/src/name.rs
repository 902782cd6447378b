//! App names: the identifier users type, and the first DNS label of the app's host name.

use std::fmt;

/// Longest app name accepted (Heroku allows 30).
pub const MAX_APP_NAME_LEN: usize = 30;

/// A validated app name: 3 to 30 characters, lowercase ASCII letters, digits and dashes,
/// starting with a letter and not ending with a dash. Valid names are valid DNS labels,
/// so `<name>.<domain>` always routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AppName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("app name is too short: {0:?} has fewer than 3 characters")]
    TooShort(String),
    #[error("app name is too long: it has {0} characters, at most {MAX_APP_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("app name {0:?} must start with a lowercase letter, and contain only lowercase letters, digits and dashes (not ending with a dash)")]
    BadCharacters(String),
}

impl AppName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.len() > MAX_APP_NAME_LEN {
            return Err(NameError::TooLong(raw.chars().count()));
        }
        if raw.len() < 3 {
            return Err(NameError::TooShort(raw.to_string()));
        }
        let bytes = raw.as_bytes();
        let ok_chars = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
            return Err(NameError::BadCharacters(raw.to_string()));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_names() {
        for name in ["hello", "my-app-2", "abc", "a23456789012345678901234567890"] {
            assert_eq!(
                AppName::parse(name).map(|n| n.to_string()),
                Ok(name.to_string())
            );
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        assert!(matches!(AppName::parse("ab"), Err(NameError::TooShort(_))));
        assert!(matches!(
            AppName::parse(&"a".repeat(31)),
            Err(NameError::TooLong(31))
        ));
        for bad in [
            "Hello", "1app", "-app", "app-", "app_x", "app.x", "ap p", "héllo", "../etc",
        ] {
            assert!(
                matches!(AppName::parse(bad), Err(NameError::BadCharacters(_))),
                "{bad} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_names_are_dns_labels(raw in "\\PC{0,40}") {
            if let Ok(name) = AppName::parse(&raw) {
                let s = name.as_str();
                prop_assert!((3..=30).contains(&s.len()));
                prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
                prop_assert!(!s.starts_with('-') && !s.ends_with('-'));
                prop_assert!(!s.contains('/') && !s.contains('.'));
            }
        }

        #[test]
        fn generated_valid_names_parse(raw in "[a-z][a-z0-9-]{1,28}[a-z0-9]") {
            prop_assert_eq!(AppName::parse(&raw).map(|n| n.to_string()), Ok(raw));
        }
    }
}
