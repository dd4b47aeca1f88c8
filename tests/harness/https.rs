//! Downloads over https for the install tests, with no internet: [`HttpsServer`] serves a host
//! directory on loopback (python3's `http.server` behind `ssl`, with a throwaway CA and a
//! certificate for 127.0.0.1 made by `openssl`); containers share the host's network, so
//! `https://127.0.0.1:PORT/` works from inside. [`HostTool`] lends the container one of the host's
//! downloaders (curl, wget), which the test image lacks but Amazon Linux and Ubuntu have.

use crate::container::Bind;
use crate::userdata::WriteFile;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The server: python3 serving `root` over TLS until dropped.
pub struct HttpsServer {
    child: Child,
    port: u16,
    ca_pem: String,
    dir: TempDir,
}

const SERVER: &str = r#"
import functools, http.server, ssl, sys
cert, key, port, root = sys.argv[1:5]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
"#;

impl HttpsServer {
    /// Serves the files under `root` (read on each request) on a free port of 127.0.0.1.
    pub fn serve(root: &Path) -> HttpsServer {
        let dir = tempfile::Builder::new()
            .prefix("drover-https-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir for the https server: {e}"));
        let ca_pem = make_certificates(dir.path());
        let port = crate::free_port();
        // Request lines and errors, one per line (http.server logs to stderr).
        let log = fs::File::create(dir.path().join("requests.log"))
            .unwrap_or_else(|e| panic!("cannot create the https server's log: {e}"));
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", SERVER])
            .arg(dir.path().join("server.pem"))
            .arg(dir.path().join("server.key"))
            .arg(port.to_string())
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start /usr/bin/python3 for the https server: {e}"));
        let what = format!("the https server on 127.0.0.1:{port}");
        crate::wait_until(Duration::from_secs(10), &what, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the https server exited ({status}): {}",
                    fs::read_to_string(dir.path().join("requests.log")).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HttpsServer {
            child,
            port,
            ca_pem,
            dir,
        }
    }

    /// `https://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The PEM certificate of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The request lines served so far, like `GET /drover HTTP/1.1" 200`.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("] \"").map(|(_, request)| request.to_string()))
            .collect()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for IP 127.0.0.1 signed by it, in `dir`; returns the CA's PEM.
fn make_certificates(dir: &Path) -> String {
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", ext.display()));
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=drover test CA",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::read_to_string(dir.join("ca.pem")).unwrap_or_else(|e| panic!("cannot read ca.pem: {e}"))
}

/// One of the host's programs, made runnable inside a container that lacks it: the binary and
/// the shared libraries it links (but glibc's own, which the container has: host and image are
/// the same Debian release) in a host directory, mounted read-only, and a wrapper script at
/// `/usr/local/bin/NAME` that points the loader at them.
pub struct HostTool {
    /// The mount.
    pub bind: Bind,
    /// The wrapper, for `write_files`.
    pub wrapper: WriteFile,
}

impl HostTool {
    /// Gathers `/usr/bin/NAME` and its libraries under `into/NAME`.
    pub fn lend(name: &str, into: &Path) -> HostTool {
        const GLIBC: [&str; 7] = [
            "libc.so.6",
            "libm.so.6",
            "libpthread.so.0",
            "libdl.so.2",
            "librt.so.1",
            "libresolv.so.2",
            "ld-linux-x86-64.so.2",
        ];
        let binary = PathBuf::from("/usr/bin").join(name);
        let dir = into.join(name);
        let lib = dir.join("lib");
        fs::create_dir_all(&lib).unwrap_or_else(|e| panic!("cannot create {}: {e}", lib.display()));
        copy(&binary, &dir.join(name));
        let out = Command::new("ldd")
            .arg(&binary)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldd {}: {e}", binary.display()));
        assert!(out.status.success(), "ldd {} failed", binary.display());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((soname, rest)) = line.trim().split_once(" => ") else {
                continue;
            };
            let path = rest.split(" (").next().unwrap_or("");
            if GLIBC.contains(&soname) || !path.starts_with('/') {
                continue;
            }
            copy(Path::new(path), &lib.join(soname));
        }
        let inside = format!("/opt/host-tools/{name}");
        HostTool {
            bind: Bind {
                host: dir,
                inside: inside.clone(),
                read_only: true,
            },
            wrapper: WriteFile {
                path: format!("/usr/local/bin/{name}"),
                mode: 0o755,
                content: format!(
                    "#!/bin/sh\n\
                     # The host's {name}, lent by drover's tests (the test image has none).\n\
                     LD_LIBRARY_PATH={inside}/lib exec {inside}/{name} \"$@\"\n"
                ),
            },
        }
    }
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}
