"""An S3-protocol server for drainer's tests: moto's server (an implementation independent of
the Rust object_store crate) on 127.0.0.1 (or the address given as its one argument) with one bucket, "bucket".

Prints the endpoint URL on one line, then serves until its standard input is closed.
"""
import logging
import sys

import boto3
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)
ip = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
server = ThreadedMotoServer(ip_address=ip, port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="drainer-test-key",
    aws_secret_access_key="drainer-test-secret",
    region_name="us-east-1",
).create_bucket(Bucket="bucket")
print(endpoint, flush=True)
sys.stdin.read()
server.stop()
