//! Who a mover runs as, as pure functions: the Pod Security policy a namespace enforces
//! ([`enforced`], from its labels as the API server's PodSecurity admission reads them, and
//! [`with_refusal`], from a mover pod it refused), the application's identity in its
//! StatefulSet's pod template ([`app_identity`]), and the mover pod's user, groups and
//! capability ([`decide`]), with why, for the drain's history. A mover must be admitted by its
//! namespace (a refused pod copies nothing) and must read every file the application wrote.
//!
//! What each choice can read (checked on this project's Linux 6.18 machine with `setpriv`: uid
//! 0 whose bounding set holds one capability, on a tree owned by uid 1234):
//! - `CAP_DAC_READ_SEARCH` (privileged namespaces): reads files of mode 000, lists and searches
//!   directories of mode 000, 0100 (search only), 0300 (write and search, no read) and 0600
//!   (read, no search), and may write nothing more than without it.
//! - `CAP_DAC_OVERRIDE` (baseline: one of the default capabilities, so allowed, where an added
//!   `DAC_READ_SEARCH` is not): reads and lists exactly the same (the kernel's
//!   `generic_permission` overrides read and search of any file and directory, and execute only
//!   where some x bit is set). It also overrides write permission, which the claim's read-only
//!   mount and the read-only root filesystem leave with nothing to write but `/tmp`.
//! - no capability (uid 0 included): the modes decide. Even the owner cannot read its own
//!   mode 000 file, list its 0300 directory, or open anything under its 0600 one; a mover with
//!   the application's identity (restricted) reads what the application itself can read.

use crate::args::{MoverIdentity, PodSecurityLevel as Level};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;
use std::collections::BTreeMap;

/// The namespace label whose level the API server enforces on pods.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label naming the version of the enforced level's rules.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// uid (and gid) of movers that run as nobody in particular.
pub(crate) const NOBODY: i64 = 65534;

/// A level's name, as in the labels.
pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Privileged => "privileged",
        Level::Baseline => "baseline",
        Level::Restricted => "restricted",
    }
}

fn parse_level(text: &str) -> Option<Level> {
    match text {
        "privileged" => Some(Level::Privileged),
        "baseline" => Some(Level::Baseline),
        "restricted" => Some(Level::Restricted),
        _ => None,
    }
}

/// `latest` or `v1.N`, as PodSecurity admission accepts them.
fn is_version(text: &str) -> bool {
    text == "latest"
        || text.strip_prefix("v1.").is_some_and(|minor| {
            !minor.is_empty()
                && minor.bytes().all(|b| b.is_ascii_digit())
                && (minor == "0" || !minor.starts_with('0'))
        })
}

/// The Pod Security policy a namespace enforces on pods, as far as drainer can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enforced {
    /// The level.
    pub level: Level,
    /// The version of its rules: `latest` or `v1.N`.
    pub version: String,
    /// How drainer knows (a phrase: "its label …", "no label …").
    pub source: String,
}

impl Enforced {
    /// `level:version`, as PodSecurity admission names a policy.
    pub fn policy(&self) -> String {
        format!("{}:{}", level_name(self.level), self.version)
    }
}

/// The policy the namespace enforces, from its labels (`Err(why)` when they could not be
/// read) and the cluster's default level, as PodSecurity admission reads them: the enforce
/// label's level (a value that is not a level is enforced as `restricted`: admission fails
/// closed), its version (`latest` when absent or not a version); without the label, the
/// cluster default. The version does not change the mover's choice (every version of
/// `baseline` allows uid 0 with `DAC_OVERRIDE`, and every version of `restricted` admits the
/// non-root context drainer builds); it is named in the history.
pub fn enforced(labels: Result<&BTreeMap<String, String>, &str>, default: Level) -> Enforced {
    let labels = match labels {
        Ok(labels) => labels,
        Err(why) => {
            return Enforced {
                level: default,
                version: "latest".into(),
                source: format!(
                    "its labels cannot be read ({why}), so the cluster default \
                     (--pod-security-default) is assumed"
                ),
            };
        }
    };
    let version = labels
        .get(ENFORCE_VERSION_LABEL)
        .filter(|v| is_version(v))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    let (level, source) = match labels.get(ENFORCE_LABEL) {
        None => (
            default,
            format!(
                "it has no label {ENFORCE_LABEL}: the cluster default (--pod-security-default)"
            ),
        ),
        Some(value) => match parse_level(value) {
            Some(level) => (level, format!("its label {ENFORCE_LABEL}={value}")),
            None => (
                Level::Restricted,
                format!(
                    "its label {ENFORCE_LABEL}={value:?} is not a level, which the API server \
                     enforces as restricted"
                ),
            ),
        },
    };
    Enforced {
        level,
        version,
        source,
    }
}

/// What of a namespace's labels decides its policy, to tell whether they changed since a
/// mover pod was refused (`None`: they could not be read).
pub(crate) fn labels_fingerprint(labels: Option<&BTreeMap<String, String>>) -> String {
    match labels {
        None => "unreadable".into(),
        Some(labels) => format!(
            "{:?}/{:?}",
            labels.get(ENFORCE_LABEL),
            labels.get(ENFORCE_VERSION_LABEL)
        ),
    }
}

/// A mover pod the namespace refused: the policy PodSecurity admission enforced, and the
/// namespace's labels (their [`labels_fingerprint`]) when drainer chose the mover's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The level enforced.
    pub level: Level,
    /// `level:version`, as the refusal names it.
    pub policy: String,
    /// The labels' fingerprint then.
    pub labels: String,
}

/// The policy a refusal of pod creation names (`… violates PodSecurity "baseline:latest": …`,
/// the Job controller's `FailedCreate` event), if it is one of PodSecurity admission's.
pub(crate) fn refused_policy(message: &str) -> Option<(Level, String)> {
    let (_, rest) = message.split_once("violates PodSecurity \"")?;
    let (policy, _) = rest.split_once('"')?;
    let (level, _) = policy.split_once(':')?;
    Some((parse_level(level)?, policy.to_owned()))
}

/// The policy to build a mover for: `enforced`, or stricter if a mover pod of this namespace
/// was refused under a stricter one while its labels were as they are now (`labels`): the API
/// server's defaults (or exemptions) are not what `--pod-security-default` says. A refusal
/// from before the labels changed is no longer evidence, and is ignored.
pub(crate) fn with_refusal(
    enforced: Enforced,
    refusal: Option<&Refusal>,
    labels: &str,
) -> Enforced {
    match refusal {
        Some(r) if r.labels == labels && r.level > enforced.level => Enforced {
            level: r.level,
            version: r
                .policy
                .split_once(':')
                .map(|(_, v)| v.to_owned())
                .unwrap_or_else(|| "latest".into()),
            source: format!(
                "a mover pod was refused under PodSecurity {:?} although {}",
                r.policy, enforced.source
            ),
        },
        _ => enforced,
    }
}

/// The application's identity, from the pod template of the StatefulSet that owns the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIdentity {
    /// The StatefulSet.
    pub set: String,
    /// The container that mounts the claim, whose security context overrides the pod's.
    pub container: Option<String>,
    /// `runAsUser`; `None`: the image's user, which drainer cannot know.
    pub user: Option<i64>,
    /// `runAsGroup`.
    pub group: Option<i64>,
    /// The pod's `fsGroup`.
    pub fs_group: Option<i64>,
    /// The pod's `supplementalGroups`.
    pub supplemental_groups: Vec<i64>,
}

/// The identity with which `set`'s pods use the claims of template `template`: the pod's
/// `runAsUser`, `runAsGroup`, `fsGroup` and `supplementalGroups`, with the user and group of
/// the container that mounts the claim overriding the pod's (the first container that mounts
/// it writable, else the first that mounts it, init containers last).
pub(crate) fn app_identity(set: &StatefulSet, template: &str) -> AppIdentity {
    let spec = set.spec.template.spec.clone().unwrap_or_default();
    let pod = spec.security_context.clone().unwrap_or_default();
    let mounts = |c: &Container, writable: bool| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == template && (!writable || m.read_only != Some(true)))
    };
    let inits = spec.init_containers.clone().unwrap_or_default();
    let container = [(&spec.containers, true), (&spec.containers, false)]
        .into_iter()
        .chain([(&inits, true), (&inits, false)])
        .find_map(|(list, writable)| list.iter().find(|c| mounts(c, writable)));
    let own = container
        .and_then(|c| c.security_context.clone())
        .unwrap_or_default();
    AppIdentity {
        set: set.metadata.name.clone().unwrap_or_default(),
        container: container.map(|c| c.name.clone()),
        user: own.run_as_user.or(pod.run_as_user),
        group: own.run_as_group.or(pod.run_as_group),
        fs_group: pod.fs_group,
        supplemental_groups: pod.supplemental_groups.unwrap_or_default(),
    }
}

/// Which kind of identity a mover has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// uid 0 with only `CAP_DAC_READ_SEARCH`.
    ReadAll,
    /// uid 0 with only `CAP_DAC_OVERRIDE`.
    DacOverride,
    /// The application's user and groups, no capability.
    App,
    /// uid 65534 (with the application's groups, when known), no capability.
    Nobody,
}

/// The user, groups and capability of a mover pod, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoverSecurity {
    /// Which kind.
    pub kind: Kind,
    /// `runAsUser`.
    pub user: i64,
    /// `runAsGroup`; `None` leaves the primary group to the image, as the application's
    /// template does.
    pub group: Option<i64>,
    /// Supplementary groups: the application's `supplementalGroups` and its `fsGroup`. The
    /// `fsGroup` is given as a supplementary group, not as the mover pod's `fsGroup`, which
    /// would have the kubelet change the ownership of volumes it may write.
    pub groups: Vec<i64>,
    /// Why this identity (a phrase, for the history).
    pub why: String,
}

impl MoverSecurity {
    /// The one capability added (every other is dropped).
    pub fn capability(&self) -> Option<&'static str> {
        match self.kind {
            Kind::ReadAll => Some("DAC_READ_SEARCH"),
            Kind::DacOverride => Some("DAC_OVERRIDE"),
            Kind::App | Kind::Nobody => None,
        }
    }

    /// Whether the pod declares `runAsNonRoot`.
    pub(crate) fn non_root(&self) -> bool {
        self.user != 0
    }

    /// "uid 0, gid 0, only CAP_DAC_OVERRIDE", "uid 1000, gid 1000, groups 2000, no capability".
    pub fn describe(&self) -> String {
        let group = match self.group {
            Some(gid) => format!("gid {gid}"),
            None => "the image's gid".into(),
        };
        let groups = if self.groups.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self.groups.iter().map(i64::to_string).collect();
            format!(", groups {}", list.join(" "))
        };
        let capability = match self.capability() {
            Some(cap) => format!("only CAP_{cap}"),
            None => "no capability".into(),
        };
        format!("uid {}, {group}{groups}, {capability}", self.user)
    }
}

/// The mover's identity, for identity mode `mode` (`--mover-identity`), in a namespace that
/// enforces `enforced`, for a claim of the application `app` (`None`: the claim is not known
/// as a StatefulSet's, or its StatefulSet is gone):
///
/// | mode | level | mover |
/// | --- | --- | --- |
/// | auto | privileged | uid 0, only `DAC_READ_SEARCH` (reads everything, writes nothing) |
/// | auto | baseline | uid 0, only `DAC_OVERRIDE` (baseline refuses an added `DAC_READ_SEARCH`) |
/// | auto | restricted | the application's user and groups |
/// | app | any | the application's user and groups (uid 0 only where not restricted) |
/// | nobody | any | uid 65534 |
///
/// Without a usable application user (no `runAsUser` in the template: the image's user, which
/// drainer cannot know; uid 0 where restricted; no StatefulSet), the mover runs as 65534 with
/// the application's groups: it reads what those groups or everyone may read (with an
/// `fsGroup` and its default change policy, the kubelet makes the application's files
/// group-readable at every start), and the files it cannot read are named in the drain's
/// error.
pub fn decide(
    mode: MoverIdentity,
    enforced: &Enforced,
    app: Option<&AppIdentity>,
) -> MoverSecurity {
    let policy = format!(
        "the namespace enforces {} ({})",
        enforced.policy(),
        enforced.source
    );
    match (mode, enforced.level) {
        (MoverIdentity::Auto, Level::Privileged) => MoverSecurity {
            kind: Kind::ReadAll,
            user: 0,
            group: Some(0),
            groups: Vec::new(),
            why: format!("{policy}; it reads every file and writes none"),
        },
        (MoverIdentity::Auto, Level::Baseline) => MoverSecurity {
            kind: Kind::DacOverride,
            user: 0,
            group: Some(0),
            groups: Vec::new(),
            why: format!("{policy}, which allows no added CAP_DAC_READ_SEARCH"),
        },
        (MoverIdentity::Auto, Level::Restricted) => as_app(app, false, &policy),
        (MoverIdentity::App, level) => as_app(
            app,
            level != Level::Restricted,
            &format!("--mover-identity app; {policy}"),
        ),
        (MoverIdentity::Nobody, _) => MoverSecurity {
            kind: Kind::Nobody,
            user: NOBODY,
            group: Some(NOBODY),
            groups: Vec::new(),
            why: format!("--mover-identity nobody; {policy}"),
        },
    }
}

/// What drainer chose for a mover: its identity, and the namespace's labels it chose from
/// (their [`labels_fingerprint`], to learn from a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The identity.
    pub security: MoverSecurity,
    /// The labels' fingerprint.
    pub labels: String,
}

/// The mover's identity from everything drainer knows: the mode and the cluster default
/// (the flags), the namespace's labels (`Err(why)`: unreadable), the last refusal of a mover
/// pod in that namespace, and the application's identity (see [`enforced`],
/// [`with_refusal`], [`decide`]).
pub fn choose(
    mode: MoverIdentity,
    default: Level,
    labels: Result<&BTreeMap<String, String>, &str>,
    refusal: Option<&Refusal>,
    app: Option<&AppIdentity>,
) -> Chosen {
    let fingerprint = labels_fingerprint(labels.ok());
    let policy = with_refusal(enforced(labels, default), refusal, &fingerprint);
    Chosen {
        security: decide(mode, &policy, app),
        labels: fingerprint,
    }
}

/// The application's identity, or 65534 with its groups when its user is not usable.
fn as_app(app: Option<&AppIdentity>, root_allowed: bool, policy: &str) -> MoverSecurity {
    let Some(app) = app else {
        return MoverSecurity {
            kind: Kind::Nobody,
            user: NOBODY,
            group: Some(NOBODY),
            groups: Vec::new(),
            why: format!(
                "{policy}; the claim's StatefulSet is not known (gone, or the claim is no \
                 StatefulSet's), so the application's identity is not either"
            ),
        };
    };
    let mut groups: Vec<i64> = app
        .supplemental_groups
        .iter()
        .copied()
        .chain(app.fs_group)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let whose = match &app.container {
        Some(c) => format!("StatefulSet {}, container {c}", app.set),
        None => format!("StatefulSet {}", app.set),
    };
    let unusable = match app.user {
        None => Some(format!(
            "{whose} sets no runAsUser: its image's user is unknown to drainer"
        )),
        Some(0) if !root_allowed => Some(format!("{whose} runs as uid 0, which it refuses")),
        Some(_) => None,
    };
    match (unusable, app.user) {
        (None, Some(user)) => MoverSecurity {
            kind: Kind::App,
            user,
            group: app.group,
            groups,
            why: format!("the application's identity ({whose}): {policy}"),
        },
        (why, _) => MoverSecurity {
            kind: Kind::Nobody,
            user: NOBODY,
            group: Some(
                app.group
                    .filter(|g| *g != 0 || root_allowed)
                    .unwrap_or(NOBODY),
            ),
            groups,
            why: format!(
                "{policy}; {}; uid {NOBODY} reads what the application's groups or everyone \
                 may read",
                why.unwrap_or_default()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_enforced_policy_is_read_as_pod_security_admission_reads_it() {
        let enforce = ENFORCE_LABEL;
        let version = ENFORCE_VERSION_LABEL;
        // (labels, cluster default, policy, the source says)
        type Case<'a> = (&'a [(&'a str, &'a str)], Level, &'a str, &'a str);
        let cases: [Case; 10] = [
            (&[], Level::Privileged, "privileged:latest", "no label"),
            (&[], Level::Baseline, "baseline:latest", "cluster default"),
            (
                &[(enforce, "baseline")],
                Level::Privileged,
                "baseline:latest",
                "=baseline",
            ),
            (
                &[(enforce, "restricted"), (version, "v1.30")],
                Level::Privileged,
                "restricted:v1.30",
                "label",
            ),
            (
                &[(enforce, "privileged")],
                Level::Restricted,
                "privileged:latest",
                "label",
            ),
            (
                &[(enforce, "Baseline")],
                Level::Privileged,
                "restricted:latest",
                "not a level",
            ),
            (
                &[(enforce, "baseline"), (version, "1.30")],
                Level::Privileged,
                "baseline:latest",
                "label",
            ),
            (
                &[(enforce, "baseline"), (version, "v1.030")],
                Level::Privileged,
                "baseline:latest",
                "label",
            ),
            (
                &[(version, "v1.25")],
                Level::Baseline,
                "baseline:v1.25",
                "no label",
            ),
            (
                &[("pod-security.kubernetes.io/warn", "restricted")],
                Level::Privileged,
                "privileged:latest",
                "no label",
            ),
        ];
        for (pairs, default, policy, says) in cases {
            let got = enforced(Ok(&labels(pairs)), default);
            assert_eq!(got.policy(), policy, "{pairs:?}");
            assert!(got.source.contains(says), "{pairs:?}: {}", got.source);
        }
        let unread = enforced(Err("403 Forbidden"), Level::Baseline);
        assert_eq!(unread.policy(), "baseline:latest");
        assert!(unread.source.contains("403 Forbidden"), "{}", unread.source);
    }

    #[test]
    fn a_refusal_names_its_policy_and_counts_while_the_labels_stay() {
        let message = "Error creating: pods \"drainer-d-1-1-x7k2p\" is forbidden: violates \
                       PodSecurity \"baseline:latest\": non-default capabilities (container \
                       \"mover\" must not include \"DAC_READ_SEARCH\" in securityContext.capabilities.add)";
        assert_eq!(
            refused_policy(message),
            Some((Level::Baseline, "baseline:latest".to_owned()))
        );
        assert_eq!(
            refused_policy("violates PodSecurity \"restricted:v1.29\": x"),
            Some((Level::Restricted, "restricted:v1.29".to_owned()))
        );
        assert_eq!(refused_policy("exceeded quota: compute"), None);
        assert_eq!(
            refused_policy("violates PodSecurity \"strict:latest\""),
            None
        );

        let unlabelled = labels_fingerprint(Some(&labels(&[])));
        let privileged = enforced(Ok(&labels(&[])), Level::Privileged);
        let refusal = Refusal {
            level: Level::Baseline,
            policy: "baseline:latest".into(),
            labels: unlabelled.clone(),
        };
        // (refusal, labels now, policy built for)
        let relabelled = labels_fingerprint(Some(&labels(&[(ENFORCE_LABEL, "privileged")])));
        let cases = [
            (None, unlabelled.clone(), "privileged:latest"),
            (Some(&refusal), unlabelled.clone(), "baseline:latest"),
            (Some(&refusal), relabelled, "privileged:latest"),
            (
                Some(&refusal),
                labels_fingerprint(None),
                "privileged:latest",
            ),
        ];
        for (refusal, now, policy) in cases {
            let got = with_refusal(privileged.clone(), refusal, &now);
            assert_eq!(got.policy(), policy, "{refusal:?} {now}");
        }
        let learned = with_refusal(privileged.clone(), Some(&refusal), &unlabelled);
        assert!(learned.source.contains("was refused"), "{}", learned.source);
        // A refusal never makes the policy less strict.
        let restricted = enforced(
            Ok(&labels(&[(ENFORCE_LABEL, "restricted")])),
            Level::Privileged,
        );
        let fingerprint = labels_fingerprint(Some(&labels(&[(ENFORCE_LABEL, "restricted")])));
        let refusal = Refusal {
            labels: fingerprint.clone(),
            ..refusal
        };
        assert_eq!(
            with_refusal(restricted, Some(&refusal), &fingerprint).level,
            Level::Restricted
        );
    }

    fn set(
        pod: serde_json::Value,
        containers: serde_json::Value,
        inits: serde_json::Value,
    ) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {}, "serviceName": "web",
                "template": {"spec": {"securityContext": pod, "containers": containers, "initContainers": inits}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_application_identity_is_its_pod_template_with_the_claims_container_overriding() {
        let mount = |ro: bool| json!([{"name": "data", "mountPath": "/data", "readOnly": ro}]);
        let pod = json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "supplementalGroups": [3000, 3001]});
        // (pod securityContext, containers, init containers, container, user, group)
        let cases = [
            (
                pod.clone(),
                json!([{"name": "app", "volumeMounts": mount(false)}]),
                json!([]),
                Some("app"),
                Some(1000),
                Some(1000),
            ),
            (
                pod.clone(),
                json!([
                    {"name": "sidecar", "securityContext": {"runAsUser": 7}},
                    {"name": "reader", "volumeMounts": mount(true), "securityContext": {"runAsUser": 8}},
                    {"name": "app", "volumeMounts": mount(false), "securityContext": {"runAsUser": 1001, "runAsGroup": 1002}}
                ]),
                json!([]),
                Some("app"),
                Some(1001),
                Some(1002),
            ),
            (
                pod.clone(),
                json!([{"name": "reader", "volumeMounts": mount(true), "securityContext": {"runAsUser": 8}}]),
                json!([{"name": "init", "volumeMounts": mount(false), "securityContext": {"runAsUser": 9}}]),
                Some("reader"),
                Some(8),
                Some(1000),
            ),
            (
                pod.clone(),
                json!([{"name": "app"}]),
                json!([{"name": "init", "volumeMounts": mount(false), "securityContext": {"runAsUser": 9}}]),
                Some("init"),
                Some(9),
                Some(1000),
            ),
            (
                json!(null),
                json!([{"name": "app", "volumeMounts": mount(false), "securityContext": {"runAsGroup": 5}}]),
                json!([]),
                Some("app"),
                None,
                Some(5),
            ),
            (
                pod.clone(),
                json!([{"name": "app"}]),
                json!([]),
                None,
                Some(1000),
                Some(1000),
            ),
        ];
        for (pod_context, containers, inits, container, user, group) in cases {
            let with_groups = pod_context.get("fsGroup").is_some();
            let app = app_identity(&set(pod_context, containers.clone(), inits), "data");
            assert_eq!(app.set, "web");
            assert_eq!(app.container.as_deref(), container, "{containers}");
            assert_eq!((app.user, app.group), (user, group), "{containers}");
            if with_groups {
                assert_eq!(app.fs_group, Some(2000));
                assert_eq!(app.supplemental_groups, [3000, 3001]);
            }
        }
    }

    #[test]
    fn the_mover_identity_follows_the_mode_the_level_and_the_application() {
        let policy = |level| Enforced {
            level,
            version: "latest".into(),
            source: "its label".into(),
        };
        let app = |user: Option<i64>| AppIdentity {
            set: "web".into(),
            container: Some("app".into()),
            user,
            group: Some(1000),
            fs_group: Some(2000),
            supplemental_groups: vec![3000, 2000],
        };
        let (a1000, anone, aroot) = (app(Some(1000)), app(None), app(Some(0)));
        use Kind::*;
        use Level::*;
        use MoverIdentity as M;
        // (mode, level, application, kind, uid, gid, groups, the reason says)
        type Case<'a> = (
            M,
            Level,
            Option<&'a AppIdentity>,
            Kind,
            i64,
            Option<i64>,
            &'a [i64],
            &'a str,
        );
        let cases: [Case; 14] = [
            (
                M::Auto,
                Privileged,
                Some(&a1000),
                ReadAll,
                0,
                Some(0),
                &[],
                "privileged:latest",
            ),
            (
                M::Auto,
                Privileged,
                None,
                ReadAll,
                0,
                Some(0),
                &[],
                "writes none",
            ),
            (
                M::Auto,
                Baseline,
                Some(&a1000),
                DacOverride,
                0,
                Some(0),
                &[],
                "no added CAP_DAC_READ_SEARCH",
            ),
            (
                M::Auto,
                Restricted,
                Some(&a1000),
                App,
                1000,
                Some(1000),
                &[2000, 3000],
                "StatefulSet web, container app",
            ),
            (
                M::Auto,
                Restricted,
                Some(&anone),
                Nobody,
                NOBODY,
                Some(1000),
                &[2000, 3000],
                "sets no runAsUser",
            ),
            (
                M::Auto,
                Restricted,
                Some(&aroot),
                Nobody,
                NOBODY,
                Some(1000),
                &[2000, 3000],
                "runs as uid 0",
            ),
            (
                M::Auto,
                Restricted,
                None,
                Nobody,
                NOBODY,
                Some(NOBODY),
                &[],
                "StatefulSet is not known",
            ),
            (
                M::App,
                Privileged,
                Some(&a1000),
                App,
                1000,
                Some(1000),
                &[2000, 3000],
                "--mover-identity app",
            ),
            (
                M::App,
                Privileged,
                Some(&aroot),
                App,
                0,
                Some(1000),
                &[2000, 3000],
                "identity",
            ),
            (
                M::App,
                Baseline,
                Some(&anone),
                Nobody,
                NOBODY,
                Some(1000),
                &[2000, 3000],
                "no runAsUser",
            ),
            (
                M::App,
                Restricted,
                Some(&aroot),
                Nobody,
                NOBODY,
                Some(1000),
                &[2000, 3000],
                "uid 0",
            ),
            (
                M::App,
                Baseline,
                None,
                Nobody,
                NOBODY,
                Some(NOBODY),
                &[],
                "not known",
            ),
            (
                M::Nobody,
                Privileged,
                Some(&a1000),
                Nobody,
                NOBODY,
                Some(NOBODY),
                &[],
                "--mover-identity nobody",
            ),
            (
                M::Nobody,
                Restricted,
                Some(&a1000),
                Nobody,
                NOBODY,
                Some(NOBODY),
                &[],
                "restricted:latest",
            ),
        ];
        for (mode, level, app, kind, user, group, groups, says) in cases {
            let got = decide(mode, &policy(level), app);
            let what = format!("{mode:?} {level:?} {:?}", app.map(|a| a.user));
            assert_eq!(got.kind, kind, "{what}");
            assert_eq!((got.user, got.group), (user, group), "{what}");
            assert_eq!(got.groups, groups, "{what}");
            assert!(got.why.contains(says), "{what}: {}", got.why);
            // Only root movers have a capability, and only under the levels that allow it.
            assert_eq!(
                got.capability().is_some(),
                user == 0 && mode == M::Auto,
                "{what}"
            );
            assert_eq!(got.non_root(), user != 0, "{what}");
        }
        // A root group where restricted: the application's gid 0 is kept only where root is.
        let gid0 = AppIdentity {
            group: Some(0),
            ..anone.clone()
        };
        assert_eq!(
            decide(M::Auto, &policy(Restricted), Some(&gid0)).group,
            Some(NOBODY)
        );
        assert_eq!(
            decide(M::App, &policy(Baseline), Some(&gid0)).group,
            Some(0)
        );
    }

    #[test]
    fn an_identity_is_described_in_one_line() {
        let policy = Enforced {
            level: Level::Baseline,
            version: "latest".into(),
            source: "its label".into(),
        };
        let root = decide(MoverIdentity::Auto, &policy, None);
        assert_eq!(root.describe(), "uid 0, gid 0, only CAP_DAC_OVERRIDE");
        let app = MoverSecurity {
            kind: Kind::App,
            user: 1000,
            group: None,
            groups: vec![2000, 3000],
            why: String::new(),
        };
        assert_eq!(
            app.describe(),
            "uid 1000, the image's gid, groups 2000 3000, no capability"
        );
    }
}
