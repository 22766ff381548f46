//! The settings of mover Jobs: the `--mover-*` flags (and `--audience`, `--service-url`),
//! checked and parsed once at start-up into a [`MoverSpec`], so a bad value stops drainer with
//! a message naming the flag instead of failing drains one by one.

use crate::Error;
use crate::args::{MoverIdentity, MoverJobArgs, PodSecurityLevel};
use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// The validated settings of mover Jobs, parsed once at start-up from [`MoverJobArgs`] (a bad
/// flag is a start-up error, not a failed drain).
#[derive(Debug, Clone, PartialEq)]
pub struct MoverSpec {
    /// Image of the mover container.
    pub image: String,
    /// The program it runs (its `command`).
    pub command: String,
    /// ServiceAccount of mover pods.
    pub service_account: String,
    /// Who movers run as (see `security::decide`).
    pub identity: MoverIdentity,
    /// The level enforced on namespaces without a Pod Security label.
    pub pod_security_default: PodSecurityLevel,
    /// CPU request and limit.
    pub cpu: Resource,
    /// Memory request and limit.
    pub memory: Resource,
    /// Node selector added to the placement.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// `activeDeadlineSeconds` of a Job.
    pub deadline_seconds: i64,
    /// `ttlSecondsAfterFinished` of a Job.
    pub keep_failed_seconds: i32,
    /// Audience of the projected token.
    pub audience: String,
    /// The CA bundle movers trust for an https service URL (`--mover-cacert`).
    pub ca: Option<MoverCa>,
}

/// The CA bundle of `--mover-cacert`, which each mover Job gets in its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct MoverCa {
    /// Its file.
    pub file: std::path::PathBuf,
    /// The bundle, as read last.
    pub pem: String,
}

impl MoverCa {
    /// Reads `file`: a PEM bundle of at least one certificate.
    pub fn read(file: &std::path::Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        drainer_core::args::pem_certificates(pem.as_bytes())?;
        Ok(Self {
            file: file.to_owned(),
            pem,
        })
    }

    /// The bundle as its file holds it now (a rotated CA), or as read last when the file
    /// cannot be read or holds no certificate now.
    pub(crate) fn refreshed(&self) -> Self {
        match Self::read(&self.file) {
            Ok(now) => now,
            Err(why) => {
                tracing::warn!(file = %self.file.display(), error = %why, "cannot read --mover-cacert again; movers get the bundle read last");
                self.clone()
            }
        }
    }
}

/// A request and a limit of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The request.
    pub request: Quantity,
    /// The limit.
    pub limit: Quantity,
}

impl MoverSpec {
    /// Checks and parses the flags; the error names the flag and says what is wrong.
    pub fn new(args: &MoverJobArgs, audience: &str) -> Result<Self, Error> {
        let bad = |flag: &str, value: &str, why: &str| {
            Error::Config(format!("--{flag} {value:?}: {why}"))
        };
        if args.mover_image.is_empty() || args.mover_image.contains(char::is_whitespace) {
            return Err(bad("mover-image", &args.mover_image, "not an image name"));
        }
        if args.mover_command.trim().is_empty() {
            return Err(bad("mover-command", &args.mover_command, "empty"));
        }
        if !drainer_core::volume::is_dns_subdomain(&args.mover_service_account) {
            return Err(bad(
                "mover-service-account",
                &args.mover_service_account,
                "not a ServiceAccount name",
            ));
        }
        if audience.trim().is_empty() {
            return Err(bad("audience", audience, "empty"));
        }
        let deadline = i64::try_from(args.mover_deadline.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| bad("mover-deadline", "", "must be at least one second"))?;
        let keep = i32::try_from(args.mover_keep_failed.as_secs())
            .map_err(|_| bad("mover-keep-failed", "", "too long"))?;
        let identity = match (args.mover_read_all, args.mover_identity) {
            (Some(false), MoverIdentity::Auto | MoverIdentity::Nobody) => MoverIdentity::Nobody,
            (Some(false), MoverIdentity::App) => {
                return Err(bad(
                    "mover-read-all",
                    "false",
                    "it means --mover-identity nobody, which --mover-identity app contradicts",
                ));
            }
            (_, identity) => identity,
        };
        Ok(Self {
            image: args.mover_image.clone(),
            command: args.mover_command.clone(),
            service_account: args.mover_service_account.clone(),
            identity,
            pod_security_default: args.pod_security_default,
            cpu: parse_resource(&args.mover_cpu)
                .map_err(|why| bad("mover-cpu", &args.mover_cpu, &why))?,
            memory: parse_resource(&args.mover_memory)
                .map_err(|why| bad("mover-memory", &args.mover_memory, &why))?,
            node_selector: parse_node_selector(&args.mover_node_selector)
                .map_err(|why| bad("mover-node-selector", &args.mover_node_selector, &why))?,
            tolerations: parse_tolerations(&args.mover_tolerations)
                .map_err(|why| bad("mover-tolerations", &args.mover_tolerations, &why))?,
            deadline_seconds: deadline,
            keep_failed_seconds: keep,
            audience: audience.to_owned(),
            ca: match &args.mover_cacert {
                Some(file) => Some(
                    MoverCa::read(file)
                        .map_err(|why| bad("mover-cacert", &file.display().to_string(), &why))?,
                ),
                None => None,
            },
        })
    }
}

/// `REQUEST,LIMIT` (or one quantity for both), each a Kubernetes quantity, the request not
/// above the limit.
fn parse_resource(text: &str) -> Result<Resource, String> {
    let (request, limit) = match text.split_once(',') {
        Some((r, l)) => (r.trim(), l.trim()),
        None => (text.trim(), text.trim()),
    };
    let value = |q: &str| {
        quantity_value(q).ok_or_else(|| format!("{q:?} is not a quantity (e.g. 100m, 1, 64Mi)"))
    };
    if value(request)? > value(limit)? {
        return Err(format!("the request {request} is above the limit {limit}"));
    }
    Ok(Resource {
        request: Quantity(request.to_owned()),
        limit: Quantity(limit.to_owned()),
    })
}

/// The value of a non-negative Kubernetes quantity (`<number><suffix>`: binary `Ki`…`Ei`,
/// decimal `n u m k M G T P E`, or an exponent `e3`), or `None` if it is not one.
fn quantity_value(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(end);
    let digits = number.strip_prefix('+').unwrap_or(number);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 || digits.contains('+')
    {
        return None;
    }
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let power = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = power.strip_prefix(['+', '-']).unwrap_or(power);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(power.parse().ok()?)
        }
    };
    digits.parse::<f64>().ok().map(|n| n * scale)
}

/// `key=value,…` with label keys and values as Kubernetes validates them.
fn parse_node_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut selector = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if !is_label_key(key) {
            return Err(format!("{key:?} is not a label key"));
        }
        if !is_label_value(value) {
            return Err(format!("{value:?} is not a label value"));
        }
        selector.insert(key.to_owned(), value.to_owned());
    }
    Ok(selector)
}

/// A JSON list of tolerations, with no field Kubernetes does not know and operators and
/// effects it accepts.
fn parse_tolerations(text: &str) -> Result<Vec<Toleration>, String> {
    const FIELDS: [&str; 5] = ["key", "operator", "value", "effect", "tolerationSeconds"];
    let raw: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON list of tolerations: {e}"))?;
    if let Some(field) = raw
        .iter()
        .flat_map(|t| t.keys())
        .find(|k| !FIELDS.contains(&k.as_str()))
    {
        return Err(format!("a toleration has no field {field:?}"));
    }
    let tolerations: Vec<Toleration> =
        serde_json::from_str(text).map_err(|e| format!("not a list of tolerations: {e}"))?;
    for t in &tolerations {
        match t.operator.as_deref() {
            None | Some("Equal") => {}
            Some("Exists") if t.value.as_deref().unwrap_or_default().is_empty() => {}
            Some("Exists") => return Err("operator Exists takes no value".into()),
            Some(other) => return Err(format!("operator {other:?} is not Equal or Exists")),
        }
        match t.effect.as_deref() {
            None | Some("" | "NoSchedule" | "PreferNoSchedule") => {}
            Some("NoExecute") => {}
            Some(other) => return Err(format!("effect {other:?} is unknown")),
        }
        if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
            return Err("tolerationSeconds needs effect NoExecute".into());
        }
    }
    Ok(tolerations)
}

/// A label value: at most 63 characters, alphanumerics with `-_.` inside, or empty.
pub(super) fn is_label_value(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && edge(value.chars().next())
        && edge(value.chars().last())
}

/// A label key: an optional DNS subdomain prefix and `/`, then a non-empty name.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(drainer_core::volume::is_dns_subdomain)
        && !name.is_empty()
        && is_label_value(name)
}

/// Checks `--service-url`, which Kubernetes mode needs: where movers reach this drainer; a CA
/// bundle for movers (`--mover-cacert`) needs an https URL.
pub fn check_service_url(url: Option<&str>, ca: Option<&MoverCa>) -> Result<String, Error> {
    let url = url.ok_or_else(|| {
        Error::Config(
            "--service-url is needed in Kubernetes mode: the URL at which movers reach this \
             drainer (its Service), e.g. http://drainer.drainer-system.svc:8080"
                .into(),
        )
    })?;
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("--service-url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::Config(format!(
            "--service-url {url:?}: an http:// or https:// URL with a host"
        )));
    }
    if let Some(ca) = ca
        && parsed.scheme() != "https"
    {
        return Err(Error::Config(format!(
            "--mover-cacert {} is for an https:// --service-url, not {url:?}",
            ca.file.display()
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn bad_flags_are_start_up_errors_naming_the_flag() {
        let cases: [(&[&str], &str); 18] = [
            (&["--mover-cpu", "lots"], "--mover-cpu"),
            (&["--mover-cpu", "2,1"], "above the limit"),
            (&["--mover-cpu", "1,"], "--mover-cpu"),
            (&["--mover-memory", "64Mi,32Mi"], "above the limit"),
            (&["--mover-memory=-1Gi"], "--mover-memory"),
            (&["--mover-memory", "1GB"], "not a quantity"),
            (&["--mover-node-selector", "pool"], "not key=value"),
            (&["--mover-node-selector", "=x"], "not a label key"),
            (&["--mover-node-selector", "pool=a b"], "not a label value"),
            (&["--mover-tolerations", "{}"], "--mover-tolerations"),
            (
                &[
                    "--mover-tolerations",
                    r#"[{"key":"a","operater":"Exists"}]"#,
                ],
                "operater",
            ),
            (
                &[
                    "--mover-tolerations",
                    r#"[{"operator":"Exists","value":"x"}]"#,
                ],
                "no value",
            ),
            (&["--mover-tolerations", r#"[{"operator":"Like"}]"#], "Like"),
            (
                &["--mover-tolerations", r#"[{"effect":"NoSchedul"}]"#],
                "NoSchedul",
            ),
            (
                &[
                    "--mover-tolerations",
                    r#"[{"effect":"NoSchedule","tolerationSeconds":5}]"#,
                ],
                "NoExecute",
            ),
            (
                &["--mover-service-account", "Mover_SA"],
                "--mover-service-account",
            ),
            (&["--mover-deadline", "0"], "--mover-deadline"),
            (
                &["--mover-read-all", "false", "--mover-identity", "app"],
                "--mover-read-all",
            ),
        ];
        for (flags, says) in cases {
            let args = kube_args(flags);
            let error = MoverSpec::new(&args.movers, &args.audience)
                .expect_err(&format!("{flags:?} must be refused"))
                .to_string();
            assert!(error.contains(says), "{flags:?}: {error}");
        }
        let args = kube_args(&["--mover-image", ""]);
        assert!(MoverSpec::new(&args.movers, &args.audience).is_err());
        let args = kube_args(&["--mover-command", " "]);
        assert!(MoverSpec::new(&args.movers, &args.audience).is_err());
        let args = kube_args(&[]);
        assert!(MoverSpec::new(&args.movers, "").is_err());
        // The defaults, and tolerations that use every field, are fine.
        spec(&[]);
        spec(&[
            "--mover-tolerations",
            r#"[{"key":"k","operator":"Exists","effect":"NoExecute","tolerationSeconds":30},{"operator":"Exists"}]"#,
        ]);
    }

    #[test]
    fn the_identity_flags_resolve_old_and_new_spellings() {
        use crate::args::MoverIdentity as M;
        // (flags, identity)
        let cases: [(&[&str], M); 7] = [
            (&[], M::Auto),
            (&["--mover-identity", "app"], M::App),
            (&["--mover-identity", "nobody"], M::Nobody),
            (&["--mover-read-all", "false"], M::Nobody),
            (&["--mover-read-all", "true"], M::Auto),
            (
                &["--mover-read-all", "true", "--mover-identity", "app"],
                M::App,
            ),
            (
                &["--mover-read-all=false", "--mover-identity=nobody"],
                M::Nobody,
            ),
        ];
        for (flags, identity) in cases {
            assert_eq!(spec(flags).identity, identity, "{flags:?}");
        }
        assert_eq!(
            spec(&[]).pod_security_default,
            crate::args::PodSecurityLevel::Privileged
        );
        assert_eq!(
            spec(&["--pod-security-default", "baseline"]).pod_security_default,
            crate::args::PodSecurityLevel::Baseline
        );
    }

    #[test]
    fn quantities() {
        let cases = [
            ("1", Some(1.0)),
            ("100m", Some(0.1)),
            ("1.5", Some(1.5)),
            ("+2", Some(2.0)),
            ("64Mi", Some(64.0 * 1024.0 * 1024.0)),
            ("1Gi", Some(1024f64.powi(3))),
            ("1G", Some(1e9)),
            ("1e3", Some(1000.0)),
            ("1E", Some(1e18)),
            ("2E-2", Some(0.02)),
            ("", None),
            (".", None),
            ("1.2.3", None),
            ("-1", None),
            ("1GB", None),
            ("1e", None),
            ("Mi", None),
        ];
        for (text, value) in cases {
            let got = quantity_value(text);
            match (got, value) {
                (Some(g), Some(v)) => assert!((g - v).abs() <= v * 1e-9, "{text}: {g} != {v}"),
                _ => assert_eq!(got, value, "{text}"),
            }
        }
    }

    #[test]
    fn the_service_url_is_needed_and_checked() {
        assert_eq!(
            check_service_url(Some("http://drainer.ns.svc:8080/"), None).unwrap(),
            "http://drainer.ns.svc:8080"
        );
        assert!(
            check_service_url(None, None)
                .unwrap_err()
                .to_string()
                .contains("--service-url")
        );
        assert!(check_service_url(Some("drainer:8080"), None).is_err());
        assert!(check_service_url(Some("ftp://drainer"), None).is_err());
        let ca = MoverCa {
            file: "/tls/ca.crt".into(),
            pem: String::new(),
        };
        let plain = check_service_url(Some("http://drainer.ns.svc:8080"), Some(&ca));
        assert!(plain.unwrap_err().to_string().contains("--mover-cacert"));
        assert_eq!(
            check_service_url(Some("https://drainer.ns.svc:8443"), Some(&ca)).unwrap(),
            "https://drainer.ns.svc:8443"
        );
    }
}
