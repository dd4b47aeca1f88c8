//! An emulated EC2 instance metadata service (IMDSv2) for instances that share the host's
//! network: one listener per instance on a port of 127.0.0.1, each answering with its own
//! instance id. The agent reaches it through aws-config's IMDS client (`[aws]
//! metadata_endpoint_url`), so the session-token dance is the real one:
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then
//! `GET /latest/meta-data/instance-id` with `X-aws-ec2-metadata-token`. A GET without a valid
//! token is answered 401, as IMDSv2 answers it. Other metadata paths (Auto Scaling's
//! `autoscaling/target-lifecycle-state`, the instance's tags) answer what a test set with
//! [`Imds::set`], and 404 until then, as IMDS does for an instance outside a group.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One emulated metadata endpoint; it stops when dropped.
pub struct Imds {
    port: u16,
    instance_id: String,
    gets: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// `/latest/meta-data/...` path → its text.
    paths: Paths,
}

type Paths = Arc<Mutex<BTreeMap<String, String>>>;

impl Imds {
    /// Serves `instance_id` on a free port of 127.0.0.1.
    pub fn start(instance_id: &str) -> Imds {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("imds: cannot listen on 127.0.0.1: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("imds: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let token = format!("token-for-{instance_id}");
        let (gets, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let paths: Paths = Arc::default();
        let serving = (
            instance_id.to_owned(),
            Arc::clone(&gets),
            Arc::clone(&stop),
            Arc::clone(&paths),
        );
        std::thread::Builder::new()
            .name(format!("imds-{port}"))
            .spawn(move || {
                let (id, gets, stop, paths) = serving;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = answer(stream, &id, &token, &gets, &paths);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .unwrap_or_else(|e| panic!("imds: cannot start its thread: {e}"));
        Imds {
            port,
            instance_id: instance_id.to_owned(),
            gets,
            stop,
            paths,
        }
    }

    /// Serves `text` at `/latest/meta-data/{path}` from now on, e.g.
    /// `autoscaling/target-lifecycle-state`.
    pub fn set(&self, path: &str, text: &str) {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.insert(format!("/latest/meta-data/{path}"), text.to_owned());
    }

    /// The URL for `[aws] metadata_endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// How many instance-id GETs with a valid token it answered.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::Relaxed)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves the requests of one connection (the client may keep it alive).
fn answer(
    stream: TcpStream,
    id: &str,
    token: &str,
    gets: &AtomicUsize,
    paths: &Mutex<BTreeMap<String, String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut ttl, mut given, mut length) = (None, None, 0usize);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim().to_owned();
            match name.trim().to_ascii_lowercase().as_str() {
                "x-aws-ec2-metadata-token-ttl-seconds" => ttl = Some(value),
                "x-aws-ec2-metadata-token" => given = Some(value),
                "content-length" => length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        if length > 0 {
            let mut body = vec![0; length];
            std::io::Read::read_exact(&mut reader, &mut body)?;
        }
        let (status, body, extra) = match (method.as_str(), path.as_str()) {
            ("PUT", "/latest/api/token") => match ttl {
                Some(ttl) => (
                    "200 OK",
                    token.to_owned(),
                    format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                ),
                None => ("400 Bad Request", String::new(), String::new()),
            },
            ("GET", "/latest/meta-data/instance-id") if given.as_deref() == Some(token) => {
                gets.fetch_add(1, Ordering::Relaxed);
                ("200 OK", id.to_owned(), String::new())
            }
            ("GET", _) if given.as_deref() != Some(token) => {
                ("401 Unauthorized", String::new(), String::new())
            }
            ("GET", path) => {
                let paths = paths.lock().unwrap_or_else(|e| e.into_inner());
                match paths.get(path) {
                    Some(text) => ("200 OK", text.clone(), String::new()),
                    None => ("404 Not Found", String::new(), String::new()),
                }
            }
            _ => ("404 Not Found", String::new(), String::new()),
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )?;
        out.flush()?;
    }
}
