//! Volume identity: a volume is `namespace/pvc-name`, both validated as Kubernetes names.
//!
//! This module only parses and validates identifiers; it never touches storage or the cluster.
//! Validation is exactly Kubernetes' own (`IsDNS1123Label` for namespaces, `IsDNS1123Subdomain`
//! for PVC and pod names, from `k8s.io/apimachinery/pkg/util/validation`): every name Kubernetes
//! accepts is accepted, and nothing else. These names become object-store prefixes and directory
//! names, so anything that is not a valid Kubernetes name (and so could carry a path trick) is
//! refused here, before it can reach a path. A subdomain is at most 253 bytes, which fits one
//! file name (255 bytes) and one object-key segment, so a volume's prefix and its local-mode
//! directory `ROOT/NS/PVC` never need shortening.

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
        "PVC name {0:?} is not a valid RFC 1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, dots between letters or digits, at most 253 characters)"
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

/// True for an RFC 1123 subdomain as Kubernetes checks it (`IsDNS1123Subdomain`): at most 253
/// characters matching `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`.
/// Unlike DNS, Kubernetes puts no limit of 63 on the parts between dots, so neither do we.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        })
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

    /// The table of `TestIsDNS1123Label` in Kubernetes' `validation_test.go`.
    #[test]
    fn labels_as_kubernetes_checks_them() {
        let good = [
            "a",
            "ab",
            "abc",
            "a1",
            "a-1",
            "a--1--2--b",
            "0",
            "01",
            "012",
            "1a",
            "1-a",
            "1--a--b--2",
        ];
        for name in good.into_iter().map(str::to_owned).chain(["a".repeat(63)]) {
            assert!(is_dns_label(&name), "{name:?} is a valid label");
        }
        let bad = [
            "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_",
            "_a", "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ",
            " a", "a b", "1 ", " 1", "1 2",
        ];
        for name in bad.into_iter().map(str::to_owned).chain(["a".repeat(64)]) {
            assert!(!is_dns_label(&name), "{name:?} is not a valid label");
        }
    }

    /// The table of `TestIsDNS1123Subdomain` in Kubernetes' `validation_test.go`: parts
    /// between dots may be longer than 63, only the whole is bounded (253).
    #[test]
    fn subdomains_as_kubernetes_checks_them() {
        let good = [
            "a",
            "ab",
            "abc",
            "a1",
            "a-1",
            "a--1--2--b",
            "0",
            "01",
            "012",
            "1a",
            "1-a",
            "1--a--b--2",
            "a.a",
            "ab.a",
            "abc.a",
            "a1.a",
            "a-1.a",
            "a--1--2--b.a",
            "a.1",
            "ab.1",
            "abc.1",
            "a1.1",
            "a-1.1",
            "a--1--2--b.1",
            "0.a",
            "01.a",
            "012.a",
            "1a.a",
            "1-a.a",
            "1--a--b--2",
            "0.1",
            "01.1",
            "012.1",
            "1a.1",
            "1-a.1",
            "1--a--b--2.1",
            "a.b.c.d.e",
            "aa.bb.cc.dd.ee",
            "1.2.3.4.5",
            "11.22.33.44.55",
        ];
        let long = [
            "a".repeat(253),
            format!("{}.{}", "a".repeat(126), "b".repeat(126)),
            format!("data-{}", "x".repeat(100)),
        ];
        for name in good.into_iter().map(str::to_owned).chain(long) {
            assert!(is_dns_subdomain(&name), "{name:?} is a valid subdomain");
            assert!(
                VolumeId::new("ns", &name).is_ok(),
                "{name:?} is a valid PVC name"
            );
        }
        let bad = [
            "",
            "A",
            "ABC",
            "aBc",
            "A1",
            "A-1",
            "1-A",
            "-",
            "a-",
            "-a",
            "1-",
            "-1",
            "_",
            "a_",
            "_a",
            "a_b",
            "1_",
            "_1",
            "1_2",
            ".",
            "a.",
            ".a",
            "a..b",
            "1.",
            ".1",
            "1..2",
            " ",
            "a ",
            " a",
            "a b",
            "1 ",
            " 1",
            "1 2",
            "A.a",
            "aB.a",
            "ab.A",
            "A1.a",
            "a1.A",
            "A.1",
            "aB.1",
            "A1.1",
            "1A.1",
            "0.A",
            "01.A",
            "012.A",
            "1A.a",
            "1a.A",
            "A.B.C.D.E",
            "AA.BB.CC.DD.EE",
            "a.B.c.d.e",
            "aa.bB.cc.dd.ee",
            "a@b",
            "a,b",
            "a_b",
            "a;b",
            "a:b",
            "a%b",
            "a?b",
            "a$b",
        ];
        for name in bad.into_iter().map(str::to_owned).chain(["a".repeat(254)]) {
            assert!(
                !is_dns_subdomain(&name),
                "{name:?} is not a valid subdomain"
            );
        }
    }
}
