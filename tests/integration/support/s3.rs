//! An S3-protocol server on loopback for the tests: moto's server (Python; an implementation
//! independent of the object_store crate drainer uses), one per test, with one bucket.

use object_store::ObjectStoreExt;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

/// Access key the tests use.
pub const KEY: &str = "drainer-test-key";
/// Secret the tests use.
pub const SECRET: &str = "drainer-test-secret";

/// A running server; stops when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _child: tokio::process::Child,
}

impl S3Server {
    /// Starts a server with one bucket, `bucket`.
    pub async fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/support/s3_server.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the S3 test server (scripts/test installs moto)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("the S3 test server started within a minute")
            .expect("read the S3 endpoint");
        assert!(
            line.starts_with("http://"),
            "the S3 test server did not start (is moto installed? run scripts/test): {line:?}"
        );
        Self {
            endpoint: line.trim().to_owned(),
            _child: child,
        }
    }

    /// Sets the `AWS_*` variables that point a drainer process at this server.
    pub fn configure(&self, cmd: &mut tokio::process::Command) {
        cmd.envs(self.env());
    }

    /// The `AWS_*` variables that point a drainer process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ]
    }

    /// A client of the bucket, independent of any drainer process.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name("bucket")
            .with_access_key_id(KEY)
            .with_secret_access_key(SECRET)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    /// Every key in the bucket under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let client = self.client();
        let prefix = object_store::path::Path::parse(prefix).unwrap();
        let listed: Vec<_> = object_store::ObjectStore::list(&client, Some(&prefix))
            .try_collect()
            .await
            .unwrap();
        listed.into_iter().map(|m| m.location.to_string()).collect()
    }

    /// The bytes of one object.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        let key = object_store::path::Path::parse(key).unwrap();
        self.client()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Completes the multipart upload `upload` of `key` with the parts `part_ids` (the store's
    /// ids, in order), as a copy that died before it could record so would have.
    pub async fn complete_upload(&self, key: &str, upload: &str, part_ids: &[String]) {
        use object_store::multipart::{MultipartStore, PartId};
        let key = object_store::path::Path::parse(key).unwrap();
        let parts = part_ids
            .iter()
            .map(|id| PartId {
                content_id: id.clone(),
            })
            .collect();
        MultipartStore::complete_multipart(&self.client(), &key, &upload.to_owned(), parts)
            .await
            .expect("complete the upload out of band");
    }
}
