//! A load balancer for the tests, in two halves. moto keeps Elastic Load Balancing's target
//! groups and registrations but no health: a registered target is `healthy` at once, and a
//! deregistered one `unused` at once. [`Elb`] plays the rest in front of moto (a fault proxy
//! [`Front`]), as AWS documents it:
//! - it health-checks every registered target itself (`GET /health` on its port, every
//!   `interval`): `initial` until `healthy_threshold` checks in a row pass, `unhealthy` after
//!   `unhealthy_threshold` fail;
//! - a deregistered target is `draining` for `drain` (the requests in flight finishing), then
//!   `unused`;
//! - it answers `DescribeTargetHealth` from that, and records every register and deregister that
//!   moto accepted.
//!
//! The other half, [`Elb::listen`], is the load balancer's listener: a small HTTP proxy on a
//! port of 127.0.0.1 that sends each request to one of the targets it finds registered and
//! healthy, round robin, and answers 503 when there is none, as an ALB does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::faultproxy::{Answer, Front, Request};
use crate::http;

/// How the emulated load balancer paces itself.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Between two health checks of a target (AWS's least is 5 s; the tests go faster).
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// How long a deregistered target stays `draining`.
    pub drain: Duration,
    pub health_path: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            drain: Duration::from_secs(2),
            health_path: "/health".into(),
        }
    }
}

/// A register or deregister call moto accepted.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub action: &'static str,
    pub group: String,
    pub target: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Initial,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug)]
struct Target {
    port: u16,
    registered: bool,
    /// When it was last registered or deregistered.
    since: Instant,
    phase: Phase,
    passes: u32,
    fails: u32,
}

impl Target {
    fn state(&self, drain: Duration) -> (&'static str, Option<(&'static str, &'static str)>) {
        match (self.registered, self.phase) {
            (false, _) if self.since.elapsed() < drain => (
                "draining",
                Some((
                    "Target.DeregistrationInProgress",
                    "Target deregistration is in progress",
                )),
            ),
            (false, _) => (
                "unused",
                Some((
                    "Target.NotRegistered",
                    "Target is not registered to the target group",
                )),
            ),
            (true, Phase::Initial) => (
                "initial",
                Some((
                    "Elb.RegistrationInProgress",
                    "Target registration is in progress",
                )),
            ),
            (true, Phase::Healthy) => ("healthy", None),
            (true, Phase::Unhealthy) => (
                "unhealthy",
                Some(("Target.FailedHealthChecks", "Health checks failed")),
            ),
        }
    }
}

#[derive(Default)]
struct Book {
    /// (group ARN, target id) → the target.
    targets: BTreeMap<(String, String), Target>,
    calls: Vec<Call>,
}

struct Inner {
    settings: Settings,
    book: Mutex<Book>,
    stop: AtomicBool,
}

impl Inner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The emulated load balancer; its threads stop when it is dropped.
pub struct Elb {
    inner: Arc<Inner>,
}

impl Elb {
    /// Starts the health checks. Put it in front of moto with
    /// [`crate::faultproxy::FaultProxy::with_front`].
    pub fn start(settings: Settings) -> Elb {
        let inner = Arc::new(Inner {
            settings,
            book: Mutex::new(Book::default()),
            stop: AtomicBool::new(false),
        });
        let checking = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("elb-health".into())
            .spawn(move || check_forever(&checking))
            .unwrap_or_else(|e| panic!("elb: cannot start the health checks: {e}"));
        Elb { inner }
    }

    /// This emulator as the proxy's front.
    pub fn front(&self) -> Arc<dyn Front> {
        Arc::new(FrontOf(Arc::clone(&self.inner)))
    }

    /// Every register and deregister moto accepted, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.book().calls.clone()
    }

    /// The state `DescribeTargetHealth` gives for `target` in `group` now.
    pub fn state(&self, group: &str, target: &str) -> &'static str {
        let book = self.inner.book();
        let key = (group.to_owned(), target.to_owned());
        (book.targets.get(&key)).map_or("unused", |t| t.state(self.inner.settings.drain).0)
    }

    /// Registers `target` on `port` as an operator would before drover runs (or Auto Scaling
    /// at launch), in moto and here, taken as healthy already.
    pub fn preregister(&self, group: &str, target: &str, port: u16) {
        crate::Moto::shared().query(
            "elasticloadbalancing",
            &format!(
                "Action=RegisterTargets&Version=2015-12-01&TargetGroupArn={}\
                 &Targets.member.1.Id={target}&Targets.member.1.Port={port}",
                crate::moto::form_encode(group)
            ),
        );
        let mut book = self.inner.book();
        book.targets.insert(
            (group.to_owned(), target.to_owned()),
            Target {
                port,
                registered: true,
                since: Instant::now(),
                phase: Phase::Healthy,
                passes: 0,
                fails: 0,
            },
        );
    }

    /// The ports of the targets of `group` a request may go to now: registered and healthy.
    pub fn serving(&self, group: &str) -> Vec<u16> {
        serving(&self.inner, group)
    }

    /// The listener: a port of 127.0.0.1 whose requests go to `group`'s healthy targets.
    pub fn listen(&self, group: &str) -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("elb: cannot listen on 127.0.0.1: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("elb: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (inner, group) = (Arc::clone(&self.inner), group.to_owned());
        std::thread::Builder::new()
            .name(format!("elb-listener-{port}"))
            .spawn(move || {
                let next = AtomicUsize::new(0);
                while !inner.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let ports = serving(&inner, &group);
                            let pick = next.fetch_add(1, Ordering::Relaxed);
                            let target = (!ports.is_empty()).then(|| ports[pick % ports.len()]);
                            std::thread::spawn(move || {
                                let _ = relay(client, target);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
            .unwrap_or_else(|e| panic!("elb: cannot start the listener: {e}"));
        port
    }
}

impl Drop for Elb {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

fn serving(inner: &Inner, group: &str) -> Vec<u16> {
    let book = inner.book();
    (book.targets.iter())
        .filter(|((g, _), t)| g == group && t.registered && t.phase == Phase::Healthy)
        .map(|(_, t)| t.port)
        .collect()
}

/// One client connection: its request (a GET, no body) goes to `target`, and the answer back.
fn relay(client: TcpStream, target: Option<u16>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut start = String::new();
    reader.read_line(&mut start)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let path = start.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut client = client;
    let answer = target.map(|port| http::get_within(port, &path, Duration::from_secs(5)));
    let (status, body) = match answer {
        Some(Ok(response)) => (response.status, response.body),
        // What an ALB answers when the target resets or times out, and when it has none.
        Some(Err(_)) => (502, b"502 Bad Gateway\n".to_vec()),
        None => (503, b"503 Service Temporarily Unavailable\n".to_vec()),
    };
    write!(
        client,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    client.write_all(&body)?;
    client.flush()
}

/// The health checks, one round every `interval`, until the emulator is dropped.
fn check_forever(inner: &Inner) {
    let settings = &inner.settings;
    let mut tick = Instant::now();
    while !inner.stop.load(Ordering::Relaxed) {
        let due: Vec<((String, String), u16)> = (inner.book().targets.iter())
            .filter(|(_, t)| t.registered)
            .map(|(key, t)| (key.clone(), t.port))
            .collect();
        for (key, port) in due {
            let timeout = settings.interval.max(Duration::from_millis(500));
            let passed = http::get_within(port, &settings.health_path, timeout)
                .is_ok_and(|r| (200..300).contains(&r.status));
            let mut book = inner.book();
            let Some(t) = book.targets.get_mut(&key).filter(|t| t.registered) else {
                continue;
            };
            if passed {
                t.passes += 1;
                t.fails = 0;
                if t.passes >= settings.healthy_threshold {
                    t.phase = Phase::Healthy;
                }
            } else {
                t.fails += 1;
                t.passes = 0;
                if t.fails >= settings.unhealthy_threshold {
                    t.phase = Phase::Unhealthy;
                }
            }
        }
        // On a fixed beat, as the load balancer's checks are: a slow check does not push the
        // next ones back.
        tick += settings.interval;
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
}

struct FrontOf(Arc<Inner>);

/// Whether `request` is an Elastic Load Balancing call: its signature names the service.
fn is_elb(request: &Request) -> bool {
    request
        .header("authorization")
        .is_some_and(|a| a.contains("/elasticloadbalancing/aws4_request"))
}

/// The targets of a `(De)RegisterTargets` or `DescribeTargetHealth` call: `(id, port)`.
fn targets(request: &Request) -> Vec<(String, Option<u16>)> {
    let form = request.form();
    (1..)
        .map_while(|n| {
            let param = |name: &str| {
                let key = format!("Targets.member.{n}.{name}");
                form.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
            };
            let id = param("Id")?;
            Some((id, param("Port").and_then(|p| p.parse().ok())))
        })
        .collect()
}

impl Front for FrontOf {
    fn answer(&self, request: &Request) -> Option<Answer> {
        if !is_elb(request) || request.param("Action").as_deref() != Some("DescribeTargetHealth") {
            return None;
        }
        let group = request.param("TargetGroupArn").unwrap_or_default();
        let book = self.0.book();
        let asked = targets(request);
        let listed: Vec<(String, Option<&Target>)> = match asked.is_empty() {
            true => (book.targets.iter())
                .filter(|((g, _), t)| *g == group && t.registered)
                .map(|((_, id), t)| (id.clone(), Some(t)))
                .collect(),
            false => (asked.iter())
                .map(|(id, _)| (id.clone(), book.targets.get(&(group.clone(), id.clone()))))
                .collect(),
        };
        let mut members = String::new();
        for (id, target) in listed {
            let (state, reason) = match target {
                Some(t) => t.state(self.0.settings.drain),
                None => (
                    "unused",
                    Some((
                        "Target.NotRegistered",
                        "Target is not registered to the target group",
                    )),
                ),
            };
            let port = target.map(|t| format!("<Port>{}</Port>", t.port));
            let reason = reason.map(|(code, text)| {
                format!("<Reason>{code}</Reason><Description>{text}</Description>")
            });
            members.push_str(&format!(
                "<member><Target><Id>{id}</Id>{}</Target><TargetHealth><State>{state}</State>{}\
                 </TargetHealth></member>",
                port.unwrap_or_default(),
                reason.unwrap_or_default()
            ));
        }
        Some(Answer {
            status: 200,
            content_type: "text/xml",
            headers: Vec::new(),
            body: format!(
                "<DescribeTargetHealthResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
                 <DescribeTargetHealthResult><TargetHealthDescriptions>{members}</TargetHealthDescriptions>\
                 </DescribeTargetHealthResult><ResponseMetadata><RequestId>e1b00000-0000-4000-8000-000000000000\
                 </RequestId></ResponseMetadata></DescribeTargetHealthResponse>"
            ),
        })
    }

    fn answered(&self, request: &Request, status: u16, _: &[u8]) {
        let action = match request.param("Action").as_deref() {
            Some("RegisterTargets") => "RegisterTargets",
            Some("DeregisterTargets") => "DeregisterTargets",
            _ => return,
        };
        if !is_elb(request) || status != 200 {
            return;
        }
        let group = request.param("TargetGroupArn").unwrap_or_default();
        let mut book = self.0.book();
        for (id, port) in targets(request) {
            book.calls.push(Call {
                at: Instant::now(),
                action,
                group: group.clone(),
                target: id.clone(),
            });
            let key = (group.clone(), id);
            let old = book.targets.get(&key).map(|t| t.port);
            let port = port.or(old).unwrap_or(80);
            let registered = action == "RegisterTargets";
            book.targets.insert(
                key,
                Target {
                    port,
                    registered,
                    since: Instant::now(),
                    phase: Phase::Initial,
                    passes: 0,
                    fails: 0,
                },
            );
        }
    }
}

/// A target group in moto for `name`, in a VPC of its own, with a deregistration delay of
/// `delay` (what drover caps its drain at by default). Returns its ARN.
pub fn create_target_group(name: &str, delay: Duration) -> String {
    let moto = crate::Moto::shared();
    let vpc = moto.query(
        "ec2",
        "Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16",
    );
    let vpc = between(&vpc, "<vpcId>", "</vpcId>")
        .unwrap_or_else(|| panic!("moto: CreateVpc gave no vpcId: {vpc}"));
    let created = moto.query(
        "elasticloadbalancing",
        &format!(
            "Action=CreateTargetGroup&Version=2015-12-01&Name={name}&Protocol=HTTP&Port=80\
             &VpcId={vpc}&TargetType=instance&HealthCheckPath=%2Fhealth\
             &HealthCheckIntervalSeconds=5&HealthyThresholdCount=2"
        ),
    );
    let arn = between(&created, "<TargetGroupArn>", "</TargetGroupArn>")
        .unwrap_or_else(|| panic!("moto: CreateTargetGroup gave no ARN: {created}"));
    moto.query(
        "elasticloadbalancing",
        &format!(
            "Action=ModifyTargetGroupAttributes&Version=2015-12-01&TargetGroupArn={}\
             &Attributes.member.1.Key=deregistration_delay.timeout_seconds\
             &Attributes.member.1.Value={}",
            crate::moto::form_encode(&arn),
            delay.as_secs()
        ),
    );
    arn
}

use crate::autoscaling::between;
