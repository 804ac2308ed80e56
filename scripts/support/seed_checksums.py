"""Uploads one file as a multipart object with an S3 additional checksum, the way boto3 does
(8 MiB parts), so tests can check that model-loader verifies such objects.

usage: seed_checksums.py ENDPOINT BUCKET KEY PATH ALGORITHM [single]
ALGORITHM: CRC32, SHA1, SHA256; `single` uploads it in one PUT instead (a single-part object).
The bucket is created if missing. Prints the object's checksum headers."""
import sys

from boto3.s3.transfer import TransferConfig

from s3_client import client

endpoint, bucket, key, path, algorithm = sys.argv[1:6]
s3 = client(endpoint, bucket)
part = 8 * 1024 * 1024
if sys.argv[6:] == ["single"]:
    part = 1 << 40
config = TransferConfig(multipart_threshold=part, multipart_chunksize=min(part, 1 << 30))
s3.upload_file(path, bucket, key, ExtraArgs={"ChecksumAlgorithm": algorithm}, Config=config)
head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
print({k: v for k, v in head["ResponseMetadata"]["HTTPHeaders"].items() if "checksum" in k or k == "etag"})
