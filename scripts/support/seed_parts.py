"""Uploads one file as a multipart object cut into parts of the given sizes, so tests can meet
objects whose parts are not equal but the last (written by tools other than aws-cli, boto3,
s5cmd and rclone).

usage: seed_parts.py ENDPOINT BUCKET KEY PATH SIZES [ALGORITHM]
SIZES: part lengths in bytes, comma-separated, adding up to the file's length. ALGORITHM
(CRC32, SHA256, ...) gives every part an S3 checksum, so the object gets a composite one.
The bucket is created if missing. Prints the object's ETag and checksum headers."""
import sys

from s3_client import client

endpoint, bucket, key, path, sizes = sys.argv[1:6]
algorithm = sys.argv[6] if len(sys.argv) > 6 else None
s3 = client(endpoint, bucket)
lengths = [int(n) for n in sizes.split(",")]
with open(path, "rb") as f:
    data = f.read()
if sum(lengths) != len(data):
    sys.exit(f"the part sizes add up to {sum(lengths)}, the file is {len(data)} bytes")
extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
parts, at = [], 0
for number, n in enumerate(lengths, start=1):
    reply = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data[at : at + n], **extra
    )
    part = {"PartNumber": number, "ETag": reply["ETag"]}
    if algorithm:
        name = "Checksum" + algorithm
        part[name] = reply[name]
    parts.append(part)
    at += n
s3.complete_multipart_upload(
    Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
)
head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
print({k: v for k, v in head["ResponseMetadata"]["HTTPHeaders"].items() if "checksum" in k or k == "etag"})
