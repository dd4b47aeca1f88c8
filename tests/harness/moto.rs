//! moto in server mode on loopback, playing SSM and S3: one server per test process, shared by
//! all its tests (each test keeps to its own bucket and parameter names), plus the few raw calls
//! the tests need beyond drover's own commands: create a bucket, put or get an object or a
//! parameter directly.
//!
//! moto's log is `$TMPDIR/drover-tests-moto-PID-PORT.log` while it runs; it is removed when moto
//! stops unless `DROVER_TEST_KEEP_LOGS` is set.
//!
//! Raw calls are plain HTTP with a made-up SigV4 `Authorization` header: moto does not check
//! signatures, but it reads the service from the header's scope and treats requests without one
//! as anonymous (S3 then answers 403).

use crate::http::{self, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A running moto server. The process ends when this is dropped or, for the shared one, when
/// the test process exits: it runs under a small shell that kills it as soon as its stdin, a
/// pipe from this process, reaches end of file.
pub struct Moto {
    port: u16,
    log: PathBuf,
    guard: Mutex<Option<(Child, ChildStdin)>>,
}

impl Moto {
    /// The server shared by every test of this process, started on first use.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }

    /// Starts a server of its own on a free port and waits until it answers.
    pub fn start() -> Moto {
        crate::require_setup();
        let server = crate::cache_dir().join("venv/bin/moto_server");
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!(
            "drover-tests-moto-{}-{port}.log",
            std::process::id()
        ));
        let script = r#"server=$1; port=$2; log=$3
"$server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
pid=$!
read -r _ || true
kill "$pid"
wait "$pid"
[ -n "${DROVER_TEST_KEEP_LOGS:-}" ] || rm -f "$log""#;
        let mut child = Command::new("sh")
            .args(["-c", script, "moto"])
            .arg(&server)
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let stdin = child
            .stdin
            .take()
            .unwrap_or_else(|| panic!("no stdin pipe to the moto wrapper"));
        let moto = Moto {
            port,
            log,
            guard: Mutex::new(Some((child, stdin))),
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&self) {
        let what = format!(
            "moto_server on 127.0.0.1:{} to answer (log: {})",
            self.port,
            self.log.display()
        );
        crate::wait_until(Duration::from_secs(30), &what, || {
            http::get(self.port, "/moto-api/").is_ok()
        });
    }

    /// The port moto listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log: one line per request (`"POST / HTTP/1.1" 200` for each SSM call).
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// `http://127.0.0.1:PORT`, for `[aws] endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates an S3 bucket (in us-east-1).
    pub fn create_bucket(&self, bucket: &str) {
        let r = self.s3("PUT", &format!("/{bucket}"), &[]);
        assert_eq!(r.status, 200, "moto: create bucket {bucket}: {}", r.text());
    }

    /// Stores an object, bypassing drover (for artifacts `drover publish` would not make).
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = self.s3("PUT", &format!("/{bucket}/{key}"), body);
        assert_eq!(r.status, 200, "moto: put s3://{bucket}/{key}: {}", r.text());
    }

    /// An object's bytes, or `None` when there is no such key.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.s3("GET", &format!("/{bucket}/{key}"), &[]);
        match r.status {
            200 => Some(r.body),
            404 => None,
            status => panic!("moto: get s3://{bucket}/{key}: HTTP {status}: {}", r.text()),
        }
    }

    /// Deletes an object (S3 answers 204 whether or not it was there).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let r = self.s3("DELETE", &format!("/{bucket}/{key}"), &[]);
        assert_eq!(
            r.status,
            204,
            "moto: delete s3://{bucket}/{key}: {}",
            r.text()
        );
    }

    /// Puts a String parameter, overwriting, bypassing drover (for values `drover promote` would
    /// refuse); returns the parameter's new version number.
    pub fn put_parameter(&self, name: &str, value: &str) -> i64 {
        self.put_parameter_of_type(name, value, "String")
    }

    /// Puts a parameter of `kind` (`String`, `StringList` or `SecureString`, which moto encrypts
    /// with the account's default key), overwriting; returns its new version number.
    pub fn put_parameter_of_type(&self, name: &str, value: &str, kind: &str) -> i64 {
        let body = serde_json::json!({
            "Name": name, "Value": value, "Type": kind, "Overwrite": true,
        });
        let r = self.ssm("PutParameter", &body);
        r.get("Version")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or_else(|| panic!("moto: PutParameter {name}: no Version in {r}"))
    }

    /// A parameter's value and version, or `None` when it does not exist.
    pub fn get_parameter(&self, name: &str) -> Option<(String, i64)> {
        let r = self.ssm_raw("GetParameter", &serde_json::json!({ "Name": name }));
        if r.status == 400 && r.text().contains("ParameterNotFound") {
            return None;
        }
        let v = json_ok("GetParameter", name, &r);
        let p = &v["Parameter"];
        match (p["Value"].as_str(), p["Version"].as_i64()) {
            (Some(value), Some(version)) => Some((value.to_string(), version)),
            _ => panic!("moto: GetParameter {name}: unexpected answer {v}"),
        }
    }

    /// A Query-protocol call (EC2, Elastic Load Balancing, Auto Scaling) with the form `body`;
    /// panics unless moto answers 200. Returns the XML answer.
    pub fn query(&self, service: &str, body: &str) -> String {
        let auth = fake_sigv4(service);
        let headers = [
            ("Authorization", auth.as_str()),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ];
        let r = http::request(self.port, "POST", "/", &headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("moto: {service} {body}: {e}"));
        assert_eq!(r.status, 200, "moto: {service} {body}: {}", r.text());
        r.text()
    }

    fn s3(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let headers = [
            ("Authorization", fake_sigv4("s3")),
            // Anything else (curl's form type, say) makes moto's web layer swallow the body.
            ("Content-Type", "application/octet-stream".to_string()),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http::request(self.port, method, path, &headers, body)
            .unwrap_or_else(|e| panic!("moto: {method} {path}: {e}"))
    }

    fn ssm(&self, action: &str, body: &serde_json::Value) -> serde_json::Value {
        let r = self.ssm_raw(action, body);
        json_ok(action, &body["Name"].to_string(), &r)
    }

    fn ssm_raw(&self, action: &str, body: &serde_json::Value) -> Response {
        let auth = fake_sigv4("ssm");
        let target = format!("AmazonSSM.{action}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-Amz-Target", target.as_str()),
            ("Content-Type", "application/x-amz-json-1.1"),
        ];
        http::request(
            self.port,
            "POST",
            "/",
            &headers,
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("moto: {action}: {e}"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let taken = self.guard.lock().map(|mut g| g.take()).unwrap_or(None);
        if let Some((mut child, mut stdin)) = taken {
            // End of file on the wrapper's stdin makes it kill moto and wait for it.
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn fake_sigv4(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=00"
    )
}

fn json_ok(action: &str, name: &str, r: &Response) -> serde_json::Value {
    assert_eq!(
        r.status,
        200,
        "moto: {action} {name}: HTTP {}: {}",
        r.status,
        r.text()
    );
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("moto: {action} {name}: bad JSON ({e}): {}", r.text()))
}

/// `value` for a form body: everything but unreserved characters percent-encoded.
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
