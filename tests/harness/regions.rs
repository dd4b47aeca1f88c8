//! S3 as it answers a client that signs for another region than the bucket's, in front of
//! moto (which keeps buckets of all regions in one place and answers them all). As AWS
//! documents it: `301 Moved Permanently` with the bucket's region in `x-amz-bucket-region`, and
//! for a request with a body to answer, a `PermanentRedirect` error naming the endpoint to use.

use crate::faultproxy::{Answer, Front, Request};

/// `bucket` lives in `region`: every S3 request for it (path-style) gets the redirect.
pub struct OtherRegion {
    pub bucket: String,
    pub region: String,
}

impl Front for OtherRegion {
    fn answer(&self, request: &Request) -> Option<Answer> {
        // SSM's calls name their operation in X-Amz-Target; S3's do not.
        if request.header("x-amz-target").is_some() {
            return None;
        }
        let ours = format!("/{}", self.bucket);
        if request.path != ours && !request.path.starts_with(&format!("{ours}/")) {
            return None;
        }
        let body = match request.method.as_str() {
            "HEAD" => String::new(),
            _ => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code>\
                 <Message>The bucket you are attempting to access must be addressed using the \
                 specified endpoint. Please send all future requests to this endpoint.</Message>\
                 <Endpoint>{bucket}.s3.{region}.amazonaws.com</Endpoint><Bucket>{bucket}</Bucket>\
                 <RequestId>f7017000</RequestId></Error>",
                bucket = self.bucket,
                region = self.region,
            ),
        };
        Some(Answer {
            status: 301,
            content_type: "application/xml",
            headers: vec![("x-amz-bucket-region".into(), self.region.clone())],
            body,
        })
    }
}
