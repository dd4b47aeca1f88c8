//! A fault-injecting HTTP/1.1 reverse proxy of our own between the agent and moto, which has no
//! fault injection: it forwards every request and, for the requests a rule matches, answers with
//! an AWS error instead or spoils moto's response on its way back (a reset or a cut mid-body, a
//! flipped byte, a body slower than the agent's download timeout). A budget throttles the
//! requests beyond a rate, as AWS meters an API. Every request is recorded with the time it
//! arrived, so that a test can see how the agent and its SDK retried.
//!
//! The SDK keeps connections alive, so one task serves one client connection request after
//! request. Each forwarded request goes to moto on a fresh connection with `Connection: close`,
//! and moto's whole response (plain or chunked) is read before it is sent back with a
//! `Content-Length`: that is what lets a fault cut or change a body at a known place. Bodies here
//! are test artifacts of a few kilobytes, so holding them in memory is fine.
//!
//! It runs on a current-thread tokio runtime in a thread of its own (tokio rather than std
//! threads for `set_zero_linger`, which std does not offer on stable, to send a real RST).

use std::io;
use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Which requests a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// An SSM call, by its `X-Amz-Target` header (`AmazonSSM.GetParameter`).
    Ssm(String),
    /// An S3 call (no `X-Amz-Target`), by method and the end of its path without the query
    /// (`.tar.gz` matches the tarball, not its `.tar.gz.sha256`).
    S3 { method: String, suffix: String },
}

impl Match {
    /// The SSM action `action`, e.g. `GetParameter`.
    pub fn ssm(action: &str) -> Match {
        Match::Ssm(format!("AmazonSSM.{action}"))
    }

    /// S3 `GET`s of keys ending in `suffix`.
    pub fn s3_get(suffix: &str) -> Match {
        Match::S3 {
            method: "GET".into(),
            suffix: suffix.into(),
        }
    }

    pub fn matches(&self, seen: &Seen) -> bool {
        match self {
            Match::Ssm(target) => seen
                .target
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(target)),
            Match::S3 { method, suffix } => {
                seen.target.is_none()
                    && seen.method.eq_ignore_ascii_case(method)
                    && seen.path.ends_with(suffix.as_str())
            }
        }
    }
}

/// What to do to a matching request. The error answers come in the flavour of the service asked:
/// JSON for SSM (a request with `X-Amz-Target`), XML for S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SSM: 400 `ThrottlingException` ("Rate exceeded"); S3: 503 `SlowDown`.
    Throttle,
    /// A server error with this status (500 `InternalServerError`/`InternalError`, 503
    /// `ServiceUnavailable`, ...).
    Status(u16),
    /// SSM: 400 `ParameterNotFound`; S3: 404 `NoSuchKey`.
    NotFound,
    /// SSM: 400 `AccessDeniedException`; S3: 403 `AccessDenied`.
    Denied,
    /// Forwarded; the headers and half the body are sent, then the connection is reset (RST).
    ResetMidBody,
    /// Forwarded; the full `Content-Length` is announced, half the body sent, then the connection
    /// is closed normally (FIN).
    Truncate,
    /// Forwarded with the byte in the middle of the body inverted. With `strip_checksums` the
    /// `x-amz-checksum-*` headers are dropped, as for an object stored without a checksum: the
    /// SDK then cannot notice (it checks a CRC against those headers when they are present).
    FlipByte { strip_checksums: bool },
    /// Forwarded with the body sent in 20 pieces spread over this long.
    Slow(Duration),
}

impl Fault {
    /// Whether the proxy answers itself, without asking moto.
    fn answers(self) -> bool {
        matches!(
            self,
            Fault::Throttle | Fault::Status(_) | Fault::NotFound | Fault::Denied
        )
    }
}

/// A service the proxy plays itself, in front of moto: operations moto lacks, or behaviour it
/// does not have (a load balancer's draining, say), answered as AWS documents them.
pub trait Front: Send + Sync {
    /// Answers `request` instead of moto, or `None` to forward it.
    fn answer(&self, request: &Request) -> Option<Answer>;
    /// Sees what moto answered to a forwarded `request`.
    fn answered(&self, request: &Request, status: u16, body: &[u8]) {
        let _ = (request, status, body);
    }
}

/// Several fronts: the first that answers a request answers it; all see moto's answers.
impl Front for Vec<Arc<dyn Front>> {
    fn answer(&self, request: &Request) -> Option<Answer> {
        self.iter().find_map(|front| front.answer(request))
    }

    fn answered(&self, request: &Request, status: u16, body: &[u8]) {
        for front in self {
            front.answered(request, status, body);
        }
    }
}

/// A request as a [`Front`] sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The parameters of a Query-protocol call (Auto Scaling, Elastic Load Balancing): the
    /// form-encoded body, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        String::from_utf8_lossy(&self.body)
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((percent_decode(k), percent_decode(v)))
            })
            .collect()
    }

    /// One parameter of [`Request::form`].
    pub fn param(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A [`Front`]'s own answer.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides `Content-Type` and the request id.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it had arrived whole and the proxy decided what to do with it; [`FaultProxy::seen`]
    /// is in this order.
    pub at: Instant,
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// `X-Amz-Target`, for SSM.
    pub target: Option<String>,
    /// The SDK's `amz-sdk-invocation-id`: the same for every attempt of one call.
    pub invocation: Option<String>,
    /// The attempt number of `amz-sdk-request: attempt=N; max=M`.
    pub attempt: Option<u32>,
    /// The access key id its signature names (`Credential=AKID/...`): which agent sent it, when
    /// each agent has a key of its own (moto takes any key).
    pub client: Option<String>,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

/// One SDK call: the attempts that share an invocation id, in order.
#[derive(Clone, Debug)]
pub struct Call {
    pub attempts: Vec<Seen>,
}

impl Call {
    pub fn first(&self) -> Instant {
        self.attempts.first().map_or_else(Instant::now, |s| s.at)
    }

    pub fn last(&self) -> Instant {
        self.attempts.last().map_or_else(Instant::now, |s| s.at)
    }
}

struct Rule {
    when: Match,
    fault: Fault,
    /// How many more matching requests get the fault; `None`: until cleared.
    left: Option<u32>,
}

/// A token bucket, the way AWS meters an API: it holds up to `per_second` tokens and gains
/// `per_second` a second; a matching request takes one, and one that finds none is throttled
/// without taking any. It starts full, so a burst of `per_second` passes at once, and no span of
/// `t` seconds lets through more than `per_second × (1 + t)`.
struct Budget {
    when: Match,
    per_second: u32,
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Budget {
    fn new(when: Match, per_second: u32) -> Budget {
        Budget {
            when,
            per_second,
            tokens: f64::from(per_second),
            at: Instant::now(),
        }
    }

    /// Whether a request arriving at `now` gets a token; it takes it if so.
    fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.per_second);
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate);
        self.at = self.at.max(now);
        let granted = self.tokens >= 1.0;
        if granted {
            self.tokens -= 1.0;
        }
        granted
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    budgets: Vec<Budget>,
    seen: Vec<Seen>,
}

struct Shared {
    upstream: u16,
    state: Mutex<State>,
    front: Option<Arc<dyn Front>>,
    /// Held while a conditional write is forwarded: moto checks `If-Match`/`If-None-Match` and
    /// then writes, in two steps another request can come between; S3 does both at once.
    conditional: tokio::sync::Mutex<()>,
    /// Each connection's answers are sent at no more than this many bytes a second (0: as fast
    /// as they come), as S3 caps each connection.
    rate: std::sync::atomic::AtomicU64,
    /// Body bytes sent to clients, all connections together.
    sent: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request and picks its fault: that of the first rule that matches and has uses
    /// left; else a throttle when the first budget that matches has no token for it.
    fn admit(&self, mut seen: Seen) -> Option<Fault> {
        let mut state = self.state();
        // Stamped under the lock, so that the record is in time order and a budget's tokens
        // are counted at the very instants the record shows.
        seen.at = Instant::now();
        let ruled = state
            .rules
            .iter_mut()
            .find(|r| r.when.matches(&seen) && r.left != Some(0))
            .map(|rule| {
                if let Some(n) = rule.left.as_mut() {
                    *n -= 1;
                }
                rule.fault
            });
        let fault = ruled.or_else(|| {
            let budget = state.budgets.iter_mut().find(|b| b.when.matches(&seen))?;
            (!budget.take(seen.at)).then_some(Fault::Throttle)
        });
        seen.fault = fault;
        state.seen.push(seen);
        fault
    }
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of the test process's shared moto.
    pub fn in_front_of_moto() -> FaultProxy {
        FaultProxy::start(crate::Moto::shared().port())
    }

    /// A proxy in front of the shared moto that plays `front` too.
    pub fn with_front(front: Arc<dyn Front>) -> FaultProxy {
        FaultProxy::start_with(crate::Moto::shared().port(), Some(front))
    }

    /// A proxy on a free port of 127.0.0.1 forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        FaultProxy::start_with(upstream, None)
    }

    fn start_with(upstream: u16, front: Option<Arc<dyn Front>>) -> FaultProxy {
        let port = crate::free_port();
        let listener = StdListener::bind(("127.0.0.1", port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .unwrap_or_else(|e| panic!("fault proxy: cannot listen on 127.0.0.1:{port}: {e}"));
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            front,
            conditional: tokio::sync::Mutex::new(()),
            rate: Default::default(),
            sent: Default::default(),
        });
        let (stop, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("faultproxy-{port}"))
            .spawn(move || serve(listener, serving, stopped))
            .unwrap_or_else(|e| panic!("fault proxy: cannot start its thread: {e}"));
        FaultProxy {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL to give the agent as `[aws] endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to the next `times` requests that `when` matches.
    pub fn inject(&self, when: Match, fault: Fault, times: u32) {
        self.push(when, fault, Some(times));
    }

    /// Applies `fault` to every request that `when` matches, until [`FaultProxy::clear`].
    pub fn inject_always(&self, when: Match, fault: Fault) {
        self.push(when, fault, None);
    }

    fn push(&self, when: Match, fault: Fault, left: Option<u32>) {
        self.shared.state().rules.push(Rule { when, fault, left });
    }

    /// Lets `per_second` requests that `when` matches through a second, with a burst of as many
    /// (a token bucket, as AWS meters an API), and answers the others as [`Fault::Throttle`]
    /// does, recording that fault. A request a rule applies to does not count against it.
    pub fn budget(&self, when: Match, per_second: u32) {
        self.shared
            .state()
            .budgets
            .push(Budget::new(when, per_second));
    }

    /// Removes every rule and budget: from now on everything is forwarded untouched.
    /// Caps each connection's answers at `bytes_per_second` (0: no cap).
    pub fn cap_rate(&self, bytes_per_second: u64) {
        (self.shared.rate).store(bytes_per_second, std::sync::atomic::Ordering::Relaxed);
    }

    /// Body bytes sent to clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut state = self.shared.state();
        state.rules.clear();
        state.budgets.clear();
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.state().seen.clone()
    }

    /// The requests `when` matches, grouped into SDK calls by invocation id, oldest first. A
    /// request without an invocation id is a call of its own.
    pub fn calls(&self, when: &Match) -> Vec<Call> {
        let mut calls: Vec<Call> = Vec::new();
        for seen in self.seen().into_iter().filter(|s| when.matches(s)) {
            let same = calls.iter_mut().rev().find(|c| {
                seen.invocation.is_some()
                    && c.attempts.first().and_then(|a| a.invocation.as_ref())
                        == seen.invocation.as_ref()
            });
            match same {
                Some(call) => call.attempts.push(seen),
                None => calls.push(Call {
                    attempts: vec![seen],
                }),
            }
        }
        calls
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy's thread: accepts connections until told to stop; dropping the runtime then ends
/// every connection still open.
fn serve(listener: StdListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("fault proxy: cannot build a runtime: {e}"),
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => panic!("fault proxy: cannot use its listener: {e}"),
        };
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(connection(stream, shared.clone()));
                    }
                }
            }
        }
    });
}

/// An HTTP/1.1 message with its body read whole (de-chunked).
struct Message {
    /// The request line or the status line.
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// `(method, path without query)` of a request.
    fn method_and_path(&self) -> (String, String) {
        let mut parts = self.start.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_owned();
        (method, path)
    }

    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn seen(&self) -> Seen {
        let (method, path) = self.method_and_path();
        Seen {
            at: Instant::now(),
            method,
            path,
            target: self.header("x-amz-target").map(str::to_owned),
            invocation: self.header("amz-sdk-invocation-id").map(str::to_owned),
            attempt: self.header("amz-sdk-request").and_then(|v| {
                v.split(';')
                    .find_map(|kv| kv.trim().strip_prefix("attempt="))
                    .and_then(|n| n.parse().ok())
            }),
            client: self.header("authorization").and_then(|v| {
                let credential = v.split("Credential=").nth(1)?;
                credential.split('/').next().map(str::to_owned)
            }),
            fault: None,
        }
    }
}

/// Headers that belong to one connection, not to the message, and the length, which the proxy
/// sets itself.
fn per_connection(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "expect",
        "content-length",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Reads a start line and headers; `None` at a clean end of stream before the first byte.
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Some(Message {
        start: start.trim_end_matches(['\r', '\n']).to_owned(),
        headers,
        body: Vec::new(),
    }))
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(head: &Message, until_close_otherwise: bool) -> io::Result<Framing> {
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match head.header("content-length") {
        Some(n) => n
            .parse()
            .map(Framing::Length)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")),
        None if until_close_otherwise => Ok(Framing::UntilClose),
        None => Ok(Framing::Empty),
    }
}

async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, framing: Framing) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).await?;
        }
        Framing::UntilClose => {
            r.read_to_end(&mut body).await?;
        }
        Framing::Chunked => loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut trailer = String::new();
                    if r.read_line(&mut trailer).await? == 0 || trailer.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..]).await?;
            let mut crlf = String::new();
            r.read_line(&mut crlf).await?;
        },
    }
    Ok(body)
}

/// Serves one client connection, request after request, until it closes or a fault closes it.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    loop {
        let Ok(Some(mut request)) = read_head(&mut conn).await else {
            return;
        };
        if request.has_token("expect", "100-continue")
            && conn
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let Ok(body_framing) = framing(&request, false) else {
            return;
        };
        match read_body(&mut conn, body_framing).await {
            Ok(body) => request.body = body,
            Err(_) => return,
        }
        let keep_alive = !request.has_token("connection", "close");
        let head_only = request.method_and_path().0.eq_ignore_ascii_case("HEAD");
        let fault = shared.admit(request.seen());
        let conditional = ["if-match", "if-none-match"]
            .iter()
            .any(|h| request.header(h).is_some())
            && !request.method_and_path().0.eq_ignore_ascii_case("GET");
        let _one_at_a_time = match conditional {
            true => Some(shared.conditional.lock().await),
            false => None,
        };
        let response = match fault {
            Some(f) if f.answers() => error_answer(f, &request),
            _ => match &shared.front {
                Some(front) => in_front(front.as_ref(), shared.upstream, &request, head_only).await,
                None => forward(shared.upstream, &request, head_only)
                    .await
                    .unwrap_or_else(|e| bad_gateway(&e)),
            },
        };
        let open = deliver(
            conn.get_mut(),
            response,
            fault,
            keep_alive,
            head_only,
            &shared,
        )
        .await;
        if !(open && keep_alive) {
            return;
        }
    }
}

/// `request` through a [`Front`]: its own answer, or moto's, which it sees.
async fn in_front(front: &dyn Front, upstream: u16, request: &Message, head_only: bool) -> Message {
    let (method, path) = request.method_and_path();
    let seen = Request {
        method,
        path,
        headers: request.headers.clone(),
        body: request.body.clone(),
    };
    if let Some(answer) = front.answer(&seen) {
        return Message {
            start: format!(
                "HTTP/1.1 {} {}",
                answer.status,
                if answer.status < 300 { "OK" } else { "Error" }
            ),
            headers: [
                ("Content-Type".into(), answer.content_type.into()),
                (
                    "x-amzn-RequestId".into(),
                    "f7017000-0000-4000-8000-000000000000".into(),
                ),
            ]
            .into_iter()
            .chain(answer.headers)
            .collect(),
            body: answer.body.into_bytes(),
        };
    }
    match forward(upstream, request, head_only).await {
        Ok(response) => {
            front.answered(&seen, response.status(), &response.body);
            response
        }
        Err(e) => bad_gateway(&e),
    }
}

/// Sends `request` to moto on a new connection and reads the whole answer.
async fn forward(upstream: u16, request: &Message, head_only: bool) -> io::Result<Message> {
    let mut out = format!("{}\r\n", request.start);
    for (name, value) in request.headers.iter().filter(|(n, _)| !per_connection(n)) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        request.body.len()
    ));
    let mut stream = TcpStream::connect(("127.0.0.1", upstream)).await?;
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(&request.body).await?;
    let mut r = BufReader::new(stream);
    loop {
        let mut response = read_head(&mut r)
            .await?
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let status = response.status();
        if (100..200).contains(&status) {
            continue;
        }
        let body_framing = if head_only || status == 204 || status == 304 {
            Framing::Empty
        } else {
            framing(&response, true)?
        };
        response.body = read_body(&mut r, body_framing).await?;
        return Ok(response);
    }
}

fn bad_gateway(error: &io::Error) -> Message {
    Message {
        start: "HTTP/1.1 502 Bad Gateway".into(),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: format!("fault proxy: moto did not answer: {error}\n").into_bytes(),
    }
}

/// The error AWS would send for `fault`, in the flavour of the service `request` went to.
fn error_answer(fault: Fault, request: &Message) -> Message {
    let ssm = request.header("x-amz-target").is_some();
    let (status, code, message) = match (fault, ssm) {
        (Fault::Throttle, true) => (400, "ThrottlingException", "Rate exceeded"),
        (Fault::Throttle, false) => (503, "SlowDown", "Please reduce your request rate."),
        (Fault::NotFound, true) => (400, "ParameterNotFound", ""),
        (Fault::NotFound, false) => (404, "NoSuchKey", "The specified key does not exist."),
        (Fault::Denied, true) => (
            400,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/test is not authorized to perform: ssm:GetParameter",
        ),
        (Fault::Denied, false) => (403, "AccessDenied", "Access Denied"),
        (Fault::Status(503), true) => (503, "ServiceUnavailable", "Service unavailable"),
        (Fault::Status(503), false) => (503, "ServiceUnavailable", "Service is unable to handle request."),
        (Fault::Status(n), true) => (n, "InternalServerError", "Internal server error"),
        (Fault::Status(n), false) => (n, "InternalError", "We encountered an internal error. Please try again."),
        // Not answered by the proxy; kept total for the compiler.
        (_, _) => (500, "InternalError", "fault proxy"),
    };
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let request_id = "fa017000-0000-4000-8000-000000000000";
    let (headers, body) = if ssm {
        let body = if message.is_empty() {
            format!(r#"{{"__type":"{code}"}}"#)
        } else {
            format!(r#"{{"__type":"{code}","message":"{message}"}}"#)
        };
        (
            vec![
                ("Content-Type".into(), "application/x-amz-json-1.1".into()),
                ("x-amzn-ErrorType".into(), code.into()),
                ("x-amzn-RequestId".into(), request_id.into()),
            ],
            body,
        )
    } else {
        let key = request.method_and_path().1;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><Key>{key}</Key><RequestId>{request_id}</RequestId></Error>"
        );
        (
            vec![
                ("Content-Type".into(), "application/xml".into()),
                ("x-amz-request-id".into(), request_id.into()),
            ],
            body,
        )
    };
    Message {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers,
        body: body.into_bytes(),
    }
}

/// Sends `response` to the client, spoiled as `fault` says. Returns whether the connection may
/// carry another request.
async fn deliver(
    out: &mut TcpStream,
    mut response: Message,
    fault: Option<Fault>,
    keep_alive: bool,
    head_only: bool,
    shared: &Shared,
) -> bool {
    let mut head = format!("{}\r\n", response.start);
    let strip_checksums = fault
        == Some(Fault::FlipByte {
            strip_checksums: true,
        });
    for (name, value) in &response.headers {
        // A HEAD answer's Content-Length describes the body a GET would get: keep it.
        let keep =
            !per_connection(name) || (head_only && name.eq_ignore_ascii_case("content-length"));
        let checksum = name.to_ascii_lowercase().starts_with("x-amz-checksum-");
        if keep && !(strip_checksums && checksum) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if !head_only {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    let closing = matches!(fault, Some(Fault::ResetMidBody | Fault::Truncate)) || !keep_alive;
    head.push_str(if closing {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    if out.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    if head_only {
        return out.flush().await.is_ok();
    }
    let half = response.body.len() / 2;
    let sent = match fault {
        Some(Fault::ResetMidBody) => {
            let _ = out.write_all(&response.body[..half]).await;
            let _ = out.flush().await;
            // Let the first half reach the client before the reset overtakes it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = out.set_zero_linger();
            return false;
        }
        Some(Fault::Truncate) => {
            let _ = out.write_all(&response.body[..half]).await;
            let _ = out.shutdown().await;
            return false;
        }
        Some(Fault::Slow(total)) => {
            let piece = response.body.len().div_ceil(20).max(1);
            let pause = total / 20;
            for part in response.body.chunks(piece) {
                if out.write_all(part).await.is_err() || out.flush().await.is_err() {
                    return false;
                }
                tokio::time::sleep(pause).await;
            }
            Ok(())
        }
        Some(Fault::FlipByte { .. }) => {
            if let Some(byte) = response.body.get_mut(half) {
                *byte = !*byte;
            }
            out.write_all(&response.body).await
        }
        _ => paced(out, &response.body, shared).await,
    };
    sent.is_ok() && out.flush().await.is_ok()
}

/// Writes `body` at no more than the proxy's per-connection rate, counting what was sent.
async fn paced(out: &mut TcpStream, body: &[u8], shared: &Shared) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    let rate = shared.rate.load(Ordering::Relaxed);
    if rate == 0 {
        out.write_all(body).await?;
        shared.sent.fetch_add(body.len() as u64, Ordering::Relaxed);
        return Ok(());
    }
    let start = Instant::now();
    let mut written = 0u64;
    for piece in body.chunks(32 << 10) {
        out.write_all(piece).await?;
        written += piece.len() as u64;
        shared.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        let due = Duration::from_secs_f64(written as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The proxy against a tiny upstream of its own, so that its framing and faults are checked
    //! without moto or the SDK.

    use super::*;
    use std::io::{BufRead, Read, Write};

    /// An upstream that answers every request with a chunked body "hello, world" and closes.
    fn upstream() -> u16 {
        let listener = StdListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
                );
            }
        });
        port
    }

    /// Sends `count` GETs on one connection and returns what came back, raw.
    fn get_on_one_connection(proxy: &FaultProxy, count: usize) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        for i in 0..count {
            let close = if i + 1 == count {
                "Connection: close\r\n"
            } else {
                ""
            };
            let req = format!(
                "GET /b/releases/1.tar.gz?x-id=GetObject HTTP/1.1\r\nHost: x\r\n{close}\r\n"
            );
            s.write_all(req.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    #[test]
    fn forwards_keep_alive_requests_and_dechunks() {
        let proxy = FaultProxy::start(upstream());
        let raw = get_on_one_connection(&proxy, 2);
        assert_eq!(raw.matches("Content-Length: 12\r\n").count(), 2, "{raw}");
        assert_eq!(raw.matches("hello, world").count(), 2, "{raw}");
        assert_eq!(proxy.seen().len(), 2);
        assert_eq!(proxy.seen()[0].path, "/b/releases/1.tar.gz");
    }

    #[test]
    fn faults_apply_to_the_next_n_matching_requests() {
        let proxy = FaultProxy::start(upstream());
        proxy.inject(Match::s3_get(".sha256"), Fault::NotFound, 5);
        proxy.inject(
            Match::s3_get(".tar.gz"),
            Fault::FlipByte {
                strip_checksums: false,
            },
            1,
        );
        let raw = get_on_one_connection(&proxy, 2);
        assert!(raw.contains("hello, world"), "second one untouched: {raw}");
        assert!(raw.contains("hello,\u{fffd}world"), "a flipped byte: {raw}");
        proxy.inject_always(Match::s3_get(".tar.gz"), Fault::NotFound);
        let raw = get_on_one_connection(&proxy, 1);
        assert!(raw.starts_with("HTTP/1.1 404 Not Found"), "{raw}");
        assert!(raw.contains("<Code>NoSuchKey</Code>"), "{raw}");
        proxy.clear();
        assert!(get_on_one_connection(&proxy, 1).contains("hello, world"));
        let faults: Vec<_> = proxy.seen().iter().map(|s| s.fault).collect();
        assert_eq!(
            faults,
            vec![
                Some(Fault::FlipByte {
                    strip_checksums: false
                }),
                None,
                Some(Fault::NotFound),
                None
            ]
        );
    }

    #[test]
    fn a_budget_throttles_what_finds_no_token_and_refills_at_its_rate() {
        let proxy = FaultProxy::start(upstream());
        proxy.budget(Match::s3_get(".tar.gz"), 2);
        let raw = get_on_one_connection(&proxy, 4);
        assert_eq!(raw.matches("hello, world").count(), 2, "{raw}");
        assert_eq!(raw.matches("<Code>SlowDown</Code>").count(), 2, "{raw}");
        let faults: Vec<_> = proxy.seen().iter().map(|s| s.fault).collect();
        assert_eq!(
            faults,
            [None, None, Some(Fault::Throttle), Some(Fault::Throttle)]
        );
        proxy.clear();
        assert_eq!(get_on_one_connection(&proxy, 3).matches("hello").count(), 3);
    }

    #[test]
    fn a_budget_is_a_token_bucket_with_a_burst_of_one_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut budget = Budget {
            when: Match::ssm("GetParameter"),
            per_second: 4,
            tokens: 4.0,
            at: t0,
        };
        let granted: Vec<bool> = [
            0, 0, 0, 0, 0, 100, 249, 250, 500, 3000, 3000, 3000, 3000, 3000,
        ]
        .into_iter()
        .map(|ms| budget.take(at(ms)))
        .collect();
        assert_eq!(
            granted,
            [
                true, true, true, true, false, // the burst, then nothing left
                false, false, true, // one token every 250 ms
                true, // and another
                true, true, true, true, false, // idle: full again, but no fuller
            ]
        );
    }

    #[test]
    fn the_client_is_the_signature_s_access_key() {
        let mut request = Message {
            start: "POST / HTTP/1.1".into(),
            headers: vec![(
                "Authorization".into(),
                "AWS4-HMAC-SHA256 Credential=AKIAFLEET007/20261201/us-east-1/ssm/aws4_request, \
                 SignedHeaders=host, Signature=00"
                    .into(),
            )],
            body: Vec::new(),
        };
        assert_eq!(request.seen().client.as_deref(), Some("AKIAFLEET007"));
        request.headers.clear();
        assert_eq!(request.seen().client, None);
    }

    #[test]
    fn truncate_announces_the_full_length_and_closes_early() {
        let proxy = FaultProxy::start(upstream());
        proxy.inject(Match::s3_get(".tar.gz"), Fault::Truncate, 1);
        let raw = get_on_one_connection(&proxy, 2);
        assert!(raw.contains("Content-Length: 12\r\n"), "{raw}");
        assert!(raw.ends_with("\r\n\r\nhello,"), "cut after 6 bytes: {raw}");
        assert_eq!(
            proxy.seen().len(),
            1,
            "the connection closed after the fault"
        );
    }
}
