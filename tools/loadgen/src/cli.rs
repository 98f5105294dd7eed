//! Command-line interface: common flags and one subcommand per scenario.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "corecast-load",
    version,
    about = "Loopback load generator for the corecast WebSocket server"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server address as ws://HOST:PORT or wss://HOST:PORT for TLS (loopback only; the path
    /// is chosen by the scenario).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:9000")]
    pub url: String,
    /// wss: trust only the CA (or self-signed) certificates in this PEM file instead of the
    /// machine's CA store.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// wss: DANGEROUS: accept any server certificate for any name (no verification at all).
    #[arg(long, global = true, conflicts_with = "ca")]
    pub insecure: bool,
    /// wss: the name to send as SNI and to verify the certificate against (a DNS name or an
    /// IP address; default: the URL's host).
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Offer permessage-deflate (RFC 7692) as browsers do. Where the server agrees, every
    /// text and binary message the client sends is compressed, and compressed messages are
    /// inflated before they are checked. The report counts the connections that negotiated
    /// it and the bytes received.
    #[arg(long, global = true)]
    pub deflate: bool,
    /// Client threads; each owns a share of the connections and its own mio Poll.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Measurement window in seconds (echo, broadcast).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Load is applied but not measured for this many seconds first (echo, broadcast).
    #[arg(long, global = true, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bind client sockets to 127.0.0.1..127.0.0.K round-robin (0 = let the kernel choose).
    #[arg(long, global = true, default_value_t = 0)]
    pub src_ips: usize,
    /// Server PID: report its RSS (VmRSS) and CPU% over the window.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// CPU core the server runs on: report that core's busy% (includes softirq work).
    #[arg(long, global = true)]
    pub server_core: Option<usize>,
    /// Print exactly one JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write an SVG with the latency distribution and per-second throughput.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// Give up on a connection that has not completed its handshake after this many seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Connection open rate per second for echo and broadcast set-up.
    #[arg(long, global = true, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// JWTs for the connections, one per line: connection i presents line i mod n (blank
    /// lines are skipped). Without it no connection presents a token.
    #[arg(long, global = true, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// How a connection presents its token (with --tokens).
    #[arg(long, global = true, value_enum, default_value_t = TokenVia::Header, requires = "tokens")]
    pub token_via: TokenVia,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVia {
    /// `Authorization: Bearer TOKEN` on the upgrade request.
    Header,
    /// After the 101, `{"op":"connect","token":TOKEN,"id":"connect"}`; the connection counts
    /// as connected when its `ok` arrives (JSON endpoint only).
    Connect,
    /// `?token=TOKEN` on the upgrade URL (the server needs --auth-query-token).
    Query,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open many idle connections at a fixed rate, hold them, then close.
    Connect(ConnectArgs),
    /// Closed-loop echo: keep `depth` messages in flight per connection.
    Echo(EchoArgs),
    /// Subscribers on one topic, publishers at a fixed total rate; measure fan-out latency.
    Broadcast(BroadcastArgs),
    /// A probe connection echoes closed-loop while N connections open as fast as allowed;
    /// measures the time until all are connected and the probe's latency meanwhile.
    Storm(StormArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connection attempts per second (total across threads).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds to keep the connections open once all attempts finished.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMode {
    /// `/echo`: data frames echoed verbatim.
    Raw,
    /// `/ws`: `{"op":"echo","data":"..."}` requests.
    Json,
    /// `/ws`: each connection subscribes to its own `--topic` and publishes to it; the
    /// delivery back is the reply (a publish in and a delivery out per message).
    Publish,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub depth: usize,
    /// Payload bytes (raw) or length of the data string (json).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = EchoMode::Raw)]
    pub mode: EchoMode,
    /// In raw mode send text frames (payload is ASCII) instead of binary.
    #[arg(long)]
    pub text: bool,
    /// Publish mode: the topic of connection i, `{i}` replaced by i (one subscriber each).
    #[arg(long, default_value = "chat.load-{i}")]
    pub topic: String,
}

#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total publishes per second across all publishers.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Make each publish's data a JSON document of about this many bytes: a list of market
    /// quotes (symbols, prices, sizes) whose numbers change with every publish, so that it
    /// compresses like a real feed and not like repeated bytes. 0: just the timestamp and
    /// sequence number (about 40 bytes).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Seconds to wait after the window for in-flight deliveries.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// `/echo`: a binary frame echoed verbatim (needs a header or query token with auth on).
    Raw,
    /// `/ws`: `{"op":"echo","data":"..."}`.
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Connections in the storm (the probe is one more: it presents token line `conns`).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connection attempts per second, total across threads (0: all at once).
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// What the probe connection does: one request in flight at a time, the whole run.
    #[arg(long, value_enum, default_value_t = ProbeMode::Json)]
    pub probe: ProbeMode,
    /// The probe's payload bytes (raw) or data string length (json).
    #[arg(long, default_value_t = 32)]
    pub probe_size: usize,
    /// Seconds to keep everything open (and the probe echoing) after the storm settled.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}
