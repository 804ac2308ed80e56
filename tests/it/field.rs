//! What real clouds do that the emulators do not (issue 24): each test puts a small front
//! before a real server that behaves as the real service does, citing where that behaviour
//! is documented or reported.

use std::collections::BTreeMap;

use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

fn small_model(name: &str) -> (String, String, BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/weights.bin".to_string(), data(21, (1 << 20) + 3));
    objects.insert("m/config.json".to_string(), b"{\"layers\": 2}".to_vec());
    seed_s3(&ep, &b, &objects);
    (ep, b, objects)
}

/// EKS's credential webhooks inject the cluster's `AWS_REGION` (real-world-quirks §1.1); a
/// bucket elsewhere answers 301 without Location (AWS) or 400 AuthorizationHeaderMalformed
/// (MinIO with MINIO_REGION). aws-cli and boto3 follow; so must the loader, for the listing,
/// the checksum HEADs and the data, and say so once.
#[test]
fn a_bucket_in_another_region_is_followed_there() {
    for malformed in [false, true] {
        let (ep, b, objects) = small_model("region");
        let front = Proxy::with_fault(
            &ep,
            Fault::Region {
                bucket_region: "eu-central-1",
                malformed,
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = run(loader(&front.url(), tmp.path())
            .env("AWS_REGION", "us-west-2")
            .args(["--chunk-size", "256KiB"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "malformed={malformed}");
        assert_eq!(tree(&dest), expected(&objects, "m/"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr
                .matches(&format!("bucket {b} is in eu-central-1, not us-west-2"))
                .count(),
            1,
            "{stderr}"
        );
        // Learnt once: after the first refusal, every request is signed for the bucket's region.
        let refused = front
            .heads()
            .iter()
            .filter(|h| h.contains("/us-west-2/s3/aws4_request"))
            .count();
        assert!(
            refused <= 2,
            "{refused} requests signed for the wrong region"
        );
    }
}

/// A machine whose clock is off by more than 15 minutes gets 403 RequestTimeTooSkewed from
/// S3, OSS and OBS. The AWS SDKs for Java and JavaScript correct from the reply's time
/// (`correctClockSkew`); aws-cli does not (aws/aws-cli#8662). The loader corrects, warns once
/// naming the offset, and loads.
#[test]
fn a_skewed_clock_is_corrected_from_the_servers_date() {
    let (ep, b, objects) = small_model("skew");
    let front = Proxy::with_fault(
        &ep,
        Fault::Skew {
            server_ahead_secs: 20 * 60,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&front.url(), tmp.path())
        .args(["--chunk-size", "256KiB"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("RequestTimeTooSkewed").count(),
        1,
        "one warning: {stderr}"
    );
    assert!(stderr.contains("behind the server's"), "{stderr}");
}
