"""Uploads files as multipart S3 objects with a fixed part size and no additional checksum, the
way older SDKs and many tools leave them: the ETag is the MD5 of the parts' MD5s, "-N".

usage: seed_multipart.py ENDPOINT BUCKET PREFIX PART_MIB FILE...
"""
import os
import sys

import boto3
from botocore.config import Config

endpoint, bucket, prefix, part_mib = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/"), int(sys.argv[4])
s3 = boto3.client(
    "s3", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id="bench", aws_secret_access_key="benchsecret",
    # Current SDKs add a CRC to every upload; this object kind is the one without.
    config=Config(request_checksum_calculation="when_required"),
)
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
part = part_mib << 20
for path in sys.argv[5:]:
    key = f"{prefix}/{os.path.basename(path)}"
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    with open(path, "rb") as f:
        n = 1
        while chunk := f.read(part):
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=chunk)
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
            n += 1
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].endswith(f'-{len(parts)}"'), head["ETag"]
    assert not any(k.startswith("Checksum") for k in head), head
    print(f"{key} {head['ETag']}")
