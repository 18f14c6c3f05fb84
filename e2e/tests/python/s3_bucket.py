"""The test's view of an S3-compatible server, through boto3 (which moto
installs): create a bucket, list its keys under a prefix (one a line,
with their sizes), or overwrite an object as an attacker with the keys would.

usage: s3_bucket.py ENDPOINT create BUCKET
       s3_bucket.py ENDPOINT list BUCKET PREFIX
       s3_bucket.py ENDPOINT put BUCKET KEY TEXT   (overwrites an object)
"""

import sys

import boto3


def main():
    endpoint, command, bucket = sys.argv[1:4]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="cobble-test",
        aws_secret_access_key="cobble-test-secret",
        region_name="us-east-1",
    )
    if command == "create":
        s3.create_bucket(Bucket=bucket)
    elif command == "list":
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=sys.argv[4]
        )
        for page in pages:
            for item in page.get("Contents", []):
                print(item["Key"], item["Size"])
    elif command == "put":
        s3.put_object(Bucket=bucket, Key=sys.argv[4], Body=sys.argv[5].encode())
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
