//! Custom domain names (`domains:add HOST`): a DNS name an app is served at besides
//! `<app>.<domain>`, or a wildcard `*.example.com` that covers exactly one label under it.

use std::fmt;

/// Longest host name (RFC 1035: 253 characters in text form).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// A checked host name, lowercased, without a trailing dot: at least two labels of 1-63
/// letters, digits and dashes (not starting or ending with a dash); the first label may be
/// `*` (a wildcard). The last label is not all digits, so an IP address is never a host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("the domain is empty")]
    Empty,
    #[error("the domain is too long: {0} characters, at most {MAX_HOSTNAME_LEN} are allowed")]
    TooLong(usize),
    #[error("{0:?} is not a domain name: use two or more labels such as www.example.com")]
    SingleLabel(String),
    #[error("{0:?} is not a domain name: each label is 1-63 letters, digits and dashes, not starting or ending with a dash")]
    BadLabel(String),
    #[error("{0:?}: a wildcard may only be the whole first label, as in *.example.com")]
    BadWildcard(String),
    #[error("{0:?} looks like an IP address; custom domains are DNS names")]
    Address(String),
}

impl Hostname {
    pub fn parse(raw: &str) -> Result<Self, HostnameError> {
        let trimmed = raw.trim();
        let name = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if name.is_empty() {
            return Err(HostnameError::Empty);
        }
        if name.len() > MAX_HOSTNAME_LEN {
            return Err(HostnameError::TooLong(name.chars().count()));
        }
        let name = name.to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        let rest = match labels.split_first() {
            Some((&"*", rest)) => rest,
            _ => &labels[..],
        };
        if rest.len() < 2 {
            return Err(HostnameError::SingleLabel(name));
        }
        for label in rest {
            if label.contains('*') {
                return Err(HostnameError::BadWildcard(name));
            }
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(HostnameError::BadLabel(name));
            }
        }
        if rest
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(HostnameError::Address(name));
        }
        Ok(Hostname(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `example.com` for `*.example.com`.
    pub fn wildcard_parent(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }

    /// Whether this name is `domain` or under it (`x.apps.example.com` under
    /// `apps.example.com`; a wildcard `*.apps.example.com` too).
    pub fn is_within(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.0 == domain
            || self
                .0
                .strip_suffix(&domain)
                .is_some_and(|prefix| prefix.ends_with('.'))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_names_and_one_leading_wildcard() {
        let h = Hostname::parse("WWW.Example.COM.").expect("valid");
        assert_eq!(h.as_str(), "www.example.com");
        assert_eq!(h.wildcard_parent(), None);
        let w = Hostname::parse("*.example.com").expect("valid");
        assert_eq!(w.wildcard_parent(), Some("example.com"));
        assert!(Hostname::parse("a-b.c1.example").is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        for (raw, want) in [
            ("", HostnameError::Empty),
            ("localhost", HostnameError::SingleLabel("localhost".into())),
            ("*.com", HostnameError::SingleLabel("*.com".into())),
            (
                "a..example.com",
                HostnameError::BadLabel("a..example.com".into()),
            ),
            (
                "-a.example.com",
                HostnameError::BadLabel("-a.example.com".into()),
            ),
            (
                "a_b.example.com",
                HostnameError::BadLabel("a_b.example.com".into()),
            ),
            (
                "a.*.example.com",
                HostnameError::BadWildcard("a.*.example.com".into()),
            ),
            (
                "w*.example.com",
                HostnameError::BadWildcard("w*.example.com".into()),
            ),
            ("127.0.0.1", HostnameError::Address("127.0.0.1".into())),
        ] {
            assert_eq!(Hostname::parse(raw), Err(want), "{raw:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            Hostname::parse(&long),
            Err(HostnameError::BadLabel(_))
        ));
        assert!(matches!(
            Hostname::parse(&"a.".repeat(200)),
            Err(HostnameError::TooLong(_))
        ));
    }

    #[test]
    fn knows_what_is_under_the_platform_domain() {
        let under = Hostname::parse("x.apps.example.com").expect("valid");
        assert!(under.is_within("apps.example.com"));
        assert!(Hostname::parse("*.apps.example.com")
            .expect("valid")
            .is_within("apps.example.com"));
        assert!(!Hostname::parse("xapps.example.com")
            .expect("valid")
            .is_within("apps.example.com"));
    }

    proptest! {
        #[test]
        fn never_panics_and_what_it_accepts_parses_again(raw in "\\PC{0,300}") {
            if let Ok(h) = Hostname::parse(&raw) {
                prop_assert!(h.as_str().len() <= MAX_HOSTNAME_LEN);
                prop_assert_eq!(Hostname::parse(h.as_str()), Ok(h.clone()));
                prop_assert!(h.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.*".contains(&b)));
            }
        }
    }
}
