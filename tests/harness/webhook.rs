//! A webhook receiver on loopback: keeps the JSON body of every POST, and can answer the first
//! few with 500 to make the sender retry.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    attempts: Arc<Mutex<usize>>,
}

impl Receiver {
    /// Listens on 127.0.0.1; the first `fail_first` requests get HTTP 500.
    pub fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("webhook receiver: cannot listen: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("webhook receiver: {e}"))
            .port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (kept, seen) = (bodies.clone(), attempts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    *seen += 1;
                    *seen
                };
                let status = if n <= fail_first {
                    "500 Internal Server Error"
                } else {
                    if let Ok(json) = serde_json::from_slice(&body) {
                        kept.lock().unwrap_or_else(|e| e.into_inner()).push(json);
                    }
                    "200 OK"
                };
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Receiver {
            port,
            bodies,
            attempts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Requests seen, failed ones included.
    pub fn attempts(&self) -> usize {
        *self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bodies accepted so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a body with `"event": event` has arrived, and returns it.
    pub fn wait_for(&self, event: &str, timeout: Duration) -> serde_json::Value {
        crate::wait_for(timeout, &format!("a webhook notice of {event}"), || {
            self.bodies().into_iter().find(|b| b["event"] == event)
        })
    }
}
