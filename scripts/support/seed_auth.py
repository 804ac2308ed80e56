"""Prepares the moto server that checks signatures (started with INITIAL_NO_AUTH_ACTION_COUNT=3):
the first three requests create an IAM user, its access key and an allow-all policy; everything
after that must be signed with that key. Prints the key id and secret on one line."""
import json
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="loader")
key = iam.create_access_key(UserName="loader")["AccessKey"]
iam.put_user_policy(UserName="loader", PolicyName="all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}))
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket=bucket)
# Keys without characters that need encoding in a query: moto 5.2.1 checks signatures against
# the decoded query string, so an encoded '/' in a list prefix would fail there (not on AWS).
s3.put_object(Bucket=bucket, Key="config.json", Body=b'{"model_type": "llama"}')
s3.put_object(Bucket=bucket, Key="model.safetensors", Body=bytes(range(256)) * 1024)
print(key["AccessKeyId"], key["SecretAccessKey"])
