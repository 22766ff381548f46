"""A Google Cloud Storage server for drainer's tests: the parts of GCS's XML API that
object_store's `gs://` client uses, written from Google's documentation (independent of the
Rust object_store crate), on 127.0.0.1 with one bucket, "bucket".

Usage: gcs_server.py SERVICE_ACCOUNT_FILE

Writes a new service account key (an RSA key, as GCS's console gives one) to
SERVICE_ACCOUNT_FILE, prints the endpoint URL on one line, then serves until its standard input
is closed. Every request must carry `Authorization: Bearer JWT`, a JWT signed (RS256) with that
key and issued by its account, as a client with a service account key sends one; others get
401. No public fake speaks GCS's XML API for multipart uploads, hence this one.

What it covers (https://cloud.google.com/storage/docs/xml-api/overview):
  PUT    /bucket/OBJECT                  upload (x-goog-if-generation-match: 0 = only if absent),
                                         or copy with x-goog-copy-source: /bucket/OBJECT
  GET    /bucket/OBJECT, HEAD            download, whole or one Range (206, 416)
  DELETE /bucket/OBJECT                  204; 404 NoSuchKey if absent, as GCS answers
  GET    /bucket?list-type=2             list: prefix, delimiter, continuation-token,
                                         max-keys (at most 1000), start-after
  POST   /bucket/OBJECT?uploads          XML multipart upload: initiate
  PUT    /bucket/OBJECT?partNumber&uploadId   a part (ETag: its MD5)
  POST   /bucket/OBJECT?uploadId         complete with the parts listed, in order
  DELETE /bucket/OBJECT?uploadId         abort
Objects carry an ETag (MD5, or MD5-of-parts for multipart), x-goog-generation and
Last-Modified. GET /_stats (no auth) answers counters as JSON, for tests. Not covered: the JSON
API, resumable (JSON-API) uploads, signed URLs, ACLs, versioning, other buckets.
"""

import base64
import email.utils
import hashlib
import json
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

BUCKET = "bucket"
ACCOUNT = "drainer-test@drainer-test.iam.gserviceaccount.com"
PAGE = 1000


class Object:
    def __init__(self, data, etag, generation):
        self.data, self.etag, self.generation = data, etag, generation
        self.modified = time.time()


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.objects = {}
        self.uploads = {}
        self.generation = 0
        self.stats = {"object_puts": 0, "part_puts": 0, "bytes_in": 0, "unauthorized": 0}

    def put(self, name, data, etag):
        self.generation += 1
        self.objects[name] = Object(data, etag, self.generation)
        return self.objects[name]


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None
    public_key = None

    def log_message(self, *args):
        pass

    # -- plumbing ------------------------------------------------------------------------
    def reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status, code, message, head=False):
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message></Error>"
            % (code, message)
        ).encode()
        self.reply(status, body, {"Content-Type": "application/xml"}, head)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        try:
            header, payload, signature = auth[len("Bearer "):].split(".")
            self.public_key.verify(
                b64url(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(b64url(payload))
        except Exception:
            return False
        return claims.get("iss") == ACCOUNT and claims.get("exp", 0) > time.time()

    def target(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        path = urllib.parse.unquote(url.path).lstrip("/")
        bucket, _, name = path.partition("/")
        return bucket, name, {k: v[0] for k, v in query.items()}

    def route(self, method):
        if method == "GET" and self.path == "/_stats":
            with self.store.lock:
                return self.reply(200, json.dumps(self.store.stats).encode())
        if not self.authorized():
            with self.store.lock:
                self.store.stats["unauthorized"] += 1
            self.body()
            return self.error(401, "AuthenticationRequired", "bad or missing bearer token")
        bucket, name, query = self.target()
        if bucket != BUCKET:
            self.body()
            return self.error(404, "NoSuchBucket", "no such bucket")
        handler = {
            "GET": self.get_or_list,
            "HEAD": lambda n, q: self.get(n, head=True),
            "PUT": self.put,
            "DELETE": self.delete,
            "POST": self.post,
        }[method]
        return handler(name, query)

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")

    def do_POST(self):
        self.route("POST")

    def object_headers(self, obj):
        return {
            "ETag": obj.etag,
            "x-goog-generation": str(obj.generation),
            "Last-Modified": email.utils.formatdate(obj.modified, usegmt=True),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }

    # -- objects -------------------------------------------------------------------------
    def get_or_list(self, name, query):
        if not name:
            return self.list(query)
        return self.get(name)

    def get(self, name, head=False):
        with self.store.lock:
            obj = self.store.objects.get(name)
        if obj is None:
            return self.error(404, "NoSuchKey", "no such object", head)
        headers = self.object_headers(obj)
        wanted = self.headers.get("Range")
        if not wanted:
            return self.reply(200, obj.data, headers, head)
        size = len(obj.data)
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            headers["Content-Range"] = f"bytes */{size}"
            return self.error(416, "InvalidRange", "range not satisfiable", head)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return self.reply(206, obj.data[start : end + 1], headers, head)

    def put(self, name, query):
        data = self.body()
        if "uploadId" in query:
            return self.put_part(name, query, data)
        only_if_absent = self.headers.get("x-goog-if-generation-match") == "0"
        source = self.headers.get("x-goog-copy-source")
        with self.store.lock:
            if only_if_absent and name in self.store.objects:
                return self.error(412, "PreconditionFailed", "the object exists")
            if source is not None:
                src_bucket, _, src = urllib.parse.unquote(source).lstrip("/").partition("/")
                obj = self.store.objects.get(src) if src_bucket == BUCKET else None
                if obj is None:
                    return self.error(404, "NoSuchKey", "no such copy source")
                copied = self.store.put(name, obj.data, obj.etag)
                body = (
                    "<CopyObjectResult><ETag>%s</ETag></CopyObjectResult>" % copied.etag
                ).encode()
                return self.reply(200, body, self.object_headers(copied))
            self.store.stats["object_puts"] += 1
            self.store.stats["bytes_in"] += len(data)
            obj = self.store.put(name, data, md5_etag(data))
        return self.reply(200, b"", self.object_headers(obj))

    def delete(self, name, query):
        self.body()
        with self.store.lock:
            if "uploadId" in query:
                self.store.uploads.pop(query["uploadId"], None)
                return self.reply(204)
            if self.store.objects.pop(name, None) is None:
                return self.error(404, "NoSuchKey", "no such object")
        return self.reply(204)

    def list(self, query):
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter")
        after = query.get("continuation-token") or query.get("start-after") or ""
        limit = min(int(query.get("max-keys") or PAGE), PAGE)
        with self.store.lock:
            names = sorted(n for n in self.store.objects if n.startswith(prefix) and n > after)
            objects = dict(self.store.objects)
        root = ET.Element("ListBucketResult")
        ET.SubElement(root, "Name").text = BUCKET
        ET.SubElement(root, "Prefix").text = prefix
        count, prefixes, last = 0, set(), None
        for n in names:
            if count >= limit:
                break
            rest = n[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in prefixes:
                    prefixes.add(common)
                    count += 1
                last = n
                continue
            obj = objects[n]
            item = ET.SubElement(root, "Contents")
            ET.SubElement(item, "Key").text = n
            ET.SubElement(item, "Size").text = str(len(obj.data))
            ET.SubElement(item, "LastModified").text = time.strftime(
                "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(obj.modified)
            )
            ET.SubElement(item, "ETag").text = obj.etag
            count += 1
            last = n
        for p in sorted(prefixes):
            ET.SubElement(ET.SubElement(root, "CommonPrefixes"), "Prefix").text = p
        truncated = last is not None and names and last != names[-1] and count >= limit
        ET.SubElement(root, "IsTruncated").text = "true" if truncated else "false"
        if truncated:
            ET.SubElement(root, "NextContinuationToken").text = last
        body = b"<?xml version='1.0' encoding='UTF-8'?>" + ET.tostring(root)
        return self.reply(200, body, {"Content-Type": "application/xml"})

    # -- multipart uploads ---------------------------------------------------------------
    def post(self, name, query):
        """Initiates (`?uploads`) or completes (`?uploadId`) a multipart upload."""
        data = self.body()
        if "uploads" in query:
            upload = uuid.uuid4().hex
            with self.store.lock:
                self.store.uploads[upload] = {"name": name, "parts": {}}
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                "<Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>"
                "</InitiateMultipartUploadResult>" % (BUCKET, name, upload)
            ).encode()
            return self.reply(200, body, {"Content-Type": "application/xml"})
        upload_id = query.get("uploadId")
        with self.store.lock:
            upload = self.store.uploads.get(upload_id)
            if upload is None or upload["name"] != name:
                return self.error(404, "NoSuchUpload", "no such upload")
            try:
                listed = [
                    (int(p.findtext("PartNumber")), p.findtext("ETag"))
                    for p in ET.fromstring(data).iter("Part")
                ]
            except (ET.ParseError, TypeError, ValueError):
                return self.error(400, "MalformedXML", "not a part list")
            numbers = [n for n, _ in listed]
            if not listed or numbers != sorted(set(numbers)):
                return self.error(400, "InvalidPartOrder", "parts must be listed in order")
            chunks, digests = [], b""
            for number, etag in listed:
                part = upload["parts"].get(number)
                if part is None or part[1] != etag:
                    return self.error(400, "InvalidPart", "part %d was not uploaded" % number)
                chunks.append(part[0])
                digests += hashlib.md5(part[0]).digest()
            etag = '"%s-%d"' % (hashlib.md5(digests).hexdigest(), len(listed))
            obj = self.store.put(name, b"".join(chunks), etag)
            del self.store.uploads[upload_id]
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
            "<Location>/%s/%s</Location><Bucket>%s</Bucket><Key>%s</Key><ETag>%s</ETag>"
            "</CompleteMultipartUploadResult>" % (BUCKET, name, BUCKET, name, obj.etag)
        ).encode()
        headers = {"Content-Type": "application/xml", "x-goog-generation": str(obj.generation)}
        return self.reply(200, body, headers)

    def put_part(self, name, query, data):
        try:
            number = int(query.get("partNumber", ""))
        except ValueError:
            return self.error(400, "InvalidArgument", "bad partNumber")
        if not 1 <= number <= 10000:
            return self.error(400, "InvalidArgument", "partNumber out of range")
        with self.store.lock:
            upload = self.store.uploads.get(query["uploadId"])
            if upload is None or upload["name"] != name:
                return self.error(404, "NoSuchUpload", "no such upload")
            etag = md5_etag(data)
            upload["parts"][number] = (data, etag)
            self.store.stats["part_puts"] += 1
            self.store.stats["bytes_in"] += len(data)
        return self.reply(200, b"", {"ETag": etag})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that went away (a copy killed mid-request) is not an error here."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main():
    account_file = sys.argv[1]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with open(account_file, "w") as f:
        json.dump(
            {
                "type": "service_account",
                "project_id": "drainer-test",
                "private_key_id": "drainer-test-key",
                "private_key": pem,
                "client_email": ACCOUNT,
            },
            f,
        )
    Handler.store = Store()
    Handler.public_key = key.public_key()
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
