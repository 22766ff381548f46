//! Volume identity: a volume is `namespace/pvc-name`, both validated as Kubernetes names.
//!
//! This module only parses and validates identifiers; it never touches storage or the cluster.
//! Validation is strict on purpose: these names become object-store prefixes and directory
//! names, so anything that is not a valid Kubernetes name (and so could carry a path trick) is
//! refused here, before it can reach a path.

use std::fmt;
use std::str::FromStr;

/// A volume: the PersistentVolumeClaim `name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    /// The namespace (an RFC 1123 label).
    pub namespace: String,
    /// The PVC name (an RFC 1123 subdomain).
    pub name: String,
}

/// Why a volume identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// Not of the form `namespace/name`.
    #[error("volume {0:?} is not of the form NAMESPACE/PVC")]
    Shape(String),
    /// The namespace is not an RFC 1123 label.
    #[error(
        "namespace {0:?} is not a valid RFC 1123 label (lower-case letters, digits and '-', at most 63)"
    )]
    Namespace(String),
    /// The PVC name is not an RFC 1123 subdomain.
    #[error(
        "PVC name {0:?} is not a valid RFC 1123 name (lower-case letters, digits, '-' and '.', at most 253)"
    )]
    Name(String),
}

impl VolumeId {
    /// Builds a volume identifier from its two parts, validating both.
    pub fn new(namespace: &str, name: &str) -> Result<Self, InvalidName> {
        if !is_dns_label(namespace) {
            return Err(InvalidName::Namespace(namespace.to_owned()));
        }
        if !is_dns_subdomain(name) {
            return Err(InvalidName::Name(name.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl FromStr for VolumeId {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| InvalidName::Shape(s.to_owned()))?;
        Self::new(namespace, name)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// True for an RFC 1123 label: 1–63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// True for an RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_volumes() {
        let v: VolumeId = "shop/data-web-4".parse().unwrap();
        assert_eq!(v.namespace, "shop");
        assert_eq!(v.name, "data-web-4");
        assert_eq!(v.to_string(), "shop/data-web-4");
        assert!("a/b.c-d".parse::<VolumeId>().is_ok());
    }

    #[test]
    fn refuses_invalid_volumes() {
        for bad in [
            "",
            "shop",
            "/x",
            "x/",
            "Shop/x",
            "shop/X",
            "shop/..",
            "shop/.",
            "shop/a/b",
            "../etc/x",
            "shop/-a",
            "shop/a-",
            "sh_op/a",
            "shop/a..b",
            "shop/ a",
        ] {
            assert!(
                bad.parse::<VolumeId>().is_err(),
                "{bad:?} should be refused"
            );
        }
        let long = "a".repeat(64);
        assert!(format!("{long}/x").parse::<VolumeId>().is_err());
        assert!(
            format!("x/{}", "a".repeat(254))
                .parse::<VolumeId>()
                .is_err()
        );
    }
}
