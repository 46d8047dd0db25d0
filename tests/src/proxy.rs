//! TCP proxies on 127.0.0.1 for tests: [`DelayProxy`] delays every chunk by a fixed time in each
//! direction, to simulate WAN latency (this kernel has no netem); [`FaultProxy`] cuts (RST) or
//! stalls chosen connections after an exact number of bytes, to simulate a network that fails,
//! and can record what each connection carried (read it with [`crate::wire`]).
//! Bytes pass through untouched, so TLS works through both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The listener, thread and runtime every proxy here runs on. Dropping it closes the listener
/// and every proxied connection (the runtime, and with it every connection task, is dropped).
#[derive(Debug)]
struct ProxyThread {
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyThread {
    /// Listen on 127.0.0.1:0 and, on a thread of its own (so it works with any test runtime),
    /// hand every accepted client, once connected to `target`, to `serve` (in accept order).
    fn start<F, Fut>(what: &str, target: SocketAddr, serve: F) -> Result<ProxyThread>
    where
        F: Fn(TcpStream, TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").with_context(|| format!("binding the {what}"))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (tx, rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                tokio::select! {
                    _ = rx => {}
                    _ = accept_loop(listener, target, serve) => {}
                }
            });
            runtime.shutdown_background();
        });
        Ok(ProxyThread { port, shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, target: SocketAddr, serve: F)
where
    F: Fn(TcpStream, TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(target).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        tokio::spawn(serve(client, server));
    }
}

/// A running latency proxy; dropping it closes the listener and every proxied connection.
#[derive(Debug)]
pub struct DelayProxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    carried: Arc<AtomicU64>,
    _thread: ProxyThread,
}

impl DelayProxy {
    /// Forward 127.0.0.1:`port` to `target`, adding `one_way` in each direction (so the round
    /// trip grows by twice that). Runs on its own thread, so it works with any test runtime.
    pub fn start(target: SocketAddr, one_way: Duration) -> Result<DelayProxy> {
        DelayProxy::with_bandwidth(target, one_way, None)
    }

    /// As [`DelayProxy::start`], and each direction carries at most `bytes_per_second`, shared
    /// by every connection (one link, as a site's uplink is): chunks queue behind each other.
    pub fn with_bandwidth(target: SocketAddr, one_way: Duration, bytes_per_second: Option<u64>) -> Result<DelayProxy> {
        let carried = Arc::new(AtomicU64::new(0));
        let counter = carried.clone();
        let (up, down) = (Link::new(bytes_per_second), Link::new(bytes_per_second));
        let thread = ProxyThread::start("delay proxy", target, move |client, server| {
            let (counter, up, down) = (counter.clone(), up.clone(), down.clone());
            async move {
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(
                    delayed_pipe(cr, sw, one_way, &counter, &up),
                    delayed_pipe(sr, cw, one_way, &counter, &down)
                );
            }
        })?;
        Ok(DelayProxy { port: thread.port, carried, _thread: thread })
    }

    /// Bytes carried so far, both directions, every connection: what went on the wire.
    pub fn bytes(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }
}

/// One direction of a link with a bandwidth limit (or none): when it is free again.
#[derive(Clone)]
struct Link {
    bytes_per_second: Option<u64>,
    free_at: Arc<Mutex<Instant>>,
}

impl Link {
    fn new(bytes_per_second: Option<u64>) -> Link {
        Link { bytes_per_second, free_at: Arc::new(Mutex::new(Instant::now())) }
    }

    /// Book the link for `len` bytes after those already booked; when they are through.
    fn book(&self, len: usize) -> Option<Instant> {
        let rate = self.bytes_per_second?;
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        *free_at = (*free_at).max(Instant::now()) + Duration::from_secs_f64(len as f64 / rate as f64);
        Some(*free_at)
    }
}

/// Copy one direction: a reader stamps each chunk with its due time, a writer releases it
/// then. Chunks overlap in flight, as on a real link; with a bandwidth limit a chunk also
/// waits until the link has carried everything booked before it.
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    carried: &AtomicU64,
    link: &Link,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    carried.fetch_add(n as u64, Ordering::Relaxed);
                    let through = link.book(n).unwrap_or_else(Instant::now);
                    if tx.send((through + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping tx ends the writer once everything queued is delivered.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Which way bytes flow through a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// What the client sends: commands, APPEND literals.
    ClientToServer,
    /// What the server sends: the greeting, responses, FETCH literals.
    ServerToClient,
}

/// What a [`FaultProxy`] does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPlan {
    /// Forward everything, both ways, until either side closes.
    Pass,
    /// Forward exactly `bytes` in `direction` (the other way flows freely until then), then
    /// reset both sockets (SO_LINGER 0: RST, no FIN): a connection lost mid-stream.
    CutAfter { direction: Direction, bytes: u64 },
    /// Forward exactly `bytes` in `direction`, then forward nothing more either way while
    /// both sockets stay open: a peer that stops answering. Lasts until
    /// [`FaultProxy::release_stalls`] (which then closes both) or the proxy is dropped.
    StallAfter { direction: Direction, bytes: u64 },
    /// Forward `direction` up to the first occurrence of `marker`, never all of it, then
    /// reset both sockets: e.g. with `b" OK [APPENDUID"` server to client, the server stored
    /// a message but its OK never reaches the client (an acknowledgement lost).
    CutBefore { direction: Direction, marker: &'static [u8] },
}

/// Where one direction of a connection stops.
#[derive(Clone, Copy, Debug)]
enum Limit {
    Bytes(u64),
    Before(&'static [u8]),
}

impl FaultPlan {
    fn limit(self) -> Option<(Direction, Limit)> {
        match self {
            FaultPlan::Pass => None,
            FaultPlan::CutAfter { direction, bytes } | FaultPlan::StallAfter { direction, bytes } => {
                Some((direction, Limit::Bytes(bytes)))
            }
            FaultPlan::CutBefore { direction, marker } => Some((direction, Limit::Before(marker))),
        }
    }
}

/// Chooses the plan of each connection a [`FaultProxy`] accepts, from its index (0 for the
/// first connection the proxy ever accepted, counting on across [`FaultProxy::set_policy`]).
pub struct FaultPolicy(Box<dyn FnMut(usize) -> FaultPlan + Send>);

impl FaultPolicy {
    /// Every connection passes untouched.
    pub fn pass_all() -> FaultPolicy {
        FaultPolicy::always(FaultPlan::Pass)
    }

    /// Every connection gets `plan`.
    pub fn always(plan: FaultPlan) -> FaultPolicy {
        FaultPolicy::from_fn(move |_| plan)
    }

    /// Any rule: `f(index)` is the plan of connection `index`.
    pub fn from_fn(f: impl FnMut(usize) -> FaultPlan + Send + 'static) -> FaultPolicy {
        FaultPolicy(Box::new(f))
    }

    /// Cut each connection whose index is in `connections` after a number of bytes in
    /// `direction` drawn from `bytes` by a PRNG seeded with `seed`; pass every other one.
    /// The same seed gives the same plan for the same index, whatever the order or timing of
    /// connections, so a failing run repeats.
    pub fn seeded_cuts(seed: u64, connections: Range<usize>, direction: Direction, bytes: Range<u64>) -> FaultPolicy {
        FaultPolicy::from_fn(move |index| {
            if !connections.contains(&index) || bytes.is_empty() {
                return FaultPlan::Pass;
            }
            let draw = splitmix64(seed ^ splitmix64(index as u64));
            FaultPlan::CutAfter { direction, bytes: bytes.start + draw % (bytes.end - bytes.start) }
        })
    }

    /// The plan for connection `index` (what the proxy asks when it accepts one): lets a test
    /// check which cut a seeded policy drew.
    pub fn plan(&mut self, index: usize) -> FaultPlan {
        (self.0)(index)
    }
}

impl std::fmt::Debug for FaultPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultPolicy(..)")
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed hash of a counter; enough to draw
/// repeatable fault positions without a dependency.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a [`FaultProxy`]'s connection tasks share with the test.
#[derive(Debug)]
struct FaultState {
    policy: Mutex<FaultPolicy>,
    accepted: AtomicUsize,
    fired: Mutex<Vec<(usize, FaultPlan)>>,
    release: watch::Sender<u64>,
    capture: AtomicBool,
    captured: Mutex<BTreeMap<usize, Arc<Captured>>>,
}

/// The bytes one connection carried through a [`FaultProxy`], in each direction, exactly as
/// forwarded (a cut connection's stream ends where the cut was).
#[derive(Debug, Default)]
pub struct Captured {
    to_server: Mutex<Vec<u8>>,
    to_client: Mutex<Vec<u8>>,
}

impl Captured {
    /// What went `direction` so far.
    pub fn bytes(&self, direction: Direction) -> Vec<u8> {
        match direction {
            Direction::ClientToServer => lock(&self.to_server).clone(),
            Direction::ServerToClient => lock(&self.to_client).clone(),
        }
    }

    fn sink(&self, direction: Direction) -> &Mutex<Vec<u8>> {
        match direction {
            Direction::ClientToServer => &self.to_server,
            Direction::ServerToClient => &self.to_client,
        }
    }
}

/// A proxy that injects network faults: each accepted connection gets a [`FaultPlan`] from the
/// current [`FaultPolicy`]. Dropping it closes the listener and every proxied connection.
///
/// ```no_run
/// # fn demo(target: std::net::SocketAddr) -> anyhow::Result<()> {
/// use mailhaul_tests::proxy::{Direction, FaultPlan, FaultPolicy, FaultProxy};
/// // The first 3 connections lose the link 1-20 KB into what the server sends; then clean.
/// let proxy = FaultProxy::start(target, FaultPolicy::seeded_cuts(7, 0..3, Direction::ServerToClient, 1_000..20_000))?;
/// // ... run the client against 127.0.0.1:proxy.port ...
/// assert_eq!(proxy.fired().len(), 3, "every planned cut really happened");
/// proxy.pass_all();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    state: Arc<FaultState>,
    _thread: ProxyThread,
}

impl FaultProxy {
    /// Forward 127.0.0.1:`port` to `target` under `policy`, on a thread of its own.
    pub fn start(target: SocketAddr, policy: FaultPolicy) -> Result<FaultProxy> {
        let (release, _) = watch::channel(0);
        let state = Arc::new(FaultState {
            policy: Mutex::new(policy),
            accepted: AtomicUsize::new(0),
            fired: Mutex::new(Vec::new()),
            release,
            capture: AtomicBool::new(false),
            captured: Mutex::new(BTreeMap::new()),
        });
        let shared = state.clone();
        let thread = ProxyThread::start("fault proxy", target, move |client, server| {
            let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
            let plan = lock(&shared.policy).plan(index);
            let capture = shared.capture.load(Ordering::SeqCst).then(|| {
                let captured = Arc::new(Captured::default());
                lock(&shared.captured).insert(index, captured.clone());
                captured
            });
            faulty_connection(shared.clone(), index, plan, capture, client, server)
        })?;
        Ok(FaultProxy { port: thread.port, state, _thread: thread })
    }

    /// Connections accepted (and connected to the target) so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// The faults that really happened, as (connection index, plan), in the order they fired.
    /// A planned fault whose connection closed before reaching its byte count is not here.
    pub fn fired(&self) -> Vec<(usize, FaultPlan)> {
        lock(&self.state.fired).clone()
    }

    /// Plan the connections accepted from now on with `policy`.
    pub fn set_policy(&self, policy: FaultPolicy) {
        *lock(&self.state.policy) = policy;
    }

    /// Let every connection accepted from now on pass untouched.
    pub fn pass_all(&self) {
        self.set_policy(FaultPolicy::pass_all());
    }

    /// Close (FIN) both sockets of every connection stalled so far, so neither side waits on
    /// them any longer.
    pub fn release_stalls(&self) {
        self.state.release.send_modify(|generation| *generation += 1);
    }

    /// Record (`true`) or not the bytes of the connections accepted from now on; see
    /// [`FaultProxy::captured`]. Off by default: a test that moves much mail keeps it all.
    pub fn capture(&self, on: bool) {
        self.state.capture.store(on, Ordering::SeqCst);
    }

    /// Every recorded connection by index, with the bytes it carried so far each way.
    pub fn captured(&self) -> BTreeMap<usize, Arc<Captured>> {
        lock(&self.state.captured).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection task must not take the whole proxy down with it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn faulty_connection(
    state: Arc<FaultState>,
    index: usize,
    plan: FaultPlan,
    capture: Option<Arc<Captured>>,
    mut client: TcpStream,
    mut server: TcpStream,
) {
    let limit = plan.limit();
    let budget = |direction| limit.filter(|(d, _)| *d == direction).map(|(_, limit)| limit);
    let sink = |direction| capture.as_deref().map(|c| c.sink(direction));
    let tripped = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = limited_pipe(&mut cr, &mut sw, budget(Direction::ClientToServer), sink(Direction::ClientToServer));
        let down = limited_pipe(&mut sr, &mut cw, budget(Direction::ServerToClient), sink(Direction::ServerToClient));
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
            };
            match end {
                PipeEnd::Limit => break true,
                PipeEnd::Error => break false,
                PipeEnd::Eof if up_done && down_done => break false,
                PipeEnd::Eof => {}
            }
        }
    };
    if !tripped {
        return;
    }
    // Recorded before the sockets react, so a test that sees the fault also finds it here.
    lock(&state.fired).push((index, plan));
    match plan {
        FaultPlan::CutAfter { .. } | FaultPlan::CutBefore { .. } => {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
        FaultPlan::StallAfter { .. } => {
            let mut release = state.release.subscribe();
            let _ = release.changed().await;
        }
        FaultPlan::Pass => {}
    }
}

/// How one direction of a [`FaultProxy`] connection ended.
enum PipeEnd {
    /// The sender closed its side; it was passed on (FIN).
    Eof,
    /// A read or write failed (e.g. a peer reset).
    Error,
    /// Exactly the budgeted number of bytes was forwarded, or all before the marker.
    Limit,
}

/// Copy one direction until `limit`: at most that many bytes (reads never ask for more than
/// what is left, so exactly that many reach the other side), or everything before the first
/// occurrence of a marker. Each chunk forwarded is appended to `sink`.
async fn limited_pipe(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    limit: Option<Limit>,
    sink: Option<&Mutex<Vec<u8>>>,
) -> PipeEnd {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut budget, marker) = match limit {
        Some(Limit::Bytes(bytes)) => (Some(bytes), None),
        Some(Limit::Before(marker)) => (None, Some(marker)),
        None => (None, None),
    };
    // The last bytes forwarded, where a marker split across reads begins.
    let mut recent: Vec<u8> = Vec::new();
    loop {
        let want = match budget {
            Some(0) => return PipeEnd::Limit,
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        match from.read(&mut buf[..want]).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return PipeEnd::Eof;
            }
            Ok(mut n) => {
                let mut found = false;
                if let Some(marker) = marker {
                    recent.extend_from_slice(&buf[..n]);
                    match recent.windows(marker.len()).position(|w| w == marker) {
                        Some(at) => {
                            // Forward what precedes the marker (none of it if it began earlier).
                            n = n.saturating_sub(recent.len() - at);
                            found = true;
                        }
                        None => {
                            recent.drain(..recent.len().saturating_sub(marker.len().saturating_sub(1)));
                        }
                    }
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return PipeEnd::Error;
                }
                if let Some(sink) = sink {
                    lock(sink).extend_from_slice(&buf[..n]);
                }
                if let Some(left) = budget.as_mut() {
                    *left -= n as u64;
                }
                if found {
                    return PipeEnd::Limit;
                }
            }
            Err(_) => return PipeEnd::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_link_queues_bookings_behind_each_other() {
        assert_eq!(Link::new(None).book(1 << 20), None, "no limit: nothing to wait for");
        let link = Link::new(Some(1_000_000));
        let before = Instant::now();
        let first = link.book(1_000_000).expect("limited");
        let second = link.book(500_000).expect("limited");
        assert!(first >= before + Duration::from_secs(1), "a megabyte at 1 MB/s takes a second");
        assert_eq!(second - first, Duration::from_millis(500), "the next booking waits for the first");
    }

    #[test]
    fn seeded_cuts_repeat_stay_in_range_and_spare_other_connections() {
        let plans = |seed| {
            let mut policy = FaultPolicy::seeded_cuts(seed, 2..6, Direction::ClientToServer, 100..200);
            (0..8).map(|i| policy.plan(i)).collect::<Vec<_>>()
        };
        let a = plans(42);
        assert_eq!(a, plans(42), "same seed, same plans");
        assert_ne!(a, plans(43), "another seed draws other positions");
        for (index, plan) in a.iter().enumerate() {
            match plan {
                FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes } => {
                    assert!((2..6).contains(&index), "connection {index} was not to be cut");
                    assert!((100..200).contains(bytes), "{bytes} outside 100..200");
                }
                FaultPlan::Pass => assert!(!(2..6).contains(&index), "connection {index} was to be cut"),
                other => panic!("unexpected plan {other:?}"),
            }
        }
        // Not the same position four times: the draw really depends on the index.
        let distinct: std::collections::HashSet<_> = a.iter().filter(|p| **p != FaultPlan::Pass).collect();
        assert!(distinct.len() > 1, "{a:?}");
    }

    /// A server that greets, then echoes: enough to see both directions of a connection.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = socket.write_all(b"* OK hello\r\n").await;
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn captures_each_direction_up_to_the_cut() {
        let target = echo_server().await;
        let proxy = FaultProxy::start(
            target,
            FaultPolicy::from_fn(|i| match i {
                0 => FaultPlan::Pass,
                _ => FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: 7 },
            }),
        )
        .unwrap();
        proxy.capture(true);
        for index in 0..2 {
            let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
            let mut greeting = [0u8; 12];
            client.read_exact(&mut greeting).await.unwrap();
            client.write_all(b"a1 NOOP\r\n").await.unwrap();
            let mut echoed = [0u8; 9];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echoed)).await;
            if index == 0 {
                assert_eq!(&echoed, b"a1 NOOP\r\n", "{read:?}");
            }
        }
        let captured = proxy.captured();
        assert_eq!(captured.len(), 2);
        assert_eq!(captured[&0].bytes(Direction::ClientToServer), b"a1 NOOP\r\n");
        assert_eq!(captured[&0].bytes(Direction::ServerToClient), b"* OK hello\r\na1 NOOP\r\n");
        assert_eq!(captured[&1].bytes(Direction::ClientToServer), b"a1 NOOP", "stops at the cut");
        assert_eq!(proxy.fired(), vec![(1, FaultPlan::CutAfter { direction: Direction::ClientToServer, bytes: 7 })]);
    }

    #[tokio::test]
    async fn cuts_before_a_marker_even_split_across_reads() {
        let target = echo_server().await;
        let marker: &'static [u8] = b"OK [APPENDUID";
        let proxy = FaultProxy::start(
            target,
            FaultPolicy::always(FaultPlan::CutBefore { direction: Direction::ServerToClient, marker }),
        )
        .unwrap();
        proxy.capture(true);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let mut greeting = [0u8; 12];
        client.read_exact(&mut greeting).await.unwrap();
        // Echoed back in two pieces, the marker split between them.
        client.write_all(b"a1 OK [APP").await.unwrap();
        let mut first = [0u8; 10];
        client.read_exact(&mut first).await.unwrap();
        client.write_all(b"ENDUID 1 2] done\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        let to_client = proxy.captured()[&0].bytes(Direction::ServerToClient);
        assert_eq!(to_client, b"* OK hello\r\na1 OK [APP", "the marker never arrives whole");
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(proxy.fired().len(), 1);
    }

    #[test]
    fn drawn_order_does_not_matter() {
        let mut forward = FaultPolicy::seeded_cuts(9, 0..4, Direction::ServerToClient, 1..1_000_000);
        let mut backward = FaultPolicy::seeded_cuts(9, 0..4, Direction::ServerToClient, 1..1_000_000);
        let f: Vec<_> = (0..4).map(|i| forward.plan(i)).collect();
        let mut b: Vec<_> = (0..4).rev().map(|i| backward.plan(i)).collect();
        b.reverse();
        assert_eq!(f, b);
    }
}
