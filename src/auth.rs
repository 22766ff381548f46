//! Authentication and authorisation of API calls, behind one interface.
//!
//! An [`Authenticator`] turns a request's bearer token into a [`Caller`]; [`authorize`] says
//! what a caller may do. Local mode uses a static token whose holder is an admin. The
//! Kubernetes mode (TokenReview: pod identity from projected ServiceAccount tokens, "a pod may
//! hand off only its own volumes", "a mover may write only its own drain") plugs in as another
//! `Authenticator` without touching the handlers.

use crate::volume::VolumeId;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator or the local token holder: may do everything.
    Admin,
    /// A pod, identified by its ServiceAccount token.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The PVCs it mounts.
        mounts: Vec<String>,
    },
    /// A mover Job working for one drain.
    Mover {
        /// The drain it works for.
        drain: String,
    },
}

/// What a caller asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Hand off these volumes.
    Handoff(&'a [VolumeId]),
    /// Read drains, volumes and snapshots.
    Read,
    /// Retry, cancel, sweep.
    Admin,
    /// Stream data into one drain.
    Stream(&'a str),
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No or malformed credentials.
    #[error("missing or malformed bearer token")]
    Missing,
    /// Credentials that do not identify anyone.
    #[error("invalid token")]
    Invalid,
    /// A known caller asking for something it may not do.
    #[error("{0}")]
    Forbidden(String),
}

/// Turns a bearer token into a caller.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Identifies the holder of `token`.
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied>;
}

/// Local mode: one static token, whose holder is an admin.
pub struct StaticToken {
    token: String,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(…)")
    }
}

impl StaticToken {
    /// Accepts exactly `token`.
    pub fn new(token: String) -> Self {
        Self { token }
    }
}

#[async_trait::async_trait]
impl Authenticator for StaticToken {
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied> {
        if constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            Ok(Caller::Admin)
        } else {
            Err(Denied::Invalid)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, Denied> {
    let value = header.ok_or(Denied::Missing)?;
    let token = value.strip_prefix("Bearer ").ok_or(Denied::Missing)?.trim();
    if token.is_empty() {
        Err(Denied::Missing)
    } else {
        Ok(token)
    }
}

/// Whether `caller` may do `action`.
pub fn authorize(caller: &Caller, action: &Action<'_>) -> Result<(), Denied> {
    match (caller, action) {
        (Caller::Admin, _) => Ok(()),
        (
            Caller::Pod {
                namespace,
                name,
                mounts,
            },
            Action::Handoff(volumes),
        ) => {
            match volumes
                .iter()
                .find(|v| v.namespace != *namespace || !mounts.contains(&v.name))
            {
                None => Ok(()),
                Some(v) => Err(Denied::Forbidden(format!(
                    "pod {namespace}/{name} does not mount {v}"
                ))),
            }
        }
        (Caller::Mover { drain }, Action::Stream(target)) if drain == target => Ok(()),
        (Caller::Mover { drain }, _) => Err(Denied::Forbidden(format!(
            "a mover may only stream into drain {drain}"
        ))),
        (
            Caller::Pod {
                namespace, name, ..
            },
            _,
        ) => Err(Denied::Forbidden(format!(
            "pod {namespace}/{name} may only hand off its own volumes"
        ))),
    }
}

/// Creates the local token file (mode 0600) with a fresh random token if it does not exist;
/// returns the token.
pub fn load_or_create_token(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(token) => Ok(token.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Caller {
        Caller::Pod {
            namespace: "shop".into(),
            name: "web-4".into(),
            mounts: vec!["data-web-4".into()],
        }
    }

    #[test]
    fn pods_hand_off_only_what_they_mount() {
        let own = ["shop/data-web-4".parse().unwrap()];
        let other: [VolumeId; 1] = ["shop/data-web-3".parse().unwrap()];
        let elsewhere: [VolumeId; 1] = ["other/data-web-4".parse().unwrap()];
        assert_eq!(authorize(&pod(), &Action::Handoff(&own)), Ok(()));
        assert!(authorize(&pod(), &Action::Handoff(&other)).is_err());
        assert!(authorize(&pod(), &Action::Handoff(&elsewhere)).is_err());
        assert!(authorize(&pod(), &Action::Read).is_err());
        assert!(authorize(&pod(), &Action::Admin).is_err());
    }

    #[test]
    fn movers_stream_only_into_their_drain() {
        let mover = Caller::Mover {
            drain: "d-1".into(),
        };
        assert_eq!(authorize(&mover, &Action::Stream("d-1")), Ok(()));
        assert!(authorize(&mover, &Action::Stream("d-2")).is_err());
        assert!(authorize(&mover, &Action::Admin).is_err());
        assert_eq!(authorize(&Caller::Admin, &Action::Admin), Ok(()));
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(Denied::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(Denied::Missing));
        assert_eq!(bearer(Some("Bearer ")), Err(Denied::Missing));
    }

    #[tokio::test]
    async fn static_token_accepts_only_itself() {
        let auth = StaticToken::new("secret".into());
        assert_eq!(auth.authenticate("secret").await, Ok(Caller::Admin));
        assert_eq!(auth.authenticate("secreT").await, Err(Denied::Invalid));
        assert_eq!(auth.authenticate("").await, Err(Denied::Invalid));
    }

    #[test]
    fn token_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&path).unwrap(), first);
    }
}
